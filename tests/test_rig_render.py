"""The rig renderer: determinism, geometry across views and the turn, defect looks, statistics."""

import dataclasses

import cv2
import numpy as np
import pytest

from rtvp_edge.rig import (
    Defect3D,
    RigConfig,
    container_profile,
    load_rig_config,
    project_defect,
    render_container,
    render_view,
    sample_container,
)
from rtvp_edge.rig.defects import SPRITES, make_sprite
from rtvp_edge.vocabulary import GLASS_DEFECTS
from rtvp_edge.yaml_config import ConfigError

CFG = RigConfig(seed=7)


def _centre(box):
    return (box[0] + box[2]) / 2, (box[1] + box[3]) / 2


def _with_defects(spec, *defects):
    return dataclasses.replace(spec, defects=tuple(defects))


def _spot(theta, row, defect_id=0, cls="black spot", depth=0.97, seed=0):
    # a symmetric sprite so that the box centre is the projected point
    sprite = make_sprite(cls, np.random.default_rng(seed), 1.0)
    return Defect3D(defect_id, cls, theta, row, depth, sprite)


def _spec(index=3, config=CFG):
    spec = sample_container(config, index)
    return spec


def test_images_are_bgr_uint8_of_the_line_size():
    cv = render_container(CFG, 0)
    assert len(cv) == 6 and cv.part_id == "C000000"
    for img, gts in cv:
        assert img.shape == (820, 700, 3) and img.dtype == np.uint8
        assert isinstance(gts, tuple)
        # back-lit: the panel is bright, the container is darker at its silhouette
        assert img[20, 20].mean() > 180


def test_deterministic_per_seed_and_index():
    a, b = render_container(CFG, 5), render_container(CFG, 5)
    for (ia, ga), (ib, gb) in zip(a, b, strict=True):
        assert np.array_equal(ia, ib) and ga == gb
    # a single view rendered alone is the same view
    img, gts = render_view(CFG, sample_container(CFG, 5), 4)
    assert np.array_equal(img, a[4][0]) and gts == a[4][1]
    other_seed = render_container(RigConfig(seed=8), 5)
    other_index = render_container(CFG, 6)
    assert not np.array_equal(a[1][0], other_seed[1][0])
    assert not np.array_equal(a[1][0], other_index[1][0])


def test_front_defect_seen_by_left_bank_only_and_moves_as_geometry_predicts():
    spec = _spec()
    prof = container_profile(spec.shape, CFG.image_size)
    row = float(prof.inspection_rows[len(prof.inspection_rows) // 2])
    d = _spot(theta=0.0, row=row)
    spec = _with_defects(spec, d)
    boxes = {}
    for v in range(6):
        _, gts = render_view(CFG, spec, v)
        if gts:
            (g,) = gts
            assert g.class_name == "black spot" and g.defect_id == 0
            boxes[v] = g.box
    assert sorted(boxes) == [0, 1, 2]  # hidden from the right bank: it is on the far side after the turn
    for v, box in boxes.items():
        x, y, cos_a = project_defect(CFG, spec, d, v)
        cx, cy = _centre(box)
        assert abs(cx - x) <= 1.5 and abs(cy - y) <= 1.5
    # neighbouring views see it on opposite sides of the axis, by rho * sin(+-40 deg)
    rho = float(prof.radius[int(row)]) * d.depth
    dx0 = _centre(boxes[0])[0] - spec.shift_px[0][0]
    dx2 = _centre(boxes[2])[0] - spec.shift_px[2][0]
    dx1 = _centre(boxes[1])[0] - spec.shift_px[1][0]
    assert dx0 > dx1 > dx2
    assert (dx0 - dx2) == pytest.approx(2 * rho * np.sin(np.deg2rad(40)), abs=0.05 * rho + 3)
    # head-on is clear; the box is foreshortened in the oblique views, not in height
    w = [boxes[v][2] - boxes[v][0] for v in (0, 1, 2)]
    h = [boxes[v][3] - boxes[v][1] for v in (0, 1, 2)]
    assert w[1] >= max(w[0], w[2]) and max(h) - min(h) <= 1


def test_back_defect_seen_after_the_turn_only():
    spec = _spec(4)
    prof = container_profile(spec.shape, CFG.image_size)
    row = float(prof.inspection_rows[10])
    spec = _with_defects(spec, _spot(theta=180.0, row=row))
    seen = [v for v in range(6) if render_view(CFG, spec, v)[1]]
    assert seen == [3, 4, 5]
    # and one at the side (90 deg) is seen by the last left camera and the first right camera
    spec = _with_defects(spec, _spot(theta=90.0, row=row))
    seen = [v for v in range(6) if render_view(CFG, spec, v)[1]]
    assert seen == [2, 3]


def test_random_containers_follow_the_projection():
    """Every defect of 25 random containers: boxed exactly where and when the geometry says."""
    n_checked = 0
    for index in range(25):
        cv = render_container(CFG, index)
        spec = cv.spec
        by_defect = {}
        for v, (_, gts) in enumerate(cv):
            for g in gts:
                by_defect.setdefault(g.defect_id, {})[v] = g
        for d in spec.defects:
            views = by_defect.get(d.defect_id, {})
            assert views, f"container {index} defect {d.defect_id} ({d.class_name}) not visible in any view"
            for v in range(6):
                x, y, cos_a = project_defect(CFG, spec, d, v)
                if cos_a <= 0.10:
                    assert v not in views, f"far-side defect boxed in view {v}"
                if v in views:
                    g = views[v]
                    x1, y1, x2, y2 = g.box
                    assert 0 <= x1 < x2 <= 700 and 0 <= y1 < y2 <= 820
                    # the box lies around the projected centre, within the sprite's reach (a sprite
                    # grazing the silhouette is clipped to the glass, so only part of it may show)
                    sh, sw = d.sprite.alpha.shape
                    assert x1 - sw / 2 - 1 <= x <= x2 + sw / 2 + 1 and y1 - sh / 2 - 1 <= y <= y2 + sh / 2 + 1
                    if g.clear:
                        assert cos_a >= 0.45
                        # well inside the glass: the projected centre lies in the box (sprites are centred)
                        assert x1 - 2 <= x <= x2 + 2 and y1 - 2 <= y <= y2 + 2
                    n_checked += 1
            # rows agree between all views that see it (orthographic cameras, one dy per container)
            ys = [_centre(g.box)[1] for g in views.values() if g.clear]
            if len(ys) > 1:
                assert max(ys) - min(ys) <= 3
    assert n_checked > 40


def test_defect_free_share_and_defective_containers_have_boxes():
    specs = [sample_container(CFG, i) for i in range(400)]
    share = np.mean([not s.defects for s in specs])
    assert 0.24 <= share <= 0.36
    none = [sample_container(RigConfig(seed=1, defect_free_share=1.0), i) for i in range(20)]
    assert all(not s.defects for s in none)
    allbad = [sample_container(RigConfig(seed=1, defect_free_share=0.0), i) for i in range(20)]
    assert all(s.defects for s in allbad)


def test_small_defects_dominate_but_stay_visible():
    sizes, contrasts = [], []
    for index in range(30):
        cv = render_container(CFG, index)
        for v, (img, gts) in enumerate(cv):
            if not gts:
                continue
            clean, _ = render_view(CFG, _with_defects(cv.spec), v)
            # what a detector with a ~448 px input sees: the image at 0.55 scale
            s = 0.55
            small_img = cv2.resize(img, None, fx=s, fy=s, interpolation=cv2.INTER_AREA).astype(int)
            small_clean = cv2.resize(clean, None, fx=s, fy=s, interpolation=cv2.INTER_AREA).astype(int)
            for g in gts:
                x1, y1, x2, y2 = g.box
                sizes.append(np.sqrt((x2 - x1) * (y2 - y1)))
                if g.clear:
                    x1, y1, x2, y2 = (int(round(c * s)) for c in g.box)
                    win = (slice(y1, y2 + 1), slice(x1, x2 + 1))
                    contrasts.append(np.abs(small_img[win] - small_clean[win]).max())
    sizes, contrasts = np.array(sizes), np.array(contrasts)
    assert (sizes < 32).mean() > 0.6  # COCO small dominates
    assert 8 <= np.median(sizes) <= 40  # most defects 10-40 px
    # ... and still visible at the detector's scale: >= 20 grey levels for nearly every clear defect
    assert (contrasts >= 20).mean() >= 0.9 and np.median(contrasts) >= 40


@pytest.mark.parametrize("cls", [c.name for c in GLASS_DEFECTS])
def test_every_class_has_a_visible_look(cls):
    assert cls in SPRITES
    spec = _spec(2)
    prof = container_profile(spec.shape, CFG.image_size)
    row = float(prof.inspection_rows[len(prof.inspection_rows) // 3])
    d = Defect3D(0, cls, 0.0, row, 1.0, make_sprite(cls, np.random.default_rng(1), 1.0))
    img, gts = render_view(CFG, _with_defects(spec, d), 1)
    clean, _ = render_view(CFG, _with_defects(spec), 1)
    (g,) = gts
    assert g.class_name == cls and g.clear
    x1, y1, x2, y2 = (int(round(c)) for c in g.box)
    changed = np.abs(img.astype(int) - clean.astype(int)).max(axis=2) > 12
    assert changed[y1:y2, x1:x2].sum() >= 6
    # the box is tight: nothing changed outside it
    changed[max(y1 - 1, 0) : y2 + 1, max(x1 - 1, 0) : x2 + 1] = False
    assert changed.sum() == 0


def test_class_looks_differ():
    # colour, elongation, fill and centre brightness separate every pair of classes
    stats = {}
    for c in GLASS_DEFECTS:
        rng = np.random.default_rng(0)
        sp = [make_sprite(c.name, rng, 1.0) for _ in range(20)]
        mean_col = np.mean([(s.color[..., 1] * s.alpha).sum() / s.alpha.sum() for s in sp])
        elong, cover, centre = [], [], []
        for s in sp:
            ys, xs = np.nonzero(s.alpha > 0.15)
            bh, bw = np.ptp(ys) + 1, np.ptp(xs) + 1
            elong.append(max(bh, bw) / min(bh, bw))
            cover.append(len(xs) / (bh * bw))
            h, w = s.alpha.shape
            a = s.alpha[h // 2, w // 2]
            centre.append(a * s.color[h // 2, w // 2, 1] + (1 - a) * 220.0)  # the centre on a 220 back-light
        stats[c.name] = (mean_col, np.mean(elong), np.mean(cover), np.mean(centre))
    names = list(stats)
    for i, a in enumerate(names):
        for b in names[i + 1 :]:
            d = np.abs(np.subtract(stats[a], stats[b])) / np.array([20.0, 0.3, 0.08, 30.0])
            assert d.max() > 1.0, f"{a} and {b} look alike: {stats[a]} vs {stats[b]}"


@pytest.mark.parametrize(
    "field,value",
    [
        ("defect_free_share", 1.5),
        ("image_size", (820,)),
        ("shapes", ("teapot",)),
        ("tints", ("blue",)),
        ("seed", -1),
        ("mean_defects", 0.5),
        ("pose_jitter_px", 50.0),
    ],
)
def test_config_errors_name_the_field(field, value):
    # pydantic: "validation error for RigConfig", then the field on its own line (image_size.1: the missing item)
    with pytest.raises(ValueError, match=rf"validation error for RigConfig\n{field}\b"):
        RigConfig(**{field: value})


@pytest.mark.parametrize(
    ("kwargs", "needle"),
    [
        (
            {"mean_defects": 7.0, "max_defects": 6},
            "mean_defects\n  Value error, must be in [1, max_defects=6]",
        ),
        ({"class_weights": (1.0, 2.0)}, "class_weights: needs one non-negative weight per class (8)"),
        ({"seed": True}, "seed\n  Input should be a valid integer"),  # a boolean is not a seed
        ({"classes": ()}, "classes\n  Value error, must not be empty"),
    ],
)
def test_config_cross_field_and_type_errors(kwargs, needle):
    with pytest.raises(ValueError) as e:
        RigConfig(**kwargs)
    assert needle in str(e.value)


def test_config_from_a_mapping_is_strict():
    cfg = RigConfig.model_validate({"seed": 4, "classes": ["bubble", "stone"], "shapes": ["jar"]})
    assert [c.name for c in cfg.classes] == ["bubble", "stone"] and cfg.shapes == ("jar",)
    assert RigConfig.model_validate(cfg.model_dump()) == cfg  # dumped classes are names again
    with pytest.raises(ValueError, match=r"sede\n  Extra inputs are not permitted"):
        RigConfig.model_validate({"sede": 4})
    with pytest.raises(ValueError, match=r"classes\n  Value error, 'dent' is not a glass defect class"):
        RigConfig.model_validate({"classes": ["bubble", "dent"]})
    with pytest.raises(ValueError, match=r"defect_free_share\n  Input should be greater than or equal to 0"):
        RigConfig.model_validate({"defect_free_share": -0.1})
    with pytest.raises(ValueError, match=r"noise_sigma\n  Input should be a valid number"):
        RigConfig.model_validate({"noise_sigma": "loud"})
    with pytest.raises(ValueError, match="frozen"):
        cfg.seed = 5  # validated once: cannot change afterwards


def test_rig_file_errors_name_file_line_and_key(tmp_path):
    p = tmp_path / "rig.yaml"
    p.write_text(
        "seed: 4\nclasses: [bubble, dent]\nsede: 3\nnoise_sigma: loud\nimage_size: [820]\nmean_defects: 9\n"
    )
    with pytest.raises(ConfigError) as e:
        load_rig_config(p)
    lines = str(e.value).splitlines()
    assert f"{p}:2: classes: 'dent' is not a glass defect class; known: ['black spot', 'bubble', " in str(
        e.value
    )
    assert any(
        s.startswith(f"{p}:3: sede: unknown key (check the spelling; valid keys here: ") for s in lines
    )
    assert f"{p}:4: noise_sigma: Input should be a valid number (got 'loud')" in lines
    assert f"{p}:5: image_size.1: item missing (the list is too short)" in lines
    assert f"{p}:6: mean_defects: must be in [1, max_defects=6] (got 9)" in lines
    assert len(lines) == 5
    p.write_text("seed: 4\nseed: 5\n")
    with pytest.raises(ConfigError, match=r"rig.yaml:2: key 'seed' repeated \(first on line 1\)"):
        load_rig_config(p)
    with pytest.raises(ConfigError, match="rig file not found"):
        load_rig_config(tmp_path / "none.yaml")


def test_rig_file_builds_the_rig_it_names(tmp_path):
    p = tmp_path / "rig.yaml"
    p.write_text("seed: 3\nclasses: [bubble, black spot]\nshapes: [jar]\ntints: [amber]\nnoise_sigma: 1e-1\n")
    cfg = load_rig_config(p)
    assert cfg == RigConfig(
        seed=3,
        classes=(GLASS_DEFECTS[2], GLASS_DEFECTS[1]),
        shapes=("jar",),
        tints=("amber",),
        noise_sigma=0.1,
    )
    assert [c.name for c in cfg.classes] == ["bubble", "black spot"]


def test_other_image_sizes_scale_the_scene():
    small = RigConfig(seed=7, image_size=(410, 350), defect_free_share=0.0)
    cv = render_container(small, 1)
    big = render_container(RigConfig(seed=7, defect_free_share=0.0), 1)
    assert all(img.shape == (410, 350, 3) for img, _ in cv)
    n_small = sum(len(g) for _, g in cv)
    assert n_small > 0
    for (_, gs), (_, gb) in zip(cv, big, strict=True):
        for a in gs:
            assert 0 <= a.box[0] < a.box[2] <= 350 and 0 <= a.box[1] < a.box[3] <= 410
            # the same defect sits at about half the position in the half-size image
            match = [b for b in gb if b.defect_id == a.defect_id]
            if match and a.clear and match[0].clear:
                ca, cb = _centre(a.box), _centre(match[0].box)
                assert abs(ca[1] - cb[1] / 2) <= 4
