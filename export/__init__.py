"""rtvp-export: turn a training checkpoint into a bundle the line runs.

One staged pipeline (``export.pipeline.export_bundle``), a function per stage, a module per target::

    checkpoint ─▶ source.py        rebuild the model, its vocabulary and preprocessing from the checkpoint
    vocabulary ─▶ embeddings.py    run the text encoder once over the vocabulary, cache (C, D) embeddings
    data       ─▶ accuracy.py      held-out images;  calibration.py  calibration set, built once (INT8)
    ONNX       ─▶ wrapper.py       tensors-only export wrapper (vocabulary folded or as a second input)
                  onnx_export.py   ONNX (dynamic batch) + onnx.checker; verify.py  parity against PyTorch
    backend    ─▶ targets.py       the Target interface, one module per target:
                  onnxruntime_backend.py / openvino_backend.py / tensorrt.py
    accuracy   ─▶ accuracy.py      COCO AP of the artifact and its FP32 source (INT8 accuracy guard)
    golden     ─▶ golden.py        golden images; their outputs recorded by rtvp_edge.selftest
    bundle     ─▶ bundle_writer.py temp dir, manifest last, verify.py (the runtime's self-test), rename

Options: ``export.options`` (one small object per concern). Every artifact is run by the runtime's own
backends (``rtvp_edge.backends``) on the bundle being written: export has no inference code of its own.
The CLI (``export.cli:main``, console script ``rtvp-export``) is a thin layer over these functions.
"""
