"""Deterministic demo corpus of real photographs, built offline.

The photographs bundled in scikit-image's wheel are the subjects (classes); each is turned
into many variants (crops, flips, scales, rotations, colour shifts, grayscale, JPEG
recompression) written in the formats a real corpus holds: mostly JPEG, plus PNG (RGB, RGBA,
16-bit, palette), BMP, WebP, EXIF-rotated JPEG and CMYK JPEG.  About half are loose files,
the rest sit in uncompressed tar archives and one small .tar.gz; a `broken/` folder holds one
file of each failure kind (see `make_bad_inputs`).  Same (n, seed) gives byte-identical files.
"""
from __future__ import annotations

import gzip
import io
import json
import logging
import math
import os
import struct
import tarfile
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

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


# ---------------------------------------------------------------- corpus

def _variant(img: np.ndarray, subject: str, index: int, fmt: str, large: bool,
             rng: np.random.Generator) -> Item:
    img, ops = (_enlarge(img, rng), ["large"]) if large else _augment(img, rng)
    ext, encode = ENCODERS[fmt]
    quality = int(rng.integers(30, 96))
    parts = [f"{index:03d}", *ops, *([fmt] if fmt != "jpeg" else [f"q{quality}"])]
    if subject in NON_ASCII_SUBJECTS.values():
        parts.insert(1, NON_ASCII_FILE_TAG)
    return Item(subject, "-".join(parts) + ext, encode(img, quality))


def _make_items(sources: dict[str, np.ndarray], count: int,
                rng: np.random.Generator) -> list[Item]:
    """`count` variants spread evenly over the subjects; a few in special formats."""
    subjects = list(sources)
    plan = [(s, i) for k, s in enumerate(subjects)
            for i in range(count // len(subjects) + (k < count % len(subjects)))]
    by_size = sorted(subjects, key=lambda s: -min(sources[s].shape[:2]))
    large = {(s, 0) for s in by_size[:N_LARGE]}
    pool = [j for j, slot in enumerate(plan) if slot not in large]
    kinds = [fmt for fmt in SPECIAL_FORMATS for _ in range(max(1, count // 80))][:len(pool)]
    chosen = rng.choice(pool, size=len(kinds), replace=False).tolist()
    fmt_at = dict(zip(chosen, kinds))
    return [_variant(sources[s], s, i, fmt_at.get(j, "jpeg"), (s, i) in large, rng)
            for j, (s, i) in enumerate(plan)]


def _tar_bytes(items: list[Item]) -> bytes:
    """Uncompressed PAX tar with fixed metadata and sorted members."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for item in sorted(items, key=lambda it: it.member):
            info = tarfile.TarInfo(item.member)
            info.size, info.mtime, info.mode = len(item.data), 0, 0o644
            info.uid = info.gid = 0
            info.uname = info.gname = ""
            tar.addfile(info, io.BytesIO(item.data))
    return buf.getvalue()


def _write_archives(directory: Path, items: list[Item],
                    rng: np.random.Generator) -> dict[str, list[Item]]:
    """part-00000.tar, ... of ~ARCHIVE_SIZE images each, then one small part-XXXXX.tar.gz."""
    items = sorted(items, key=lambda it: it.member)
    in_gz = set(rng.choice(len(items), size=min(GZ_COUNT, len(items) // 2),
                           replace=False).tolist())
    plain = [it for i, it in enumerate(items) if i not in in_gz]
    n_tar = max(1, round(len(plain) / ARCHIVE_SIZE))
    bounds = [round(k * len(plain) / n_tar) for k in range(n_tar + 1)]
    groups = {f"part-{k:05d}.tar": plain[bounds[k]:bounds[k + 1]] for k in range(n_tar)}
    if in_gz:
        groups[f"part-{n_tar:05d}.tar.gz"] = [items[i] for i in sorted(in_gz)]
    directory.mkdir(parents=True, exist_ok=True)
    for name, group in groups.items():
        data = _tar_bytes(group)
        if name.endswith(".gz"):
            data = gzip.compress(data, compresslevel=9, mtime=0)
        (directory / name).write_bytes(data)
    return groups


def make_demo_corpus(out: str | Path, n: int = 400, seed: int = 0) -> dict:
    """Write the demo corpus of `n` images into `out` (must be absent or empty).

    Returns the manifest, also written to `out/manifest.json`.
    """
    out = Path(out)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise FileExistsError(f"{out} exists and is not an empty folder")
    sources = load_sources()
    if n <= len(sources):
        raise ValueError(f"n={n} is too small: need more than one image per subject "
                         f"({len(sources)} subjects)")
    rng = np.random.default_rng(seed)
    items = _make_items(sources, n - 1, rng)
    loose, archived = items[0::2], items[1::2]
    original = next(it for it in loose if it.name.endswith(".jpg"))
    copy = Item(original.subject, f"{Path(original.name).stem} (copy).jpg", original.data)
    loose.append(copy)

    files: dict[str, Item] = {}
    for item in loose:
        path = out / "photos" / item.subject / item.name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(item.data)
        files[f"photos/{item.member}"] = item
    groups = _write_archives(out / "archives", archived, rng)
    files.update({f"archives/{name}/{item.member}": item
                  for name, group in groups.items() for item in group})
    bad = make_bad_inputs(out / "photos" / "broken")

    infos = {rel: image_info(item.data) for rel, item in files.items()}
    infos.update({f"photos/broken/{name}": image_info((out / "photos/broken" / name).read_bytes())
                  for name, kind in bad.items() if kind == "ok"})
    manifest = {
        "n_images": len(files),
        "subjects": sorted(sources),
        "loose": len(loose),
        "archived": len(archived),
        "archives": list(groups),
        "bad_inputs": {f"photos/broken/{name}": kind for name, kind in sorted(bad.items())},
        "duplicates": [[f"photos/{original.member}", f"photos/{copy.member}"]],
        "seed": seed,
        "large_images": sorted(rel for rel in files if min(infos[rel][1]) >= LARGE_SIDE),
        "exif_rotated": {rel: {"orientation": o, "stored_size": list(s), "display_size": list(d)}
                         for rel, (s, d, o) in sorted(infos.items()) if o != 1},
        "images": {rel: files[rel].subject for rel in sorted(files)},
    }
    (out / "manifest.json").write_text(
        json.dumps(manifest, sort_keys=True, indent=2, ensure_ascii=False) + "\n", "utf-8")
    log.info("demo corpus: %d images of %d subjects in %s (%d loose, %d in %d archives)",
             len(files), len(sources), out, len(loose), len(archived), len(groups))
    return manifest


# ---------------------------------------------------------------- broken and odd inputs

def _png_chunk(tag: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(tag + data))


PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def _png_ihdr(width: int, height: int, bit_depth: int, colour_type: int) -> bytes:
    return _png_chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, bit_depth, colour_type,
                                           0, 0, 0))


def bomb_png(width: int = BOMB_SIDE, height: int = BOMB_SIDE, rows_per_chunk: int = 1000) -> bytes:
    """A valid all-black 1-bit grayscale PNG, compressed chunk by chunk (small memory)."""
    row = bytes(1 + (width + 7) // 8)  # filter byte 0 + packed zero pixels
    compressor = zlib.compressobj(9)
    idat = b"".join(compressor.compress(row * min(rows_per_chunk, height - y))
                    for y in range(0, height, rows_per_chunk)) + compressor.flush()
    return (PNG_SIGNATURE + _png_ihdr(width, height, 1, 0) + _png_chunk(b"IDAT", idat)
            + _png_chunk(b"IEND", b""))


def _animated_gif(img: np.ndarray) -> bytes:
    frames = [_palette(np.roll(img, shift, axis=1)) for shift in (0, 20, 40)]
    return _pil_encode(frames[0], "GIF", save_all=True, append_images=frames[1:],
                       duration=100, loop=0)


def make_bad_inputs(dirpath: str | Path) -> dict[str, str]:
    """Write broken and odd-but-valid files into `dirpath`; returns {file name: kind}.

    Kinds: empty, corrupt, not_image, unsupported, too_large, and ok for files a correct
    reader must handle (animated GIF, 16-bit, palette, RGBA, CMYK, EXIF-rotated).
    """
    directory = Path(dirpath)
    directory.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    photo = next(img for name in SOURCE_FILES
                 if (img := _read_photo(skimage_data_dir() / name)) is not None)
    photo = _resize(photo, 320 / photo.shape[1])[:240]  # small and not square
    jpeg = ENCODERS["jpeg"][1](photo, 90)
    html = "<!DOCTYPE html>\n<html><head><title>Not found</title></head>\n" \
           "<body><h1>404 Not Found</h1></body></html>\n"
    heic_header = struct.pack(">I", 24) + b"ftypheic" + bytes(4) + b"mif1heic"
    files: dict[str, tuple[str, bytes]] = {
        "empty.jpg": ("empty", b""),
        "truncated.jpg": ("corrupt", jpeg[:int(len(jpeg) * 0.6)]),
        "garbage-after-header.png": ("corrupt", PNG_SIGNATURE + _png_ihdr(640, 480, 8, 2)
                                     + rng.bytes(4096)),
        "notes.jpg": ("not_image", b"Shopping list:\n- coffee\n- film for the camera\n"),
        "page.png": ("not_image", html.encode()),
        "photo.heic": ("unsupported", heic_header + rng.bytes(2048)),
        "bomb.png": ("too_large", bomb_png()),
        "animated.gif": ("ok", _animated_gif(photo)),
        "gray16.png": ("ok", _cv_encode(".png", cv2.cvtColor(photo, cv2.COLOR_BGR2GRAY)
                                        .astype(np.uint16) * 257)),
        "palette.png": ("ok", ENCODERS["palette"][1](photo, 0)),
        "alpha.png": ("ok", ENCODERS["rgba"][1](photo, 0)),
        "cmyk.jpg": ("ok", ENCODERS["cmyk"][1](photo, 90)),
        "exif-rotated.jpg": ("ok", exif_rotated_jpeg(photo, 6, 90)),
    }
    for name, (_, data) in files.items():
        (directory / name).write_bytes(data)
    return {name: kind for name, (kind, _) in files.items()}


def make_hostile_inputs(dirpath: str | Path, seed: int = 0) -> dict[str, str]:
    """The bad-input zoo plus more hostile content: truncations at several points, random
    bytes, a wrong extension, huge declared dimensions, 1x1 and 30000x10 images, animated
    WebP, a 10-page TIFF, palette with transparency, every EXIF orientation. Returns
    {file name: expected status}."""
    directory = Path(dirpath)
    kinds = make_bad_inputs(directory)
    rng = np.random.default_rng(seed)
    photo = cv2.imdecode(np.frombuffer((directory / "cmyk.jpg").read_bytes(), np.uint8),
                         cv2.IMREAD_COLOR)
    jpeg = _cv_encode(".jpg", photo, cv2.IMWRITE_JPEG_QUALITY, 90)
    pil = _to_pil(photo)
    files = {
        "truncated-in-header.jpg": ("corrupt", jpeg[:40]),
        "truncated-early.jpg": ("corrupt", jpeg[:len(jpeg) // 10]),
        "truncated-late.jpg": ("corrupt", jpeg[:len(jpeg) - 40]),
        "no-end-marker.jpg": ("corrupt", jpeg[:-2]),
        "random-bytes.jpg": ("not_image", rng.bytes(5000)),
        "zeros.png": ("not_image", bytes(4096)),
        "png-named-as.jpg": ("ok", _cv_encode(".png", photo)),
        "huge-declared.png": ("too_large", PNG_SIGNATURE + _png_ihdr(100_000, 100_000, 8, 2)
                              + _png_chunk(b"IEND", b"")),
        "one-pixel.png": ("ok", _cv_encode(".png", photo[:1, :1])),
        "strip-30000x10.png": ("ok", _cv_encode(".png", cv2.resize(photo, (30000, 10)))),
        "animated.webp": ("ok", _pil_encode(pil, "WEBP", save_all=True, duration=100,
                                            append_images=[pil.rotate(90)])),
        "pages.tiff": ("ok", _pil_encode(pil, "TIFF", save_all=True, append_images=[pil] * 9)),
        "palette-transparent.png": ("ok", _pil_encode(pil.convert("P"), "PNG", transparency=0)),
        **{f"exif-orientation-{o}.jpg": ("ok", exif_rotated_jpeg(photo, o, 90))
           for o in range(1, 9)},
    }
    for name, (_, data) in files.items():
        (directory / name).write_bytes(data)
    kinds.update({name: kind for name, (kind, _) in files.items()})
    return kinds
