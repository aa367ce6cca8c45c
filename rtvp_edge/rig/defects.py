"""How each glass defect looks in back-light: small sprites (opacity + colour) drawn on the wall.

A sprite is what the defect looks like seen head-on, in wall pixels; the renderer foreshortens it for
each view. Looks follow what an inspector sees on a back-lit glass line:

- ``oil``: a soft, irregular, semi-transparent brownish smear (a film on the outer surface).
- ``black spot``: a small, sharp, nearly opaque dark dot (carbon or metal inclusion).
- ``bubble``: a round or vertically stretched ellipse, dark refracting rim, bright core and a glint.
- ``plastering thread``: a curved rod of unmelted glass, a lens in back-light: dark edges, bright middle.
- ``quenched grain``: a cluster of tiny white scattering grains on a faint grey haze.
- ``crack``: a jagged dark line with a branch and a bright glint along it (the fracture plane).
- ``stone``: an opaque irregular grey-brown inclusion with a bright, then faint grey, stress aura.
- ``scratch``: a long, nearly straight, thin dark line with a bright scatter line beside it.

Sizes are chosen so that small defects (COCO small, < 32x32 px) dominate while staying visible to a
detector working at ~0.55 scale: most boxes are 10-40 px with clear contrast.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import cv2
import numpy as np

_OPTICS_BLUR = 0.6  # px, Gaussian sigma of the lens blur applied to every sprite
_SS = 4  # supersampling of drawn lines/polygons (cv2 draws on integer pixels)


@dataclass(frozen=True)
class DefectSprite:
    """A defect seen head-on.

    Args:
        alpha: (h, w) float32 opacity in [0, 1].
        color: (h, w, 3) float32 BGR colour (0-255) that the opacity blends in.
    The defect's position is the sprite centre.
    """

    alpha: np.ndarray
    color: np.ndarray


def _canvas(h: int, w: int) -> tuple[np.ndarray, np.ndarray]:
    return np.zeros((h, w), np.float32), np.zeros((h, w, 3), np.float32)


def _grid(h: int, w: int) -> tuple[np.ndarray, np.ndarray]:
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    return yy - (h - 1) / 2.0, xx - (w - 1) / 2.0


def _draw_polyline(shape: tuple[int, int], pts: np.ndarray, thickness: float) -> np.ndarray:
    """Anti-aliased polyline mask (h, w) float32 in [0, 1]; ``pts`` (N, 2) xy in sprite pixels."""
    h, w = shape
    big = np.zeros((h * _SS, w * _SS), np.uint8)
    p = np.round((pts + 0.5) * _SS - 0.5).astype(np.int32).reshape(-1, 1, 2)
    cv2.polylines(big, [p], False, 255, max(1, int(round(thickness * _SS))), cv2.LINE_AA)
    return cv2.resize(big, (w, h), interpolation=cv2.INTER_AREA).astype(np.float32) / 255.0


def _fill_polygon(shape: tuple[int, int], pts: np.ndarray) -> np.ndarray:
    h, w = shape
    big = np.zeros((h * _SS, w * _SS), np.uint8)
    p = np.round((pts + 0.5) * _SS - 0.5).astype(np.int32).reshape(-1, 1, 2)
    cv2.fillPoly(big, [p], 255, cv2.LINE_AA)
    return cv2.resize(big, (w, h), interpolation=cv2.INTER_AREA).astype(np.float32) / 255.0


def _blob_polygon(rng: np.random.Generator, rx: float, ry: float, n: int = 14, rough: float = 0.25):
    """Irregular closed polygon around (0, 0) with radii ~ (rx, ry)."""
    t = np.linspace(0, 2 * np.pi, n, endpoint=False) + rng.uniform(0, 2 * np.pi)
    r = 1.0 + rough * rng.uniform(-1, 1, n)
    r = np.convolve(np.r_[r[-1], r, r[0]], [0.25, 0.5, 0.25], mode="valid")  # smooth the outline
    return np.stack([rx * r * np.cos(t), ry * r * np.sin(t)], 1)


def _smooth_curve(rng: np.random.Generator, length: float, bend: float, n: int = 12) -> np.ndarray:
    """A gently bending curve of ``length`` px, centred on (0, 0), random orientation; (n, 2) xy."""
    ang = rng.uniform(0, np.pi)
    turn = np.cumsum(rng.normal(0, bend, n))
    turn -= turn.mean()
    steps = np.stack([np.cos(ang + turn), np.sin(ang + turn)], 1) * (length / (n - 1))
    pts = np.vstack([[0.0, 0.0], np.cumsum(steps[:-1], 0)])
    return pts - pts.mean(0)


def _place(pts: np.ndarray, margin: int) -> tuple[np.ndarray, tuple[int, int]]:
    """Shift points into a sprite canvas with ``margin`` px on each side; returns (pts, (h, w))."""
    lo, hi = pts.min(0), pts.max(0)
    w = int(np.ceil(hi[0] - lo[0])) + 2 * margin + 1
    h = int(np.ceil(hi[1] - lo[1])) + 2 * margin + 1
    # keep the curve centred so the sprite centre is the defect position
    return pts - (lo + hi) / 2.0 + np.array([(w - 1) / 2.0, (h - 1) / 2.0]), (h, w)


def _gray(v: float | np.ndarray, tint=(1.0, 1.0, 1.0)) -> np.ndarray:
    return np.multiply.outer(np.asarray(v, np.float32), np.asarray(tint, np.float32))


def sprite_oil(rng: np.random.Generator, s: float) -> DefectSprite:
    rx, ry = rng.uniform(7, 20) * s, rng.uniform(6, 16) * s
    m = int(np.ceil(max(rx, ry) * 1.5)) + 2
    h = w = 2 * m + 1
    yy, xx = _grid(h, w)
    field = np.zeros((h, w), np.float32)
    for _ in range(4):  # a few overlapping soft lobes make the smear irregular
        cx, cy = rng.normal(0, rx * 0.35), rng.normal(0, ry * 0.35)
        sx, sy = rx * rng.uniform(0.45, 0.8), ry * rng.uniform(0.45, 0.8)
        field += np.exp(-0.5 * (((xx - cx) / sx) ** 2 + ((yy - cy) / sy) ** 2))
    field /= field.max()
    alpha = np.clip((field - 0.25) / 0.45, 0, 1) * rng.uniform(0.4, 0.6)
    # film thickness varies: darker brown core, yellowish rim (BGR)
    core = np.array([35, 60, 85], np.float32)
    rim = np.array([70, 120, 150], np.float32)
    color = rim + (core - rim) * field[..., None]
    return DefectSprite(alpha.astype(np.float32), color.astype(np.float32))


def sprite_black_spot(rng: np.random.Generator, s: float) -> DefectSprite:
    d = rng.uniform(7, 16) * s
    ax = d / 2 * rng.uniform(0.8, 1.2)
    ay = d / 2 * rng.uniform(0.8, 1.2)
    m = int(np.ceil(max(ax, ay))) + 3
    yy, xx = _grid(2 * m + 1, 2 * m + 1)
    r = np.sqrt((xx / ax) ** 2 + (yy / ay) ** 2)
    alpha = np.clip((1.15 - r) / 0.3, 0, 1) * rng.uniform(0.85, 0.97)
    color = _gray(np.full(r.shape, rng.uniform(15, 35), np.float32))
    return DefectSprite(alpha.astype(np.float32), color)


def sprite_bubble(rng: np.random.Generator, s: float) -> DefectSprite:
    w0 = rng.uniform(7, 22) * s
    ax = w0 / 2
    ay = ax * rng.uniform(1.0, 2.0)  # bubbles stretch along the blowing direction (vertical)
    m = int(np.ceil(max(ax, ay))) + 3
    yy, xx = _grid(2 * m + 1, 2 * m + 1)
    r = np.sqrt((xx / ax) ** 2 + (yy / ay) ** 2)
    rim_w = max(1.6 * s, 0.18 * ax) / ax
    rim = np.exp(-0.5 * ((r - 1.0) / (rim_w / 1.6)) ** 2)  # dark refracting rim
    core = np.clip((0.8 - r) / 0.3, 0, 1)  # bright lens-like core
    gx, gy = -0.35 * ax, -0.35 * ay  # a glint towards the light
    glint = np.exp(-0.5 * (((xx - gx) ** 2 + (yy - gy) ** 2) / max(0.8, 0.15 * ax) ** 2))
    a_rim, a_core, a_glint = 0.8 * rim, 0.35 * core, 0.9 * glint
    alpha = np.clip(a_rim + a_core + a_glint, 0, 1)
    dark, bright = 45.0, 250.0
    color_v = (a_rim * dark + (a_core + a_glint) * bright) / np.maximum(a_rim + a_core + a_glint, 1e-6)
    return DefectSprite(alpha.astype(np.float32), _gray(color_v))


def sprite_plastering_thread(rng: np.random.Generator, s: float) -> DefectSprite:
    # A rod of unmelted glass lying on the wall acts as a cylindrical lens in back-light:
    # both edges dark (light bent away), a bright line along its middle.
    length = rng.uniform(22, 60) * s
    pts, (h, w) = _place(_smooth_curve(rng, length, bend=0.12), margin=5)
    thick = rng.uniform(3.0, 4.5) * s
    body = _draw_polyline((h, w), pts, thick)
    core = _draw_polyline((h, w), pts, max(1.0, thick * 0.3))
    rim = np.clip(body - core, 0, 1)
    alpha = np.clip(0.8 * rim + 0.7 * core, 0, 1)
    v = (0.8 * rim * 70.0 + 0.7 * core * 250.0) / np.maximum(0.8 * rim + 0.7 * core, 1e-6)
    return DefectSprite(alpha.astype(np.float32), _gray(v.astype(np.float32)))


def sprite_quenched_grain(rng: np.random.Generator, s: float) -> DefectSprite:
    rx, ry = rng.uniform(6, 16) * s, rng.uniform(5, 13) * s
    m = int(np.ceil(max(rx, ry))) + 3
    h = w = 2 * m + 1
    yy, xx = _grid(h, w)
    haze = np.exp(-0.5 * ((xx / (rx * 0.7)) ** 2 + (yy / (ry * 0.7)) ** 2))
    grains = np.zeros((h, w), np.float32)
    n = int(rng.integers(12, 30))
    gx = np.clip(rng.normal(0, rx * 0.5, n), -rx, rx)
    gy = np.clip(rng.normal(0, ry * 0.5, n), -ry, ry)
    gr = rng.uniform(0.6, 1.6, n) * max(s, 0.6)
    for x0, y0, r0 in zip(gx, gy, gr, strict=True):
        grains = np.maximum(grains, np.exp(-0.5 * ((xx - x0) ** 2 + (yy - y0) ** 2) / r0**2))
    a_haze = 0.6 * haze  # the scattering haze darkens the back-light; the grains sparkle on it
    a_gr = 0.95 * grains
    alpha = np.clip(a_haze + a_gr, 0, 1)
    v = (a_haze * 95.0 + a_gr * 255.0) / np.maximum(a_haze + a_gr, 1e-6)
    return DefectSprite(alpha.astype(np.float32), _gray(v))


def sprite_crack(rng: np.random.Generator, s: float) -> DefectSprite:
    length = rng.uniform(18, 48) * s
    n = 9
    main = _smooth_curve(rng, length, bend=0.5, n=n)  # jagged: large random turns
    k = int(rng.integers(2, n - 2))
    ang = rng.uniform(0, 2 * np.pi)
    blen = length * rng.uniform(0.25, 0.45)
    branch = main[k] + np.outer(np.linspace(0, 1, 4), [np.cos(ang), np.sin(ang)]) * blen
    branch[1:] += rng.normal(0, 1.0 * s, (3, 2))
    allp, (h, w) = _place(np.vstack([main, branch]), margin=4)
    main_p, branch_p = allp[:n], allp[n:]
    thick = rng.uniform(1.2, 2.2) * s
    dark = np.maximum(_draw_polyline((h, w), main_p, thick), _draw_polyline((h, w), branch_p, thick * 0.7))
    glint = _draw_polyline((h, w), main_p + np.array([thick, thick * 0.5]), 1.0)
    glint = np.clip(glint - dark, 0, 1)
    alpha = np.clip(0.9 * dark + 0.6 * glint, 0, 1)
    v = np.where(dark >= glint, 30.0, 255.0).astype(np.float32)
    return DefectSprite(alpha.astype(np.float32), _gray(v))


def sprite_stone(rng: np.random.Generator, s: float) -> DefectSprite:
    r = rng.uniform(5, 11) * s
    halo_w = max(2.0, 0.35 * r)
    poly = _blob_polygon(rng, r, r * rng.uniform(0.7, 1.0), rough=0.35)
    pts, (h, w) = _place(poly, margin=int(np.ceil(halo_w)) + 3)
    core = _fill_polygon((h, w), pts)
    grown = cv2.dilate(core, cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (3, 3)), iterations=int(halo_w))
    halo = cv2.GaussianBlur(np.clip(grown - core, 0, 1), (0, 0), 0.8)
    # stress around the inclusion: a bright inner aura fading into a faint grey outer one
    outer = cv2.GaussianBlur(np.clip(cv2.dilate(grown, np.ones((3, 3), np.uint8), iterations=2) - grown, 0, 1),
                             (0, 0), 1.0)  # fmt: skip
    a_core, a_halo, a_outer = 0.95 * core, 0.45 * halo, 0.3 * outer
    alpha = np.clip(a_core + a_halo + a_outer, 0, 1)
    stone_col = np.array([55, 62, 72], np.float32)  # grey-brown refractory
    color = (a_core[..., None] * stone_col + (a_halo * 250.0 + a_outer * 120.0)[..., None]) / np.maximum(
        alpha[..., None], 1e-6
    )
    return DefectSprite(alpha.astype(np.float32), color.astype(np.float32))


def sprite_scratch(rng: np.random.Generator, s: float) -> DefectSprite:
    length = rng.uniform(25, 75) * s
    pts, (h, w) = _place(_smooth_curve(rng, length, bend=0.02, n=6), margin=4)
    # the abraded groove scatters: a dark line with a bright scatter line beside it, visible on the
    # bright body and on the dark shoulder alike
    line = _draw_polyline((h, w), pts, max(1.0, 1.1 * s))
    glint = np.clip(_draw_polyline((h, w), pts + np.array([1.2, 1.2]) * s, 1.0) - line, 0, 1)
    a_line, a_glint = 0.75 * line, 0.55 * glint
    alpha = np.clip(a_line + a_glint, 0, 1)
    v = (a_line * 95.0 + a_glint * 250.0) / np.maximum(a_line + a_glint, 1e-6)
    return DefectSprite(alpha.astype(np.float32), _gray(v.astype(np.float32)))


SPRITES: dict[str, Callable[[np.random.Generator, float], DefectSprite]] = {
    "oil": sprite_oil,
    "black spot": sprite_black_spot,
    "bubble": sprite_bubble,
    "plastering thread": sprite_plastering_thread,
    "quenched grain": sprite_quenched_grain,
    "crack": sprite_crack,
    "stone": sprite_stone,
    "scratch": sprite_scratch,
}

# Defects on the outer surface sit at the full radius; inclusions lie inside the wall.
SURFACE_CLASSES = frozenset({"oil", "scratch", "crack"})


def make_sprite(class_name: str, rng: np.random.Generator, size_scale: float = 1.0) -> DefectSprite:
    """Draw the head-on look of one defect of ``class_name``.

    Args:
        class_name: a vocabulary name with a look in ``SPRITES``, or a compositional type name
            (``rtvp_edge.rig.compositional``: e.g. ``"amber granular ring"``).
        rng: generator the shape, size and contrast are drawn from.
        size_scale: multiplies every length (image scale times the config's defect size scale).
    """
    fn = SPRITES.get(class_name)
    if fn is not None:
        sp = fn(rng, size_scale)
    else:
        from rtvp_edge.rig.compositional import draw_type, is_type_name

        if not is_type_name(class_name):
            raise ValueError(
                f"no rig look for defect class {class_name!r}; known: {sorted(SPRITES)} or a compositional "
                "type such as 'amber granular ring' (rtvp_edge.rig.compositional)"
            )
        sp, _ = draw_type(class_name, rng, size_scale)
    return lens_blur(sp)


def lens_blur(sp: DefectSprite) -> DefectSprite:
    """The optics are not perfectly sharp: every look is softened a little, as the lens would."""
    a = cv2.GaussianBlur(sp.alpha, (0, 0), _OPTICS_BLUR)
    c = cv2.GaussianBlur(sp.color * sp.alpha[..., None], (0, 0), _OPTICS_BLUR) / np.maximum(
        a[..., None], 1e-6
    )
    return DefectSprite(a.astype(np.float32), np.where(a[..., None] > 1e-6, c, sp.color).astype(np.float32))
