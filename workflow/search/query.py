"""Query embedding: images preprocessed and embedded exactly as the corpus was."""
from __future__ import annotations

import os

import numpy as np

from ..errors import BadQuery, WorkflowError
from ..formats.layout import EXTRACT, PREPROCESS
from ..inputs.imaging import ImageOptions, Status, model_input, preprocess_image
from ..models.loading import make_embedder
from ..models.registry import Embedder, ModelSpec, l2_normalize
from ..storage.store import Store


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
