"""The seeded edits that make near-copies (calibration and the quality benchmark)."""
import cv2
import numpy as np
import pytest

from workflow.inputs.edits import KINDS, edited_jpeg

from conftest import jpeg_bytes


@pytest.mark.parametrize("kind", KINDS)
def test_each_edit_is_a_real_change_and_repeatable(kind):
    src = jpeg_bytes(320, 240, seed=1)
    out = edited_jpeg(src, kind, np.random.default_rng(5))
    assert out == edited_jpeg(src, kind, np.random.default_rng(5))
    a = cv2.imdecode(np.frombuffer(src, np.uint8), cv2.IMREAD_COLOR)
    b = cv2.imdecode(np.frombuffer(out, np.uint8), cv2.IMREAD_COLOR)
    assert b is not None and b.shape[2] == 3
    if kind == "downscale":
        assert 0.29 * 320 <= b.shape[1] <= 0.71 * 320
    elif kind == "crop":
        assert b.shape[0] < 240 or b.shape[1] < 320
    elif kind == "flip":
        assert np.abs(b.astype(int) - a[:, ::-1].astype(int)).mean() < 8
    else:
        assert b.shape == a.shape and np.abs(b.astype(int) - a.astype(int)).mean() > 0.5


def test_an_unknown_edit_or_a_non_image_is_refused():
    with pytest.raises(ValueError, match="unknown edit 'blur'"):
        edited_jpeg(jpeg_bytes(64, 64), "blur", np.random.default_rng(0))
    with pytest.raises(ValueError, match="not an image"):
        edited_jpeg(b"not an image", "jpeg", np.random.default_rng(0))
