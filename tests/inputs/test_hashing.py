"""pHash as imagehash computes it, and Hamming distances."""
import cv2
import numpy as np
import pytest

from workflow.inputs.edits import edited_jpeg
from workflow.inputs.hashing import hamming, phash


def test_hamming_counts_differing_bits_with_broadcasting():
    assert int(hamming(np.uint64(0b1011), np.uint64(0b0001))) == 2
    got = hamming(np.uint64(0), np.array([0, 1, 3, 2**64 - 1], np.uint64))
    assert got.tolist() == [0, 1, 2, 64]


def _photo(seed: int) -> bytes:
    """A textured picture (structure at several scales, as photos have)."""
    rng = np.random.default_rng(seed)
    img = sum(cv2.resize(rng.integers(0, 256, (s, s * 4 // 3, 3)).astype(np.float32),
                         (320, 240), interpolation=cv2.INTER_CUBIC) for s in (3, 12, 48)) / 3
    return cv2.imencode(".jpg", np.clip(img, 0, 255).astype(np.uint8))[1].tobytes()


def test_near_copies_are_close_and_other_pictures_far():
    a, b = _photo(1), _photo(2)
    h = phash(a)
    for kind in ("jpeg", "light", "downscale", "text"):
        copy = phash(edited_jpeg(a, kind, np.random.default_rng(0)))
        assert int(hamming(np.uint64(h), np.uint64(copy))) <= 10, kind
    assert int(hamming(np.uint64(h), np.uint64(phash(b)))) > 16
    assert phash(b"not an image") is None


def test_the_same_bits_as_imagehash_within_resampling(shared_assets):
    imagehash = pytest.importorskip("imagehash", reason="imagehash (requirements-dev)")
    from PIL import Image
    paths = sorted((shared_assets / "images" / "flowers12" / "train").rglob("*.jpg"))[:30]
    for p in paths:
        ref = int(str(imagehash.phash(Image.open(p).convert("RGB"))), 16)
        assert int(hamming(np.uint64(phash(p.read_bytes())), np.uint64(ref))) <= 4, p
