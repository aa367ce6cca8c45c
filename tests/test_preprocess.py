import numpy as np
import pytest

from rtvp_edge.preprocess import PreprocessSpec, boxes_to_image, boxes_to_input, letterbox, preprocess


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
