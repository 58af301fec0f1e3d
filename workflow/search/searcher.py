"""Search: a `Searcher` opened on a store, five modes, and a bounded query cache.

Modes (cosine similarity = inner product of L2-normalised features):
- `exact`: every feature, block by block from the float16 re-rank store (the baseline);
- `ivfpq`: the IVF-PQ index alone (scores are PQ estimates);
- `ivfpq+rerank`: IVF-PQ candidates re-scored exactly from the re-rank store;
- `annoy+rerank`: Annoy candidates (in PCA space) re-scored exactly;
- `hierarchical`: the query cache, then the union of Annoy and IVF-PQ candidates,
  re-scored exactly.

Results follow the Faiss convention of `workflow.index.knn`.
"""
from __future__ import annotations

import json
import logging
import mmap
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from functools import cached_property, partial

import faiss
import numpy as np

from ..errors import ConfigError, UnknownId
from ..formats.evaluation import read_search_defaults
from ..formats.images import read_item, stored_jpegs
from ..formats.index import load_index, load_rerank, load_trained
from ..formats.layout import PREPROCESS, shard_name
from ..formats.plan import load_keys_and_bounds
from ..formats.prefilter import load_prefilter
from ..formats.removed import load_removed, removal_version
from ..index.knn import EXACT_BLOCK, drop_ids, exact_search, rerank, rerank_store_blocks
from ..storage.mounts import read_ahead
from ..storage.store import Store
from .cache import QueryCache
from .collapse import collapsed_search, group_map
from .modes import MODES, SearchParams, check_mode, mode_params
from .query import Query, parse_queries, require_text_tower

logger = logging.getLogger(__name__)

REMOVAL_CHECK_SECONDS = 5.0  # how stale the removal list a long-lived Searcher uses may be


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


# ------------------------------------------------------------------ the searcher

class Searcher:
    """Search a finished store by image, by id, by words (image-text models) or by vector.

    Args:
        store: a `Store` or its URL; it must hold a filled index (stage 4). The prefilter
            (stage 5) is needed by the Annoy modes only, the model only for image and text
            queries.
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
        saved = read_search_defaults(self.store)
        self.defaults = {m: replace(SearchParams(), **saved.get(m, {})) for m in MODES}
        self.default_mode = saved.get("default_mode", "hierarchical")
        # queries in words lie elsewhere in the space (the modality gap): evaluation tunes
        # them on their own; where it did not, they take the image queries' defaults
        text = saved.get("text") or {}
        self.text_defaults = {m: replace(self.defaults[m], **text.get(m, {})) for m in MODES}
        self.text_default_mode = text.get("default_mode", self.default_mode)
        self._removals: tuple | None = None  # (version, mask, selector, bitmap, checked at)
        self._cache_lock, self._model_lock = threading.Lock(), threading.Lock()
        self.removal_check_seconds = REMOVAL_CHECK_SECONDS

    # -- lazily loaded parts ---------------------------------------------------------
    @cached_property
    def index(self) -> faiss.Index:
        return load_index(self.store)

    @cached_property
    def xb(self) -> np.ndarray:
        return load_rerank(self.store)

    def release_pages(self) -> None:
        """Unmap the re-rank store's pages a batch touched (64 KB around each row read):
        they leave this process's resident memory, not the page cache."""
        if (mm := getattr(self.__dict__.get("xb"), "_mmap", None)) is not None:
            mm.madvise(mmap.MADV_DONTNEED)

    @cached_property
    def _exact_rows(self) -> np.ndarray:
        """The re-rank store for exact search: as float32 once where that takes 64 MB or
        less (a small corpus: not converted again for every query), else as stored."""
        return np.asarray(self.xb, np.float32) if self.xb.size <= 16 << 20 else self.xb

    @cached_property
    def valid(self) -> np.ndarray:
        """valid[id]: the id has a feature (a non-zero row of the re-rank store)."""
        xb = self.xb.view(np.uint16)
        return np.concatenate([np.any(xb[lo:lo + EXACT_BLOCK] != 0, axis=1)
                               for lo in range(0, len(xb), EXACT_BLOCK)] or [np.zeros(0, bool)])

    @cached_property
    def annoy(self):
        return load_prefilter(self.store)

    def prefetch(self) -> threading.Thread:
        """Ask the kernel, in a background thread, to read the memory-mapped re-rank
        store and prefilter into the page cache: after a cold start, the first queries
        would otherwise wait on random disk reads. Costs no memory that cannot be given
        back (page cache) and nothing where the files are already cached."""
        files = [self.xb.filename] + (self.annoy.files if "annoy" in self.__dict__ else [])
        t = threading.Thread(target=read_ahead, args=(files,), daemon=True,
                             name="prefetch")
        t.start()
        return t

    # -- removed ids ---------------------------------------------------------------------
    def removals(self) -> tuple[int, np.ndarray]:
        """(version, removed[id] mask) of the removal list, read again when it may have
        changed (at most every `removal_check_seconds`)."""
        now = time.monotonic()
        r = self._removals
        if r is None or now - r[4] >= self.removal_check_seconds:
            version = removal_version(self.store)
            if r is None or version != r[0]:
                _, ids = load_removed(self.store)
                n = len(self.xb)
                mask = np.zeros(n, bool)
                mask[ids[ids < n]] = True
                bits = np.packbits(~mask, bitorder="little")
                sel = faiss.IDSelectorBitmap(n, faiss.swig_ptr(bits)) if ids.size else None
                r = (version, mask, sel, bits, now)
            self._removals = (*r[:4], now)
        return self._removals[0], self._removals[1]

    @property
    def removed_count(self) -> int:
        return int(self.removals()[1].sum())

    @cached_property
    def duplicate_groups(self) -> np.ndarray:
        """rep[id] of the near-duplicate groups (read once: restart to see new ones)."""
        return group_map(self.store, len(self.xb))

    @cached_property
    def pca(self) -> faiss.VectorTransform:
        return load_trained(self.store)[1]

    @cached_property
    def _projection(self):
        """The PCA as (matrix, bias) for numpy, or None for another kind of transform: a
        few queries are projected several times faster so than through Faiss's sgemm,
        whose threads contend when two searches run at once."""
        t = self.pca
        if not isinstance(t, faiss.LinearTransform):
            return None
        a = faiss.vector_to_array(t.A).reshape(t.d_out, t.d_in).T.copy()
        return a, (faiss.vector_to_array(t.b) if t.have_bias else None)

    def project(self, xq: np.ndarray) -> np.ndarray:
        """Queries in the prefilter's PCA space."""
        if self._projection is None:
            return self.pca.apply(xq)
        a, b = self._projection
        return xq @ a + b if b is not None else xq @ a

    @cached_property
    def _params_space(self) -> faiss.ParameterSpace:
        return faiss.ParameterSpace()

    @cached_property
    def plan_info(self) -> tuple[list[str], np.ndarray]:
        """(keys by id, shard bounds) from the frozen plan."""
        return load_keys_and_bounds(self.store, self.store.scratch / "search" / "plan.h5")

    @property
    def d(self) -> int:
        return int(self.xb.shape[1])

    def keys(self, ids: Sequence[int]) -> list[str]:
        keys = self.plan_info[0]
        return [keys[i] if 0 <= i < len(keys) else "" for i in ids]

    # -- numeric search ----------------------------------------------------------------
    def mode_for(self, text: bool = False) -> str:
        """The default mode of image, id and vector queries, or (`text`) of those in words."""
        return self.text_default_mode if text else self.default_mode

    def params(self, mode: str, text: bool = False, **overrides) -> SearchParams:
        """The mode's defaults (tuned by evaluation where it ran; for queries in words
        with `text`) with overrides applied."""
        check_mode(mode)
        given = {k: v for k, v in overrides.items() if v is not None}
        base = self.text_defaults if text else self.defaults
        return mode_params(base[mode], mode, given,
                           lambda: faiss.extract_index_ivf(self.index).nlist)

    def search_vectors(self, xq: np.ndarray, k: int = 10, mode: str | None = None,
                       params: SearchParams | None = None,
                       exclude: np.ndarray | None = None):
        """Top k of float32 queries [nq, d] in `mode` (default: the tuned default mode);
        `exclude` (one id per query, -1 for none) is left out of each query's results.
        No cache. Returns (D, I)."""
        mode = check_mode(mode or self.default_mode)
        p = params or self.defaults[mode]
        xq = np.ascontiguousarray(xq, dtype=np.float32)
        assert xq.ndim == 2 and xq.shape[1] == self.d, f"queries must be [nq, {self.d}]"
        kk = k + (exclude is not None)
        _, removed = self.removals()
        if mode == "exact":
            allowed = self.valid & ~removed if removed.any() else self.valid
            D, I = exact_search(xq, rerank_store_blocks(self._exact_rows, allowed), kk)
        elif mode == "ivfpq":
            D, I = self._ivfpq(xq, kk, p.nprobe)
        else:
            cand = []
            if mode in ("ivfpq+rerank", "hierarchical"):
                cand.append(self._ivfpq(xq, max(p.rerank, kk), p.nprobe)[1])
            if mode in ("annoy+rerank", "hierarchical") and p.annoy > 0:
                cand.append(self._annoy(xq, max(p.annoy, kk), p.search_k))
            cand = np.hstack(cand)
            if removed.any():
                cand = np.where((cand >= 0) & removed[np.maximum(cand, 0)], -1, cand)
            D, I = rerank(xq, cand, self.xb, kk)
        return drop_ids(D, I, exclude, k)

    def _ivfpq(self, xq: np.ndarray, k: int, nprobe: int):
        self._params_space.set_index_parameter(self.index, "nprobe", nprobe)
        q = faiss.extract_index_ivf(self.index).quantizer
        if isinstance(faiss.downcast_index(q), faiss.IndexHNSWFlat):
            self._params_space.set_index_parameter(self.index, "quantizer_efSearch",
                                                   max(64, 2 * nprobe))
        sel = self._removals[2] if self._removals else None
        if sel is None:
            return self.index.search(xq, k)
        params = faiss.SearchParametersIVF(sel=sel, nprobe=nprobe)  # leaves removed ids out
        if isinstance(self.index, faiss.IndexPreTransform):
            params = faiss.SearchParametersPreTransform(index_params=params)
        return self.index.search(xq, k, params=params)

    def _annoy(self, xq: np.ndarray, k: int, search_k: int) -> np.ndarray:
        xp = self.project(xq)
        out = np.full((len(xq), self.annoy.max_results(k)), -1, np.int64)
        for i, v in enumerate(xp):
            r = self.annoy.get_nns_by_vector(v.tolist(), k, search_k=search_k)
            out[i, :len(r)] = r
        return out

    # -- queries of every kind --------------------------------------------------------
    def search(self, queries: Sequence, k: int = 10, mode: str | None = None,
               exclude_self: bool = False, collapse_duplicates: bool = False,
               **params) -> list[QueryResult]:
        """Search for each query: an int (an id in the corpus), a path or bytes (an
        image, preprocessed as the corpus was), a `TextQuery` (words, for an image-text
        model's store) or a vector (a 1-d array, or a 2-d array whose rows are queries).
        Results of a query asked before with the same parameters come from the cache,
        without touching the index. With `collapse_duplicates`, at most one image of
        each near-duplicate group. Queries in words take the defaults evaluation tuned
        for them (`text_defaults`, `text_default_mode`), the others the image ones."""
        if k < 1:
            raise ConfigError("k must be at least 1")
        qs = parse_queries(queries)
        words = [q.text is not None for q in qs]
        if any(words) and not all(words):  # each kind with its own defaults, in order
            parts = {kind: [q for q, w in zip(qs, words) if w == kind] for kind in (0, 1)}
            found = {kind: iter(self._search(part, k, mode, exclude_self,
                                             collapse_duplicates, bool(kind), params))
                     for kind, part in parts.items()}
            return [next(found[w]) for w in words]
        return self._search(qs, k, mode, exclude_self, collapse_duplicates,
                            bool(words) and words[0], params)

    def _search(self, qs: list[Query], k: int, mode: str | None, exclude_self: bool,
                collapse_duplicates: bool, text: bool, params: dict) -> list[QueryResult]:
        """`search` for queries of one kind (`text`: all in words, else none)."""
        mode = check_mode(mode or self.mode_for(text))
        p = self.params(mode, text, **params)
        groups = self.duplicate_groups if collapse_duplicates else None
        tag = json.dumps([mode, k, exclude_self, p.for_mode(mode), self.removals()[0],
                          collapse_duplicates])
        out: list[QueryResult | None] = [None] * len(qs)
        todo = []
        for i, q in enumerate(qs):
            with self._cache_lock:
                hit = self.cache.get((q.cache_key, tag))
            if hit is not None:
                out[i] = replace(hit, query=q.label, cached=True)
            else:
                todo.append(i)
        if todo:
            xq = self._vectors([qs[i] for i in todo])
            excl = np.array([qs[i].id if qs[i].id is not None else -1 for i in todo]) \
                if exclude_self else None
            if groups is None:
                D, I = self.search_vectors(xq, k, mode, p, excl)
            else:
                D, I = collapsed_search(partial(self.search_vectors, mode=mode), xq, k, p,
                                        excl, groups, len(self.xb))
            for row, i in enumerate(todo):
                n = int((I[row] >= 0).sum())
                ids = I[row, :n].tolist()
                r = QueryResult(qs[i].label, ids, D[row, :n].tolist(), self.keys(ids))
                with self._cache_lock:
                    self.cache.put((qs[i].cache_key, tag), r)
                out[i] = r
        for q, r in zip(qs, out):
            r.query_jpeg = q.image
        return out

    def _vectors(self, qs: list[Query]) -> np.ndarray:
        """float32 [nq, d] query vectors, L2-normalised."""
        xq = np.zeros((len(qs), self.d), np.float32)
        images = [i for i, q in enumerate(qs) if q.image is not None]
        if images:
            with self._model_lock:  # one model call at a time (threads share it)
                emb = self.embedder
                xq[images] = emb.embed([qs[i].image for i in images])
                jpegs = emb.last_jpegs
            for i in images:  # the preprocessed JPEG, shown as the query's thumbnail
                qs[i].image = jpegs[images.index(i)]
        if texts := [i for i, q in enumerate(qs) if q.text is not None]:
            require_text_tower(self.store)
            with self._model_lock:
                xq[texts] = self.embedder.embed_text([qs[i].text for i in texts])
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
            raise UnknownId(f"id {i} is not in the corpus (ids are 0..{len(self.xb) - 1})")
        v = np.asarray(self.xb[i], np.float32)
        if not v.any():
            raise UnknownId(f"id {i} ({self.keys([i])[0]}) has no feature: its image "
                            "failed in preprocessing (see images/report.json)")
        return v

    def item(self, i: int) -> dict:
        """What the store says of image `i`: key, original size, status and reason."""
        bounds = self.plan_info[1]
        if not 0 <= i < int(bounds[-1]):
            raise UnknownId(f"id {i} is not in the corpus (ids are 0..{int(bounds[-1]) - 1})")
        s = int(np.searchsorted(bounds, i, side="right")) - 1
        m = self.store.marker(PREPROCESS, shard_name(s))
        if m is None:
            raise UnknownId(f"id {i} is not preprocessed yet")
        out = {"id": i, **read_item(self.store, m.path, i - int(bounds[s]))}
        _, removed = self.removals()
        out["removed"] = bool(i < len(removed) and removed[i])
        return out

    @cached_property
    def embedder(self):
        from .query import QueryEmbedder
        return QueryEmbedder(self.store, self._embedder)

    # -- thumbnails --------------------------------------------------------------------
    def thumbnails(self, ids: Sequence[int]) -> dict[int, bytes]:
        """The stored (preprocessed) JPEG of each id not removed, from the image shards."""
        _, removed = self.removals()
        wanted = {int(i) for i in ids if i >= 0 and not (i < len(removed) and removed[i])}
        return stored_jpegs(self.store, self.plan_info[1], sorted(wanted))
