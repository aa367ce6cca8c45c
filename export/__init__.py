"""rtvp-export: turn a training checkpoint into a bundle the line runs.

One staged pipeline (``export.pipeline.export_bundle``), one module per stage or backend::

    checkpoint ─▶ source.py        rebuild the model, its vocabulary and preprocessing from the checkpoint
               ─▶ embeddings.py    run the text encoder once over the vocabulary, cache (C, D) embeddings
               ─▶ wrapper.py       tensors-only export wrapper (vocabulary folded or as a second input)
               ─▶ onnx_export.py   ONNX (dynamic batch) + onnx.checker + parity against PyTorch
               ─▶ calibration.py   calibration set, built once, reused by every backend
               ─▶ openvino_backend.py / onnxruntime_int8.py / tensorrt.py
               ─▶ accuracy.py      COCO AP of the artifact and its FP32 source (INT8 accuracy guard)
               ─▶ golden.py        golden images + expected detections for the runtime's self-test
               ─▶ bundle_writer.py temp dir, manifest last, atomic rename

The CLI (``export.cli:main``, console script ``rtvp-export``) is a thin layer over these functions.
"""
