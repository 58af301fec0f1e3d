"""Seeded, realistic edits of a picture: what turns one photo into the near-copies people
find in their collections (resized, recompressed, cropped, re-exposed, captioned,
straightened, mirrored). The duplicates stage embeds such edits of a sample of the
corpus to learn where near-copies land for the store's own model; the quality
benchmark and test build labelled near-duplicate sets with them."""
from __future__ import annotations

import cv2
import numpy as np

KINDS = ("downscale", "jpeg", "crop", "light", "text", "rotate", "flip")
CALIBRATION_KINDS = KINDS[:-1]  # a mirror image is a near-copy only for some uses
WORDS = ("holiday 2019", "IMG_0412", "(c) photo", "family", "sale!", "best of")


def edit(img: np.ndarray, kind: str, rng: np.random.Generator) -> tuple[np.ndarray, int]:
    """(edited BGR image, JPEG quality to save it with) for one kind of edit."""
    h, w = img.shape[:2]
    quality = int(rng.integers(85, 96))
    if kind == "downscale":
        s = rng.uniform(0.3, 0.7)
        img = cv2.resize(img, (max(8, round(w * s)), max(8, round(h * s))),
                         interpolation=cv2.INTER_AREA)
    elif kind == "jpeg":
        quality = int(rng.integers(30, 96))
    elif kind == "crop":
        fx, fy = rng.uniform(0, 0.15, 2)
        cw, ch = round(w * (1 - fx)), round(h * (1 - fy))
        x0, y0 = int(rng.integers(0, w - cw + 1)), int(rng.integers(0, h - ch + 1))
        img = img[y0:y0 + ch, x0:x0 + cw]
    elif kind == "light":
        alpha, beta = rng.uniform(0.75, 1.3), rng.uniform(-30, 30)
        img = cv2.convertScaleAbs(img, alpha=alpha, beta=beta)
    elif kind == "text":
        img = img.copy()
        scale = max(0.4, min(w, h) / 300)
        org = (int(rng.integers(0, max(1, w // 3))), int(rng.integers(h // 2, h)))
        colour = tuple(int(c) for c in rng.integers(0, 256, 3))
        cv2.putText(img, WORDS[int(rng.integers(len(WORDS)))], org, cv2.FONT_HERSHEY_SIMPLEX,
                    scale, colour, max(1, round(2 * scale)), cv2.LINE_AA)
    elif kind == "rotate":
        angle = rng.uniform(2, 6) * rng.choice([-1, 1])
        m = cv2.getRotationMatrix2D((w / 2, h / 2), angle, 1.0)
        img = cv2.warpAffine(img, m, (w, h), borderMode=cv2.BORDER_REFLECT)
    elif kind == "flip":
        img = img[:, ::-1]
    else:
        raise ValueError(f"unknown edit {kind!r}: one of {', '.join(KINDS)}")
    return np.ascontiguousarray(img), quality


def edited_jpeg(data: bytes, kind: str, rng: np.random.Generator) -> bytes:
    """A JPEG of the edited picture (`data`: any image OpenCV decodes)."""
    img = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
    if img is None:
        raise ValueError("not an image OpenCV can decode")
    out, quality = edit(img, kind, rng)
    ok, buf = cv2.imencode(".jpg", out, [cv2.IMWRITE_JPEG_QUALITY, quality])
    assert ok
    return buf.tobytes()
