"""rtvp-edge: the edge runtime for RTVPNet-S open-vocabulary defect detection.

This package is what an edge box installs. It never imports torch, ``training`` or ``export``.
"""

__version__ = "0.1.0"
