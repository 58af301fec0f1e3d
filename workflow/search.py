"""Search: a `Searcher` opened on a store, five modes, and a bounded query cache.

Modes (cosine similarity = inner product of L2-normalised features):
- `exact`: every feature, block by block from the float16 re-rank store (the baseline);
- `ivfpq`: the IVF-PQ index alone (scores are PQ estimates);
- `ivfpq+rerank`: IVF-PQ candidates re-scored exactly from the re-rank store;
- `annoy+rerank`: Annoy candidates (in PCA space) re-scored exactly;
- `hierarchical`: the query cache, then the union of Annoy and IVF-PQ candidates,
  re-scored exactly.

The numeric functions take and return arrays in the Faiss convention: `xq` float32
[nq, d], results `D` float32 [nq, k] (scores, best first) and `I` int64 [nq, k], padded
with -inf / -1 where fewer than k results exist.
"""
from __future__ import annotations

import functools
import hashlib
import json
import logging
import os
from collections import OrderedDict
from dataclasses import dataclass, field, fields, replace
from functools import cached_property
from typing import Iterable, Sequence

import faiss
import h5py
import numpy as np

from .errors import ConfigError, WorkflowError
from .store import Store

logger = logging.getLogger(__name__)

MODES = ("exact", "ivfpq", "ivfpq+rerank", "annoy+rerank", "hierarchical")
DEFAULTS_FILE = "evaluation/search_defaults.json"
EXACT_BLOCK = 1 << 16


@dataclass(frozen=True)
class SearchParams:
    """Knobs of the approximate modes; each mode reads only its own (`MODE_PARAMS`)."""
    nprobe: int = 16          # inverted lists visited by IVF-PQ
    rerank: int = 200         # IVF-PQ candidates re-scored exactly
    annoy: int = 100          # Annoy candidates re-scored exactly
    search_k: int = -1        # Annoy nodes inspected (-1: Annoy's default, trees x annoy)

    def validate(self) -> "SearchParams":
        bad = [f"{f.name}={getattr(self, f.name)}" for f in fields(self)
               if f.name != "search_k" and getattr(self, f.name) < (0 if f.name == "annoy"
                                                                    else 1)]
        if bad or self.search_k < -1:
            raise ConfigError(f"invalid search parameters: {', '.join(bad) or 'search_k'} "
                              "(nprobe and rerank >= 1, annoy >= 0, search_k >= -1)")
        return self

    def for_mode(self, mode: str) -> dict:
        return {name: getattr(self, name) for name in MODE_PARAMS[mode]}


MODE_PARAMS = {
    "exact": (),
    "ivfpq": ("nprobe",),
    "ivfpq+rerank": ("nprobe", "rerank"),
    "annoy+rerank": ("annoy", "search_k"),
    "hierarchical": ("nprobe", "rerank", "annoy", "search_k"),
}


def check_mode(mode: str) -> str:
    if mode not in MODES:
        raise ConfigError(f"unknown search mode {mode!r}; choose one of {', '.join(MODES)}")
    return mode


# ------------------------------------------------------------------ numeric core

def exact_search(xq: np.ndarray, blocks: Iterable[tuple[np.ndarray, np.ndarray]], k: int):
    """Exact top-k by inner product over (ids, vectors) blocks, merged in a heap.

    Uses the GPU where Faiss has one."""
    nq, d = xq.shape
    heap = faiss.ResultHeap(nq, k, keep_max=True)
    res = _gpu_resources()
    for ids, xb in blocks:
        if len(ids) == 0:
            continue
        xb = np.ascontiguousarray(xb, dtype=np.float32)
        assert xb.shape == (len(ids), d)
        kk = min(k, len(ids))
        if res is not None:
            D, I = faiss.knn_gpu(res, xq, xb, kk, metric=faiss.METRIC_INNER_PRODUCT)
        else:
            D, I = faiss.knn(xq, xb, kk, metric=faiss.METRIC_INNER_PRODUCT)
        heap.add_result(D, np.where(I >= 0, ids[np.maximum(I, 0)], -1))
    heap.finalize()
    D, I = heap.D, heap.I
    D[I < 0] = -np.inf
    order = np.lexsort((I, -D), axis=1)  # equal scores (duplicates): lower id first
    return np.take_along_axis(D, order, 1), np.take_along_axis(I, order, 1)


@functools.lru_cache(maxsize=1)
def _gpu_resources():
    """Faiss GPU resources, made once (they hold device memory), or None without a GPU."""
    if faiss.get_num_gpus() > 0 and hasattr(faiss, "knn_gpu"):
        return faiss.StandardGpuResources()
    return None


def rerank_store_blocks(xb: np.ndarray, valid: np.ndarray, block: int = EXACT_BLOCK):
    """(ids, float32 rows) blocks of the re-rank store, leaving out rows without a
    feature (valid[id] False)."""
    for lo in range(0, len(xb), block):
        x = np.asarray(xb[lo:lo + block], dtype=np.float32)
        ok = valid[lo:lo + block]
        if ok.all():
            yield np.arange(lo, lo + len(x)), x
        else:
            keep = np.flatnonzero(ok)
            yield keep + lo, x[keep]


def rerank(xq: np.ndarray, cand: np.ndarray, xb: np.ndarray, k: int):
    """Re-score each query's candidate ids (-1 = none) exactly against rows of `xb`
    (float16, row = id); top k by score, ties broken by id."""
    nq, d = xq.shape
    assert cand.shape[0] == nq and xb.shape[1] == d
    D = np.full((nq, k), -np.inf, np.float32)
    I = np.full((nq, k), -1, np.int64)
    for i in range(nq):
        c = np.unique(cand[i][cand[i] >= 0])  # sorted: reads the store in order
        if len(c) == 0:
            continue
        s = np.asarray(xb[c], np.float32) @ xq[i]
        if len(c) > 4 * k:
            part = np.argpartition(-s, k - 1)[:k]
            c, s = c[part], s[part]
        top = np.lexsort((c, -s))[:k]
        D[i, :len(top)], I[i, :len(top)] = s[top], c[top]
    return D, I


def drop_ids(D: np.ndarray, I: np.ndarray, exclude: np.ndarray | None, k: int):
    """Remove each query's excluded id from its results and keep the first k."""
    if exclude is None:
        return D[:, :k], I[:, :k]
    nq = len(I)
    D2 = np.full((nq, k), -np.inf, np.float32)
    I2 = np.full((nq, k), -1, np.int64)
    for i in range(nq):
        keep = np.flatnonzero(I[i] != exclude[i])[:k]
        D2[i, :len(keep)], I2[i, :len(keep)] = D[i, keep], I[i, keep]
    return D2, I2


# ------------------------------------------------------------------ the query cache

class QueryCache:
    """A bounded LRU cache of search results, keyed by query and parameters."""

    def __init__(self, maxsize: int = 1024):
        self.maxsize = maxsize
        self.data: OrderedDict = OrderedDict()
        self.hits = self.misses = 0

    def get(self, key):
        if key in self.data:
            self.data.move_to_end(key)
            self.hits += 1
            return self.data[key]
        self.misses += 1
        return None

    def put(self, key, value) -> None:
        if self.maxsize <= 0:
            return
        self.data[key] = value
        self.data.move_to_end(key)
        while len(self.data) > self.maxsize:
            self.data.popitem(last=False)

    def stats(self) -> dict:
        total = self.hits + self.misses
        return {"hits": self.hits, "misses": self.misses, "size": len(self.data),
                "maxsize": self.maxsize, "hit_rate": self.hits / total if total else 0.0}


# ------------------------------------------------------------------ results

@dataclass
class QueryResult:
    """One query's results, best first."""
    query: str
    ids: list[int]
    scores: list[float]
    keys: list[str] = field(default_factory=list)
    cached: bool = False
    query_jpeg: bytes | None = None

    def to_json(self) -> dict:
        return {"query": self.query, "results": [
            {"id": i, "key": key, "score": round(s, 6)}
            for i, key, s in zip(self.ids, self.keys or [None] * len(self.ids), self.scores)]}


@dataclass
class _Query:
    label: str
    cache_key: str
    id: int | None = None
    vector: np.ndarray | None = None
    image: bytes | None = None


# ------------------------------------------------------------------ the searcher

class Searcher:
    """Search a finished store by image, by id or by vector.

    Args:
        store: a `Store` or its URL; it must hold a filled index (stage 4). The prefilter
            (stage 5) is needed by the Annoy modes only, the model only for image queries.
        scratch: local folder for staged-in files (default: the store's scratch).
        cache_size: results kept in the LRU query cache (0 disables it).
        embedder: a ready `Embedder` for image queries (default: loaded from the store's
            frozen extract settings on first use).
    """

    def __init__(self, store: Store | str, scratch: str | None = None, cache_size: int = 1024,
                 embedder=None):
        self.store = store if isinstance(store, Store) else Store(store, scratch, create=False)
        self.cache = QueryCache(cache_size)
        self._embedder = embedder
        saved = self.store.read_json(DEFAULTS_FILE) or {}
        self.defaults = {m: replace(SearchParams(), **saved.get(m, {})) for m in MODES}
        self.default_mode = saved.get("default_mode", "hierarchical")

    # -- lazily loaded parts ---------------------------------------------------------
    @cached_property
    def index(self) -> faiss.Index:
        from .add import load_index
        return load_index(self.store)

    @cached_property
    def xb(self) -> np.ndarray:
        from .add import load_rerank
        return load_rerank(self.store)

    @cached_property
    def valid(self) -> np.ndarray:
        """valid[id]: the id has a feature (a non-zero row of the re-rank store)."""
        xb = self.xb.view(np.uint16)
        return np.concatenate([np.any(xb[lo:lo + EXACT_BLOCK] != 0, axis=1)
                               for lo in range(0, len(xb), EXACT_BLOCK)] or [np.zeros(0, bool)])

    @cached_property
    def annoy(self):
        from .prefilter import load_prefilter
        return load_prefilter(self.store)

    @cached_property
    def pca(self) -> faiss.VectorTransform:
        from .train import load_trained
        return load_trained(self.store)[1]

    @cached_property
    def _params_space(self) -> faiss.ParameterSpace:
        return faiss.ParameterSpace()

    @cached_property
    def plan_info(self) -> tuple[list[str], np.ndarray]:
        """(keys by id, shard bounds) from the frozen plan."""
        from .preprocess import STAGE as PREPROCESS
        m = self.store.marker(PREPROCESS, "plan")
        if m is None:
            raise WorkflowError(f"{self.store.url} has no plan; run scripts/01_preprocess.py")
        path = self.store.fetch(m, self.store.scratch / "search" / "plan.h5")
        with h5py.File(path, "r") as f:
            return list(f["keys"].asstr()[:]), f["shard_bounds"][:]

    @property
    def d(self) -> int:
        return int(self.xb.shape[1])

    def keys(self, ids: Sequence[int]) -> list[str]:
        keys = self.plan_info[0]
        return [keys[i] if 0 <= i < len(keys) else "" for i in ids]

    # -- numeric search ----------------------------------------------------------------
    def params(self, mode: str, **overrides) -> SearchParams:
        """The mode's defaults (tuned by evaluation where it ran) with overrides applied."""
        check_mode(mode)
        given = {k: v for k, v in overrides.items() if v is not None}
        unknown = set(given) - {f.name for f in fields(SearchParams)}
        if unknown:
            raise ConfigError(f"unknown search parameter(s): {', '.join(sorted(unknown))}")
        return replace(self.defaults[mode], **given).validate()

    def search_vectors(self, xq: np.ndarray, k: int = 10, mode: str = "hierarchical",
                       params: SearchParams | None = None,
                       exclude: np.ndarray | None = None):
        """Top k of float32 queries [nq, d] in `mode`; `exclude` (one id per query, -1 for
        none) is left out of each query's results. No cache. Returns (D, I)."""
        check_mode(mode)
        p = params or self.defaults[mode]
        xq = np.ascontiguousarray(xq, dtype=np.float32)
        assert xq.ndim == 2 and xq.shape[1] == self.d, f"queries must be [nq, {self.d}]"
        kk = k + (exclude is not None)
        if mode == "exact":
            D, I = exact_search(xq, rerank_store_blocks(self.xb, self.valid), kk)
        elif mode == "ivfpq":
            D, I = self._ivfpq(xq, kk, p.nprobe)
        else:
            cand = []
            if mode in ("ivfpq+rerank", "hierarchical"):
                cand.append(self._ivfpq(xq, max(p.rerank, kk), p.nprobe)[1])
            if mode in ("annoy+rerank", "hierarchical") and p.annoy > 0:
                cand.append(self._annoy(xq, max(p.annoy, kk), p.search_k))
            D, I = rerank(xq, np.hstack(cand), self.xb, kk)
        return drop_ids(D, I, exclude, k)

    def _ivfpq(self, xq: np.ndarray, k: int, nprobe: int):
        self._params_space.set_index_parameter(self.index, "nprobe", nprobe)
        q = faiss.extract_index_ivf(self.index).quantizer
        if isinstance(faiss.downcast_index(q), faiss.IndexHNSWFlat):
            self._params_space.set_index_parameter(self.index, "quantizer_efSearch",
                                                   max(64, 2 * nprobe))
        return self.index.search(xq, k)

    def _annoy(self, xq: np.ndarray, k: int, search_k: int) -> np.ndarray:
        xp = self.pca.apply(xq)
        out = np.full((len(xq), k), -1, np.int64)
        for i, v in enumerate(xp):
            r = self.annoy.get_nns_by_vector(v.tolist(), k, search_k=search_k)
            out[i, :len(r)] = r
        return out

    # -- queries of every kind --------------------------------------------------------
    def search(self, queries: Sequence, k: int = 10, mode: str | None = None,
               exclude_self: bool = False, **params) -> list[QueryResult]:
        """Search for each query: an int (an id in the corpus), a path or bytes (an
        image, preprocessed as the corpus was) or a vector (a 1-d array, or a 2-d array
        whose rows are queries). Results of a query asked before with the same
        parameters come from the cache, without touching the index."""
        mode = check_mode(mode or self.default_mode)
        p = self.params(mode, **params)
        if k < 1:
            raise ConfigError("k must be at least 1")
        qs = self._parse(queries)
        tag = json.dumps([mode, k, exclude_self, p.for_mode(mode)])
        out: list[QueryResult | None] = [None] * len(qs)
        todo = []
        for i, q in enumerate(qs):
            hit = self.cache.get((q.cache_key, tag))
            if hit is not None:
                out[i] = replace(hit, query=q.label, cached=True)
            else:
                todo.append(i)
        if todo:
            xq = self._vectors([qs[i] for i in todo])
            excl = np.array([qs[i].id if qs[i].id is not None else -1 for i in todo]) \
                if exclude_self else None
            D, I = self.search_vectors(xq, k, mode, p, excl)
            for row, i in enumerate(todo):
                n = int((I[row] >= 0).sum())
                ids = I[row, :n].tolist()
                r = QueryResult(qs[i].label, ids, D[row, :n].tolist(), self.keys(ids))
                self.cache.put((qs[i].cache_key, tag), r)
                out[i] = r
        for q, r in zip(qs, out):
            r.query_jpeg = q.image
        return out

    def _parse(self, queries: Sequence) -> list[_Query]:
        if isinstance(queries, np.ndarray) or not isinstance(queries, (list, tuple)):
            queries = [queries]
        out = []
        for q in queries:
            if isinstance(q, (int, np.integer)) and not isinstance(q, bool):
                out.append(_Query(f"id:{int(q)}", f"id:{int(q)}", id=int(q)))
            elif isinstance(q, (str, os.PathLike)):
                data = _read_query_file(q)
                out.append(_Query(os.fspath(q), "img:" + hashlib.sha1(data).hexdigest(),
                                  image=data))
            elif isinstance(q, (bytes, bytearray)):
                out.append(_Query(f"bytes:{len(q)}", "img:" + hashlib.sha1(q).hexdigest(),
                                  image=bytes(q)))
            elif isinstance(q, np.ndarray) and q.ndim in (1, 2):
                for j, v in enumerate(np.atleast_2d(q)):
                    v = np.asarray(v, np.float32)
                    out.append(_Query(f"vector:{len(out)}",
                                      "vec:" + hashlib.sha1(v.tobytes()).hexdigest(),
                                      vector=v))
            else:
                raise ConfigError(f"cannot search for a {type(q).__name__}: give ids, "
                                  "image paths or bytes, or vectors")
        return out

    def _vectors(self, qs: list[_Query]) -> np.ndarray:
        """float32 [nq, d] query vectors, L2-normalised."""
        xq = np.zeros((len(qs), self.d), np.float32)
        images = [i for i, q in enumerate(qs) if q.image is not None]
        if images:
            emb = self.embedder
            xq[images] = emb.embed([qs[i].image for i in images])
            for i in images:  # the preprocessed JPEG, shown as the query's thumbnail
                qs[i].image = emb.last_jpegs[images.index(i)]
        for i, q in enumerate(qs):
            if q.id is not None:
                xq[i] = self._id_vector(q.id)
            elif q.vector is not None:
                if q.vector.shape != (self.d,):
                    raise ConfigError(f"query vectors must have {self.d} dimensions, "
                                      f"not {q.vector.shape[0]}")
                xq[i] = q.vector
        norms = np.linalg.norm(xq, axis=1, keepdims=True)
        return xq / np.maximum(norms, 1e-12)

    def _id_vector(self, i: int) -> np.ndarray:
        if not 0 <= i < len(self.xb):
            raise ConfigError(f"id {i} is not in the corpus (ids are 0..{len(self.xb) - 1})")
        v = np.asarray(self.xb[i], np.float32)
        if not v.any():
            raise WorkflowError(f"id {i} ({self.keys([i])[0]}) has no feature: its image "
                                "failed in preprocessing (see images/report.json)")
        return v

    @cached_property
    def embedder(self):
        from .extract import QueryEmbedder
        return QueryEmbedder(self.store, self._embedder)

    # -- thumbnails --------------------------------------------------------------------
    def thumbnails(self, ids: Sequence[int]) -> dict[int, bytes]:
        """The stored (preprocessed) JPEG of each id, read from the image shards."""
        from .plan import shard_name
        from .preprocess import STAGE as PREPROCESS
        bounds = self.plan_info[1]
        by_shard: dict[int, list[int]] = {}
        for i in set(int(i) for i in ids if i >= 0):
            by_shard.setdefault(int(np.searchsorted(bounds, i, side="right")) - 1, []).append(i)
        out = {}
        for s, members in sorted(by_shard.items()):
            m = self.store.marker(PREPROCESS, shard_name(s))
            if m is None:
                continue
            with self.store.fs.open(self.store.path(m.path), "rb") as fh, \
                    h5py.File(fh, "r") as f:
                lo = int(bounds[s])
                for i in sorted(members):
                    out[i] = bytes(f["jpeg"][i - lo])
        return out


def _read_query_file(path) -> bytes:
    try:
        with open(path, "rb") as f:
            return f.read()
    except OSError as e:
        raise WorkflowError(f"cannot read query image {os.fspath(path)}: {e.strerror or e}; "
                            "check the path") from None

