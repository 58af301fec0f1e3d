"""Hostile inputs: per-image jobs that misbehave on purpose, for the supervised pool tests
(in their own module so that spawned worker processes can import them), and a zoo of
hostile image files.
"""
import os
import time
from pathlib import Path

import cv2
import numpy as np

from workflow.demo.bad_inputs import PNG_SIGNATURE, _png_chunk, _png_ihdr, make_bad_inputs
from workflow.demo.images import _cv_encode, _pil_encode, _to_pil, exif_rotated_jpeg
from workflow.stages.preprocess import ImageWorker


def square(x):
    """Returns x*x; hangs on 'hang', kills its own process on 'crash'."""
    if x == "hang":
        time.sleep(3600)
    if x == "crash":
        os._exit(11)
    return x * x


class HostileImageWorker(ImageWorker):
    """The real per-image job, except for files whose bytes start with HANG or CRASH."""

    def __call__(self, chunk):
        for data, _ in chunk:
            if (data or b"").startswith(b"HANG"):
                time.sleep(3600)
            if (data or b"").startswith(b"CRASH"):
                os.abort()
        return super().__call__(chunk)


def always_crash(x):
    os._exit(3)


class BrokenEnvironmentWorker(ImageWorker):
    """Dies on every image, as workers do when their environment is broken."""

    def __call__(self, chunk):
        os._exit(9)


def squares(xs):
    """A chunk job: [x] -> [x*x]; hangs or dies on 'hang' / 'crash' anywhere in the chunk."""
    return [square(x) for x in xs]


class KillsItsTaskOnce(ImageWorker):
    """The real per-image job, but the first call anywhere (marked by a flag file) kills
    the process that started this worker: under the spark executor, the Python worker
    running the shard's task, so that Spark must retry the task."""

    def __init__(self, opts, flag: str):
        super().__init__(opts)
        self.flag = flag

    def __call__(self, chunk):
        try:
            fd = os.open(self.flag, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
        except FileExistsError:
            return super().__call__(chunk)
        os.close(fd)
        os.kill(os.getppid(), 9)
        time.sleep(3600)


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
