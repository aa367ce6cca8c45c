"""Which parts of a network INT8 leaves in float: one policy for every backend (NNCF for OpenVINO, ONNX
Runtime QDQ, TensorRT's explicit Q/DQ), computed from the exported ONNX graph.

Kept float:
- the graph's tail: the final score/box prediction layers, the sigmoid and the in-graph box decoding (every
  node between the outputs and the last weighted layer on each path). Quantizing the score path shifts
  scores near the decision threshold, and box decoding multiplies by strides: both cost AP for no speed;
- whole blocks where INT8 does not pay on the target CPU (default: the MobileSAM image encoder, slower in
  INT8 than in bf16 on AVX512-BF16/AMX CPUs; the figures are in benchmarks/results/export.md);
- the visual-text update (``vt``, Eq. 11): a softmax over every position of every level (thousands), whose
  weights of about 1/N cannot be told apart in 8 bits. Quantizing that block alone (16 quantizers) cost 18.1
  of 34.4 AP50 on the glass val split, every other block at most 2.9 (benchmarks/int8_sensitivity.py,
  benchmarks/results/export.md).
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass, field

import onnx

from export.errors import ExportError

LAST_LAYERS = {"Conv", "ConvTranspose", "Gemm"}
# Blocks kept out of INT8 by default: regex on the top-level child module names of the model.
DEFAULT_FLOAT_BLOCKS = r"(sam|image_encoder|mobilesam|tinyvit|^vt$)"


@dataclass
class KeepFloat:
    """Which ONNX nodes INT8 quantization leaves in float, and why (for the manifest).

    Args:
        names: exact ONNX node names (the graph tail: score path, sigmoid, box decoding).
        blocks: regexes of module paths kept entirely in float (``block_pattern``), e.g. ``/(model/)?sam(\\.\\d+)?/.*``.
        reasons: human-readable entries for ``Artifact.kept_float``.
    """

    names: list[str] = field(default_factory=list)
    blocks: list[str] = field(default_factory=list)
    reasons: list[str] = field(default_factory=list)

    def patterns(self) -> list[str]:
        """Regexes over OpenVINO op names for ``nncf.IgnoredScope``: OpenVINO splits an ONNX node into ops
        named after it (``/head/box/Conv`` -> ``/head/box/Conv/WithoutBiases`` + ``/head/box/Conv``)."""
        return list(self.blocks) + [re.escape(n) + "(/.*)?" for n in self.names]

    def matches(self, node_name: str) -> bool:
        return node_name in set(self.names) or any(re.match(b, node_name) for b in self.blocks)

    def onnx_nodes(self, model: onnx.ModelProto) -> list[str]:
        """Names of the ONNX nodes this policy keeps float (for ONNX Runtime's ``nodes_to_exclude``)."""
        return [n.name for n in model.graph.node if self.matches(n.name)]


def node_scope(name: str) -> str:
    """The top-level block a node belongs to: ``"/head/box.0/Conv"`` -> ``"head"``, ``"/fuse.1/Conv"`` ->
    ``"fuse"`` (an ``nn.ModuleList`` entry); ``"/Sigmoid"`` -> ``""``."""
    parts = name.split("/")
    return re.sub(r"\.\d+$", "", parts[1]) if len(parts) > 2 and name.startswith("/") else ""


def block_pattern(block: str) -> str:
    """Regex of the node names of top-level block ``block`` (and of its ``nn.ModuleList`` entries).

    ``forward_inference`` is not a module call, so the tracer scopes nodes by the blocks it calls
    (``/expert/...``, ``/fuse.0/...``), or under ``/model/`` when a wrapper calls the model's ``forward``.
    """
    return rf"/(model/)?{re.escape(block.strip('/'))}(\.\d+)?/.*"


def graph_tail(model: onnx.ModelProto, head_scopes: Iterable[str] = ("head",)) -> list[str]:
    """The detection head's output path, from the graph outputs back to the last convolution on each path
    (included): the final box and region 1x1 convs, DFL softmax/expectation, the region-text similarity, the
    sigmoid, the box decoding.

    The walk stays inside the head's scope (and unscoped top-level ops such as the final sigmoid); MatMul and
    Einsum do not stop it, since in the head they are decoding (DFL expectation) and the score itself
    (region-text similarity), both of which must stay float.
    """
    allowed = {"", *head_scopes}
    producer = {out: n for n in model.graph.node for out in n.output}
    inits = {i.name for i in model.graph.initializer}
    tail: dict[str, None] = {}
    stack = [o.name for o in model.graph.output]
    seen: set[str] = set()
    while stack:
        node = producer.get(stack.pop())
        if node is None or node.name in seen or node_scope(node.name) not in allowed:
            continue
        seen.add(node.name)
        tail[node.name] = None
        if node.op_type in LAST_LAYERS:
            continue  # the last learned layer on this path: included, nothing before it
        stack.extend(i for i in node.input if i and i not in inits)
    return list(tail)


def keep_float_policy(
    model: onnx.ModelProto,
    block_names: Iterable[str],
    float_blocks: str | None = DEFAULT_FLOAT_BLOCKS,
    extra_patterns: Iterable[str] = (),
) -> KeepFloat:
    """Build the keep-float policy for an exported graph.

    Args:
        model: the exported ONNX graph (node names are module paths, ``/<block>/...``).
        block_names: top-level child module names of the source model (``model.named_children()``).
        float_blocks: regex; matching blocks stay float entirely. None: quantize every block.
        extra_patterns: further module-path prefixes to keep float (``--keep-float``).
    """
    keep = KeepFloat()
    tail = graph_tail(model)
    keep.names = tail
    by_name = {n.name: n for n in model.graph.node}
    convs = sorted(n for n in tail if by_name[n].op_type in LAST_LAYERS)
    keep.reasons.append(
        f"head output path ({len(tail)} nodes): final layers {', '.join(convs[:8])}"
        f"{' ...' if len(convs) > 8 else ''}; region-text scores, sigmoid, DFL box decoding"
    )
    names = [n.name for n in model.graph.node]

    def has_nodes(pattern: str) -> bool:
        return any(re.match(pattern, n) for n in names)

    if float_blocks:
        for b in block_names:
            # Blocks without nodes in the inference graph (e.g. the training loss) are not candidates.
            if re.search(float_blocks, b) and has_nodes(block_pattern(b)):
                keep.blocks.append(block_pattern(b))
                keep.reasons.append(f"block {b}: kept float (policy {float_blocks!r})")
    for b in extra_patterns:
        if not has_nodes(block_pattern(b)):
            raise ExportError(f"keep-float block {b!r} matches no node of the exported graph")
        keep.blocks.append(block_pattern(b))
        keep.reasons.append(f"block {b}: kept float (--keep-float)")
    return keep
