"""Geometry of the rotating glass-container rig: container profiles, camera view angles, projection.

The rig (AAAI'25 paper, Fig. 2-b): a container reaches the photoelectric gate, the three left-bank cameras
shoot, the container turns 180 degrees on its turntable, the three right-bank cameras shoot.

We model it with a vertical container axis and orthographic cameras (the working distance is large
compared with the container), all looking horizontally at the axis. In the container's own frame a
camera at view angle ``phi`` sees the surface point at angle ``theta`` (around the axis), image row ``y``
and radius ``rho`` at

    x = cx + rho * sin(theta - phi),      visible when cos(theta - phi) > 0 (the near wall).

The far wall is treated as hidden: through two walls and the refracting body a far-side defect is blurred
beyond recognition on a real back-lit line, and the opposite bank of cameras sees it sharply instead.
View angles are in the container frame: the left bank at -40, 0, +40 degrees, the right bank (after the
180 degree turn) at 140, 180, 220 degrees, so every angle around the axis is seen by at least one camera.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import numpy as np

# Reference canvas all shapes are designed on; other image sizes scale it.
REF_HEIGHT, REF_WIDTH = 820, 700
# Image row of the turntable plate the container stands on, on the reference canvas.
REF_BASE_ROW = 792.0

# View angles (degrees, container frame) of the six cameras: 0-2 left bank, 3-5 right bank after the turn.
VIEW_ANGLES_DEG: tuple[float, ...] = (-40.0, 0.0, 40.0, 140.0, 180.0, 220.0)
LEFT_BANK = (0, 1, 2)
RIGHT_BANK = (3, 4, 5)

# Container profiles: (height above the plate, radius) in reference pixels, from the heel to the finish.
# Smoothed after interpolation, so the shoulder and the heel come out round.
PROFILES: dict[str, tuple[tuple[float, float], ...]] = {
    "bottle": (
        (0, 150), (6, 163), (18, 170), (400, 170), (440, 160), (500, 115), (545, 72), (560, 60),
        (660, 58), (672, 67), (712, 67), (716, 60),
    ),
    "jar": (
        (0, 215), (8, 228), (20, 232), (440, 232), (470, 222), (490, 200), (500, 196), (520, 206),
        (560, 206), (564, 198),
    ),
    "vial": (
        (0, 108), (6, 118), (16, 120), (520, 120), (545, 110), (570, 80), (580, 74), (610, 74),
        (616, 85), (646, 85), (650, 78),
    ),
    "wine": (
        (0, 128), (8, 140), (20, 142), (420, 142), (470, 130), (540, 80), (590, 52), (700, 48),
        (710, 57), (745, 57), (748, 50),
    ),
}  # fmt: skip


@dataclass(frozen=True)
class ContainerProfile:
    """Radius of a container per image row, at nominal pose (no pose jitter).

    Args:
        shape: profile name (a key of ``PROFILES``).
        radius: (H,) float32 radius in pixels per image row; 0 outside the container.
        top_row, base_row: first and last image row covered by glass.
        finish_row: rows ``< finish_row`` are the finish (lip) and neck, drawn darker (thick glass).
        inspection_rows: (K,) int rows of the body where defects are placed (radius >= 75 % of the max).
        cx: image column of the container axis.
        scale: reference-to-image scale.
    """

    shape: str
    radius: np.ndarray
    top_row: int
    base_row: int
    finish_row: int
    inspection_rows: np.ndarray
    cx: float
    scale: float


@functools.lru_cache(maxsize=32)
def container_profile(shape: str, image_size: tuple[int, int]) -> ContainerProfile:
    """The radius profile of ``shape`` on an image of ``image_size`` = (height, width)."""
    if shape not in PROFILES:
        raise ValueError(f"unknown container shape {shape!r}; known: {sorted(PROFILES)}")
    h, w = image_size
    scale = min(h / REF_HEIGHT, w / REF_WIDTH)
    pts = np.asarray(PROFILES[shape], np.float64) * scale
    base_row = REF_BASE_ROW * h / REF_HEIGHT
    rows = np.arange(h, dtype=np.float64)
    height_above = base_row - rows  # (H,)
    radius = np.interp(height_above, pts[:, 0], pts[:, 1], left=0.0, right=0.0)
    inside = (height_above >= 0) & (height_above <= pts[-1, 0])
    # Round the shoulder and heel: a short Gaussian along the rows, re-masked to the glass.
    sigma = 6.0 * scale
    half = int(np.ceil(3 * sigma))
    k = np.exp(-0.5 * (np.arange(-half, half + 1) / sigma) ** 2)
    radius = np.convolve(radius, k / k.sum(), mode="same") * inside
    top_row = int(np.ceil(base_row - pts[-1, 0]))
    base = int(np.floor(base_row))
    rmax = radius.max()
    # The finish/neck: from the top down to where the radius first reaches 60 % of the body radius.
    body = np.nonzero(radius >= 0.6 * rmax)[0]
    finish_row = int(body[0])
    heel_margin = int(round(30 * scale))  # above the thick, dark heel
    # Defects go on the body and the lower shoulder (radius >= 75 % of the body), not the neck or heel.
    insp = body[(body <= base - heel_margin) & (radius[body] >= 0.75 * rmax)]
    return ContainerProfile(
        shape=shape,
        radius=radius.astype(np.float32),
        top_row=top_row,
        base_row=base,
        finish_row=finish_row,
        inspection_rows=insp.astype(np.int64),
        cx=(w - 1) / 2.0,
        scale=scale,
    )


def project_point(
    theta_deg: float, row: float, rho: float, phi_deg: float, cx: float
) -> tuple[float, float, float]:
    """Project a point on/in the container wall into a camera.

    Args:
        theta_deg: angle of the point around the axis (container frame).
        row: image row of the point (orthographic cameras keep rows).
        rho: distance of the point from the axis in pixels.
        phi_deg: view angle of the camera (container frame, pose jitter included).
        cx: image column of the axis in this view.
    Returns:
        (x, y, cos_a): image position and the cosine of the angle between the wall normal and the line
        of sight (> 0: near wall, facing the camera; 1: head-on; ~0: grazing the silhouette).
    """
    a = np.deg2rad(theta_deg - phi_deg)
    return cx + rho * float(np.sin(a)), row, float(np.cos(a))
