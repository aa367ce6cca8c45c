"""Enrolment of a defect type from example boxes (issue 16 section 2), on the small detector double.

The export gives input-mode bundles a region-embedding output; ``rtvp-edge enroll`` averages those inside a
few boxes into a new class embedding. Real export, real OpenVINO / ONNX Runtime inference.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from export.pipeline import ExportOptions, export_bundle
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


def _options(data, **kw) -> ExportOptions:
    base = dict(
        calib_data=data,
        calib_size=16,
        eval_size=12,
        golden_count=2,
        score_threshold=THRESHOLD,
        progress=False,
    )
    base.update(kw)
    return ExportOptions(**base)


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
    import cv2

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
