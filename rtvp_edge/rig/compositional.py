"""Compositional defect types: a defect described by the visual attributes an inspector names.

Next to the eight named glass classes (``rtvp_edge.vocabulary.GLASS_DEFECTS``), the rig draws a family of
types, each one combination of

- ``shape``: spot, streak, ring, cluster, line
- ``tone``: dark, white, clear (refracting), amber
- ``texture``: smooth, granular
- ``size`` (optional): small, large
- ``depth`` (optional): surface, inside

A type is named by its attributes, in a fixed order (``"small amber granular ring inside"``,
``"dark smooth spot"``), and its text prompt is built from the same words (``"a small amber granular ring
inside the glass"``). A name lists its words in any order (``parse_type("ring granular amber")``); an
attribute left out varies from defect to defect (a type without a size is drawn small with the rig's usual
tail of large ones; one without a depth lies on the surface or inside, half and half).

The look is composed from one drawing primitive per attribute: the shape gives a footprint (an opacity
mask: a filled disc, a broad soft stroke, a hollow annulus, separate specks, a thin long line), the texture
breaks it into grains or leaves it whole, the tone turns it into opacity and colour (near-opaque grey, white
body with a scattering halo, a refracting rim with a bright core and glint, translucent amber), the size
scales it, and the depth softens it when it lies inside the wall. The renderer then places, foreshortens and
labels it like any named class (``rtvp_edge.rig.render``).

``CompositionalSplit`` is the held-out protocol over such types (``rtvp-data generate --protocol
compositional``): the ``seen`` types are trained on; ``unseen_combination`` types recombine attribute values
that all occur in seen types; ``unseen_type`` types carry at least one attribute value no seen type has.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np
from pydantic import ValidationInfo, field_validator, model_validator

from rtvp_edge.strict import StrictModel
from rtvp_edge.vocabulary import DefectClass

# The attribute vocabulary, in name order (size first, depth last).
SHAPES = ("spot", "streak", "ring", "cluster", "line")
TONES = ("dark", "white", "clear", "amber")
TEXTURES = ("smooth", "granular")
SIZES = ("small", "large")
DEPTHS = ("surface", "inside")
ATTRIBUTES: dict[str, tuple[str, ...]] = {
    "size": SIZES,
    "tone": TONES,
    "texture": TEXTURES,
    "shape": SHAPES,
    "depth": DEPTHS,
}
REQUIRED = ("tone", "texture", "shape")
GROUPS = ("seen", "unseen_combination", "unseen_type")

_WORD_ATTRIBUTE = {v: a for a, values in ATTRIBUTES.items() for v in values}
# words of the prompt where they differ from the name
_TONE_WORDS = {"clear": "clear refracting"}
_DEPTH_NAME = {"surface": "on surface", "inside": "inside"}
_DEPTH_PLACE = {
    "surface": "on the glass surface",
    "inside": "inside the glass",
    None: "on the glass container",
}

LARGE_SCALE = (1.9, 2.5)  # a "large" type is drawn this many times the small size
INSIDE_SOFTEN = 0.9  # px, extra blur of a type that lies inside the wall (seen through glass)


@dataclass(frozen=True)
class DefectType:
    """One compositional type; ``size``/``depth`` None: drawn per defect."""

    shape: str
    tone: str
    texture: str
    size: str | None = None
    depth: str | None = None

    def __post_init__(self) -> None:
        for attr, values in ATTRIBUTES.items():
            v = getattr(self, attr)
            if v is None and attr in REQUIRED:
                raise ValueError(f"defect type needs a {attr} (one of {', '.join(values)})")
            if v is not None and v not in values:
                raise ValueError(f"{attr} {v!r} is not one of {', '.join(values)}")

    @property
    def attributes(self) -> dict[str, str]:
        """The attribute values this type fixes, in name order."""
        return {a: getattr(self, a) for a in ATTRIBUTES if getattr(self, a) is not None}

    @property
    def name(self) -> str:
        """``[size] tone texture shape [inside | on surface]``, e.g. ``"small amber granular ring inside"``."""
        words = [self.size, self.tone, self.texture, self.shape]
        if self.depth is not None:
            words.append(_DEPTH_NAME[self.depth])
        return " ".join(w for w in words if w)

    @property
    def prompt(self) -> str:
        """E.g. ``"a small amber granular ring inside the glass"``, ``"a clear refracting smooth spot on the
        glass container"`` (no depth given)."""
        words = [self.size, _TONE_WORDS.get(self.tone, self.tone), self.texture, self.shape]
        body = " ".join(w for w in words if w)
        article = "an" if body[0] in "aeiou" else "a"
        return f"{article} {body} {_DEPTH_PLACE[self.depth]}"

    def defect_class(self, seen: bool = True) -> DefectClass:
        """The vocabulary entry of this type (name, prompt built from the attributes, seen flag)."""
        return DefectClass(self.name, self.prompt, seen)


def parse_type(text: str) -> DefectType:
    """The type named by ``text``: its attribute words in any order (``"on surface"`` or ``"surface"`` for the
    surface), e.g. ``"amber granular ring"``, ``"large dark smooth line on surface"``.

    Raises:
        ValueError: an unknown word, two values of one attribute, or a missing shape / tone / texture; the
            message names the text and the word.
    """
    if not isinstance(text, str):
        raise ValueError(f"a defect type is a string of attribute words, got {text!r}")
    words = text.lower().replace(" on surface", " surface").split()
    found: dict[str, str] = {}
    for w in words:
        attr = _WORD_ATTRIBUTE.get(w)
        if attr is None:
            known = "; ".join(f"{a}: {', '.join(v)}" for a, v in ATTRIBUTES.items())
            raise ValueError(f"defect type {text!r}: unknown word {w!r} (attribute words are {known})")
        if attr in found:
            raise ValueError(f"defect type {text!r}: two {attr} values, {found[attr]!r} and {w!r}")
        found[attr] = w
    missing = [a for a in REQUIRED if a not in found]
    if missing:
        need = "; ".join(f"a {a} ({', '.join(ATTRIBUTES[a])})" for a in missing)
        raise ValueError(f"defect type {text!r}: needs {need}")
    return DefectType(**found)


def is_type_name(text: object) -> bool:
    """True when ``text`` names a compositional type (``parse_type`` would accept it)."""
    try:
        parse_type(text)  # type: ignore[arg-type]
    except ValueError:
        return False
    return True


# ---------------------------------------------------------------------------------------------------------
# Drawing primitives. Each works on sprite pixels; ``s`` is the length scale (image scale x size).


def _disc(yy: np.ndarray, xx: np.ndarray, ax: float, ay: float, edge: float = 0.6) -> np.ndarray:
    """Filled ellipse with a soft edge ``edge`` px wide; (h, w) float32 in [0, 1]."""
    r = np.sqrt((xx / ax) ** 2 + (yy / ay) ** 2) * min(ax, ay)  # ~px from the centre
    return np.clip((min(ax, ay) - r) / edge + 0.5, 0, 1).astype(np.float32)


def _canvas_grid(half_w: float, half_h: float, margin: int) -> tuple[np.ndarray, np.ndarray]:
    from rtvp_edge.rig.defects import _grid

    return _grid(2 * (int(np.ceil(half_h)) + margin) + 1, 2 * (int(np.ceil(half_w)) + margin) + 1)


_MARGIN = 5  # px around every footprint: room for halos, glints and blur


def shape_spot(rng: np.random.Generator, s: float) -> np.ndarray:
    """A filled round blob, 9-16 px across at s = 1."""
    d = rng.uniform(9, 16) * s
    ax, ay = d / 2 * rng.uniform(0.85, 1.15), d / 2 * rng.uniform(0.85, 1.15)
    yy, xx = _canvas_grid(ax, ay, _MARGIN)
    return _disc(yy, xx, ax, ay)


def shape_ring(rng: np.random.Generator, s: float) -> np.ndarray:
    """A hollow annulus, 14-24 px across, the band about a quarter of the radius wide: the centre is empty."""
    r_out = rng.uniform(7, 12) * s
    band = max(1.6 * s, 0.26 * r_out)
    ecc = rng.uniform(0.85, 1.15)
    yy, xx = _canvas_grid(r_out, r_out * ecc, _MARGIN)
    rr = np.sqrt(xx**2 + (yy / ecc) ** 2)
    mid = r_out - band / 2
    return np.clip((band / 2 - np.abs(rr - mid)) / 0.6 + 0.5, 0, 1).astype(np.float32)


def shape_streak(rng: np.random.Generator, s: float) -> np.ndarray:
    """A short broad soft stroke (a drag mark): 16-30 px long, 4-6 px wide, soft across."""
    from rtvp_edge.rig.defects import _draw_polyline, _place, _smooth_curve

    length = rng.uniform(16, 30) * s
    thick = rng.uniform(4.0, 6.0) * s
    pts, (h, w) = _place(_smooth_curve(rng, length, bend=0.08, n=8), margin=int(np.ceil(thick)) + _MARGIN)
    body = _draw_polyline((h, w), pts, thick)
    return np.clip(cv2.GaussianBlur(body, (0, 0), 0.22 * thick) * 1.25, 0, 1).astype(np.float32)


def shape_line(rng: np.random.Generator, s: float) -> np.ndarray:
    """A thin, long, nearly straight crisp line: 30-65 px long, 1.5-2 px wide."""
    from rtvp_edge.rig.defects import _draw_polyline, _place, _smooth_curve

    length = rng.uniform(30, 65) * s
    pts, (h, w) = _place(_smooth_curve(rng, length, bend=0.015, n=6), margin=_MARGIN)
    return _draw_polyline((h, w), pts, max(1.5, rng.uniform(1.5, 2.0) * min(s, 1.5)))


def shape_cluster(rng: np.random.Generator, s: float) -> np.ndarray:
    """Five to nine separate small specks (3-5 px) scattered over 14-26 px."""
    rc = rng.uniform(7, 13) * s
    yy, xx = _canvas_grid(rc + 3 * s, rc + 3 * s, _MARGIN)
    out = np.zeros(yy.shape, np.float32)
    n = int(rng.integers(5, 10))
    placed: list[tuple[float, float, float]] = []
    for _ in range(n * 8):  # rejection sampling keeps the specks apart (a cluster, not a blob)
        if len(placed) == n:
            break
        x0, y0 = rng.uniform(-rc, rc, 2)
        if x0 * x0 + y0 * y0 > rc * rc:
            continue
        r0 = rng.uniform(1.5, 2.5) * max(s, 0.8)
        if all((x0 - x1) ** 2 + (y0 - y1) ** 2 > (r0 + r1 + 1.5) ** 2 for x1, y1, r1 in placed):
            placed.append((x0, y0, r0))
    for x0, y0, r0 in placed:
        out = np.maximum(out, _disc(yy - y0, xx - x0, r0, r0, edge=0.5))
    return out


SHAPE_PRIMITIVES = {
    "spot": shape_spot,
    "streak": shape_streak,
    "ring": shape_ring,
    "cluster": shape_cluster,
    "line": shape_line,
}


def texture_granular(footprint: np.ndarray, rng: np.random.Generator, s: float) -> np.ndarray:
    """Break a footprint into grains: dense specks about 1.5-3 px across with gaps between them."""
    h, w = footprint.shape
    seeds = (rng.random((h, w)) < 0.22).astype(np.float32)
    grains = cv2.GaussianBlur(seeds, (0, 0), 0.75 * max(s, 0.8))
    grains = np.clip((grains - 0.10) / 0.18, 0, 1)  # crisp specks, empty gaps
    return (footprint * (0.12 + 0.88 * grains)).astype(np.float32)


def texture_smooth(footprint: np.ndarray, rng: np.random.Generator, s: float) -> np.ndarray:
    return footprint


TEXTURE_PRIMITIVES = {"smooth": texture_smooth, "granular": texture_granular}


def _grow(mask: np.ndarray, px: int) -> np.ndarray:
    return cv2.dilate(mask, cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * px + 1, 2 * px + 1)))


def _blend(layers: list[tuple[np.ndarray, np.ndarray]]) -> tuple[np.ndarray, np.ndarray]:
    """Sum of (alpha (h, w), colour (3,) or (h, w, 3)) layers -> (alpha, colour weighted by alpha)."""
    alpha = np.clip(sum(a for a, _ in layers), 0, 1).astype(np.float32)
    total = sum(a for a, _ in layers)
    color = sum(a[..., None] * np.broadcast_to(c, (*a.shape, 3)) for a, c in layers) / np.maximum(
        total[..., None], 1e-6
    )
    return alpha, color.astype(np.float32)


def tone_dark(fp: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Nearly opaque grey-black (an absorbing inclusion)."""
    v = rng.uniform(18, 40)
    return _blend([(fp * rng.uniform(0.85, 0.95), np.array([v, v, v], np.float32))])


def tone_white(fp: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """A white scattering body; the light it scatters away darkens a thin halo around it (else white on the
    bright back-light would hardly show)."""
    halo = np.clip(cv2.GaussianBlur(_grow(fp, 2), (0, 0), 0.8) - fp, 0, 1)
    return _blend([(0.92 * fp, np.array([255.0, 255.0, 255.0], np.float32)), (0.5 * halo, np.full(3, 105.0))])


def tone_clear(fp: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Clear glass that refracts, a lens in back-light: its outline bends the light away (dark edges, on both
    sides of a thin body), its inside lets it through brighter than the wall, a glint where it focuses."""
    soft = cv2.GaussianBlur(fp, (0, 0), 0.7)
    gy, gx = np.gradient(soft)
    edge = np.sqrt(gx * gx + gy * gy)
    edge = np.clip(edge / max(float(edge.max()), 1e-6) * 1.6, 0, 1)  # the boundary, whatever the body width
    body = np.clip(fp - edge, 0, 1)
    shifted = np.roll(np.roll(fp, -1, axis=0), -1, axis=1)  # the glint sits on the edge towards the light
    glint = np.clip(shifted - soft, 0, 1) * edge
    return _blend(
        [
            (0.85 * edge, np.full(3, 50.0, np.float32)),
            (0.7 * body, np.full(3, 255.0, np.float32)),
            (0.8 * glint, np.full(3, 255.0, np.float32)),
        ]
    )


def tone_amber(fp: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Translucent amber (an iron-sulphur cord or a tinted inclusion): orange-brown, darker at its core."""
    # BGR; dark enough to show on amber glass too (an amber inclusion in amber glass is the hard case)
    core = np.array([rng.uniform(8, 20), rng.uniform(50, 68), rng.uniform(110, 135)], np.float32)
    rim = np.array([rng.uniform(25, 40), rng.uniform(100, 122), rng.uniform(180, 210)], np.float32)
    color = rim + (core - rim) * fp[..., None]
    return fp * rng.uniform(0.75, 0.88), color.astype(np.float32)


TONE_PRIMITIVES = {"dark": tone_dark, "white": tone_white, "clear": tone_clear, "amber": tone_amber}


def compose_sprite(defect_type: DefectType, rng: np.random.Generator, s: float, inside: bool):
    """The head-on look of one defect of ``defect_type`` (before the rig's lens blur).

    Args:
        defect_type: the type; its ``size`` (when given) scales ``s``.
        rng: generator every random choice is drawn from (shape, grains, colour).
        s: length scale (image scale x the rig's defect size scale).
        inside: the defect lies inside the wall: drawn softer and a little fainter.
    Returns:
        ``rtvp_edge.rig.defects.DefectSprite``.
    """
    from rtvp_edge.rig.defects import DefectSprite

    if defect_type.size == "large":
        s = s * rng.uniform(*LARGE_SCALE)
    fp = SHAPE_PRIMITIVES[defect_type.shape](rng, s)
    fp = TEXTURE_PRIMITIVES[defect_type.texture](fp, rng, s)
    alpha, color = TONE_PRIMITIVES[defect_type.tone](fp, rng)
    if inside:
        a = cv2.GaussianBlur(alpha, (0, 0), INSIDE_SOFTEN)
        color = cv2.GaussianBlur(color * alpha[..., None], (0, 0), INSIDE_SOFTEN) / np.maximum(
            a[..., None], 1e-6
        )
        alpha = 0.9 * a
    return DefectSprite(alpha.astype(np.float32), color.astype(np.float32))


def draw_type(name: str, rng: np.random.Generator, s: float):
    """(sprite, inside) for one defect of the type named ``name``; the depth is drawn when the type leaves it
    open (half on the surface, half inside)."""
    t = parse_type(name)
    inside = (t.depth == "inside") if t.depth is not None else bool(rng.random() < 0.5)
    return compose_sprite(t, rng, s, inside), inside


# ---------------------------------------------------------------------------------------------------------
# The held-out protocol


def _check_types(v: tuple[str, ...]) -> tuple[str, ...]:
    names = [parse_type(x).name for x in v]
    dup = sorted({n for n in names if names.count(n) > 1})
    if dup:
        raise ValueError(f"types listed twice: {dup}")
    return tuple(names)


def _seen_values(seen: tuple[str, ...]) -> dict[str, set[str]]:
    values: dict[str, set[str]] = {a: set() for a in ATTRIBUTES}
    for n in seen:
        for a, v in parse_type(n).attributes.items():
            values[a].add(v)
    return values


class CompositionalSplit(StrictModel):
    """Which compositional types are trained on and which are held out, in two groups.

    Args:
        seen: types trained on.
        unseen_combination: held out; every attribute value of each appears in some seen type, only the
            combination is new (e.g. seen ``dark granular ring`` and ``amber smooth spot`` ->
            ``amber granular ring``).
        unseen_type: held out; each has at least one attribute value no seen type has (e.g. the only amber
            types).
    Raises (when built):
        ValueError naming the offending type: a name that is not a type, a type in two groups, an unseen
        combination with an unseen attribute value, an unseen type made only of seen values.
    """

    seen: tuple[str, ...]
    unseen_combination: tuple[str, ...] = ()
    unseen_type: tuple[str, ...] = ()

    @field_validator("seen")
    @classmethod
    def _seen(cls, v: tuple[str, ...]) -> tuple[str, ...]:
        out = _check_types(v)
        if not out:
            raise ValueError("needs at least one type to train on")
        return out

    @field_validator("unseen_combination")
    @classmethod
    def _combinations(cls, v: tuple[str, ...], info: ValidationInfo) -> tuple[str, ...]:
        out = _check_types(v)
        seen = info.data.get("seen")
        if seen is None:
            return out  # seen itself is invalid and reported
        values = _seen_values(seen)
        for n in out:
            if n in seen:
                raise ValueError(f"{n!r} is also a seen type; a type is in one group only")
            new = [f"{a} {x!r}" for a, x in parse_type(n).attributes.items() if x not in values[a]]
            if new:
                raise ValueError(
                    f"{n!r} is not an unseen combination of seen attribute values: {', '.join(new)} is in no "
                    f"seen type (list it under unseen_type, or train on a type with that value)"
                )
        return out

    @field_validator("unseen_type")
    @classmethod
    def _types(cls, v: tuple[str, ...], info: ValidationInfo) -> tuple[str, ...]:
        out = _check_types(v)
        seen = info.data.get("seen")
        if seen is None:
            return out
        combos = info.data.get("unseen_combination") or ()
        values = _seen_values(seen)
        for n in out:
            if n in seen or n in combos:
                group = "seen" if n in seen else "unseen_combination"
                raise ValueError(f"{n!r} is also in {group}; a type is in one group only")
            if all(x in values[a] for a, x in parse_type(n).attributes.items()):
                raise ValueError(
                    f"{n!r} is not an unseen type: every attribute value of it is in a seen type "
                    f"(list it under unseen_combination)"
                )
        return out

    @model_validator(mode="after")
    def _holds_out(self) -> CompositionalSplit:
        if not self.unseen_combination and not self.unseen_type:
            raise ValueError("holds out nothing: list types under unseen_combination and/or unseen_type")
        return self

    def groups(self) -> dict[str, str]:
        """``{type name: group}`` (group in ``GROUPS``), seen types first."""
        out = {n: "seen" for n in self.seen}
        out.update({n: "unseen_combination" for n in self.unseen_combination})
        out.update({n: "unseen_type" for n in self.unseen_type})
        return out

    def classes(self) -> tuple[DefectClass, ...]:
        """Vocabulary entries of every type (seen flag True for the seen group only), seen types first."""
        return tuple(parse_type(n).defect_class(seen=g == "seen") for n, g in self.groups().items())

    def held_out(self) -> set[str]:
        return set(self.unseen_combination) | set(self.unseen_type)


# The built-in split: 4 shapes x 3 tones x 2 textures seen in 10 combinations; 4 further combinations of
# those values held out; 3 types held out that carry the never-trained tone "amber" or shape "cluster".
DEFAULT_SPLIT = CompositionalSplit(
    seen=(
        "dark smooth spot",
        "white granular spot",
        "clear smooth spot",
        "dark granular streak",
        "white smooth streak",
        "clear smooth ring",
        "dark granular ring",
        "dark smooth line",
        "white granular line",
        "clear granular line",
    ),
    unseen_combination=(
        "white smooth spot",
        "clear granular streak",
        "white smooth ring",
        "dark granular line",
    ),
    unseen_type=(
        "amber smooth spot",
        "amber granular ring",
        "dark smooth cluster",
    ),
)
