"""Query embedding: images preprocessed and embedded exactly as the corpus was; words
embedded by the text tower of an image-text model."""
from __future__ import annotations

import hashlib
import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from ..errors import BadQuery, ConfigError, WorkflowError
from ..formats.layout import EXTRACT, PREPROCESS
from ..inputs.imaging import ImageOptions, Status, model_input, preprocess_image
from ..models.loading import make_embedder
from ..models.precision import calibration_only, store_sampler
from ..models.registry import HUB_MODELS, Embedder, ModelSpec, l2_normalize
from ..storage.store import Store

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class TextQuery:
    """A query in words, for a store extracted with an image-text model (`HUB_MODELS`)."""
    text: str


@dataclass
class Query:
    """One query as the `Searcher` handles it: its label, its cache key, and what it is."""
    label: str
    cache_key: str
    id: int | None = None
    vector: np.ndarray | None = None
    image: bytes | None = None
    text: str | None = None


def parse_queries(queries: Sequence) -> list[Query]:
    """ints (ids), paths or bytes (images), `TextQuery`s and vectors (1-d, or 2-d with a
    query a row) -> `Query`s; one query of those alone may be given as it is."""
    if isinstance(queries, np.ndarray) or not isinstance(queries, (list, tuple)):
        queries = [queries]
    out = []
    for q in queries:
        if isinstance(q, (int, np.integer)) and not isinstance(q, bool):
            out.append(Query(f"id:{int(q)}", f"id:{int(q)}", id=int(q)))
        elif isinstance(q, (str, os.PathLike)):
            data = read_query_file(q)
            out.append(Query(os.fspath(q), "img:" + hashlib.sha1(data).hexdigest(),
                             image=data))
        elif isinstance(q, (bytes, bytearray)):
            out.append(Query(f"bytes:{len(q)}", "img:" + hashlib.sha1(q).hexdigest(),
                             image=bytes(q)))
        elif isinstance(q, TextQuery):
            out.append(Query(f"text:{q.text}", "txt:" + hashlib.sha1(
                q.text.encode()).hexdigest(), text=q.text))
        elif isinstance(q, np.ndarray) and q.ndim in (1, 2):
            for v in np.atleast_2d(q):
                v = np.asarray(v, np.float32)
                out.append(Query(f"vector:{len(out)}",
                                 "vec:" + hashlib.sha1(v.tobytes()).hexdigest(), vector=v))
        else:
            raise ConfigError(f"cannot search for a {type(q).__name__}: give ids, image "
                              "paths or bytes, texts or vectors")
    return out


def require_text_tower(store: Store) -> None:
    """Raise BadQuery, naming the models that have one, where the store's features were
    not made by a model with a text tower."""
    ext = store.run_info()["stages"].get(EXTRACT, {}).get("settings", {})
    model = ext.get("spec", {}).get("model") or ext.get("model") or "no model yet"
    if model not in HUB_MODELS:
        raise BadQuery(f"the features of {store.url} were made by {model}, which has no text "
                       "tower, so they cannot be searched by words: extract the corpus with "
                       f"an image-text model ({', '.join(HUB_MODELS)}) to use --text, or "
                       "search by image, id or vector")


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
        self.embedder = embedder or store_embedder(store, ModelSpec(**ext["spec"]))
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

    def embed_text(self, texts: list[str]) -> np.ndarray:
        """Texts -> L2-normalised float32 [n, d] embeddings by the text tower of the
        corpus's image-text model, in the space of its image features."""
        if not getattr(self.embedder, "has_text_tower", False):
            raise BadQuery(f"{self.embedder.info['model']} has no text tower: search by words "
                           f"needs a store extracted with one of {', '.join(HUB_MODELS)}")
        return l2_normalize(self.embedder.embed_text(list(texts)))


def store_embedder(store: Store, spec: ModelSpec) -> Embedder:
    """The model in the precision of the store's features (INT8: calibrated on the same
    images); float32, with a warning, where this machine cannot run that precision. The
    fidelity check against float32 is the store's extract's, not run again here (it
    took 5 s of every process that embeds a query)."""
    frozen = store.run_info()["stages"][EXTRACT]
    precision, calibration = frozen.get("precision", "f32"), frozen.get("calibration")
    sample = (calibration_only(store_sampler(store, calibration)) if precision == "int8"
              else None)
    try:
        return make_embedder(spec, "auto", precision=precision, sample=sample,
                             calibration=calibration)
    except ConfigError as e:
        if precision == "f32":
            raise
        logger.warning("the features of %s are in %s, which this machine cannot compute "
                       "(%s): queries are embedded in float32, a little less alike",
                       store.url, precision, e)
        return make_embedder(spec, "auto")


def read_query_file(path) -> bytes:
    """The bytes of a query image file, or an error that names it."""
    try:
        with open(path, "rb") as f:
            return f.read()
    except OSError as e:
        raise WorkflowError(f"cannot read query image {os.fspath(path)}: {e.strerror or e}; "
                            "check the path") from None


def read_text_queries(path, flag: str = "--text-file") -> list[str]:
    """The queries in words of a text file: one a line, blank lines skipped."""
    try:
        with open(path, encoding="utf-8") as f:
            return [line.strip() for line in f if line.strip()]
    except (OSError, UnicodeDecodeError) as e:
        raise WorkflowError(f"{flag} {os.fspath(path)}: cannot read it as UTF-8 text "
                            f"({e})") from None


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
