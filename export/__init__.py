"""Export package: checkpoint -> ONNX -> OpenVINO / TensorRT -> verified, self-describing bundle.

May import ``training`` (to rebuild the model) and ``rtvp_edge`` (the bundle schema).
"""
