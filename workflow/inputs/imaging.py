"""Decode, orient, convert, resize and re-encode one image (OpenCV), never raising.

`preprocess_image(data, opts)` is what a preprocess worker runs per image; failures come
back as a status and a reason.
"""
from __future__ import annotations

import enum
import hashlib
import struct
from dataclasses import dataclass
from typing import NamedTuple

import cv2
import numpy as np


class Status(enum.IntEnum):
    """The `status` column of image shards (0 = ok)."""
    OK = 0
    UNREADABLE = 1   # the bytes could not be read (missing file, I/O error)
    EMPTY = 2        # zero bytes
    NOT_IMAGE = 3    # the content is not an image
    UNSUPPORTED = 4  # an image format OpenCV cannot decode (e.g. HEIC)
    CORRUPT = 5      # an image format, but truncated or damaged
    TOO_LARGE = 6    # more pixels than --max-pixels (decompression bomb guard)
    TIMEOUT = 7      # decoding took longer than the per-image timeout
    CRASHED = 8      # the worker process died on this image

    @property
    def label(self) -> str:
        return self.name.lower()


@dataclass(frozen=True)
class ImageOptions:
    image_size: int = 256     # short side after resizing (never upscaled)
    jpeg_quality: int = 90
    max_pixels: int = 200_000_000
    reduced_decode: bool = True


class ImageResult(NamedTuple):
    status: int
    reason: str
    jpeg: bytes
    width: int           # original, as displayed (after EXIF orientation)
    height: int
    content_hash: str    # blake2b-128 of the source bytes, hex; "" if unread


class ImageInfo(NamedTuple):
    format: str
    width: int           # 0 when the header does not say
    height: int


UNSUPPORTED_FORMATS = {"heic": "HEIC/HEIF", "psd": "Photoshop", "pdf": "PDF", "svg": "SVG"}


def content_hash(data: bytes) -> str:
    return hashlib.blake2b(data, digest_size=16).hexdigest()


def sniff(data: bytes) -> ImageInfo | None:
    """Format and size from the first bytes, without decoding; None if unrecognised."""
    if data[:3] == b"\xff\xd8\xff":
        w, h = _jpeg_size(data)
        return ImageInfo("jpeg", w, h)
    if data[:8] == b"\x89PNG\r\n\x1a\n":
        w, h = struct.unpack(">II", data[16:24]) if len(data) >= 24 else (0, 0)
        return ImageInfo("png", w, h)
    if data[:6] in (b"GIF87a", b"GIF89a"):
        return ImageInfo("gif", *struct.unpack("<HH", data[6:10]))
    if data[:2] == b"BM" and len(data) >= 26:
        w, h = struct.unpack("<ii", data[18:26])
        return ImageInfo("bmp", abs(w), abs(h))
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return ImageInfo("webp", *_webp_size(data))
    if data[:4] in (b"II*\x00", b"MM\x00*"):
        return ImageInfo("tiff", 0, 0)
    if data[4:8] == b"ftyp":
        brand = data[8:12]
        if brand in (b"avif", b"avis"):
            return ImageInfo("avif", 0, 0)
        return ImageInfo("heic", 0, 0)
    if data[:12] == b"\x00\x00\x00\x0cjP  \r\n\x87\n" or data[:4] == b"\xff\x4f\xff\x51":
        return ImageInfo("jp2", 0, 0)
    if data[:2] in (b"P1", b"P2", b"P3", b"P4", b"P5", b"P6", b"Pf", b"PF"):
        return ImageInfo("pnm", 0, 0)
    if data[:4] == b"8BPS":
        return ImageInfo("psd", 0, 0)
    if data[:5] == b"%PDF-":
        return ImageInfo("pdf", 0, 0)
    if data.lstrip()[:5].lower() in (b"<svg ", b"<?xml") and b"<svg" in data[:4096]:
        return ImageInfo("svg", 0, 0)
    return None


def _jpeg_segments(data: bytes):
    """(marker, payload start, payload end) for each header segment up to SOS."""
    i, n = 2, len(data)
    while i + 4 <= n:
        if data[i] != 0xFF:
            return
        marker = data[i + 1]
        if marker == 0xFF:
            i += 1
            continue
        if 0xD0 <= marker <= 0xD9 or marker == 0x01:
            i += 2
            continue
        length = struct.unpack(">H", data[i + 2:i + 4])[0]
        yield marker, i + 4, i + 2 + length
        if marker == 0xDA:
            return
        i += 2 + length


def _jpeg_size(data: bytes) -> tuple[int, int]:
    for marker, start, _ in _jpeg_segments(data):
        if 0xC0 <= marker <= 0xCF and marker not in (0xC4, 0xC8, 0xCC):
            h, w = struct.unpack(">HH", data[start + 1:start + 5])
            return w, h
    return 0, 0


def jpeg_is_complete(data: bytes) -> bool:
    """True if the entropy-coded data after the first SOS ends with an EOI marker.

    Searching from the end is enough: inside entropy-coded data 0xFF is always stuffed,
    so FFD9 after the first SOS can only be an end-of-image marker.
    """
    sos = next((end for marker, _, end in _jpeg_segments(data) if marker == 0xDA), None)
    return sos is not None and data.rfind(b"\xff\xd9", sos) >= 0


def exif_orientation(data: bytes) -> int:
    """The EXIF Orientation (1-8) of a JPEG, 1 when absent or unreadable."""
    for marker, start, end in _jpeg_segments(data):
        if marker == 0xE1 and data[start:start + 6] == b"Exif\x00\x00":
            return _tiff_orientation(data[start + 6:end])
    return 1


def _tiff_orientation(t: bytes) -> int:
    try:
        e = {b"II": "<", b"MM": ">"}[t[:2]]
        (ifd,) = struct.unpack(e + "I", t[4:8])
        (count,) = struct.unpack(e + "H", t[ifd:ifd + 2])
        for k in range(count):
            p = ifd + 2 + 12 * k
            tag, typ = struct.unpack(e + "HH", t[p:p + 4])
            if tag == 0x0112 and typ == 3:
                (v,) = struct.unpack(e + "H", t[p + 8:p + 10])
                return v if 1 <= v <= 8 else 1
    except (KeyError, struct.error):
        pass
    return 1


def _webp_size(data: bytes) -> tuple[int, int]:
    chunk = data[12:16]
    try:
        if chunk == b"VP8X":
            w = int.from_bytes(data[24:27], "little") + 1
            return w, int.from_bytes(data[27:30], "little") + 1
        if chunk == b"VP8 ":
            w, h = struct.unpack("<HH", data[26:30])
            return w & 0x3FFF, h & 0x3FFF
        if chunk == b"VP8L":
            b = int.from_bytes(data[21:25], "little")
            return (b & 0x3FFF) + 1, ((b >> 14) & 0x3FFF) + 1
    except (struct.error, IndexError):
        pass
    return 0, 0


def reduction_factor(w: int, h: int, target: int) -> int:
    """Largest libjpeg scale (1, 2, 4 or 8) that keeps the short side >= target."""
    short = min(w, h)
    for f in (8, 4, 2):
        if short // f >= target:
            return f
    return 1


_REDUCED = {2: cv2.IMREAD_REDUCED_COLOR_2, 4: cv2.IMREAD_REDUCED_COLOR_4,
            8: cv2.IMREAD_REDUCED_COLOR_8}


def decode(data: bytes, info: ImageInfo, opts: ImageOptions) -> np.ndarray | None:
    """8-bit BGR pixels as stored (before EXIF orientation), or None if undecodable."""
    buf = np.frombuffer(data, np.uint8)
    if info.format == "jpeg":
        f = reduction_factor(info.width, info.height, opts.image_size) \
            if opts.reduced_decode else 1
        img = None
        if f > 1:
            img = cv2.imdecode(buf, _REDUCED[f] | cv2.IMREAD_IGNORE_ORIENTATION)
        if img is None:
            img = cv2.imdecode(buf, cv2.IMREAD_COLOR | cv2.IMREAD_IGNORE_ORIENTATION)
        return img
    img = cv2.imdecode(buf, cv2.IMREAD_UNCHANGED | cv2.IMREAD_IGNORE_ORIENTATION)
    return None if img is None else to_bgr8(img)


def to_bgr8(img: np.ndarray) -> np.ndarray:
    """Any OpenCV decode result (gray, alpha, 16-bit, float) as 8-bit, 3-channel BGR."""
    if img.dtype == np.uint16:
        img = ((img.astype(np.uint32) + 128) // 257).astype(np.uint8)
    elif img.dtype in (np.float32, np.float64):
        img = (np.clip(img, 0, 1) * 255 + 0.5).astype(np.uint8)
    elif img.dtype != np.uint8:
        img = cv2.normalize(img, None, 0, 255, cv2.NORM_MINMAX).astype(np.uint8)
    if img.ndim == 2:
        return cv2.cvtColor(img, cv2.COLOR_GRAY2BGR)
    if img.shape[2] == 1:
        return cv2.cvtColor(img[:, :, 0], cv2.COLOR_GRAY2BGR)
    if img.shape[2] == 2:  # gray + alpha
        img = cv2.merge([img[:, :, 0]] * 3 + [img[:, :, 1]])
    if img.shape[2] == 4:  # composite over white
        a = img[:, :, 3:4].astype(np.float32) / 255.0
        rgb = img[:, :, :3].astype(np.float32) * a + 255.0 * (1.0 - a)
        return (rgb + 0.5).astype(np.uint8)
    return img


def apply_orientation(img: np.ndarray, orientation: int) -> np.ndarray:
    """Turn stored pixels into displayed pixels for EXIF orientations 2-8."""
    if orientation in (5, 6, 7, 8):
        img = cv2.transpose(img)
        flip = {5: None, 6: 1, 7: -1, 8: 0}[orientation]
    else:
        flip = {1: None, 2: 1, 3: -1, 4: 0}[orientation]
    return img if flip is None else cv2.flip(img, flip)


def output_size(w: int, h: int, target: int) -> tuple[int, int]:
    """(width, height) with the short side shrunk to `target`; never enlarged."""
    if min(w, h) <= target:
        return w, h
    s = target / min(w, h)
    return max(1, round(w * s)), max(1, round(h * s))


def resize_short_side(img: np.ndarray, target: int, orig: tuple[int, int] | None = None):
    """Shrink so the short side is `target` (aspect kept); smaller images are left as is.

    `orig` is the (width, height) of the full-size image, so that a reduced decode gets
    exactly the output size of a full one.
    """
    h, w = img.shape[:2]
    size = output_size(*(orig or (w, h)), target)
    if size == (w, h):
        return img
    return cv2.resize(img, size, interpolation=cv2.INTER_AREA)


def _fail(status: Status, reason: str, digest: str, w: int = 0, h: int = 0) -> ImageResult:
    return ImageResult(int(status), reason, b"", w, h, digest)


def preprocess_image(data: bytes | None, opts: ImageOptions, read_error: str = "") -> ImageResult:
    """Bytes of one source image -> small re-encoded JPEG, or a failure status with reason."""
    if data is None:
        return _fail(Status.UNREADABLE, read_error or "could not be read", "")
    digest = content_hash(data)
    if not data:
        return _fail(Status.EMPTY, "the file is empty (0 bytes)", digest)
    try:
        return _preprocess(data, opts, digest)
    except (cv2.error, ValueError, MemoryError, struct.error) as e:
        return _fail(Status.CORRUPT, f"decoding failed: {type(e).__name__}: {e}"[:300], digest)


def _preprocess(data: bytes, opts: ImageOptions, digest: str) -> ImageResult:
    info = sniff(data)
    if info is not None and info.format in UNSUPPORTED_FORMATS:
        return _fail(Status.UNSUPPORTED, f"{UNSUPPORTED_FORMATS[info.format]} images are not "
                     "supported; convert them to JPEG or PNG", digest)
    if info is not None and info.width * info.height > opts.max_pixels:
        return _fail(Status.TOO_LARGE, f"{info.width}x{info.height} is more than "
                     f"{opts.max_pixels:,} pixels (--max-pixels)", digest,
                     info.width, info.height)
    if info is not None and info.format == "jpeg" and not jpeg_is_complete(data):
        return _fail(Status.CORRUPT, "truncated JPEG (no end-of-image marker)", digest)
    img = decode(data, info or ImageInfo("unknown", 0, 0), opts)
    if img is None:
        if info is None:
            return _fail(Status.NOT_IMAGE, f"not an image (starts with {data[:12]!r})", digest)
        return _fail(Status.CORRUPT, f"damaged {info.format} data: OpenCV could not decode it",
                     digest)
    orientation = exif_orientation(data) if info is not None and info.format == "jpeg" else 1
    w, h = (info.width, info.height) if info is not None and info.width else \
        (img.shape[1], img.shape[0])
    if orientation >= 5:
        w, h = h, w
    img = resize_short_side(apply_orientation(img, orientation), opts.image_size, (w, h))
    ok, enc = cv2.imencode(".jpg", img, [cv2.IMWRITE_JPEG_QUALITY, opts.jpeg_quality])
    if not ok:
        return _fail(Status.CORRUPT, "re-encoding as JPEG failed", digest)
    return ImageResult(int(Status.OK), "", enc.tobytes(), int(w), int(h), digest)


# How stored JPEGs become model inputs; part of the extract stage's settings. Version 2:
# bilinear resizing unless the image shrinks below half (area averaging there), the
# channel swap done by OpenCV. Version 1 used area averaging for every reduction: 6x
# slower for the usual 256 -> 224 step and no better for it.
MODEL_INPUT_VERSION = 2


def model_input(jpeg: bytes, size: int, out: np.ndarray | None = None) -> np.ndarray:
    """A stored JPEG -> uint8 RGB [size, size, 3]: short side to `size`, centre crop.

    Written into `out` (a C-contiguous [size, size, 3] uint8 array) where given."""
    img = cv2.imdecode(np.frombuffer(jpeg, np.uint8), cv2.IMREAD_COLOR)
    if img is None:
        raise ValueError("stored JPEG could not be decoded")
    h, w = img.shape[:2]
    if max(h, w) > 4 * min(h, w):  # a strip (30000x10): keep its centre, never a huge resize
        m = 4 * min(h, w)
        img = img[:, (w - m) // 2:(w - m) // 2 + m] if w > h else img[(h - m) // 2:(h - m) // 2 + m]
        h, w = img.shape[:2]
    s = size / min(h, w)
    nw, nh = max(size, round(w * s)), max(size, round(h * s))
    if (nw, nh) != (w, h):
        interp = cv2.INTER_AREA if s < 0.5 else cv2.INTER_LINEAR
        img = cv2.resize(img, (nw, nh), interpolation=interp)
    y, x = (nh - size) // 2, (nw - size) // 2
    if out is None:
        out = np.empty((size, size, 3), np.uint8)
    cv2.cvtColor(img[y:y + size, x:x + size], cv2.COLOR_BGR2RGB, dst=out)
    return out
