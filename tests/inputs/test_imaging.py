import cv2
import numpy as np
import pytest

from workflow.demo import exif_rotated_jpeg, make_bad_inputs
from workflow.inputs.imaging import (
    ImageOptions,
    Status,
    apply_orientation,
    exif_orientation,
    jpeg_is_complete,
    preprocess_image,
    reduction_factor,
    sniff,
)

from conftest import jpeg_bytes

OPTS = ImageOptions(image_size=64)


def _decode(jpeg: bytes) -> np.ndarray:
    img = cv2.imdecode(np.frombuffer(jpeg, np.uint8), cv2.IMREAD_UNCHANGED)
    assert img is not None and img.ndim == 3 and img.shape[2] == 3 and img.dtype == np.uint8
    return img


def test_bad_input_zoo_is_recorded_never_raised(tmp_path):
    expected = make_bad_inputs(tmp_path)
    assert {"empty", "corrupt", "not_image", "unsupported", "too_large", "ok"} <= \
        set(expected.values())
    for name, kind in expected.items():
        r = preprocess_image((tmp_path / name).read_bytes(), ImageOptions())
        assert Status(r.status).label == kind, (name, r.reason)
        assert bool(r.jpeg) == (kind == "ok") and (kind == "ok") == (r.reason == "")
        if kind == "ok":
            assert min(_decode(r.jpeg).shape[:2]) <= 256
        assert len(r.content_hash) == 32


def test_unreadable_keeps_the_read_error():
    r = preprocess_image(None, OPTS, "FileNotFoundError: x.jpg")
    assert r.status == Status.UNREADABLE and "x.jpg" in r.reason and r.content_hash == ""


@pytest.mark.parametrize("w, h, target, factor", [
    (4000, 3000, 256, 8), (4000, 3000, 400, 4), (500, 375, 256, 1), (1024, 768, 256, 2),
    (2048, 2047, 256, 4), (300, 5000, 256, 1), (100, 100, 256, 1)])
def test_reduction_factor(w, h, target, factor):
    assert reduction_factor(w, h, target) == factor


def test_reduced_decoding_matches_full_decoding_closely():
    data = jpeg_bytes(2000, 1500, seed=3)
    fast = preprocess_image(data, ImageOptions(image_size=128))
    slow = preprocess_image(data, ImageOptions(image_size=128, reduced_decode=False))
    a, b = _decode(fast.jpeg), _decode(slow.jpeg)
    assert a.shape == b.shape == (128, 171, 3)
    assert np.abs(a.astype(int) - b).mean() < 3
    assert (fast.width, fast.height) == (2000, 1500)


def test_small_images_are_not_upscaled():
    r = preprocess_image(jpeg_bytes(32, 24), ImageOptions(image_size=256))
    assert _decode(r.jpeg).shape == (24, 32, 3)


def test_exif_orientation_is_applied():
    display = np.zeros((60, 100, 3), np.uint8)
    display[:, :50] = 255                      # left half white when displayed
    data = exif_rotated_jpeg(display, 6, 95)
    assert exif_orientation(data) == 6
    assert sniff(data)[1:] == (60, 100)        # stored rotated: 60 wide, 100 tall
    r = preprocess_image(data, ImageOptions(image_size=64))
    img = _decode(r.jpeg)
    assert (r.width, r.height) == (100, 60) and img.shape[:2] == (60, 100)
    assert img[:, :45].mean() > 200 and img[:, 55:].mean() < 50


@pytest.mark.parametrize("o", range(1, 9))
def test_orientations_round_trip(o):
    img = np.arange(12, dtype=np.uint8).reshape(3, 4)
    out = apply_orientation(img, o)
    assert out.shape == ((3, 4) if o < 5 else (4, 3))


def test_conversions_to_8bit_rgb():
    rgba = np.zeros((40, 40, 4), np.uint8)
    rgba[..., 2] = 255                          # red, fully transparent on the left
    rgba[:, 20:, 3] = 255
    gray16 = (np.linspace(0, 65535, 40 * 40).reshape(40, 40)).astype(np.uint16)
    for arr, check in [
        (rgba, lambda im: im[:, :15].min() > 240 and im[:, 25:, 2].mean() > 240
         and im[:, 25:, :2].mean() < 20),
        (gray16, lambda im: im[0, 0].max() < 5 and im[-1, -1].min() > 240),
        (np.full((30, 30), 128, np.uint8), lambda im: abs(int(im.mean()) - 128) < 3),
    ]:
        ok, png = cv2.imencode(".png", arr)
        r = preprocess_image(png.tobytes(), OPTS)
        assert r.status == Status.OK, r.reason
        assert check(_decode(r.jpeg))


def test_truncation_and_size_guards():
    data = jpeg_bytes(300, 200)
    assert jpeg_is_complete(data) and not jpeg_is_complete(data[: len(data) * 2 // 3])
    r = preprocess_image(data, ImageOptions(max_pixels=300 * 200 - 1))
    assert r.status == Status.TOO_LARGE and (r.width, r.height) == (300, 200)


def test_hostile_inputs_get_their_status_and_usable_outputs(tmp_path):
    from workflow.inputs.imaging import model_input

    from hostile import make_hostile_inputs
    expected = make_hostile_inputs(tmp_path)
    assert len(expected) >= 30 and len(set(expected.values())) == 6
    for name, kind in expected.items():
        r = preprocess_image((tmp_path / name).read_bytes(), ImageOptions())
        assert Status(r.status).label == kind, (name, r.reason)
        assert (kind == "ok") == bool(r.jpeg) == (r.reason == ""), name
        if kind == "ok":
            assert model_input(r.jpeg, 224).shape == (224, 224, 3), name
    strip = preprocess_image((tmp_path / "strip-30000x10.png").read_bytes(), ImageOptions())
    assert _decode(strip.jpeg).shape[:2] == (10, 30000)  # never upscaled
