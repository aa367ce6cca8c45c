"""Stage: PyTorch -> ONNX, then ``onnx.checker``.

We use the TorchScript-based exporter (``dynamo=False``): it traces ``forward_inference`` (tensors only, no
control flow), is fast on a CPU and names every node after its module path (``/model/head/...``), which the
INT8 keep-float policy and the manifest's ``kept_float`` list refer to. The batch axis is dynamic; in
vocabulary mode ``input`` the class axis C is dynamic too. Opset 17 is read by ONNX Runtime >= 1.12,
OpenVINO >= 2022.1 and TensorRT >= 8.6.
"""

from __future__ import annotations

import contextlib
import os
import warnings
from collections.abc import Iterator
from pathlib import Path

import onnx
import torch

from export.errors import ExportError

OPSET = 17
IMAGES, EMBEDDINGS, BOXES, SCORES = "images", "text_embeddings", "boxes", "scores"
REGIONS = "region_embeddings"  # (B, N, D), vocabulary mode "input" only (rtvp-edge enroll)


@contextlib.contextmanager
def trace_friendly_batch() -> Iterator[None]:
    """Keep the batch axis dynamic through mobile_sam's TinyViT while tracing.

    ``PatchMerging.forward`` reads the batch size with ``len(x)``, a Python int the tracer records as a
    constant, so a graph traced at batch 2 fails at any other batch. Inside this context the module's ``len``
    resolves to ``x.shape[0]``, which the tracer records as a Shape op. Nothing else changes; the original
    lookup (the builtin) is restored on exit.
    """
    try:
        from mobile_sam.modeling import tiny_vit_sam
    except ImportError:
        yield
        return
    had_own = "len" in vars(tiny_vit_sam)
    previous = vars(tiny_vit_sam).get("len")
    tiny_vit_sam.len = lambda x: x.shape[0] if isinstance(x, torch.Tensor) else len(x)
    try:
        yield
    finally:
        if had_own:
            tiny_vit_sam.len = previous
        else:
            del tiny_vit_sam.len


def export_onnx(
    wrapper: torch.nn.Module,
    path: str | os.PathLike,
    mode: str,
    input_size: tuple[int, int],
    embedding_shape: tuple[int, int],
    opset: int = OPSET,
) -> Path:
    """Export a wrapper from ``export.wrapper`` to ``path`` and check the file.

    Args:
        wrapper: ``FoldedVocabulary`` (mode ``"folded"``) or ``InputVocabulary`` (mode ``"input"``, with the
            third output ``region_embeddings (B, N, D)``), eval.
        path: output .onnx file.
        mode: vocabulary mode, ``"folded"`` or ``"input"``.
        input_size: (H, W) of the model input.
        embedding_shape: (C, D) of the text embeddings (example input in mode ``"input"``).
    Returns:
        ``path``, after ``onnx.checker.check_model(full_check=True)`` passed.
    """
    path = Path(path)
    images = torch.zeros(2, 3, *input_size)  # batch 2 so the tracer cannot specialise on a batch of 1
    dynamic = {IMAGES: {0: "batch"}, BOXES: {0: "batch"}, SCORES: {0: "batch"}}
    outputs = [BOXES, SCORES]
    if mode == "input":
        args: tuple = (images, torch.zeros(*embedding_shape))
        names = [IMAGES, EMBEDDINGS]
        dynamic[EMBEDDINGS] = {0: "classes"}
        dynamic[SCORES] = {0: "batch", 2: "classes"}
        outputs.append(REGIONS)  # what enrolment from example boxes needs
        dynamic[REGIONS] = {0: "batch"}
    else:
        args, names = (images,), [IMAGES]
    with torch.no_grad(), warnings.catch_warnings(), trace_friendly_batch():
        # The TorchScript exporter is deprecated in favour of torch.export; its warning is not actionable here.
        warnings.simplefilter("ignore", DeprecationWarning)
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        try:
            torch.onnx.export(
                wrapper,
                args,
                str(path),
                dynamo=False,
                input_names=names,
                output_names=outputs,
                dynamic_axes=dynamic,
                opset_version=opset,
                do_constant_folding=True,
            )
        except Exception as e:
            raise ExportError(f"ONNX export of the model failed: {type(e).__name__}: {e}") from None
    check_onnx(path)
    return path


def check_onnx(path: str | os.PathLike) -> onnx.ModelProto:
    """``onnx.checker`` with shape inference; raises ``ExportError`` naming the file."""
    try:
        onnx.checker.check_model(str(path), full_check=True)
    except onnx.checker.ValidationError as e:
        raise ExportError(f"{path}: onnx.checker failed: {e}") from None
    return onnx.load(str(path), load_external_data=False)
