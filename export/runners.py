"""One call signature for every artifact the pipeline verifies: ``runner(batch) -> (boxes, scores)``.

``batch`` is (B, 3, H, W) float32 preprocessed by ``rtvp_edge.preprocess``; outputs are numpy
``boxes (B, N, 4)`` xyxy input px and ``scores (B, N, C)`` in [0, 1]. Vocabulary mode ``input`` artifacts get
the (C, D) embeddings at construction (the runtime passes them the same way).
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch

from export.onnx_export import EMBEDDINGS, IMAGES


class TorchRunner:
    """The PyTorch source (FP32) through the export wrapper."""

    precision = "fp32"
    backend = "pytorch"

    def __init__(self, wrapper: torch.nn.Module, embeddings: np.ndarray | None = None):
        self.wrapper = wrapper.eval()
        self.embeddings = None if embeddings is None else torch.from_numpy(np.asarray(embeddings, np.float32))

    @torch.no_grad()
    def __call__(self, batch: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        x = torch.from_numpy(np.ascontiguousarray(batch, dtype=np.float32))
        out = self.wrapper(x) if self.embeddings is None else self.wrapper(x, self.embeddings)
        return out[0].numpy(), out[1].numpy()


class OnnxRuntimeRunner:
    """An ONNX file on ONNX Runtime's CPU provider."""

    backend = "onnxruntime"

    def __init__(
        self,
        path: str | os.PathLike | bytes,
        embeddings: np.ndarray | None = None,
        threads: int = 0,
        precision: str = "fp32",
    ):
        """``path``: the ONNX file, or its bytes already read (and hashed) by the caller."""
        import onnxruntime as ort

        opts = ort.SessionOptions()
        if threads:
            opts.intra_op_num_threads = threads
        model = path if isinstance(path, bytes) else str(path)
        self.session = ort.InferenceSession(model, opts, providers=["CPUExecutionProvider"])
        self.embeddings = None if embeddings is None else np.asarray(embeddings, np.float32)
        self.precision = precision

    def __call__(self, batch: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        feeds = {IMAGES: np.ascontiguousarray(batch, dtype=np.float32)}
        if self.embeddings is not None:
            feeds[EMBEDDINGS] = self.embeddings
        boxes, scores = self.session.run(["boxes", "scores"], feeds)  # an input-mode graph has a 3rd output
        return boxes, scores


class OpenVINORunner:
    """An OpenVINO IR compiled for the CPU with explicit properties (e.g. ``INFERENCE_PRECISION_HINT``).

    ``properties`` are recorded in the manifest next to the artifact so the runtime compiles it the same way
    the golden outputs and the measured accuracy were produced. ``static_batch`` reshapes a dynamic-batch
    model to that batch before compiling (OpenVINO's CPU plugin runs static shapes faster, INT8 most of all);
    a static-batch model runs any batch in chunks, the last padded with zeros, as the runtime does.
    """

    backend = "openvino"

    def __init__(
        self,
        path: str | os.PathLike | bytes,
        embeddings: np.ndarray | None = None,
        properties: dict[str, str] | None = None,
        precision: str = "fp32",
        static_batch: int | None = None,
        weights: bytes | None = None,
    ):
        """``path``: the IR/ONNX file, or its bytes already read (and hashed) by the caller, with the IR's
        ``weights`` (.bin) bytes."""
        import openvino as ov

        core = ov.Core()
        self.properties = dict(properties or {})
        if isinstance(path, bytes):
            self.path = None
            tensor = None if weights is None else ov.Tensor(np.frombuffer(weights, dtype=np.uint8))
            model = (
                core.read_model(model=path) if tensor is None else core.read_model(model=path, weights=tensor)
            )
        else:
            self.path = Path(path)
            model = core.read_model(str(self.path))
        if static_batch:
            shape = model.input(IMAGES).get_partial_shape()
            shape[0] = static_batch
            model.reshape({IMAGES: shape})
        self.compiled = core.compile_model(model, "CPU", self.properties)
        self.request = self.compiled.create_infer_request()
        dim = self.compiled.input(IMAGES).get_partial_shape()[0]
        self.fixed_batch = dim.get_length() if dim.is_static else -1
        self.embeddings = None if embeddings is None else np.asarray(embeddings, np.float32)
        self.precision = precision

    def execution_precision(self) -> str:
        """What the CPU plugin actually runs float layers in (``f32`` or ``bf16``)."""
        value = self.compiled.get_property("INFERENCE_PRECISION_HINT")
        return value.to_string() if hasattr(value, "to_string") else str(value)  # ov.Type -> "bf16"

    def _infer(self, batch: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        feeds = {IMAGES: np.ascontiguousarray(batch, dtype=np.float32)}
        if self.embeddings is not None:
            feeds[EMBEDDINGS] = self.embeddings
        res = self.request.infer(feeds)
        return (np.array(res[self.compiled.output("boxes")]), np.array(res[self.compiled.output("scores")]))

    def __call__(self, batch: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        fb = self.fixed_batch
        if fb <= 0 or batch.shape[0] == fb:
            return self._infer(batch)
        boxes, scores = [], []
        for i in range(0, batch.shape[0], fb):
            chunk = batch[i : i + fb]
            n = chunk.shape[0]
            if n < fb:
                chunk = np.concatenate([chunk, np.zeros((fb - n, *chunk.shape[1:]), np.float32)])
            b, s = self._infer(chunk)
            boxes.append(b[:n])
            scores.append(s[:n])
        return np.concatenate(boxes), np.concatenate(scores)
