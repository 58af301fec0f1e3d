"""Broken and odd-but-valid files: one of each failure kind a reader must survive."""
from __future__ import annotations

import struct
import zlib
from pathlib import Path

import cv2
import numpy as np

from .images import (
    BOMB_SIDE,
    ENCODERS,
    SOURCE_FILES,
    _cv_encode,
    _palette,
    _pil_encode,
    _read_photo,
    _resize,
    exif_rotated_jpeg,
    skimage_data_dir,
)

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
