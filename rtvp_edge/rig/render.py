"""Procedural renderer of back-lit transparent glass containers with defects placed in 3-D.

One container = one part = six views. ``sample_container`` draws everything random about a container
(shape, tint, pose, defects) from a generator seeded by (seed, container index); ``render_view`` turns one
view of it into a BGR image plus exact ground-truth boxes. Per-view randomness (noise offset) comes from
a generator seeded by (seed, index, view), so any view can be rendered alone, in any thread, and is
identical to the same view rendered by ``render_container``.

Speed: the back-lit glass for each (shape, tint) is precomputed once (``_glass_template``), a frame is
a crop of it (pose shift), an exposure gain, a slice of a precomputed noise field, the two mould seams
and the defect sprites, all vectorised (see ``benchmarks/bench_rig.py``).
"""

from __future__ import annotations

import functools
import os
import threading
from dataclasses import dataclass, field

import cv2
import numpy as np
from pydantic import ConfigDict, Field, ValidationInfo, field_serializer, field_validator, model_validator

from rtvp_edge.messages import GroundTruthBox
from rtvp_edge.rig.compositional import draw_type, parse_type
from rtvp_edge.rig.defects import SPRITES, SURFACE_CLASSES, DefectSprite, lens_blur, make_sprite
from rtvp_edge.rig.geometry import (
    PROFILES,
    VIEW_ANGLES_DEG,
    ContainerProfile,
    container_profile,
    project_point,
)
from rtvp_edge.strict import StrictModel
from rtvp_edge.vocabulary import GLASS_DEFECTS, DefectClass
from rtvp_edge.yaml_config import load_yaml_model

GENERATOR_VERSION = "rig-1.1"  # bump whenever the rendered pixels or boxes change

# Glass transmission per unit wall path, BGR. Amber cuts blue, green cuts red and blue.
TINTS: dict[str, tuple[float, float, float]] = {
    "flint": (0.975, 0.985, 0.965),
    "amber": (0.22, 0.45, 0.78),
    "green": (0.66, 0.90, 0.68),
}

_PAD = 16  # template padding in px: the room for the per-view pose shift
_MAX_SHIFT = 12
_NOISE_MARGIN = 64


class RigConfig(StrictModel):
    """Everything that decides what the rig renders. Checked strictly when built (pydantic, also in Python).

    From a YAML file: ``load_rig_config`` (errors name the file, the line and the key).

    Args:
        seed: data set / line seed; a container is a pure function of (seed, container index).
        image_size: (height, width) of every camera image; the reference line is 820 x 700.
        defect_free_share: probability that a container has no defect at all.
        classes: defect vocabulary; every class needs a look in ``rtvp_edge.rig.defects.SPRITES``. In YAML:
            a list of vocabulary names (``[bubble, stone]``).
        class_weights: relative frequency per class (same order as ``classes``); None = uniform.
        shapes: container shapes drawn from (keys of ``geometry.PROFILES``).
        tints: glass tints drawn from (keys of ``TINTS``).
        mean_defects: mean number of defects on a defective container (1 + Poisson(mean - 1)).
        max_defects: upper bound of defects per container.
        defect_size_scale: multiplies every defect size (1.0: most boxes 10-40 px).
        large_defect_share: share of defects drawn 1.7-2.6 times larger (the medium-size tail).
        noise_sigma: camera read noise, grey levels (std).
        exposure_jitter: relative std of the per-view exposure gain.
        pose_jitter_px: max per-view shift of the container in the image (turntable wobble).
        turn_jitter_deg: std of the container's angle error per bank (turntable indexing error).
        view_angles_deg: view angle of each camera in the container frame.
    """

    model_config = ConfigDict(strict=True)

    seed: int = Field(0, ge=0)
    image_size: tuple[int, int] = (820, 700)
    defect_free_share: float = Field(0.3, ge=0.0, le=1.0)
    classes: tuple[DefectClass, ...] = GLASS_DEFECTS
    class_weights: tuple[float, ...] | None = None
    shapes: tuple[str, ...] = Field(("bottle", "jar", "vial", "wine"), min_length=1)
    tints: tuple[str, ...] = Field(("flint", "amber", "green"), min_length=1)
    max_defects: int = Field(6, ge=1)
    mean_defects: float = 2.0  # after max_defects: checked against it
    defect_size_scale: float = Field(1.0, ge=0.2, le=5.0)
    large_defect_share: float = Field(0.12, ge=0.0, le=1.0)
    noise_sigma: float = Field(2.0, ge=0.0, le=30.0)
    exposure_jitter: float = Field(0.03, ge=0.0, le=0.3)
    pose_jitter_px: float = Field(5.0, ge=0.0, le=_MAX_SHIFT)
    turn_jitter_deg: float = Field(2.0, ge=0.0, le=10.0)
    view_angles_deg: tuple[float, ...] = Field(VIEW_ANGLES_DEG, min_length=1)

    @model_validator(mode="before")
    @classmethod
    def _lists_fill_tuples(cls, data: object) -> object:
        # strict, but a mapping read from YAML/JSON has lists where the fields hold tuples
        if isinstance(data, dict):
            return {k: tuple(v) if isinstance(v, list) else v for k, v in data.items()}
        return data

    @field_validator("image_size")
    @classmethod
    def _image_size(cls, v: tuple[int, int]) -> tuple[int, int]:
        if min(v) < 64:
            raise ValueError(f"must be (height, width) of at least 64 pixels each, got {list(v)}")
        return v

    @field_validator("classes", mode="plain")
    @classmethod
    def _classes(cls, v: object) -> tuple[DefectClass, ...]:
        """Vocabulary entries, or their names (a YAML file lists names): the named glass classes and the
        compositional types (``rtvp_edge.rig.compositional``, e.g. ``amber granular ring``)."""
        from rtvp_edge.rig.compositional import is_type_name, parse_type
        from rtvp_edge.rig.defects import SPRITES

        by_name = {c.name: c for c in GLASS_DEFECTS}
        if isinstance(v, (str, bytes)) or not isinstance(v, (list, tuple)):
            raise ValueError(f"expected a list of class names from {sorted(by_name)}, got {v!r}")
        out = []
        for c in v:
            if isinstance(c, str) and c in by_name:
                c = by_name[c]
            elif isinstance(c, str) and is_type_name(c):
                c = parse_type(c).defect_class()
            if not isinstance(c, DefectClass):
                raise ValueError(
                    f"{c!r} is not a glass defect class; known: {sorted(by_name)}, or a compositional type "
                    "of attribute words such as 'amber granular ring' (docs/rig.md)"
                )
            if c.name not in SPRITES and not is_type_name(c.name):
                raise ValueError(f"class {c.name!r} has no rig look; known: {sorted(SPRITES)}")
            out.append(c)
        if not out:
            raise ValueError("must not be empty")
        names = [c.name for c in out]
        dup = sorted({n for n in names if names.count(n) > 1})
        if dup:
            raise ValueError(f"classes listed twice: {dup}")
        return tuple(out)

    @field_serializer("classes")
    def _class_names(self, v: tuple[DefectClass, ...]) -> list[str]:
        return [c.name for c in v]  # as a rig file lists them (model_dump -> RigConfig round trip)

    @field_validator("shapes")
    @classmethod
    def _shapes(cls, v: tuple[str, ...]) -> tuple[str, ...]:
        for shape in v:
            if shape not in PROFILES:
                raise ValueError(f"unknown shape {shape!r}; known: {sorted(PROFILES)}")
        return v

    @field_validator("tints")
    @classmethod
    def _tints(cls, v: tuple[str, ...]) -> tuple[str, ...]:
        for tint in v:
            if tint not in TINTS:
                raise ValueError(f"unknown tint {tint!r}; known: {sorted(TINTS)}")
        return v

    @model_validator(mode="after")
    def _consistent(self) -> RigConfig:
        w = self.class_weights
        if w is not None and (len(w) != len(self.classes) or min(w) < 0 or sum(w) <= 0):
            raise ValueError(
                f"class_weights: needs one non-negative weight per class ({len(self.classes)}), not all zero; got {list(w)}"
            )
        return self

    @field_validator("mean_defects")
    @classmethod
    def _mean_defects(cls, v: float, info: ValidationInfo) -> float:
        most = info.data.get("max_defects")
        if most is not None and not 1.0 <= v <= most:
            raise ValueError(f"must be in [1, max_defects={most}]")
        return v

    @property
    def n_views(self) -> int:
        return len(self.view_angles_deg)


def load_rig_config(path: str | os.PathLike) -> RigConfig:
    """Read a rig file (YAML, the ``RigConfig`` fields; ``classes`` as names), e.g.::

        seed: 3
        classes: [bubble, stone, black spot]
        shapes: [jar, vial]
        defect_free_share: 0.2

    Raises:
        ConfigError: the file is missing, not YAML, or does not match; every problem as
            ``<file>:<line>: <key>: <message>``.
    """
    return load_yaml_model(RigConfig, path, what="rig file", schema_doc="docs/rig.md")


@dataclass(frozen=True)
class Defect3D:
    """A defect on the container, in the container frame.

    Args:
        defect_id: id within the container (stable across views; ``GroundTruthBox.defect_id``).
        class_name: vocabulary name.
        theta_deg: angle around the axis, degrees.
        row: image row of its centre at nominal pose.
        depth: distance from the axis as a fraction of the local radius (1.0: outer surface).
        sprite: its head-on look.
    """

    defect_id: int
    class_name: str
    theta_deg: float
    row: float
    depth: float
    sprite: DefectSprite = field(repr=False)


@dataclass(frozen=True)
class ContainerSpec:
    """Everything random about one container (drawn by ``sample_container``).

    Args:
        index: container index (the gate trigger sequence on the simulated line).
        shape, tint: keys of ``geometry.PROFILES`` and ``TINTS``.
        defects: its defects (empty: a good container).
        bank_offset_deg: per view, the container's angle error (one value per bank).
        shift_px: per view (dx, dy) integer pose shift of the container in the image.
        gain: per view exposure gain.
        seam_deg: angle of the first mould seam (the second is opposite).
    """

    index: int
    shape: str
    tint: str
    defects: tuple[Defect3D, ...]
    bank_offset_deg: tuple[float, ...]
    shift_px: tuple[tuple[int, int], ...]
    gain: tuple[float, ...]
    seam_deg: float

    @property
    def part_id(self) -> str:
        return part_id_for(self.index)


def part_id_for(index: int) -> str:
    """The part id of container ``index`` (contract: ``C`` + 6 digits)."""
    return f"C{index:06d}"


@dataclass(frozen=True)
class ContainerViews:
    """The rendered views of one container.

    ``views[v]`` is ``(image (H, W, 3) uint8 BGR, tuple[GroundTruthBox, ...])``; the object iterates and
    indexes like that tuple of pairs.
    """

    index: int
    spec: ContainerSpec = field(repr=False)
    views: tuple[tuple[np.ndarray, tuple[GroundTruthBox, ...]], ...] = field(repr=False)

    @property
    def part_id(self) -> str:
        return part_id_for(self.index)

    def __len__(self) -> int:
        return len(self.views)

    def __iter__(self):
        return iter(self.views)

    def __getitem__(self, i: int) -> tuple[np.ndarray, tuple[GroundTruthBox, ...]]:
        return self.views[i]


def container_rng(seed: int, index: int) -> np.random.Generator:
    """The generator a container is drawn from: seeded from both the seed and the index."""
    return np.random.default_rng([seed, index, 0x5EED])


def view_rng(seed: int, index: int, view: int) -> np.random.Generator:
    return np.random.default_rng([seed, index, view + 1, 0x71E])


def bank_of(view: int, n_views: int) -> int:
    """0 for the views before the turn, 1 after (first half / second half of the cameras)."""
    return 0 if view < (n_views + 1) // 2 else 1


def sample_container(config: RigConfig, index: int) -> ContainerSpec:
    """Draw container ``index`` of ``config``: deterministic for (config.seed, index)."""
    if index < 0:
        raise ValueError(f"container index must be >= 0, got {index}")
    rng = container_rng(config.seed, index)
    shape = config.shapes[int(rng.integers(len(config.shapes)))]
    tint = config.tints[int(rng.integers(len(config.tints)))]
    prof = container_profile(shape, config.image_size)
    nv = config.n_views
    banks = rng.normal(0, config.turn_jitter_deg, 2)
    bank_offset = tuple(float(banks[bank_of(v, nv)]) for v in range(nv))
    dy = int(round(rng.uniform(-0.6, 0.6) * config.pose_jitter_px))
    shift = tuple((int(round(rng.uniform(-1, 1) * config.pose_jitter_px)), dy) for _ in range(nv))
    gain = tuple(float(g) for g in 1.0 + rng.normal(0, config.exposure_jitter, nv))
    seam = float(rng.uniform(0, 180))
    defects: list[Defect3D] = []
    if rng.random() >= config.defect_free_share:
        n = min(config.max_defects, 1 + int(rng.poisson(config.mean_defects - 1.0)))
        w = (
            np.ones(len(config.classes))
            if config.class_weights is None
            else np.asarray(config.class_weights, float)
        )
        w = w / w.sum()
        for k in range(n):
            cls = config.classes[int(rng.choice(len(config.classes), p=w))].name
            theta = float(rng.uniform(0, 360))
            row = float(rng.choice(prof.inspection_rows)) + float(rng.uniform(-0.5, 0.5))
            if cls not in SPRITES:  # a compositional type: its attributes decide size and depth
                defects.append(_compositional_defect(config, prof, rng, k, cls, theta, row))
                continue
            depth = 1.0 if cls in SURFACE_CLASSES else float(rng.uniform(0.95, 0.99))
            # a tail of larger defects (long cracks, big smears) next to the dominant small ones
            big = config.large_defect_share > 0 and rng.random() < config.large_defect_share
            size = prof.scale * config.defect_size_scale * (float(rng.uniform(1.7, 2.6)) if big else 1.0)
            sprite = make_sprite(cls, rng, size)
            defects.append(Defect3D(k, cls, theta, row, depth, sprite))
    return ContainerSpec(index, shape, tint, tuple(defects), bank_offset, shift, gain, seam)


def _compositional_defect(
    config: RigConfig,
    prof: ContainerProfile,
    rng: np.random.Generator,
    k: int,
    cls: str,
    theta: float,
    row: float,
) -> Defect3D:
    """A defect of a compositional type: a type with a size is drawn at it (no random large tail); one
    without draws the rig's tail like a named class; the depth follows the type's (or is drawn)."""
    t = parse_type(cls)
    size = prof.scale * config.defect_size_scale
    if t.size is None and config.large_defect_share > 0 and rng.random() < config.large_defect_share:
        size *= float(rng.uniform(1.7, 2.6))
    sprite, inside = draw_type(cls, rng, size)
    depth = float(rng.uniform(0.95, 0.99)) if inside else 1.0
    return Defect3D(k, cls, theta, row, depth, lens_blur(sprite))


# ---------------------------------------------------------------------------------------------------------
# Back-lit glass, precomputed per (shape, tint, image size)


@functools.lru_cache(maxsize=64)
def _glass_template(shape: str, tint: str, image_size: tuple[int, int]) -> np.ndarray:
    """(H + 2*PAD, W + 2*PAD, 3) float32 BGR image of the empty container in front of the back-light."""
    h, w = image_size
    prof = container_profile(shape, image_size)
    ph, pw = h + 2 * _PAD, w + 2 * _PAD
    yy, xx = np.mgrid[0:ph, 0:pw].astype(np.float32)
    yy -= _PAD
    xx -= _PAD
    # Back-light panel: bright, slightly cool, falling off towards the corners (vignetting).
    fall = 1.0 - 0.08 * ((xx - w / 2) / (w / 2)) ** 2 - 0.06 * ((yy - h / 2) / (h / 2)) ** 2
    panel = np.array([238.0, 234.0, 229.0], np.float32)
    img = fall[..., None] * panel  # (PH, PW, 3)

    radius = np.zeros(ph, np.float32)
    radius[_PAD : _PAD + h] = prof.radius
    r = radius[:, None]  # (PH, 1)
    inside = (r > 0) & (np.abs(xx - prof.cx) < r)
    s = np.where(inside, (xx - prof.cx) / np.maximum(r, 1.0), 0.0)  # lateral coordinate in [-1, 1]
    a = np.abs(s)
    # Wall path length through two walls grows towards the silhouette: absorption (tint) grows with it.
    path = np.minimum(1.0 / np.sqrt(np.maximum(1.0 - s * s, 0.03)), 5.0)
    tint_v = np.asarray(TINTS[tint], np.float32)
    trans = tint_v[None, None, :] ** (0.9 * path[..., None])  # (PH, PW, 3)
    # Refraction sends the light at the silhouette away from the lens: the dark edge bands.
    edge = np.clip((a - 0.84) / 0.12, 0, 1)
    edge = edge * edge * (3 - 2 * edge)
    factor = (1.0 - 0.82 * edge) * (1.0 + 0.05 * np.exp(-((s / 0.3) ** 2)))
    # Slope of the wall (shoulder, heel, finish) bends light away too: darker where the radius changes.
    # (smoothed along the rows: the profile is piecewise linear, the glass is not)
    sig = 10.0 * prof.scale
    kk = np.exp(-0.5 * (np.arange(-int(3 * sig), int(3 * sig) + 1) / sig) ** 2)
    slope = np.convolve(np.abs(np.gradient(radius)), kk / kk.sum(), mode="same")[:, None]
    factor *= 1.0 - np.clip(1.6 * slope, 0, 0.55)
    rows = np.arange(ph)[:, None] - _PAD
    heel = np.clip((prof.base_row - rows) / (18.0 * prof.scale), 0, 1)  # thick base glass
    factor *= 0.45 + 0.55 * heel
    # the neck and finish are thick-walled: darker, fading in over a few rows below the neck
    neck = np.clip((prof.finish_row - rows) / (20.0 * prof.scale) + 0.5, 0, 1)
    factor *= 1.0 - 0.2 * neck
    glass = img * trans * factor[..., None]
    # Specular streaks of the light source: narrow bright vertical bands fixed relative to the camera.
    spec = 55.0 * np.exp(-(((s + 0.62) / 0.035) ** 2)) + 25.0 * np.exp(-(((s - 0.46) / 0.05) ** 2))
    spec += 40.0 * np.exp(-(((a - 0.975) / 0.012) ** 2))  # thin bright line inside the dark edge
    glass = glass + spec[..., None]
    out = np.where(inside[..., None], glass, img)
    # Turntable plate under the container: dark grey, slightly brighter at its front edge.
    plate = rows > prof.base_row
    plate_v = (55.0 + 25.0 * np.exp(-(((rows - prof.base_row - 3) / 3.0) ** 2))).astype(np.float32)
    out = np.where(plate[..., None], np.broadcast_to(plate_v[..., None], out.shape), out)
    return np.ascontiguousarray(out.astype(np.float32))


@functools.lru_cache(maxsize=4)
def _noise_field(image_size: tuple[int, int]) -> np.ndarray:
    """A fixed unit-variance Gaussian field, larger than a frame; each view takes a random window of it."""
    h, w = image_size
    rng = np.random.default_rng(0x0015E)
    return rng.standard_normal((h + _NOISE_MARGIN, w + _NOISE_MARGIN, 3), dtype=np.float32)


_template_lock = threading.Lock()


def _template(shape: str, tint: str, image_size: tuple[int, int]) -> np.ndarray:
    # lru_cache is thread-safe but may compute twice in parallel; a lock keeps the first frame cheap.
    with _template_lock:
        return _glass_template(shape, tint, image_size)


def warm_up(config: RigConfig) -> None:
    """Precompute every (shape, tint) template and the noise field (a few seconds on one core)."""
    for sh in config.shapes:
        for t in config.tints:
            _template(sh, t, config.image_size)
    _noise_field(config.image_size)


# ---------------------------------------------------------------------------------------------------------
# One view


def view_angle_deg(config: RigConfig, spec: ContainerSpec, view: int) -> float:
    """The camera's view angle in the container frame for ``view``, the container's angle error included."""
    return config.view_angles_deg[view] - spec.bank_offset_deg[view]


def project_defect(
    config: RigConfig, spec: ContainerSpec, defect: Defect3D, view: int
) -> tuple[float, float, float]:
    """Where the centre of ``defect`` lands in ``view``: (x, y, cos_a), see ``geometry.project_point``."""
    prof = container_profile(spec.shape, config.image_size)
    r_local = float(prof.radius[int(round(min(max(defect.row, 0), len(prof.radius) - 1)))])
    dx, dy = spec.shift_px[view]
    return project_point(
        defect.theta_deg,
        defect.row + dy,
        r_local * defect.depth,
        view_angle_deg(config, spec, view),
        prof.cx + dx,
    )


# Visibility of a defect against the angle between the wall normal and the line of sight.
_VIS_COS_MIN = 0.10  # below: grazing the silhouette, not visible
_VIS_COS_FULL = 0.35  # above: full contrast
_CLEAR_COS = 0.45  # "clear": within ~63 degrees of head-on
_CLEAR_MIN_SIDE = 4.0
_CLEAR_MIN_AREA = 48.0
_BOX_MIN_CHANGE = 10.0  # grey levels: a pixel changed less than this is not part of the defect's box


def _draw_defect(
    out: np.ndarray,
    prof: ContainerProfile,
    defect: Defect3D,
    x: float,
    y: float,
    cos_a: float,
    dx: int,
    dy: int,
) -> tuple[float, float, float, float] | None:
    """Blend the foreshortened sprite into ``out`` (H, W, 3 float32) at (x, y); return its box or None."""
    vis = min(1.0, (cos_a - _VIS_COS_MIN) / (_VIS_COS_FULL - _VIS_COS_MIN))
    if vis <= 0:
        return None
    a0, c0 = defect.sprite.alpha, defect.sprite.color
    sh, sw = a0.shape
    nw = max(1, int(round(sw * cos_a)))
    if nw != sw:  # foreshortening across the axis: the wall turns away from the camera
        a0 = cv2.resize(a0, (nw, sh), interpolation=cv2.INTER_AREA)
        c0 = cv2.resize(c0, (nw, sh), interpolation=cv2.INTER_AREA)
    x0 = int(round(x - (nw - 1) / 2.0))
    y0 = int(round(y - (sh - 1) / 2.0))
    H, W = out.shape[:2]
    ix0, iy0, ix1, iy1 = max(x0, 0), max(y0, 0), min(x0 + nw, W), min(y0 + sh, H)
    if ix1 <= ix0 or iy1 <= iy0:
        return None
    a = a0[iy0 - y0 : iy1 - y0, ix0 - x0 : ix1 - x0] * vis
    c = c0[iy0 - y0 : iy1 - y0, ix0 - x0 : ix1 - x0]
    # Only on glass: clip to the silhouette of this view (the sprite may overhang the edge).
    rows = np.arange(iy0, iy1) - dy
    rr = prof.radius[np.clip(rows, 0, len(prof.radius) - 1)] * ((rows >= 0) & (rows < len(prof.radius)))
    cols = np.arange(ix0, ix1) - dx - prof.cx
    a = a * (np.abs(cols)[None, :] < rr[:, None] - 1.0)
    region = out[iy0:iy1, ix0:ix1]
    a3 = a[..., None]
    # The box holds every pixel the defect visibly changes (>= _BOX_MIN_CHANGE grey levels in a channel).
    change = (a3 * np.abs(c - region)).max(axis=2)
    region *= 1.0 - a3
    region += c * a3
    ys, xs = np.nonzero(change >= _BOX_MIN_CHANGE)
    if len(xs) == 0:
        return None
    return (
        float(ix0 + xs.min()),
        float(iy0 + ys.min()),
        float(ix0 + xs.max() + 1),
        float(iy0 + ys.max() + 1),
    )


def render_view(
    config: RigConfig, spec: ContainerSpec, view: int
) -> tuple[np.ndarray, tuple[GroundTruthBox, ...]]:
    """Render view ``view`` of container ``spec``.

    Args:
        config: the rig configuration ``spec`` was sampled with.
        spec: the container (``sample_container``).
        view: view index 0..n_views-1.
    Returns:
        (image (H, W, 3) uint8 BGR, ground truth: one ``GroundTruthBox`` per defect visible in this view,
        box (x1, y1, x2, y2) in image pixels, x2/y2 exclusive pixel edges).
    """
    if not 0 <= view < config.n_views:
        raise ValueError(f"view must be in 0..{config.n_views - 1}, got {view}")
    h, w = config.image_size
    rng = view_rng(config.seed, spec.index, view)
    prof = container_profile(spec.shape, config.image_size)
    dx, dy = spec.shift_px[view]
    tpl = _template(spec.shape, spec.tint, config.image_size)
    crop = tpl[_PAD - dy : _PAD - dy + h, _PAD - dx : _PAD - dx + w]
    noise = _noise_field(config.image_size)
    ox, oy = int(rng.integers(_NOISE_MARGIN)), int(rng.integers(_NOISE_MARGIN))
    # out = gain * glass + sigma * noise, in one pass
    out = cv2.scaleAdd(noise[oy : oy + h, ox : ox + w], config.noise_sigma, crop * spec.gain[view])

    # Two mould seams (a two-piece mould): thin dark lines following the profile, on the near wall only.
    phi = view_angle_deg(config, spec, view)
    body = np.arange(max(prof.top_row, 0), min(prof.base_row, h - 1 - dy))
    body = body[body + dy >= 0]
    for seam in (spec.seam_deg, spec.seam_deg + 180.0):
        a = np.deg2rad(seam - phi)
        if np.cos(a) <= 0.05:
            continue
        xs = prof.cx + dx + prof.radius[body] * np.sin(a)
        xi = np.round(xs).astype(np.int64)
        ok = (xi >= 1) & (xi < w - 1) & (prof.radius[body] > 2)
        yi = body[ok] + dy
        xi = xi[ok]
        strength = 0.22 * min(1.0, float(np.cos(a)) * 3)
        out[yi, xi] *= 1.0 - strength
        out[yi, xi + 1] *= 1.0 - strength * 0.4
        out[yi, xi - 1] *= 1.0 + strength * 0.3

    gts: list[GroundTruthBox] = []
    for d in spec.defects:
        x, y, cos_a = project_defect(config, spec, d, view)
        box = _draw_defect(out, prof, d, x, y, cos_a, dx, dy)
        if box is None:
            continue
        bw, bh = box[2] - box[0], box[3] - box[1]
        clear = cos_a >= _CLEAR_COS and min(bw, bh) >= _CLEAR_MIN_SIDE and bw * bh >= _CLEAR_MIN_AREA
        gts.append(GroundTruthBox(d.class_name, box, bool(clear), d.defect_id))
    img = np.empty((h, w, 3), np.uint8)
    np.clip(out, 0, 255, out=out)
    img[...] = out  # float -> uint8 truncates; the noise dithers it
    return img, tuple(gts)


def render_container(config: RigConfig, container_index: int) -> ContainerViews:
    """Render all views of container ``container_index`` (deterministic for (config.seed, index)).

    Returns:
        ``ContainerViews``: ``views[v] = (image (H, W, 3) uint8 BGR, tuple[GroundTruthBox])``; views 0-2
        are the left bank, 3-5 the right bank after the 180 degree turn.
    """
    spec = sample_container(config, container_index)
    views = tuple(render_view(config, spec, v) for v in range(config.n_views))
    return ContainerViews(container_index, spec, views)
