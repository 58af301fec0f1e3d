"""The preprocess stage's per-image job as its worker processes run it.

Apart from the stage module so that each worker imports only what the job needs (OpenCV,
NumPy and `imaging`), not the stage's store, formats and executors: on small photos a
worker's start-up is a visible part of a run.
"""
from __future__ import annotations

import cv2

from .imaging import ImageOptions, ImageResult, Status, content_hash, preprocess_image


def worker_init() -> None:
    cv2.setNumThreads(1)


def on_failure(chunk: list, kind: str, message: str) -> list[ImageResult]:
    """The result of a one-image chunk whose worker hung or died."""
    (data, _), = chunk
    status = Status.TIMEOUT if kind == "timeout" else Status.CRASHED
    return [ImageResult(int(status), message, b"", 0, 0, content_hash(data) if data else "")]


class ImageWorker:
    """The per-image job, applied to a chunk: [(bytes | None, read error)] -> [ImageResult].

    Picklable; runs in the worker processes."""

    def __init__(self, opts: ImageOptions):
        self.opts = opts

    def __call__(self, chunk: list) -> list[ImageResult]:
        return [preprocess_image(data, self.opts, err) for data, err in chunk]
