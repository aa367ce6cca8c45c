"""RTVPNet-S model (TPAMI section 4). One file per box of the architecture diagram:

``sam_encoder`` (frozen MobileSAM-T), ``expert`` (C2F-S), ``domain_projection`` (EDP),
``visual_prompt`` (RVP), ``interaction`` (T-V / V-T), ``head``, ``loss``, ``text_encoder``,
``rtvpnet`` (assembly), ``build`` (config + registry), ``complexity`` (params / FLOPs).
"""

from .build import (
    MODEL_REGISTRY,
    VARIANT_SIZES,
    ModelConfig,
    build_model,
    build_rtvpnet_s,
    build_rtvpnet_tiny,
)
from .rtvpnet import RTVPNet

__all__ = [
    "MODEL_REGISTRY",
    "VARIANT_SIZES",
    "ModelConfig",
    "RTVPNet",
    "build_model",
    "build_rtvpnet_s",
    "build_rtvpnet_tiny",
]
