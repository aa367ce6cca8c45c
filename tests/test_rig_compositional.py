"""Compositional defect types in the rig (attributes you can see in the pixels, names and prompts built from
them, deterministic), the compositional protocol of ``rtvp-data generate`` (held-out groups that satisfy
their definitions, bad splits refused, groups recorded in the COCO files) and AP50 per group."""

from __future__ import annotations

import json

import cv2
import numpy as np
import pytest

from rtvp_edge.rig import RigConfig, load_rig_config, render_container, render_view, sample_container
from rtvp_edge.rig.compositional import (
    ATTRIBUTES,
    DEFAULT_SPLIT,
    GROUPS,
    CompositionalSplit,
    DefectType,
    parse_type,
)
from rtvp_edge.rig.defects import make_sprite
from rtvp_edge.yaml_config import ConfigError

# ------------------------------------------------------------------------------------ names and prompts


def test_name_and_prompt_are_built_from_the_attributes():
    t = parse_type("ring granular amber inside small")  # any word order
    assert t == DefectType(shape="ring", tone="amber", texture="granular", size="small", depth="inside")
    assert t.name == "small amber granular ring inside"
    assert t.prompt == "a small amber granular ring inside the glass"
    assert t.attributes == {"size": "small", "tone": "amber", "texture": "granular", "shape": "ring",
                            "depth": "inside"}  # fmt: skip
    assert parse_type("amber granular ring").name == "amber granular ring"
    assert parse_type("amber granular ring").prompt == "an amber granular ring on the glass container"
    surf = parse_type("large clear smooth line on surface")
    assert surf.name == "large clear smooth line on surface" and parse_type(surf.name) == surf
    assert surf.prompt == "a large clear refracting smooth line on the glass surface"
    dc = parse_type("dark smooth spot").defect_class(seen=False)
    assert (dc.name, dc.prompt, dc.seen) == (
        "dark smooth spot",
        "a dark smooth spot on the glass container",
        False,
    )


@pytest.mark.parametrize(
    "text, needle",
    [
        ("amber fuzzy ring", "unknown word 'fuzzy'"),
        ("amber dark granular ring", "two tone values, 'amber' and 'dark'"),
        ("amber granular", "needs a shape (spot, streak, ring, cluster, line)"),
        ("amber ring", "needs a texture (smooth, granular)"),
    ],
)
def test_bad_type_names_are_refused_naming_the_word(text, needle):
    with pytest.raises(ValueError, match="defect type") as e:
        parse_type(text)
    assert needle in str(e.value) and repr(text) in str(e.value)


def test_rig_config_and_rig_file_take_type_names(tmp_path):
    cfg = RigConfig(classes=["oil", "granular amber ring"])
    assert [c.name for c in cfg.classes] == ["oil", "amber granular ring"]
    assert cfg.classes[1].prompt == "an amber granular ring on the glass container"
    p = tmp_path / "rig.yaml"
    p.write_text("seed: 1\nclasses: [bubble, dark smooth spot]\n")
    assert [c.name for c in load_rig_config(p).classes] == ["bubble", "dark smooth spot"]
    p.write_text("seed: 1\nclasses: [bubble, dark fuzzy spot]\n")
    with pytest.raises(
        ConfigError, match=r"rig.yaml:2: classes: 'dark fuzzy spot' is not a glass defect class"
    ):
        load_rig_config(p)
    with pytest.raises(ValueError, match="classes listed twice"):
        RigConfig(classes=["amber granular ring", "ring amber granular"])
    with pytest.raises(ValueError, match="no rig look for defect class 'dent'"):
        make_sprite("dent", np.random.default_rng(0))


# ------------------------------------------------------------------------------------ the pixels


def _crops(name: str, n: int = 6, tint: str = "flint", seed: int = 3) -> list[np.ndarray]:
    """Box crops (h, w, 3) float32 BGR of ``n`` clearly visible defects of type ``name``, one per container,
    each from the first view that shows it clearly, on glass of one tint."""
    cfg = RigConfig(seed=seed, classes=[name], defect_free_share=0.0, tints=(tint,), shapes=("bottle",),
                    mean_defects=1.0, max_defects=1, large_defect_share=0.0)  # fmt: skip
    out = []
    for i in range(40):
        spec = sample_container(cfg, i)
        for v in range(cfg.n_views):
            img, gts = render_view(cfg, spec, v)
            clear = [g for g in gts if g.clear]
            if clear:
                x1, y1, x2, y2 = (int(round(t)) for t in clear[0].box)
                out.append(img[y1:y2, x1:x2].astype(np.float32))
                break
        if len(out) == n:
            return out
    raise AssertionError(f"fewer than {n} clear views of {name!r}")


def _middle(c: np.ndarray, lo: float, hi: float) -> np.ndarray:
    h, w = c.shape[:2]
    return c[int(h * lo) : int(np.ceil(h * hi)), int(w * lo) : int(np.ceil(w * hi))]


def test_amber_is_amber_and_dark_is_grey():
    for name in ("amber smooth spot", "dark smooth spot"):
        b, g, r = np.mean([_middle(c, 0.35, 0.65).reshape(-1, 3).mean(0) for c in _crops(name)], 0)
        if name.startswith("amber"):
            assert r - b > 50 and r > g > b, (name, b, g, r)  # orange-brown: red over green over blue
        else:
            assert abs(r - b) < 12 and max(b, g, r) < 90, (name, b, g, r)  # near-black grey


def _centre_level(c: np.ndarray) -> float:
    """Grey level of the crop's centre between its darkest pixels (0) and the glass at its border (1)."""
    g = c.mean(2)
    border = np.concatenate([g[0], g[-1], g[:, 0], g[:, -1]]).mean()
    lo = np.percentile(g, 5)
    return float((_middle(g, 0.4, 0.6).mean() - lo) / (border - lo))


@pytest.mark.parametrize("tone", ["dark", "amber", "clear"])
def test_ring_has_a_hollow_centre_and_spot_a_filled_one(tone):
    ring = [_centre_level(c) for c in _crops(f"{tone} smooth ring")]
    assert min(ring) > 0.8, ring  # the centre of a ring is the glass behind it
    if tone != "clear":  # (a clear spot is bright inside)
        spot = [_centre_level(c) for c in _crops(f"{tone} smooth spot")]
        assert max(spot) < 0.2, spot  # a spot is darkest in its centre


@pytest.mark.parametrize("tone", ["dark", "white", "amber"])
def test_granular_varies_inside_where_smooth_is_even(tone):
    def inner_std(name):
        return float(np.mean([_middle(c, 0.3, 0.7).mean(2).std() for c in _crops(f"{tone} {name} spot")]))

    smooth, granular = inner_std("smooth"), inner_std("granular")
    assert granular > 3 * smooth and granular > 8, (smooth, granular)


def test_clear_is_a_lens_bright_inside_dark_outline_and_white_is_bright():
    for c in _crops("clear smooth spot"):
        g = c.mean(2)
        assert _middle(g, 0.4, 0.6).mean() > np.percentile(g, 10) + 60  # bright core, dark rim
    white = np.mean([_middle(c, 0.4, 0.6).mean() for c in _crops("white smooth spot")])
    dark = np.mean([_middle(c, 0.4, 0.6).mean() for c in _crops("dark smooth spot")])
    assert white > 220 and white - dark > 150


def test_large_is_larger_and_shapes_differ_in_their_footprint():
    small = np.median([c.shape[0] * c.shape[1] for c in _crops("small dark smooth spot")])
    large = np.median([c.shape[0] * c.shape[1] for c in _crops("large dark smooth spot")])
    assert large > 2.5 * small, (small, large)

    def parts(name):
        a = make_sprite(name, np.random.default_rng(7), 1.0).alpha
        return cv2.connectedComponents((a > 0.5).astype(np.uint8))[0] - 1

    assert parts("dark smooth cluster") >= 4 and parts("dark smooth spot") == 1
    line = make_sprite("dark smooth line", np.random.default_rng(7), 1.0).alpha > 0.5
    ys, xs = np.nonzero(line)
    extent = max(np.ptp(xs), np.ptp(ys)) + 1
    assert extent > 25 and line.sum() / extent < 3  # long and thin


def test_depth_inside_lies_in_the_wall_and_looks_softer():
    for depth, want in (("inside", lambda d: d < 1.0), ("on surface", lambda d: d == 1.0)):
        cfg = RigConfig(seed=0, classes=[f"dark smooth spot {depth}"], defect_free_share=0.0)
        ds = [d for i in range(4) for d in sample_container(cfg, i).defects]
        assert ds and all(want(d.depth) for d in ds)

    def sharpness(name):
        a = make_sprite(name, np.random.default_rng(1), 1.0).alpha
        gy, gx = np.gradient(a)
        return float(np.hypot(gx, gy).max())

    assert sharpness("dark smooth spot inside") < 0.8 * sharpness("dark smooth spot on surface")


def test_compositional_types_render_deterministically():
    cfg = RigConfig(seed=4, classes=list(DEFAULT_SPLIT.groups()), defect_free_share=0.0)
    a, b = render_container(cfg, 2), render_container(cfg, 2)
    assert any(gts for _, gts in a)
    for (ia, ga), (ib, gb) in zip(a, b, strict=True):
        assert np.array_equal(ia, ib) and ga == gb
    view1 = render_view(cfg, sample_container(cfg, 2), 1)  # a view alone equals the same view of the set
    assert np.array_equal(view1[0], a[1][0])
    other = render_container(RigConfig(seed=5, classes=cfg.classes, defect_free_share=0.0), 2)
    assert not np.array_equal(other[0][0], a[0][0])


# ------------------------------------------------------------------------------------ the protocol


def test_default_split_satisfies_its_group_definitions():
    seen_values = {a: set() for a in ATTRIBUTES}
    for n in DEFAULT_SPLIT.seen:
        for a, v in parse_type(n).attributes.items():
            seen_values[a].add(v)
    assert DEFAULT_SPLIT.unseen_combination and DEFAULT_SPLIT.unseen_type
    for n in DEFAULT_SPLIT.unseen_combination:  # (a) every value seen, the combination new
        assert n not in DEFAULT_SPLIT.seen
        assert all(v in seen_values[a] for a, v in parse_type(n).attributes.items()), n
    for n in DEFAULT_SPLIT.unseen_type:  # (b) at least one value never trained
        assert any(v not in seen_values[a] for a, v in parse_type(n).attributes.items()), n
    groups = DEFAULT_SPLIT.groups()
    assert set(groups.values()) == set(GROUPS) and len(groups) == len(DEFAULT_SPLIT.classes())
    assert [c.seen for c in DEFAULT_SPLIT.classes()] == [g == "seen" for g in groups.values()]


@pytest.mark.parametrize(
    "spec, needle",
    [
        ({"seen": ["dark smooth spot", "white granular ring"], "unseen_combination": ["amber smooth spot"]},
         "'amber smooth spot' is not an unseen combination of seen attribute values: tone 'amber' is in no seen"),
        ({"seen": ["dark smooth spot", "white granular ring"], "unseen_combination": ["dark granular cluster"]},
         "'dark granular cluster' is not an unseen combination of seen attribute values: shape 'cluster'"),
        ({"seen": ["dark smooth spot", "white granular ring"], "unseen_type": ["white smooth ring"]},
         "'white smooth ring' is not an unseen type: every attribute value of it is in a seen type"),
        ({"seen": ["dark smooth spot"], "unseen_combination": ["smooth dark spot"]},
         "'dark smooth spot' is also a seen type"),
        ({"seen": ["dark smooth spot", "dark smooth spot"]}, "types listed twice: ['dark smooth spot']"),
        ({"seen": [], "unseen_type": ["amber smooth spot"]}, "at least one type"),
        ({"seen": ["dark smooth spot"]}, "holds out nothing"),
    ],
)  # fmt: skip
def test_bad_splits_are_refused_naming_the_type(spec, needle):
    with pytest.raises(ValueError) as e:
        CompositionalSplit(**spec)
    assert needle in str(e.value)


def _generate(out, **kw):
    from training.data.generate import generate_dataset

    cfg = RigConfig(seed=1, image_size=(410, 350), defect_free_share=0.0, defect_size_scale=1.5)
    return generate_dataset(out, containers=10, protocol="compositional", config=cfg, val_share=0.3,
                            progress=False, **kw)  # fmt: skip


@pytest.fixture(scope="module")
def comp_root(tmp_path_factory):
    return _generate(tmp_path_factory.mktemp("comp"))["compositional"]


def test_generated_coco_records_the_groups(comp_root):
    from training.data.coco import load_coco_split

    groups = DEFAULT_SPLIT.groups()
    manifest = json.loads((comp_root / "manifest.json").read_text())
    assert manifest["protocol"] == "compositional" and manifest["groups"] == groups
    assert {c["name"]: c["group"] for c in manifest["classes"]} == groups
    coco = {
        s: json.loads((comp_root / "annotations" / f"{s}.json").read_text())
        for s in ("train", "train_all", "val")
    }
    for s in ("train_all", "val"):
        cats = coco[s]["categories"]
        assert {c["name"]: c["group"] for c in cats} == groups
        assert all(c["seen"] == (c["group"] == "seen") for c in cats)
        assert all(c["attributes"] == parse_type(c["name"]).attributes for c in cats)
    assert [c["name"] for c in coco["train"]["categories"]] == list(DEFAULT_SPLIT.seen)
    # train holds no container with a held-out defect, not even unlabelled; train_all holds them, val is apart
    held = {c["id"] for c in coco["train_all"]["categories"] if c["group"] != "seen"}
    parts = {s: {im["container_index"] for im in coco[s]["images"]} for s in coco}
    with_held = {im["container_index"] for im in coco["train_all"]["images"]
                 if any(a["image_id"] == im["id"] and a["category_id"] in held
                        for a in coco["train_all"]["annotations"])}  # fmt: skip
    assert parts["train"] < parts["train_all"] and not (parts["train"] & with_held) and with_held
    assert not (parts["train_all"] & parts["val"])
    val_groups = {groups[c["name"]] for c in coco["val"]["categories"]
                  if any(a["category_id"] == c["id"] for a in coco["val"]["annotations"])}  # fmt: skip
    assert val_groups - {"seen"}, "the val split shows no held-out type"
    split = load_coco_split(comp_root, "val")
    assert split.group_of() == groups and split.seen == [g == "seen" for g in groups.values()]


def test_open_training_takes_its_classes_from_the_data_set_flags(comp_root):
    from training.config import load_config
    from training.data.coco import load_coco_split
    from training.train import select_classes

    cfg = load_config(None, [f"data.root={comp_root}", "protocol=open"])
    train, evalc = select_classes(cfg, load_coco_split(comp_root, "train"), load_coco_split(comp_root, "val"))
    assert train == list(DEFAULT_SPLIT.seen)
    assert evalc == [*DEFAULT_SPLIT.unseen_combination, *DEFAULT_SPLIT.unseen_type]
    ref = load_config(None, [f"data.root={comp_root}", "data.train_split=train_all"])
    train, evalc = select_classes(
        ref, load_coco_split(comp_root, "train_all"), load_coco_split(comp_root, "val")
    )
    assert train == evalc == list(DEFAULT_SPLIT.groups())  # the "trained on them" reference


def test_generate_refuses_bad_protocol_use_with_clear_errors(tmp_path, capsys):
    from training.data.cli import main
    from training.data.generate import generate_dataset

    bad = tmp_path / "split.yaml"
    bad.write_text(
        "seen: [dark smooth spot, white granular ring]\nunseen_combination: [amber granular ring]\n"
    )
    code = main(["generate", "--out", str(tmp_path / "o"), "--containers", "2", "--protocol", "compositional",
                 "--compositional-split", str(bad), "--no-progress"])  # fmt: skip
    err = capsys.readouterr().err
    assert (
        code == 2
        and f"{bad}:2: unseen_combination: 'amber granular ring' is not an unseen combination" in err
    )
    assert "tone 'amber' is in no seen type" in err and not (tmp_path / "o" / "compositional").exists()
    code = main(
        ["generate", "--out", str(tmp_path / "o"), "--containers", "2", "--compositional-split", str(bad)]
    )
    assert code == 2 and "--compositional-split needs --protocol compositional" in capsys.readouterr().err
    with pytest.raises(ValueError, match="class_weights"):
        generate_dataset(tmp_path / "w", containers=2, protocol="compositional", progress=False,
                         config=RigConfig(class_weights=(1.0,) * 8))  # fmt: skip


def test_generate_takes_a_split_file(tmp_path, capsys):
    from training.data.cli import main

    spec = tmp_path / "split.yaml"
    spec.write_text(
        "seen: [dark smooth spot, white granular ring]\nunseen_combination: [white smooth spot]\n"
        "unseen_type: [amber granular line]\n"
    )
    rig = tmp_path / "rig.yaml"
    rig.write_text("image_size: [410, 350]\ndefect_free_share: 0.0\n")
    code = main(["generate", "--out", str(tmp_path / "o"), "--containers", "3", "--protocol", "compositional",
                 "--compositional-split", str(spec), "--rig", str(rig), "--no-progress"])  # fmt: skip
    assert code == 0, capsys.readouterr().err
    m = json.loads((tmp_path / "o" / "compositional" / "manifest.json").read_text())
    assert m["groups"] == {"dark smooth spot": "seen", "white granular ring": "seen",
                           "white smooth spot": "unseen_combination", "amber granular line": "unseen_type"}  # fmt: skip
    assert m["prompts"]["amber granular line"] == "an amber granular line on the glass container"


# ------------------------------------------------------------------------------------ AP50 per group


def test_group_ap50_is_the_mean_over_the_groups_classes():
    from rtvp_edge.messages import Detection
    from training.coco_eval import coco_evaluate, coco_ground_truth
    from training.evaluate import _coco, group_metrics

    names = ["dark smooth spot", "white smooth spot", "amber smooth spot", "dark smooth cluster"]
    # four images, one box each of classes 0, 1, 2, 2; class 3 has no ground truth
    boxes = [np.array([[10, 10, 40, 40]], np.float32)] * 4
    cls = [np.array([k], np.int64) for k in (0, 1, 2, 2)]
    gt = coco_ground_truth([(100, 100)] * 4, boxes, cls, names)
    hit = (10.0, 10.0, 40.0, 40.0)
    miss = (60.0, 60.0, 90.0, 90.0)
    dets = {  # class 0 found, class 1 missed, class 2 found in one image of two
        0: [Detection(0, names[0], 0.9, hit)],
        1: [Detection(1, names[1], 0.9, miss)],
        2: [Detection(2, names[2], 0.9, hit)],
        3: [Detection(2, names[2], 0.8, miss), Detection(3, names[3], 0.7, hit)],
    }
    result = _coco(dets, gt, names)
    pc = result["per_class"]
    assert pc[names[0]]["AP50"] == pytest.approx(1.0) and pc[names[1]]["AP50"] == pytest.approx(0.0)
    groups = {names[0]: "seen", names[1]: "unseen_combination", names[2]: "unseen_type",
              names[3]: "unseen_type"}  # fmt: skip
    per_group = group_metrics(pc, groups)
    assert list(per_group) == ["seen", "unseen_combination", "unseen_type"]
    assert per_group["seen"]["AP50"] == pytest.approx(1.0)
    assert per_group["unseen_combination"]["AP50"] == pytest.approx(0.0)
    # the class without ground truth does not count; the group's AP50 is that of COCOeval on its classes
    assert per_group["unseen_type"]["AP50"] == pytest.approx(pc[names[2]]["AP50"])
    assert per_group["unseen_type"]["classes"] == names[2:] and per_group["unseen_type"]["n_gt"] == 2
    gt2 = coco_ground_truth([(100, 100)] * 4, boxes, cls, names)
    both = coco_evaluate(gt2, [r for r in _results(dets) if r["category_id"] in (1, 2)], names)
    sub = group_metrics(both["per_class"], {names[0]: "g", names[1]: "g"})
    assert sub["g"]["AP50"] == pytest.approx(0.5)  # mean of 1.0 and 0.0
    assert group_metrics(pc, {}) == {}


def _results(dets):
    return [
        {"image_id": i, "category_id": d.class_id + 1, "score": d.score,
         "bbox": [d.box[0], d.box[1], d.box[2] - d.box[0], d.box[3] - d.box[1]]}
        for i, ds in dets.items() for d in ds
    ]  # fmt: skip


def test_rtvp_eval_reports_ap50_per_group(comp_root, tmp_path, capsys):
    from tests.test_train_helpers import make_tiny_checkpoint
    from training.evaluate import main

    seen = [{"name": c.name, "prompt": c.prompt} for c in DEFAULT_SPLIT.classes() if c.seen]
    ckpt = make_tiny_checkpoint(tmp_path / "run" / "best.pt", seen)
    common = ["--checkpoint", str(ckpt), "--data", str(comp_root), "--device", "cpu", "--samples", "0",
              "--text-cache", str(tmp_path / "c")]  # fmt: skip
    for classes, want in (
        ("unseen", ["unseen_combination", "unseen_type"]),
        ("unseen_type", ["unseen_type"]),
        ("all", list(GROUPS)),
    ):
        code = main([*common, "--classes", classes, "--out", str(tmp_path / classes)])
        out = capsys.readouterr().out
        assert code == 0
        report = json.loads((tmp_path / classes / "eval.json").read_text())
        assert list(report["per_group"]) == want
        for g in want:
            assert report["per_group"][g]["classes"] == [
                n for n, x in DEFAULT_SPLIT.groups().items() if x == g
            ]
            assert f"group {g}" in out
