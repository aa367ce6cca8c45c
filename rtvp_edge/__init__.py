"""rtvp-edge: the edge runtime for RTVPNet-S open-vocabulary defect detection.

This package is what an edge box installs. It never imports torch, ``training`` or ``export``.
"""

__version__ = "0.1.0"


def __getattr__(name: str):
    """``from rtvp_edge import Detector, run_line, enroll`` (imported on first use: ``import rtvp_edge`` stays light)."""
    if name in ("Detector", "run_line", "predict_folder"):
        from rtvp_edge import api

        return getattr(api, name)
    if name == "enroll":  # a defect type from a few example boxes (rtvp_edge/enrolment.py)
        from rtvp_edge.enrolment import enroll

        return enroll
    raise AttributeError(f"module 'rtvp_edge' has no attribute {name!r}")
