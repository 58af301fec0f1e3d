"""Perceptual hashes (pHash: the signs of an image's lowest 8x8 DCT frequencies against
their median, as imagehash computes it, which imagededup and many users rely on) and
their Hamming distances. The duplicates stage uses them to confirm near-exact copies
(resized, recompressed, re-exposed, captioned) whose CNN similarity a small original
made drop."""
from __future__ import annotations

import cv2
import numpy as np
from scipy.fftpack import dct

HASH_DISTANCE = 10  # bits of 64: pHash's own near-copy distance (imagededup's default)
HASH_MARGIN = 0.20  # how far below the duplicates threshold a pHash-confirmed pair may be
POPCOUNT = np.array([bin(i).count("1") for i in range(256)], np.uint8)


def phash(data: bytes) -> int | None:
    """The 64-bit pHash of an encoded image, or None if it cannot be decoded."""
    img = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_GRAYSCALE)
    if img is None:
        return None
    small = cv2.resize(img, (32, 32), interpolation=cv2.INTER_AREA).astype(np.float64)
    low = dct(dct(small, axis=0), axis=1)[:8, :8]
    bits = (low > np.median(low)).ravel()
    return int.from_bytes(np.packbits(bits).tobytes(), "big")


def hamming(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Bit differences between uint64 hashes (broadcast as numpy does)."""
    x = np.asarray(np.asarray(a, np.uint64) ^ np.asarray(b, np.uint64))
    flat = np.ascontiguousarray(x.reshape(-1)).view(np.uint8).reshape(-1, 8)
    return POPCOUNT[flat].sum(axis=1, dtype=np.int64).reshape(x.shape)
