"""Query embedding: images preprocessed and embedded exactly as the corpus was."""
from __future__ import annotations

import logging
import os
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from ..errors import BadQuery, ConfigError, WorkflowError
from ..formats.layout import EXTRACT, PREPROCESS
from ..inputs.imaging import ImageOptions, Status, model_input, preprocess_image
from ..models.loading import make_embedder
from ..models.registry import Embedder, ModelSpec, l2_normalize
from ..storage.store import Store

logger = logging.getLogger(__name__)


class QueryEmbedder:
    """Embeds query images exactly as the corpus was: the store's frozen preprocess
    settings (resize, re-encode), the same crop and the same model."""

    def __init__(self, store: Store, embedder: Embedder | None = None):
        stages = store.run_info()["stages"]
        if PREPROCESS not in stages or EXTRACT not in stages:
            raise WorkflowError(f"{store.url} has no extracted features yet; run the "
                                "preprocess and extract stages first")
        pre, ext = stages[PREPROCESS]["settings"], stages[EXTRACT]["settings"]
        if "spec" not in ext or "image_size" not in pre:
            raise BadQuery(f"the features of {store.url} were not made by a model this "
                           "workflow loads, so images cannot be embedded for it: search by "
                           "id or by vector")
        self.opts = ImageOptions(pre["image_size"], pre["jpeg_quality"], pre["max_pixels"])
        self.embedder = embedder or make_embedder(ModelSpec(**ext["spec"]), "auto")
        if self.embedder.info["weights_sha256"] != ext["weights_sha256"]:
            raise WorkflowError("the model loaded for queries is not the one the corpus was "
                                "extracted with (weights differ)")

    def embed(self, images: list) -> np.ndarray:
        """Image paths or bytes -> L2-normalised float32 features [n, d]. The
        preprocessed JPEGs are kept in `last_jpegs` (thumbnails of the queries)."""
        batch, self.last_jpegs = [], []
        for im in images:
            data = im if isinstance(im, (bytes, bytearray)) else open(im, "rb").read()
            r = preprocess_image(bytes(data), self.opts)
            if r.status != Status.OK:
                name = "query bytes" if isinstance(im, (bytes, bytearray)) else str(im)
                raise BadQuery(f"{name}: {Status(r.status).label}: {r.reason}")
            batch.append(model_input(r.jpeg, self.embedder.input_size))
            self.last_jpegs.append(r.jpeg)
        return l2_normalize(self.embedder(np.stack(batch)))


def read_query_file(path) -> bytes:
    """The bytes of a query image file, or an error that names it."""
    try:
        with open(path, "rb") as f:
            return f.read()
    except OSError as e:
        raise WorkflowError(f"cannot read query image {os.fspath(path)}: {e.strerror or e}; "
                            "check the path") from None


IMAGE_EXTS = {".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff", ".gif"}


def query_files(folder: str) -> list[Path]:
    """The image files under a folder of query images, sorted."""
    return sorted(p for p in Path(folder).rglob("*")
                  if p.suffix.lower() in IMAGE_EXTS and p.is_file())


def embed_query_dir(folder: str, embedder, progress: bool):
    """(ids: -1 each, float32 features, keys relative to the folder) of the query images
    under `folder`; an image that cannot be used is skipped with a warning."""
    files = query_files(folder)
    if not files:
        raise ConfigError(f"--query-dir {folder} holds no images "
                          f"({', '.join(sorted(IMAGE_EXTS))})")
    xs, keys = [], []
    for p in tqdm(files, desc="embed queries", unit="img", mininterval=1.0,
                  disable=not progress):
        try:
            xs.append(embedder.embed([str(p)])[0])
            keys.append(str(p.relative_to(folder)))
        except WorkflowError as e:
            logger.warning("query image skipped: %s", e)
    if not xs:
        raise WorkflowError(f"no image in --query-dir {folder} could be used")
    return np.full(len(xs), -1, np.int64), np.stack(xs).astype(np.float32), np.array(keys)
