import numpy as np
import pytest

from rtvp_edge.preprocess import (
    PreprocessSpec,
    boxes_to_image,
    boxes_to_input,
    clip_crop,
    letterbox,
    preprocess,
)


def test_letterbox_keeps_aspect_and_centres():
    img = np.zeros((820, 700, 3), np.uint8)
    out, lb = letterbox(img, (640, 640))
    assert out.shape == (640, 640, 3)
    assert lb.scale == pytest.approx(640 / 820)
    assert lb.pad_y == 0 and lb.pad_x == pytest.approx((640 - round(700 * 640 / 820)) // 2, abs=1)
    # the padding really is the pad value, the image region is the image
    assert out[:, 0].mean() == 114 and out[320, 320].sum() == 0


def test_box_roundtrip_between_image_and_input():
    img = np.zeros((820, 700, 3), np.uint8)
    _, lb = letterbox(img, (416, 416))
    boxes = np.array([[10, 20, 110, 220], [600, 700, 699, 819]], np.float32)
    back = boxes_to_image(boxes_to_input(boxes, lb), lb)
    np.testing.assert_allclose(back, boxes, atol=1e-3)


def test_preprocess_normalises_in_rgb_order():
    img = np.zeros((32, 32, 3), np.uint8)
    img[..., 2] = 255  # red in BGR
    spec = PreprocessSpec(input_size=(32, 32), mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5))
    batch, lbs = preprocess([img, img], spec)
    assert batch.shape == (2, 3, 32, 32) and batch.dtype == np.float32
    np.testing.assert_allclose(batch[0, 0], 1.0)  # R channel first, (1-0.5)/0.5
    np.testing.assert_allclose(batch[0, 2], -1.0)
    with pytest.raises(ValueError, match="uint8"):
        preprocess([img.astype(np.float32)], spec)


def test_lookup_table_normalisation_matches_float_formula():
    rng = np.random.default_rng(0)
    imgs = [rng.integers(0, 256, (82, 70, 3), dtype=np.uint8) for _ in range(2)]
    spec = PreprocessSpec(input_size=(64, 48), mean=(0.1, 0.2, 0.3), std=(0.5, 0.6, 0.7))
    batch, _ = preprocess(imgs, spec)
    for b, img in zip(batch, imgs, strict=True):
        lb_img, _ = letterbox(img, spec.input_size, spec.pad_value)
        x = lb_img[:, :, ::-1].transpose(2, 0, 1).astype(np.float32) / 255.0
        ref = (x - np.float32(spec.mean).reshape(3, 1, 1)) / np.float32(spec.std).reshape(3, 1, 1)
        np.testing.assert_allclose(b, ref, atol=1e-6)


# ---------------------------------------------------------------- crop (the container's region of a view)
def test_crop_then_letterbox_equals_letterboxing_the_cropped_region():
    rng = np.random.default_rng(0)
    img = rng.integers(0, 255, (820, 700, 3), dtype=np.uint8)
    crop = (100, 208, 600, 784)
    out, lb = letterbox(img, (576, 512), crop=crop)
    ref, ref_lb = letterbox(np.ascontiguousarray(img[208:784, 100:600]), (576, 512))
    assert np.array_equal(out, ref)
    assert (lb.crop_x, lb.crop_y, lb.image_size) == (100, 208, (820, 700))
    assert lb.scale == ref_lb.scale == 1.0  # the region at its native resolution: a 10 px defect stays 10 px


def test_boxes_round_trip_through_a_crop_into_camera_pixels():
    img = np.zeros((820, 700, 3), np.uint8)
    _, lb = letterbox(img, (448, 384), crop=(100, 208, 600, 784))
    boxes = np.array([[150.0, 300.0, 170.0, 330.0], [400.0, 700.0, 440.0, 712.0]], np.float32)
    inp = boxes_to_input(boxes, lb)
    assert inp[0, 0] == pytest.approx((150 - 100) * lb.scale + lb.pad_x)
    assert np.allclose(boxes_to_image(inp, lb), boxes, atol=1e-3)


def test_a_crop_outside_a_small_frame_falls_back_to_the_whole_frame():
    assert clip_crop((100, 208, 600, 784), (820, 700)) == (100, 208, 600, 784)
    assert clip_crop((100, 208, 600, 784), (410, 350)) == (100, 208, 350, 410)  # clipped
    assert clip_crop((500, 500, 600, 600), (410, 350)) == (0, 0, 350, 410)  # nothing left: all of it
    with pytest.raises(ValueError, match="crop"):
        PreprocessSpec(crop=(10, 10, 5, 20))


def test_per_camera_crops_replace_the_bundle_crop():
    rng = np.random.default_rng(1)
    imgs = [rng.integers(0, 255, (820, 700, 3), dtype=np.uint8) for _ in range(2)]
    spec = PreprocessSpec(input_size=(256, 224), crop=(100, 208, 600, 784))
    batch, lbs = preprocess(imgs, spec, crops=[None, (0, 0, 350, 410)])
    alone, _ = preprocess(imgs[:1], spec)
    assert np.array_equal(batch[0], alone[0])
    assert (lbs[0].crop_x, lbs[1].crop_x, lbs[1].crop_y) == (100, 0, 0)
    own, _ = preprocess(imgs[1:], spec.with_crop((0, 0, 350, 410)))
    assert np.array_equal(batch[1], own[0])


def test_spec_dict_round_trip_and_the_bundle_carries_the_crop():
    from rtvp_edge.bundle import PreprocessInfo

    spec = PreprocessSpec(input_size=(576, 512), crop=(100, 208, 600, 784))
    assert PreprocessSpec.from_dict(spec.to_dict()) == spec
    assert PreprocessSpec.from_dict({"input_size": [320, 320]}).crop is None  # older checkpoints
    info = PreprocessInfo(input_size=(576, 512), crop=(100, 208, 600, 784))
    assert info.spec() == spec
