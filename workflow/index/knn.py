"""The numeric kNN core, in the Faiss convention: queries `xq` float32 [nq, d]; results
`D` float32 [nq, k] (scores, best first) and `I` int64 [nq, k], padded with -inf / -1
where fewer than k results exist. Equal scores are ordered by id. No I/O.
"""
from __future__ import annotations

import functools
from collections.abc import Iterable

import faiss
import numpy as np

EXACT_BLOCK = 1 << 16  # rows of the re-rank store converted to float32 at a time
UNION_BYTES = 64 << 20  # float32 candidate rows a re-rank converts at once


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
    (float16, row = id); top k by score, ties broken by id.

    The queries' candidates are converted to float32 once per group of queries whose
    candidates together fit in UNION_BYTES (all of them, where they overlap as on a small
    corpus: 7x faster there than a conversion per query), then each query's scores are
    the same matrix-vector product on the same float32 rows as one at a time."""
    nq, d = xq.shape
    assert cand.shape[0] == nq and xb.shape[1] == d
    D = np.full((nq, k), -np.inf, np.float32)
    I = np.full((nq, k), -1, np.int64)
    rows = max(1, UNION_BYTES // (4 * d))
    union = np.unique(cand[cand >= 0])  # sorted: reads the store in order
    step = nq if len(union) <= rows else max(1, rows // max(1, cand.shape[1]))
    for lo in range(0, nq, step):
        if step < nq:
            union = np.unique(cand[lo:lo + step][cand[lo:lo + step] >= 0])
        x = np.asarray(xb[union], np.float32)
        for i in range(lo, min(lo + step, nq)):
            c = np.unique(cand[i][cand[i] >= 0])
            if len(c) == 0:
                continue
            s = x[np.searchsorted(union, c)] @ xq[i]
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


def merge_topk(D1, I1, D2, I2, k: int):
    """The k best of two result sets per query (score descending, then id ascending)."""
    D, I = np.hstack([D1, D2]), np.hstack([I1, I2])
    order = np.lexsort((I, -D), axis=1)[:, :k] if D.size else np.zeros((len(D), 0), int)
    return np.take_along_axis(D, order, 1), np.take_along_axis(I, order, 1)
