"""The simulated rotating glass-container rig (no torch): renderer, geometry and six-camera source.

See ``docs/rig.md``. Entry points: ``RigConfig`` (``load_rig_config`` for a YAML file), ``render_container``, ``SimulatedRig``.
"""

from rtvp_edge.rig.camera import CORRUPTION_KINDS, DEFAULT_CAMERA_IDS, SimulatedCamera, SimulatedRig
from rtvp_edge.rig.geometry import LEFT_BANK, RIGHT_BANK, VIEW_ANGLES_DEG, container_profile
from rtvp_edge.rig.render import (
    GENERATOR_VERSION,
    TINTS,
    ContainerSpec,
    ContainerViews,
    Defect3D,
    RigConfig,
    load_rig_config,
    part_id_for,
    project_defect,
    render_container,
    render_view,
    sample_container,
    warm_up,
)

__all__ = [
    "CORRUPTION_KINDS",
    "DEFAULT_CAMERA_IDS",
    "SimulatedCamera",
    "SimulatedRig",
    "GENERATOR_VERSION",
    "LEFT_BANK",
    "RIGHT_BANK",
    "TINTS",
    "VIEW_ANGLES_DEG",
    "ContainerSpec",
    "ContainerViews",
    "Defect3D",
    "RigConfig",
    "container_profile",
    "load_rig_config",
    "part_id_for",
    "project_defect",
    "render_container",
    "render_view",
    "sample_container",
    "warm_up",
]
