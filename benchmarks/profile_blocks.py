"""RTVPNet's compiled OpenVINO graph per block: measured time (performance counters) against share of FLOPs.

Usage (from the repository root)::

    python benchmarks/profile_blocks.py --set variant=rtvpnet_s encoder=efficientnet_lite0 encoder_scale=0.5 \\
        --img-size 640 --reps 5 --save-outputs runs/profile/before.npz

The model is built with random weights (seed 0), wrapped and exported exactly as ``rtvp-export`` does it
(``export.wrapper.FoldedVocabulary`` with 8 random unit text embeddings, ``export.onnx_export.export_onnx``),
read by OpenVINO, reshaped to batch 1 and compiled for the CPU with ``PERF_COUNT``. Every executed node's
``real_time`` is summed per model block (the second part of its name, ``/model/<block>/...``) over ``--reps``
inferences after a warm-up, and set against the block's FLOPs (``training.model.complexity.count_flops``,
2xMAC). ``--save-outputs`` stores the PyTorch outputs on a fixed input; ``--compare`` prints the max abs
difference against a stored file (same weights: a model change must not change the outputs).

``--ir FP32.xml INT8.xml`` profiles two IRs of one model instead (e.g. a bundle's ``openvino/model_fp32.xml``
and ``openvino/model.xml``, as ``rtvp-export`` or ``bench_peers.py`` write them) and compares them per block:
time in each, the INT8/FP32 ratio, and the INT8 graph's time by the precision its nodes ran in (the
``exec_type`` suffix: ``jit_avx2_I8`` vs ``jit_avx2_FP32``), by node type, and in the Reorder / Convert /
FakeQuantize nodes the plugin adds between precisions. ``--by-node --top N`` lists the N slowest nodes of the
INT8 graph with their type, exec_type and the FP32 graph's time for the node of the same name::

    python benchmarks/profile_blocks.py --ir runs/b/openvino/model_fp32.xml runs/b/openvino/model.xml \\
        --img-size 640 --reps 3 --by-node --top 30
"""

from __future__ import annotations

import argparse
import collections
import re
import sys
import tempfile
import warnings
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.machine import cpu_flags, cpu_name  # noqa: E402
from export.onnx_export import export_onnx  # noqa: E402
from export.wrapper import FoldedVocabulary  # noqa: E402
from training.model import ModelConfig, build_model  # noqa: E402
from training.model.complexity import count_flops  # noqa: E402

BLOCKS = ("expert", "sam", "projection", "rvp", "tv", "vt", "head")


def block_of(name: str) -> str:
    """Model block of an OpenVINO node name (``/head/...`` or ``/model/head/...`` -> ``head``); else ``other``."""
    parts = name.strip("/").split("/")
    if parts and parts[0] == "model":  # the wrapper's prefix, where the exporter keeps it
        parts = parts[1:]
    top = parts[0].split(".")[0] if parts else ""  # "rvp.0" (an element of a ModuleList) -> "rvp"
    return top if len(parts) > 1 and top in BLOCKS else "other"


def build(overrides: dict, hw: tuple[int, int], classes: int = 8):
    torch.manual_seed(0)
    cfg = ModelConfig.from_dict({**overrides, "img_size": list(hw)})
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = build_model(cfg).eval()
    g = torch.Generator().manual_seed(1)
    text = torch.nn.functional.normalize(torch.randn(classes, cfg.text_dim, generator=g), dim=-1)
    model.set_text_center(text)
    # Random weights leave every BatchNorm at identity statistics; give them some so the graph is generic.
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d) and m.track_running_stats:
            m.running_mean.normal_(0, 0.1, generator=g)
            m.running_var.uniform_(0.5, 1.5, generator=g)
    return model, text


def profile(xml_or_onnx: Path, hw: tuple[int, int], reps: int, threads: int, nodes: list | None = None):
    import openvino as ov

    core = ov.Core()
    model = core.read_model(xml_or_onnx)
    model.reshape({model.inputs[0].get_any_name(): [1, 3, *hw]})
    cm = core.compile_model(
        model, "CPU", {"PERF_COUNT": True, "INFERENCE_NUM_THREADS": threads, "NUM_STREAMS": 1}
    )
    req = cm.create_infer_request()
    x = np.random.default_rng(0).random((1, 3, *hw), dtype=np.float32)
    req.infer({0: x})  # warm-up
    per_block: dict[str, float] = collections.defaultdict(float)
    per_node: dict[tuple[str, str, str], float] = collections.defaultdict(float)
    for _ in range(reps):
        req.infer({0: x})
        for p in req.get_profiling_info():
            if p.status != p.Status.EXECUTED:
                continue
            t = p.real_time.total_seconds() * 1e3 / reps
            per_block[block_of(p.node_name)] += t
            per_node[(block_of(p.node_name), p.node_type, p.node_name)] += t
            if nodes is not None:
                nodes.append((p.node_name, p.node_type, p.exec_type, t))
    return per_block, per_node


def precision_of(exec_type: str) -> str:
    """The precision a node ran in, from its ``exec_type`` (``jit_avx2_I8`` -> ``I8``, ``ref_any_f32`` -> ``FP32``,
    ``undef`` -> ``-``)."""
    m = re.search(r"_(I8|U8|FP32|f32|FP16|f16|BF16|bf16|I32|i32)$", exec_type)
    return m.group(1).upper().replace("F32", "FP32").replace("FFP32", "FP32") if m else "-"


ADDED = ("Reorder", "Convert", "FakeQuantize", "Subgraph")


def compare_irs(fp32: Path, int8: Path, hw, reps: int, threads: int, top: int, by_node: bool) -> None:
    """Profile an FP32 and an INT8 IR of one model and print the per-block comparison (see the module doc)."""
    for path in (fp32, int8):
        if not path.is_file():
            raise SystemExit(f"profile_blocks: --ir: no such IR file: {path}")
    runs = {}
    for tag, path in (("FP32", fp32), ("INT8", int8)):
        nodes: list = []
        per_block, _ = profile(path, hw, reps, threads, nodes)
        agg: dict[str, list] = {}
        for name, ntype, etype, t in nodes:
            e = agg.setdefault(name, [ntype, etype, 0.0])
            e[2] += t
        runs[tag] = (per_block, agg)
    (fb, fn), (ib, inodes) = runs["FP32"], runs["INT8"]
    print(f"{cpu_name()}; flags: {cpu_flags()}; {threads} threads; batch 1, {hw[0]}x{hw[1]}; {reps} reps")
    print(f"FP32 IR {fp32}\nINT8 IR {int8}\n")
    # Per block: times, ratio, and the INT8 graph's time split by precision and by added conversions.
    prec: dict[str, dict[str, float]] = collections.defaultdict(lambda: collections.defaultdict(float))
    added: dict[str, dict[str, list]] = collections.defaultdict(
        lambda: collections.defaultdict(lambda: [0, 0.0])
    )
    for name, (ntype, etype, t) in inodes.items():
        b = block_of(name)
        prec[b][precision_of(etype)] += t
        if ntype in ADDED:
            added[b][ntype][0] += 1
            added[b][ntype][1] += t
    print("| block | FP32 ms | INT8 ms | INT8/FP32 | INT8 ms in I8/U8 nodes | in FP32 nodes | Reorder n / ms | "
          "Convert n / ms | FakeQuantize n / ms |")  # fmt: skip
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    for b in (*BLOCKS, "other", "total"):
        if b == "total":
            f, i = sum(fb.values()), sum(ib.values())
            pr = collections.defaultdict(float)
            ad = collections.defaultdict(lambda: [0, 0.0])
            for d in prec.values():
                for k, v in d.items():
                    pr[k] += v
            for d in added.values():
                for k, (n, t) in d.items():
                    ad[k][0] += n
                    ad[k][1] += t
        else:
            if b not in fb and b not in ib:
                continue
            f, i, pr, ad = fb.get(b, 0.0), ib.get(b, 0.0), prec[b], added[b]
        ratio = f"{i / f:.2f}" if f else "-"
        cells = [f"{ad[k][0]} / {ad[k][1]:.1f}" for k in ("Reorder", "Convert", "FakeQuantize")]
        print(f"| {b} | {f:.1f} | {i:.1f} | {ratio} | {pr['I8'] + pr['U8']:.1f} | {pr['FP32']:.1f} | "
              + " | ".join(cells) + " |")  # fmt: skip
    by_type: dict[tuple[str, str, str], list] = collections.defaultdict(lambda: [0, 0.0])
    for name, (ntype, etype, t) in inodes.items():
        e = by_type[(block_of(name), ntype, etype)]
        e[0] += 1
        e[1] += t
    print("\nINT8 graph: slowest (block, node type, exec_type):")
    print("| block | node type | exec_type | nodes | ms |\n|---|---|---|---:|---:|")
    for (b, ntype, etype), (n, t) in sorted(by_type.items(), key=lambda kv: -kv[1][1])[:top]:
        print(f"| {b} | {ntype} | {etype} | {n} | {t:.1f} |")
    fp32_convs = [(n, e) for n, e in inodes.items() if e[0] in ("Convolution", "GroupConvolution", "MatMul")
                  and precision_of(e[1]) == "FP32"]  # fmt: skip
    print(f"\nINT8 graph: {len(fp32_convs)} Convolution/MatMul nodes ran in FP32, "
          f"{sum(e[2] for _, e in fp32_convs):.1f} ms; by block: "
          + ", ".join(f"{b} {sum(1 for n, _ in fp32_convs if block_of(n) == b)}"
                      for b in sorted({block_of(n) for n, _ in fp32_convs})))  # fmt: skip
    if by_node:
        print(f"\nINT8 graph: slowest {top} nodes (FP32 ms: the FP32 graph's node of the same name):")
        print("| ms | FP32 ms | block | type | exec_type | node |\n|---:|---:|---|---|---|---|")
        for name, (ntype, etype, t) in sorted(inodes.items(), key=lambda kv: -kv[1][2])[:top]:
            f = fn.get(name)
            print(f"| {t:.1f} | {f[2]:.1f} |" if f else f"| {t:.1f} | - |",
                  f"{block_of(name)} | {ntype} | {etype} | `{name}` |")  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--set", nargs="*", default=[], help="model config key=value (YAML values)")
    ap.add_argument("--img-size", default="640", help="N or HxW")
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--top", type=int, default=25, help="slowest nodes to list")
    ap.add_argument("--save-outputs", type=Path)
    ap.add_argument("--compare", type=Path, help="outputs saved by --save-outputs from the same weights")
    ap.add_argument("--onnx", type=Path, help="keep the exported ONNX here")
    ap.add_argument("--ir", nargs=2, type=Path, metavar=("FP32_XML", "INT8_XML"),
                    help="profile and compare these two IRs of one model instead of building one")  # fmt: skip
    ap.add_argument("--by-node", action="store_true", help="with --ir: list the INT8 graph's slowest nodes")
    args = ap.parse_args(argv)
    import yaml

    overrides = {}
    for kv in args.set:
        k, sep, v = kv.partition("=")
        if not sep:
            ap.error(f"--set expects key=value, got {kv!r}")
        overrides[k] = yaml.safe_load(v)
    sizes = [int(v) for v in args.img_size.lower().split("x")]
    hw = (sizes[0], sizes[-1])
    if args.ir:
        compare_irs(*args.ir, hw, args.reps, args.threads, args.top, args.by_node)
        return 0
    torch.set_num_threads(args.threads)
    model, text = build(overrides, hw)
    x = torch.from_numpy(np.random.default_rng(0).random((2, 3, *hw), dtype=np.float32))
    with torch.no_grad():
        boxes, scores = model.forward_inference(x, text)
    if args.save_outputs:
        args.save_outputs.parent.mkdir(parents=True, exist_ok=True)
        np.savez(args.save_outputs, boxes=boxes.numpy(), scores=scores.numpy())
    if args.compare:
        ref = np.load(args.compare)
        db = float(np.abs(ref["boxes"] - boxes.numpy()).max())
        ds = float(np.abs(ref["scores"] - scores.numpy()).max())
        print(f"max abs diff vs {args.compare}: boxes {db:.3g} px, scores {ds:.3g}")
    flops = count_flops(model, hw[0] if hw[0] == hw[1] else hw, num_classes=text.shape[0])
    with tempfile.TemporaryDirectory() as tmp:
        onnx_path = args.onnx or Path(tmp) / "model.onnx"
        export_onnx(FoldedVocabulary(model, text).eval(), onnx_path, "folded", hw, tuple(text.shape))
        per_block, per_node = profile(onnx_path, hw, args.reps, args.threads)
    total_ms = sum(per_block.values())
    total_gf = sum(flops.get(b, 0.0) for b in BLOCKS)
    print(f"{cpu_name()}; flags: {cpu_flags()}; {args.threads} threads; batch 1, {hw[0]}x{hw[1]}; "
          f"config {overrides}")  # fmt: skip
    print("| block | ms | time share | GFLOPs | FLOP share | time/FLOP share |")
    print("|---|---:|---:|---:|---:|---:|")
    for b in (*BLOCKS, "other"):
        if b not in per_block and not flops.get(b):
            continue
        ms, gf = per_block.get(b, 0.0), flops.get(b, 0.0)
        ts, fs = ms / total_ms, (gf / total_gf if total_gf else 0.0)
        ratio = f"{ts / fs:.2f}" if fs > 0 else "-"
        print(f"| {b} | {ms:.1f} | {ts:.1%} | {gf:.2f} | {fs:.1%} | {ratio} |")
    print(f"| total | {total_ms:.1f} | | {total_gf:.2f} | | |")
    by_type: dict[tuple[str, str], float] = collections.defaultdict(float)
    for (b, t, _), ms in per_node.items():
        by_type[(b, t)] += ms
    print("\nslowest (block, node type):")
    for (b, t), ms in sorted(by_type.items(), key=lambda kv: -kv[1])[: args.top]:
        print(f"  {ms:7.2f} ms  {b:10s} {t}")
    print("\nslowest nodes:")
    for (b, t, n), ms in sorted(per_node.items(), key=lambda kv: -kv[1])[: args.top]:
        print(f"  {ms:7.2f} ms  {b:10s} {t:14s} {n}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
