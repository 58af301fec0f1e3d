"""The demo corpus's photographs and encoders: scikit-image's bundled photos as subjects,
and the formats a real corpus holds (JPEG, PNG variants, BMP, WebP, CMYK, EXIF-rotated)."""
from __future__ import annotations

import io
import logging
import math
import os
import struct
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
from PIL import Image

log = logging.getLogger(__name__)

SOURCE_FILES = (
    "astronaut.png", "camera.png", "chelsea.png", "coffee.png", "coins.png", "moon.png",
    "grass.png", "gravel.png", "brick.png", "hubble_deep_field.jpg", "ihc.png",
    "motorcycle_left.png", "retina.jpg", "rocket.jpg", "page.png", "text.png",
    "clock_motion.png", "cell.png", "microaneurysms.png", "color.png",
)
MIN_SOURCES = 5
NON_ASCII_SUBJECTS = {"coffee": "café-日本"}  # subject renamed to exercise non-ASCII paths
NON_ASCII_FILE_TAG = "crème-珈琲"             # put in the file names of those subjects
LARGE_SIDE = 1500      # short side of the forced large images (reduced JPEG decoding)
N_LARGE = 2
ARCHIVE_SIZE = 100     # images per uncompressed tar
GZ_COUNT = 5           # images in the one .tar.gz
ORIENTATION_TAG = 0x0112
BOMB_SIDE = 20000


@dataclass(frozen=True)
class Item:
    """One encoded image and where it goes: `<subject>/<name>`."""

    subject: str
    name: str
    data: bytes

    @property
    def member(self) -> str:
        return f"{self.subject}/{self.name}"


# ---------------------------------------------------------------- sources

def skimage_data_dir() -> Path:
    """Folder of the images bundled in the scikit-image wheel (no download involved)."""
    import skimage

    return Path(os.path.dirname(skimage.__file__)) / "data"


def _read_photo(path: Path) -> np.ndarray | None:
    """BGR pixels of a photo file (via Pillow, which stays quiet about odd ICC profiles)."""
    try:
        with Image.open(path) as img:
            return cv2.cvtColor(np.asarray(img.convert("RGB")), cv2.COLOR_RGB2BGR)
    except OSError:
        return None


def load_sources(data_dir: Path | None = None) -> dict[str, np.ndarray]:
    """{subject: BGR image} for the bundled photographs; missing files are skipped."""
    data_dir = data_dir or skimage_data_dir()
    sources = {}
    for file_name in SOURCE_FILES:
        path = data_dir / file_name
        img = _read_photo(path)
        if img is None:
            log.warning("source photo %s is missing or unreadable; skipped", path)
            continue
        stem = path.stem
        sources[NON_ASCII_SUBJECTS.get(stem, stem)] = img
    if len(sources) < MIN_SOURCES:
        raise FileNotFoundError(f"only {len(sources)} of the photos bundled with scikit-image "
                                f"were found in {data_dir}; need at least {MIN_SOURCES}")
    return sources


# ---------------------------------------------------------------- pixel operations

def _bgr(img: np.ndarray) -> np.ndarray:
    return cv2.cvtColor(img, cv2.COLOR_GRAY2BGR) if img.ndim == 2 else img


def _crop(img: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Random crop keeping 50-95% of the area."""
    h, w = img.shape[:2]
    area, aspect = rng.uniform(0.5, 0.95), rng.uniform(0.8, 1.25)
    cw = min(w, round(w * math.sqrt(area * aspect)))
    ch = min(h, round(h * math.sqrt(area / aspect)))
    x, y = int(rng.integers(0, w - cw + 1)), int(rng.integers(0, h - ch + 1))
    return img[y:y + ch, x:x + cw]


def _tilt(img: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Small-angle rotation with a reflected border."""
    h, w = img.shape[:2]
    matrix = cv2.getRotationMatrix2D((w / 2, h / 2), rng.uniform(-12, 12), 1.0)
    return cv2.warpAffine(img, matrix, (w, h), flags=cv2.INTER_LINEAR,
                          borderMode=cv2.BORDER_REFLECT)


def _resize(img: np.ndarray, scale: float) -> np.ndarray:
    h, w = img.shape[:2]
    size = (max(16, round(w * scale)), max(16, round(h * scale)))
    return cv2.resize(img, size, interpolation=cv2.INTER_AREA if scale < 1 else cv2.INTER_CUBIC)


def _colour(img: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """HSV hue/saturation/brightness jitter followed by a gamma curve."""
    hsv = cv2.cvtColor(_bgr(img), cv2.COLOR_BGR2HSV).astype(np.float32)
    hsv[..., 0] = (hsv[..., 0] + rng.uniform(-10, 10)) % 180
    hsv[..., 1] *= rng.uniform(0.6, 1.4)
    hsv[..., 2] *= rng.uniform(0.7, 1.3)
    out = cv2.cvtColor(np.clip(hsv, 0, 255).astype(np.uint8), cv2.COLOR_HSV2BGR)
    lut = np.round((np.arange(256) / 255) ** rng.uniform(0.6, 1.6) * 255).astype(np.uint8)
    return cv2.LUT(out, lut)


def _augment(img: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, list[str]]:
    """A random chain of operations; returns the image and the names of the operations."""
    ops = []
    if rng.random() < 0.6:
        img, ops = _crop(img, rng), ops + ["crop"]
    if rng.random() < 0.35:
        img, ops = cv2.flip(img, 1), ops + ["fliph"]
    if rng.random() < 0.1:
        img, ops = cv2.flip(img, 0), ops + ["flipv"]
    if rng.random() < 0.2:
        k = int(rng.integers(1, 4))
        rotations = (cv2.ROTATE_90_CLOCKWISE, cv2.ROTATE_180, cv2.ROTATE_90_COUNTERCLOCKWISE)
        img, ops = cv2.rotate(img, rotations[k - 1]), ops + [f"rot{90 * k}"]
    elif rng.random() < 0.25:
        img, ops = _tilt(img, rng), ops + ["tilt"]
    if rng.random() < 0.5:
        scale = math.exp(rng.uniform(math.log(0.3), math.log(2.5)))
        img, ops = _resize(img, scale), ops + [f"x{scale:.2f}"]
    if rng.random() < 0.4:
        img, ops = _colour(img, rng), ops + ["colour"]
    if rng.random() < 0.1:
        img, ops = cv2.cvtColor(_bgr(img), cv2.COLOR_BGR2GRAY), ops + ["gray"]
    return img, ops or ["orig"]


def _enlarge(img: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Scale so that the short side is at least LARGE_SIDE."""
    return _resize(img, LARGE_SIDE / min(img.shape[:2]) * rng.uniform(1.01, 1.25))


# ---------------------------------------------------------------- encoders

def _cv_encode(ext: str, img: np.ndarray, *params: int) -> bytes:
    ok, buf = cv2.imencode(ext, img, list(params))
    if not ok:
        raise RuntimeError(f"OpenCV could not encode a {img.shape} image as {ext}")
    return buf.tobytes()


def _pil_encode(img: Image.Image, fmt: str, **kwargs) -> bytes:
    buf = io.BytesIO()
    img.save(buf, fmt, **kwargs)
    return buf.getvalue()


def _to_pil(img: np.ndarray) -> Image.Image:
    return Image.fromarray(cv2.cvtColor(_bgr(img), cv2.COLOR_BGR2RGB))


def _palette(img: np.ndarray) -> Image.Image:
    """8-bit indexed (mode P) version of the image, 64 colours."""
    return _to_pil(img).quantize(64, method=Image.Quantize.FASTOCTREE)


def _with_transparency(img: np.ndarray) -> np.ndarray:
    """BGRA image, transparent outside an inscribed ellipse."""
    h, w = img.shape[:2]
    alpha = np.zeros((h, w), np.uint8)
    cv2.ellipse(alpha, (w // 2, h // 2), (w // 2, h // 2), 0, 0, 360, 255, -1)
    return np.dstack([_bgr(img), alpha])


def exif_segment(orientation: int) -> bytes:
    """APP1 Exif segment: big-endian TIFF header + IFD0 holding only the Orientation tag."""
    ifd = struct.pack(">HHHIHHI", 1, ORIENTATION_TAG, 3, 1, orientation, 0, 0)
    payload = b"Exif\x00\x00" + b"MM\x00\x2a" + struct.pack(">I", 8) + ifd
    return b"\xff\xe1" + struct.pack(">H", len(payload) + 2) + payload


def exif_rotated_jpeg(display: np.ndarray, orientation: int, quality: int) -> bytes:
    """JPEG whose stored pixels are `display` turned so that EXIF `orientation` (6 or 8)
    turns them back; a non-square display is enforced so the turn changes the size."""
    h, w = display.shape[:2]
    if h == w:
        display = display[:, :w - 1]
    turn = cv2.ROTATE_90_COUNTERCLOCKWISE if orientation == 6 else cv2.ROTATE_90_CLOCKWISE
    jpeg = _cv_encode(".jpg", cv2.rotate(display, turn), cv2.IMWRITE_JPEG_QUALITY, quality)
    return jpeg[:2] + exif_segment(orientation) + jpeg[2:]


Encoder = Callable[[np.ndarray, int], bytes]
ENCODERS: dict[str, tuple[str, Encoder]] = {
    "jpeg": (".jpg", lambda img, q: _cv_encode(".jpg", img, cv2.IMWRITE_JPEG_QUALITY, q)),
    "png": (".png", lambda img, q: _cv_encode(".png", img)),
    "rgba": (".png", lambda img, q: _cv_encode(".png", _with_transparency(img))),
    "16bit": (".png", lambda img, q: _cv_encode(".png", img.astype(np.uint16) * 257)),
    "palette": (".png", lambda img, q: _pil_encode(_palette(img), "PNG")),
    "bmp": (".bmp", lambda img, q: _cv_encode(".bmp", img)),
    "webp": (".webp", lambda img, q: _cv_encode(".webp", img, cv2.IMWRITE_WEBP_QUALITY, q)),
    "exif6": (".jpg", lambda img, q: exif_rotated_jpeg(img, 6, q)),
    "exif8": (".jpg", lambda img, q: exif_rotated_jpeg(img, 8, q)),
    "cmyk": (".jpg", lambda img, q: _pil_encode(_to_pil(img).convert("CMYK"), "JPEG",
                                                 quality=q)),
}
SPECIAL_FORMATS = tuple(fmt for fmt in ENCODERS if fmt != "jpeg")


def image_info(data: bytes) -> tuple[tuple[int, int], tuple[int, int], int]:
    """(stored [w, h], display [w, h], EXIF orientation) read from the encoded header."""
    with Image.open(io.BytesIO(data)) as img:
        orientation = img.getexif().get(ORIENTATION_TAG, 1)
        stored = img.size
    return stored, (stored[::-1] if orientation in (5, 6, 7, 8) else stored), orientation
