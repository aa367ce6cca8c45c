"""Enrolment of a defect type from example boxes (issue 16 section 2), on the small detector double.

The export gives input-mode bundles a region-embedding output; ``rtvp-edge enroll`` averages those inside a
few boxes into a new class embedding. Real export, real OpenVINO / ONNX Runtime inference.
"""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from export.options import BundleOptions, ExportOptions
from export.pipeline import export_bundle
from export.source import ExportSource
from export.testing import TinyGlassDetector
from rtvp_edge.backends import load_backend, load_embeddings
from rtvp_edge.bundle import BundleError, VocabularyClass, load_manifest
from rtvp_edge.preprocess import PreprocessSpec, preprocess
from rtvp_edge.vocabulary import GLASS_DEFECTS

torch.set_num_threads(1)
SIZE = (128, 128)
DIM = 32
THRESHOLD = 0.15
SEEN = 5  # the bundle's vocabulary: the first five glass classes; "crack" is enrolled


def _classes(n: int) -> list[VocabularyClass]:
    return [VocabularyClass(name=c.name, prompt=c.prompt) for c in GLASS_DEFECTS[:n]]


def _source(n: int = SEEN, dim: int = DIM, seed: int = 0) -> ExportSource:
    torch.manual_seed(seed)
    g = torch.Generator().manual_seed(seed)
    emb = torch.nn.functional.normalize(torch.randn(n, dim, generator=g), dim=-1)
    return ExportSource(
        model=TinyGlassDetector(SIZE, dim).eval(),
        model_name="tiny_double",
        preprocess=PreprocessSpec(SIZE),
        classes=_classes(n),
        text_encoder=f"random:{dim}",
        text_embeddings=emb,
    )


def _options(data, target: str, vocab_mode: str = "folded") -> ExportOptions:
    """A float export (``data`` is unused: no calibration, no accuracy guard)."""
    bundle = BundleOptions(vocab_mode=vocab_mode, golden_count=2, score_threshold=THRESHOLD)
    return ExportOptions(target=target, bundle=bundle, progress=False)


@pytest.fixture(scope="module")
def glass_data(tmp_path_factory):
    gen = pytest.importorskip("training.data.generate", reason="the rig's data generator is not installed")
    out = tmp_path_factory.mktemp("glass")
    return gen.generate_dataset(out, containers=8, protocol="closed", seed=3, progress=False)["closed"]


@pytest.fixture(scope="module")
def input_bundle(glass_data, tmp_path_factory):
    """An OpenVINO input-mode bundle (with ONNX) of the double; tests copy it before changing it."""
    out = tmp_path_factory.mktemp("bundles") / "input"
    export_bundle(_source(), out, _options(glass_data, target="openvino", vocab_mode="input"))
    return out


@pytest.fixture(scope="module")
def folded_bundle(glass_data, tmp_path_factory):
    out = tmp_path_factory.mktemp("bundles") / "folded"
    export_bundle(_source(), out, _options(glass_data, target="onnx"))
    return out


def _image(glass_data):

    from export.calibration import list_images

    return cv2.imread(str(list_images(glass_data / "Images" / "val")[0]))


@pytest.mark.parametrize("backend", ["openvino", "onnxruntime"])
def test_input_bundle_exports_region_embeddings_the_scores_are_made_of(input_bundle, glass_data, backend):
    m = load_manifest(input_bundle)
    assert m.io.region_output == "region_embeddings"
    be = load_backend(backend, input_bundle, m)
    emb = load_embeddings(input_bundle, m)
    batch, _ = preprocess([_image(glass_data)] * 3, m.preprocess.spec())  # 3: the IR's static batch pads
    boxes, scores, regions = be.infer_regions(batch, emb)
    n = boxes.shape[1]
    assert regions.shape == (3, n, DIM)
    np.testing.assert_allclose(np.linalg.norm(regions, axis=-1), 1.0, atol=1e-4)
    # the double's head: sigmoid(scale * <region, text> + bias); the exported regions are those vectors
    head = _source().model.head
    logits = regions @ emb.T * head.logit_scale.item() + head.logit_bias.item()
    np.testing.assert_allclose(scores, 1 / (1 + np.exp(-logits)), atol=5e-3)  # bf16 CPUs
    # the plain path still returns two outputs of the same values
    b2, s2 = be.infer(batch, emb)
    np.testing.assert_allclose(s2, scores, atol=1e-5)


def test_bundles_without_region_output_still_load_and_say_so(folded_bundle, glass_data):
    m = load_manifest(folded_bundle)
    assert m.io.region_output is None and m.vocabulary.center_file is None
    be = load_backend("onnxruntime", folded_bundle, m)
    batch, _ = preprocess([_image(glass_data)], m.preprocess.spec())
    boxes, scores = be.infer(batch, None)
    assert scores.shape[-1] == SEEN
    with pytest.raises(BundleError, match="rtvp-export --vocab-mode input"):
        be.infer_regions(batch, None)


# --------------------------------------------------------------------------------------------- enrolment
import json  # noqa: E402
import shutil  # noqa: E402

from rtvp_edge.cli import main as edge_main  # noqa: E402

NEW = "crack"  # not in the bundle's vocabulary (the first five classes)


def _coco_examples(glass_data, tmp_path, n: int = 3, name: str = NEW, **info) -> Path:
    """A COCO file of ``n`` boxes of ``name`` from the val split (Images/val)."""
    coco = json.loads((glass_data / "annotations" / "val.json").read_text())
    cat = next(c["id"] for c in coco["categories"] if c["name"] == name)
    anns = [a for a in coco["annotations"] if a["category_id"] == cat][:n]
    assert len(anns) == n, "the generated data set has too few boxes of the class"
    ids = {a["image_id"] for a in anns}
    out = tmp_path / "examples.json"
    out.write_text(
        json.dumps(
            {
                "info": info,
                "images": [i for i in coco["images"] if i["id"] in ids],
                "annotations": anns,
                "categories": coco["categories"],
            }
        )
    )
    return out


def _snapshot(bundle: Path) -> dict[str, bytes]:
    return {
        p.relative_to(bundle).as_posix(): p.read_bytes() for p in sorted(bundle.rglob("*")) if p.is_file()
    }


@pytest.fixture
def bundle_copy(input_bundle, tmp_path):
    out = tmp_path / "bundle"
    shutil.copytree(input_bundle, out)
    return out


def test_enroll_adds_a_class_from_example_boxes_and_the_runtime_detects_it(
    input_bundle, bundle_copy, glass_data, tmp_path, capsys
):
    from rtvp_edge import Detector

    examples = _coco_examples(glass_data, tmp_path)
    images = glass_data / "Images" / "val"
    before = load_manifest(bundle_copy)
    rc = edge_main(
        [
            "enroll",
            "--bundle",
            str(bundle_copy),
            "--name",
            NEW,
            "--examples",
            str(examples),
            "--images",
            str(images),
        ]
    )
    assert rc == 0, capsys.readouterr().err
    assert f"enrolled {NEW!r} from 3 example boxes" in capsys.readouterr().out
    m = load_manifest(bundle_copy)  # hashes rewritten and consistent
    assert [c.name for c in m.vocabulary.classes] == [c.name for c in before.vocabulary.classes] + [NEW]
    entry = m.vocabulary.enrolled[NEW]
    assert entry["source"] == "exemplars" and entry["examples"] == 3 and len(entry["exemplar_scores"]) == 3
    thr = m.thresholds.class_scores[NEW]
    assert thr == pytest.approx(
        max(0.01, min(before.thresholds.score, 0.5 * min(entry["exemplar_scores"]))), abs=1e-4
    )
    for f in ("model.onnx", "openvino/model.xml", "openvino/model.bin"):  # no recompilation
        assert m.files[f] == before.files[f]
    emb = np.load(bundle_copy / "text_embeddings.npy")
    assert emb.shape == (SEEN + 1, DIM)
    np.testing.assert_allclose(np.linalg.norm(emb, axis=1), 1.0, atol=1e-5)
    np.testing.assert_array_equal(emb[:SEEN], load_embeddings(input_bundle, load_manifest(input_bundle)))
    # the line's loader (hashes + golden self-test with the new vocabulary) accepts it, and the new class is
    # found on the example boxes
    coco = json.loads(examples.read_text())
    files = {i["id"]: images / i["file_name"] for i in coco["images"]}
    with Detector(bundle_copy) as det:
        assert det.class_names[-1] == NEW
        hits, seen = 0, []
        for a in coco["annotations"]:
            x, y, w, h = a["bbox"]
            dets = det.predict([cv2.imread(str(files[a["image_id"]]))])[0]
            seen.append([(d.class_name, round(d.score, 2), [round(v) for v in d.box]) for d in dets])
            # the double's boxes are untrained (loose): the new class's detection must overlap the box
            hits += any(
                d.class_name == NEW
                and d.box[0] < x + w
                and d.box[2] > x
                and d.box[1] < y + h
                and d.box[3] > y
                for d in dets
            )
    assert hits >= 2, f"the enrolled class was found on {hits} of its 3 example boxes: {seen}"


def test_enroll_python_api_writes_a_new_bundle_and_drops_a_signature(
    bundle_copy, glass_data, tmp_path, caplog
):
    cryptography = pytest.importorskip("cryptography")
    del cryptography
    import subprocess

    from rtvp_edge import enroll
    from rtvp_edge.bundle import SIGNATURE, sign_bundle

    key = tmp_path / "key.pem"
    subprocess.run(["openssl", "genpkey", "-algorithm", "ed25519", "-out", str(key)], check=True)
    sign_bundle(bundle_copy, key)
    before = _snapshot(bundle_copy)
    examples = _coco_examples(glass_data, tmp_path, n=2)
    out = tmp_path / "enrolled"
    done = enroll(
        bundle_copy, NEW, examples, out=out, images_dir=glass_data / "Images" / "val", prompt="a crack"
    )
    assert done.result.signature_dropped and not (out / SIGNATURE).exists()
    assert "signature" in caplog.text
    assert _snapshot(bundle_copy) == before  # --out: the source bundle is untouched
    m = load_manifest(out)
    assert m.vocabulary.classes[-1] == VocabularyClass(name=NEW, prompt="a crack")
    assert m.vocabulary.enrolled[NEW]["examples"] == 2


def _write(tmp_path, name: str, content) -> Path:
    p = tmp_path / name
    p.write_text(content if isinstance(content, str) else json.dumps(content))
    return p


@pytest.mark.parametrize(
    "case, message",
    [
        ("zero boxes", "no example boxes"),
        ("eleven boxes", "11 example boxes; give 1 to 10"),
        ("outside", "is outside the image"),
        ("inverted", "must have x2 > x1"),
        ("existing name", "already in the vocabulary"),
        ("unreadable image", "cannot be read"),
        ("other model", "the examples are for model 'rtvpnet_s'"),
        (
            "bad yaml key",
            "ex.yaml:2: examples.0.bbox: unknown key (check the spelling; valid keys here: box, image)",
        ),
        ("short yaml box", "ex.yaml:2: examples.0.box.3: item missing"),
    ],
)
def test_enroll_bad_input_is_refused_and_changes_nothing(
    bundle_copy, glass_data, tmp_path, capsys, case, message
):
    images = glass_data / "Images" / "val"
    coco = json.loads((glass_data / "annotations" / "val.json").read_text())
    img = coco["images"][0]
    good = {"image": str(images / img["file_name"]), "box": [100, 100, 140, 130]}
    name = NEW
    if case == "zero boxes":
        examples = _write(tmp_path, "ex.yaml", "[]\n")
    elif case == "eleven boxes":
        examples = _write(tmp_path, "ex.json", [good] * 11)
    elif case == "outside":
        examples = _write(tmp_path, "ex.json", [{**good, "box": [600, 700, 720, 830]}])
    elif case == "inverted":
        examples = _write(tmp_path, "ex.json", [{**good, "box": [140, 100, 100, 130]}])
    elif case == "existing name":
        examples, name = _write(tmp_path, "ex.json", [good]), "oil"
    elif case == "unreadable image":
        (tmp_path / "broken.png").write_bytes(b"not a png")
        examples = _write(tmp_path, "ex.json", [{**good, "image": "broken.png"}])
    elif case == "other model":
        examples = _coco_examples(glass_data, tmp_path, n=1, model="rtvpnet_s")
    elif case == "short yaml box":
        examples = _write(tmp_path, "ex.yaml", f"- image: {good['image']}\n  box: [1, 2, 3]\n")
    else:
        examples = _write(tmp_path, "ex.yaml", f"- image: {good['image']}\n  bbox: [1, 2, 3, 4]\n")
    before = _snapshot(bundle_copy)
    rc = edge_main(
        [
            "enroll",
            "--bundle",
            str(bundle_copy),
            "--name",
            name,
            "--examples",
            str(examples),
            "--images",
            str(images),
        ]
    )
    err = capsys.readouterr().err
    assert rc == 2 and message in err, err
    assert _snapshot(bundle_copy) == before
    assert not list(bundle_copy.parent.glob(".bundle.partial-*"))


def test_enroll_refuses_a_folded_bundle_naming_the_export_flag(folded_bundle, glass_data, tmp_path, capsys):
    examples = _coco_examples(glass_data, tmp_path, n=1)
    before = _snapshot(folded_bundle)
    rc = edge_main(["enroll", "--bundle", str(folded_bundle), "--name", NEW, "--examples", str(examples)])
    err = capsys.readouterr().err
    assert rc == 2 and "rtvp-export --vocab-mode input" in err, err
    assert _snapshot(folded_bundle) == before


def test_class_embedding_maps_back_to_the_prototype_through_the_graphs_centring():
    from rtvp_edge.enrolment import EnrollError, class_embedding

    rng = np.random.default_rng(0)
    prompts = rng.normal(size=(5, DIM))
    prompts /= np.linalg.norm(prompts, axis=1, keepdims=True)
    center = prompts.mean(0)
    p = rng.normal(size=DIM)
    p /= np.linalg.norm(p)
    e = class_embedding(p, center)
    assert np.linalg.norm(e) == pytest.approx(1.0, abs=1e-5)
    t = e - center
    np.testing.assert_allclose(
        t / np.linalg.norm(t), p, atol=1e-5
    )  # what RTVPNet's _prepare_text makes of it
    with pytest.raises(EnrollError, match="not this model's"):  # a centre of another width: another model
        class_embedding(p, center[:16])


def test_enroll_reads_the_hard_sample_folders_coco_file(bundle_copy, glass_data, tmp_path, capsys):
    """The hard-sample folder's COCO file as written (predictions of several classes): enrolling from it
    without saying which boxes is refused; ``--category`` takes the boxes of a predicted class the user kept
    (here the crack boxes, predicted as "oil")."""
    from rtvp_edge.hard_samples import COCO_FILE, HardSampleWriter
    from rtvp_edge.messages import Detection, Frame, PartVerdict, ViewResult

    coco = json.loads((glass_data / "annotations" / "val.json").read_text())
    crack = next(c["id"] for c in coco["categories"] if c["name"] == NEW)
    by_image = {}
    for a in coco["annotations"]:
        x, y, w, h = a["bbox"]
        name = "oil" if a["category_id"] == crack else "bubble"
        by_image.setdefault(a["image_id"], []).append(Detection(0, name, 0.6, (x, y, x + w, y + h)))
    hs = HardSampleWriter(tmp_path / "hs", [c.name for c in _classes(SEEN)], {"name": "tiny_double"})
    cracks = 0
    for k, img in enumerate(coco["images"]):
        dets = tuple(by_image.get(img["id"], ()))
        if not dets or cracks >= 3:
            continue
        cracks += sum(d.class_name == "oil" for d in dets)
        image = cv2.imread(str(glass_data / "Images" / "val" / img["file_name"]))
        verdict = PartVerdict(f"P{k}", k, "NG", (ViewResult("C1", 0, k, 0.0, dets),), decided_time=1e9 + k)
        hs(verdict, (Frame("C1", 0, k, 0.0, image),))
    hs.close()
    assert cracks >= 2 and hs.written >= 2
    examples = tmp_path / "hs" / COCO_FILE
    base = ["enroll", "--bundle", str(bundle_copy), "--name", NEW, "--examples", str(examples)]
    before = _snapshot(bundle_copy)
    assert edge_main(base) == 2
    err = capsys.readouterr().err
    assert "no category named 'crack'" in err and "--category" in err, err
    assert edge_main([*base, "--category", "amber"]) == 2
    assert "--category 'amber' is not among its categories" in capsys.readouterr().err
    assert _snapshot(bundle_copy) == before
    assert edge_main([*base, "--category", "oil"]) == 0, capsys.readouterr().err
    assert f"enrolled {NEW!r} from {cracks} example boxes" in capsys.readouterr().out
    m = load_manifest(bundle_copy)
    assert m.vocabulary.classes[-1].name == NEW and m.vocabulary.enrolled[NEW]["examples"] == cracks
