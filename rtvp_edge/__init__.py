"""rtvp-edge: the edge runtime for RTVPNet-S open-vocabulary defect detection.

This package is what an edge box installs. It never imports torch, ``training`` or ``export``.
"""

__version__ = "0.1.0"


def __getattr__(name: str):
    """``from rtvp_edge import Detector, run_line`` (imported on first use: ``import rtvp_edge`` stays light)."""
    if name in ("Detector", "run_line", "predict_folder"):
        from rtvp_edge import api

        return getattr(api, name)
    raise AttributeError(f"module 'rtvp_edge' has no attribute {name!r}")
