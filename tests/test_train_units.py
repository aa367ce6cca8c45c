"""Pure parts of training: schedule, EMA, batch sampler, data set vs the shared preprocessing, augmentation,
text-embedding cache."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from rtvp_edge.preprocess import PreprocessSpec, preprocess
from tests.test_train_helpers import HashTextEncoder, load_shapes_split, make_shapes_dataset
from training.augment import hflip, hsv_jitter, random_patch, scale_about_centre
from training.datasets import DataError, DetectionDataset, GlobalBatchSampler, collate, dataset_hash
from training.ema import ModelEMA
from training.schedule import lr_factor, warmup_steps_for
from training.text_cache import text_embeddings


def test_schedule_warmup_then_cosine_to_final():
    total, warm = 100, 10
    f = [lr_factor(s, total, warm, warmup_start=0.1, final_factor=0.05) for s in range(total)]
    assert f[0] == pytest.approx(0.1) and f[warm] == pytest.approx(1.0)
    assert all(a < b for a, b in zip(f[:warm], f[1 : warm + 1], strict=True))  # rising warm-up
    assert all(a >= b for a, b in zip(f[warm:], f[warm + 1 :], strict=False))  # monotone decay
    assert f[-1] == pytest.approx(0.05)
    lin = [lr_factor(s, total, 0, kind="linear", final_factor=0.0) for s in (0, 50, 99)]
    assert lin[0] == 1.0 and lin[2] == pytest.approx(0.0) and 0.45 < lin[1] < 0.55
    assert lr_factor(70, total, 5, kind="constant") == 1.0
    assert warmup_steps_for(3.0, 10, 20) == 19  # never the whole run
    with pytest.raises(ValueError):
        lr_factor(0, 10, 0, kind="exp")


def test_ema_follows_weights_with_ramped_decay():
    model = nn.Linear(2, 1)
    with torch.no_grad():
        model.weight.fill_(0.0)
    ema = ModelEMA(model, decay=0.5, tau=0.0)  # tau 0: constant decay 0.5
    with torch.no_grad():
        model.weight.fill_(1.0)
    ema.update(model)
    assert torch.allclose(ema.module.weight, torch.full((1, 2), 0.5))
    ema.update(model)
    assert torch.allclose(ema.module.weight, torch.full((1, 2), 0.75))
    ramp = ModelEMA(model, decay=0.9, tau=10.0)
    assert ramp.current_decay() == 0.0  # first update copies the weights
    assert not ramp.module.weight.requires_grad


def test_global_batches_do_not_depend_on_process_count():
    one = GlobalBatchSampler(37, 8, 0, 1, seed=3)
    two = [GlobalBatchSampler(37, 8, r, 2, seed=3) for r in range(2)]
    for s in (one, *two):
        s.set_epoch(5)
    batches_two = list(zip(*(list(s) for s in two), strict=True))
    assert len(list(one)) == len(batches_two) == 4  # the incomplete last batch is dropped
    for b1, (r0, r1) in zip(one, batches_two, strict=True):
        assert b1 == r0 + r1
    one.set_epoch(6)
    assert list(one) != [b1 for b1 in GlobalBatchSampler(37, 8, 0, 1, seed=3)]  # reshuffled per epoch
    with pytest.raises(ValueError, match="not divisible"):
        GlobalBatchSampler(37, 9, 0, 2)
    with pytest.raises(ValueError, match="fewer than one batch"):
        GlobalBatchSampler(5, 8, 0, 1)


@pytest.fixture(scope="module")
def shapes(tmp_path_factory):
    return make_shapes_dataset(tmp_path_factory.mktemp("shapes"), n_train=6, n_val=2)


def test_eval_sample_equals_runtime_preprocessing(shapes):
    import cv2

    split = load_shapes_split(shapes, "train")
    spec = PreprocessSpec(input_size=(160, 160), mean=(0.1, 0.2, 0.3), std=(0.5, 0.6, 0.7))
    ds = DetectionDataset(split, split.class_names, spec)
    sample = ds[0]
    ref, lbs = preprocess([cv2.imread(str(split.images[0].path))], spec)
    assert np.array_equal(sample["image"].numpy(), ref[0])  # bit-identical to what the runtime feeds
    # boxes follow the letterbox: input = image * scale + pad
    lb = lbs[0]
    exp = split.images[0].boxes * lb.scale + np.array([lb.pad_x, lb.pad_y, lb.pad_x, lb.pad_y])
    np.testing.assert_allclose(sample["boxes"].numpy(), exp, rtol=1e-6)


def test_vocabulary_subset_drops_other_classes(shapes):
    split = load_shapes_split(shapes, "train")
    ds = DetectionDataset(split, ["blue"], PreprocessSpec(input_size=(128, 128)))
    for i in range(len(ds)):
        boxes, cls = ds.targets_of(i)
        n_blue = int((split.images[i].class_ids == 2).sum())
        assert len(cls) == n_blue and (cls == 0).all()
    with pytest.raises(DataError, match="not in the data set"):
        DetectionDataset(split, ["purple"], PreprocessSpec())


def test_augmented_samples_are_reproducible_and_collate(shapes):
    from training.datasets import AugmentSpec

    split = load_shapes_split(shapes, "train")
    aug = AugmentSpec(flip=0.5, hsv=(0.02, 0.5, 0.3), scale_jitter=0.2)
    ds = DetectionDataset(split, split.class_names, PreprocessSpec(input_size=(128, 128)), aug, seed=1)
    a, b = ds[2], ds[2]
    assert torch.equal(a["image"], b["image"]) and torch.equal(a["boxes"], b["boxes"])
    ds.set_epoch(1)
    assert not torch.equal(ds[2]["image"], a["image"])
    images, targets, meta = collate([ds[0], ds[1], ds[2]])
    assert images.shape == (3, 3, 128, 128)
    m = len(targets["cls"])
    assert targets["boxes"].shape == (m, 4) and targets["batch_idx"].shape == (m,)
    assert set(targets["batch_idx"].tolist()) <= {0, 1, 2} and len(meta) == 3
    assert (targets["boxes"][:, 2:] > targets["boxes"][:, :2]).all()


def test_flip_and_zoom_move_boxes_with_pixels():
    img = np.zeros((64, 64, 3), np.uint8)
    img[10:20, 5:15] = 255
    box = np.array([[5, 10, 15, 20]], np.float32)
    f_img, f_box = hflip(img, box)
    ys, xs = np.nonzero(f_img[:, :, 0])
    assert (xs.min(), xs.max() + 1) == (f_box[0, 0], f_box[0, 2])
    z_img, z_box, keep = scale_about_centre(img, box, 1.5, pad_value=0)
    ys, xs = np.nonzero(z_img[:, :, 0] > 127)
    assert abs(xs.min() - z_box[0, 0]) <= 1 and abs(ys.max() + 1 - z_box[0, 3]) <= 1 and keep.tolist() == [0]
    _, gone, keep = scale_about_centre(img, np.array([[0, 0, 6, 6]], np.float32), 2.0)
    assert len(gone) == 0 and len(keep) == 0  # pushed out of the image: dropped, not clipped to a sliver
    same = hsv_jitter(img, (0.0, 0.0, 0.0), np.random.default_rng(0))
    assert same is img
    grey = np.full((8, 8, 3), 100, np.uint8)
    brighter = hsv_jitter(grey, (0.0, 0.0, 0.5), np.random.default_rng(1))
    assert brighter.shape == grey.shape and brighter.dtype == np.uint8


def test_training_window_moves_boxes_with_pixels_and_sits_on_a_defect():
    img = np.zeros((128, 160, 3), np.uint8)
    img[90:100, 130:150] = 255  # the one defect, near the bottom-right corner
    box = np.array([[130, 90, 150, 100]], np.float32)
    for seed in range(20):
        win, wbox, keep = random_patch(img, box, (64, 96), 1.0, np.random.default_rng(seed))
        assert win.shape == (64, 96, 3) and win.flags["C_CONTIGUOUS"] and keep.tolist() == [0]
        ys, xs = np.nonzero(win[:, :, 0])
        # the box still frames the same pixels (clipped where the window cuts less than half of it)
        assert (xs.min(), ys.min()) == (wbox[0, 0], wbox[0, 1])
        assert (xs.max() + 1, ys.max() + 1) == (wbox[0, 2], wbox[0, 3])
    # the same generator state gives the same window; windows off the defect lose it
    a = random_patch(img, box, (64, 96), 0.5, np.random.default_rng(3))
    b = random_patch(img, box, (64, 96), 0.5, np.random.default_rng(3))
    assert np.array_equal(a[0], b[0]) and np.array_equal(a[1], b[1])
    lost = [len(random_patch(img, box, (32, 32), 0.0, np.random.default_rng(s))[2]) for s in range(30)]
    assert 0 in lost
    none = random_patch(img, np.zeros((0, 4), np.float32), (32, 64), 1.0, np.random.default_rng(0))
    assert none[0].shape == (32, 64, 3) and none[1].shape == (0, 4)
    with pytest.raises(ValueError, match="patch 64x256 is larger than the image 160x128"):
        random_patch(img, box, (256, 64), 1.0, np.random.default_rng(0))


def test_training_windows_of_a_data_set_and_its_whole_inputs(shapes):
    from training.datasets import AugmentSpec

    split = load_shapes_split(shapes, "train")
    spec = PreprocessSpec(input_size=(128, 128))
    aug = AugmentSpec(flip=0.5, hsv=(0.02, 0.5, 0.3), scale_jitter=0.1, patch=(64, 96), patch_on_defect=1.0)
    ds = DetectionDataset(split, split.class_names, spec, aug, seed=1)
    whole = DetectionDataset(split, split.class_names, spec, AugmentSpec(0.5, (0.02, 0.5, 0.3), 0.1), seed=1)
    n_boxes = 0
    for i in range(len(ds)):
        s = ds[i]
        assert s["image"].shape == (3, 64, 96)
        b = s["boxes"]
        assert ((b[:, 0] >= 0) & (b[:, 2] <= 96) & (b[:, 1] >= 0) & (b[:, 3] <= 64)).all()
        n_boxes += len(s["cls"])
        if len(whole[i]["cls"]):
            assert len(s["cls"]) >= 1  # on_defect=1: the window shows at least one of the image's defects
        # batch-norm recalibration sees the whole input with the same augmentation
        assert torch.equal(ds.whole_inputs()[i]["image"], whole[i]["image"])
    assert n_boxes > 0 and ds.whole_inputs().augment.patch is None and ds.augment.patch == (64, 96)
    assert whole.whole_inputs() is whole


def test_bad_images_are_named(shapes, tmp_path):
    from dataclasses import replace

    split = load_shapes_split(shapes, "train")
    spec = PreprocessSpec(input_size=(128, 128))
    missing = replace(split.images[0], path=tmp_path / "gone.png")
    wrong_size = replace(split.images[1], width=999)
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"not a png")
    unreadable = replace(split.images[2], path=broken)
    split.images[:3] = [missing, wrong_size, unreadable]
    ds = DetectionDataset(split, split.class_names, spec)
    with pytest.raises(DataError, match="gone.png: image file not found"):
        ds[0]
    with pytest.raises(DataError, match="annotations say 999x96"):
        ds[1]
    with pytest.raises(DataError, match="broken.png: not a readable image"):
        ds[2]


def test_dataset_hash_changes_with_labels(shapes):
    a = load_shapes_split(shapes, "train")
    b = load_shapes_split(shapes, "train")
    assert dataset_hash(a) == dataset_hash(b)
    b.images[0].boxes[0, 0] += 1
    assert dataset_hash(a) != dataset_hash(b)


def test_text_embeddings_are_cached_per_encoder_and_prompts(tmp_path):
    made = []

    def build(spec):
        made.append(HashTextEncoder(spec))
        return made[-1]

    e1, ident = text_embeddings("hash:32", ["a", "b"], tmp_path, build)
    e2, _ = text_embeddings("hash:32", ["a", "b"], tmp_path, build)
    assert len(made) == 1 and torch.equal(e1, e2) and e1.shape == (2, 32) and ident == "hash:32"
    text_embeddings("hash:32", ["a", "c"], tmp_path, build)
    text_embeddings("other:32", ["a", "b"], tmp_path, build)
    assert len(made) == 3
    for f in tmp_path.glob("*.pt"):
        f.write_bytes(b"corrupt")
    e3, _ = text_embeddings("hash:32", ["a", "b"], tmp_path, build)  # a corrupt entry is recomputed
    assert torch.equal(e1, e3) and len(made) == 4


def test_precise_bn_recomputes_trailing_statistics_but_not_frozen_parts():
    from training.engine import precise_bn

    class Frozen(nn.Sequential):
        def train(self, mode=True):  # like the SAM encoder: stays in eval mode
            return super().train(False)

    model = nn.Sequential(nn.Conv2d(3, 4, 1), nn.BatchNorm2d(4), Frozen(nn.BatchNorm2d(4)))
    frozen_mean = torch.full((4,), 7.0)
    model[2][0].running_mean.copy_(frozen_mean)
    model.eval()
    data = [torch.randn(8, 3, 5, 5) * 3 + 2 for _ in range(4)]
    rng_before = torch.get_rng_state()
    n = precise_bn(model, iter(data), lambda x: model(x), batches=3)
    assert n == 1 and not model.training
    with torch.no_grad():
        feats = torch.cat([model[0](x) for x in data[:3]])
    torch.testing.assert_close(model[1].running_mean, feats.mean((0, 2, 3)), rtol=1e-4, atol=1e-5)
    assert torch.equal(model[2][0].running_mean, frozen_mean)  # the frozen part kept its statistics
    assert model[1].momentum == 0.1  # restored
    assert torch.equal(torch.get_rng_state(), rng_before)


def test_mixed_precision_only_on_cuda():
    from training.engine import amp_dtype

    assert amp_dtype("auto", torch.device("cpu")) is None  # CPU autocast is slower than fp32 for these convs
    assert amp_dtype("bf16", torch.device("cpu")) is None
    assert amp_dtype("off", torch.device("cuda")) is None
    assert amp_dtype("fp16", torch.device("cuda")) is torch.float16


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("amp", ["bf16", "fp16"])
def test_amp_training_step_on_cuda(amp):
    from tests.test_train_helpers import DoubleConfig, build_double
    from training.engine import amp_dtype, training_step

    device = torch.device("cuda")
    model = build_double(DoubleConfig()).to(device)
    opt = torch.optim.AdamW(model.param_groups(1e-3, 0.0), lr=1e-3)
    dtype = amp_dtype(amp, device)
    scaler = torch.amp.GradScaler("cuda", enabled=dtype == torch.float16)
    ema = ModelEMA(model)
    images = torch.rand(2, 3, 128, 128, device=device)
    targets = {
        k: v.to(device)
        for k, v in {
            "batch_idx": torch.tensor([0, 1]),
            "cls": torch.tensor([0, 1]),
            "boxes": torch.tensor([[10.0, 10, 50, 50], [60, 60, 90, 100]]),
        }.items()
    }
    emb = torch.nn.functional.normalize(torch.randn(3, 32, device=device), dim=1)
    before = [p.detach().clone() for p in model.parameters()]
    losses, _ = training_step(model, opt, scaler, ema, images, targets, emb, amp_dtype=dtype)
    assert torch.isfinite(losses["loss"])
    assert any(not torch.equal(a, b) for a, b in zip(before, model.parameters(), strict=True))


def test_boxes_mostly_outside_the_crop_are_no_targets():
    import numpy as np

    from training.datasets import boxes_inside

    boxes = np.array([[110, 300, 130, 320], [90, 300, 106, 320], [95, 300, 130, 320]], np.float32)
    cls = np.array([0, 1, 2])
    kept, kept_cls = boxes_inside(boxes, cls, (100, 208, 600, 784))
    assert kept_cls.tolist() == [0, 2]  # the second keeps 6/16 of its width, the third 30/35
    assert kept[1].tolist() == [100, 300, 130, 320]  # clipped to the region
