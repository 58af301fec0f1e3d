"""Measuring a `Searcher` against exact results: the parameter grid of each mode, recall,
single-query latency and batch queries/s at one setting, and tuning."""
from __future__ import annotations

import time

import numpy as np

from ..errors import WorkflowError
from ..index.metrics import recall_at, tie_aware_recall
from .modes import K_MEASURED, SearchParams
from .searcher import Searcher


def sample_query_ids(xb: np.ndarray, n: int, seed: int,
                     removed: np.ndarray | None = None) -> np.ndarray:
    """n seeded ids with a feature (a non-zero row of the re-rank store) that are not
    `removed` (a mask by id), sorted."""
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(xb))
    if removed is not None and removed.any():
        order = order[~removed[order]]
    out: list[int] = []
    for lo in range(0, len(order), 4 * n):
        chunk = order[lo:lo + 4 * n]
        rows = np.sort(chunk)  # read the store in order
        good = set(rows[np.any(np.asarray(xb[rows]) != 0, axis=1)].tolist())
        out.extend(i for i in chunk.tolist() if i in good)
        if len(out) >= n:
            break
    if not out:
        raise WorkflowError("the corpus has no features to query")
    return np.sort(np.array(out[:n], np.int64))


def sweep_grid(mode: str, nlist: int, n: int) -> list[SearchParams]:
    """The parameter settings measured for `mode`, cheapest first."""
    probes = [p for p in (1, 2, 4, 8, 16, 32, 64, 128, 256) if p <= nlist] or [1]
    depth = sorted({min(r, n) for r in (50, 100, 200, 500, 1000)})
    if mode == "exact":
        return [SearchParams()]
    if mode == "ivfpq":
        return [SearchParams(nprobe=p) for p in probes]
    if mode == "ivfpq+rerank":
        mid = [p for p in probes if 4 <= p <= 64] or probes[-1:]
        return [SearchParams(nprobe=p, rerank=r) for p in mid for r in depth]
    annoy = sorted({min(a, n) for a in (10, 25, 50, 100, 200, 500, 1000, 2000)})
    if mode == "annoy+rerank":
        return [SearchParams(annoy=a) for a in annoy]
    mid = [p for p in probes if 8 <= p <= 32] or probes[-1:]
    return [SearchParams(nprobe=p, rerank=r, annoy=a) for p in mid for r in depth[:4]
            for a in sorted({min(a, n) for a in (25, 50, 100, 200)})]


def _batched(cfg, searcher: Searcher, mode: str, p: SearchParams, xq, excl, k: int):
    return np.vstack([searcher.search_vectors(xq[lo:lo + cfg.batch_size], k, mode, p,
                                              excl[lo:lo + cfg.batch_size])[1]
                      for lo in range(0, len(xq), cfg.batch_size)])


def measure(cfg, searcher: Searcher, mode: str, p: SearchParams, q: dict, k_gt: int):
    """One setting: recall against the ground truth, batch queries/s, single-query latency.

    Searches ask for K_MEASURED (10) results (recall@1, recall@10, queries/s, latency),
    and once more for `k_gt` (recall@100): with candidate-based modes, asking for more
    looks further."""
    xq, qids, gt_D, gt_I = q["xq"], q["query_ids"], q["D"], q["I"]
    excl = np.where(qids >= 0, qids, -2)
    searcher.search_vectors(xq[:1], K_MEASURED, mode, p, excl[:1])  # warm-up
    t = time.perf_counter()
    I10 = _batched(cfg, searcher, mode, p, xq, excl, K_MEASURED)
    qps = len(xq) / (time.perf_counter() - t)
    I100 = _batched(cfg, searcher, mode, p, xq, excl, k_gt)
    n_lat = min(cfg.latency_queries, len(xq))
    if mode == "exact":  # a full scan per query: a few are enough (7 at 2M x 1280)
        n_lat = min(n_lat, max(3, min(20, int(2e10 // (len(searcher.xb) * searcher.d)))))
    lat = []
    for i in range(n_lat):
        t = time.perf_counter()
        searcher.search_vectors(xq[i:i + 1], K_MEASURED, mode, p, excl[i:i + 1])
        lat.append(time.perf_counter() - t)
    ms = np.percentile(np.array(lat) * 1e3, [50, 95, 99])
    point = {"params": p.for_mode(mode), "qps": qps, "latency_queries": n_lat,
             "p50_ms": ms[0], "p95_ms": ms[1], "p99_ms": ms[2],
             "recall@1": recall_at(I10, gt_I, 1), "recall@10": recall_at(I10, gt_I, 10),
             "tie_recall@10": tie_aware_recall(I10, xq, searcher.xb, gt_D, 10,
                                               cfg.tie_epsilon),
             "recall@100": recall_at(I100, gt_I, 100)}
    return {k: (round(float(v), 6) if isinstance(v, (float, np.floating)) else v)
            for k, v in point.items()}, I10


def tune(points: list[dict], target: float) -> tuple[int, bool]:
    """Index of the cheapest point (lowest p50, then highest queries/s) reaching the
    target recall@10; else of the point with the best recall@10. And whether it met it."""
    ok = [i for i, p in enumerate(points) if p["recall@10"] >= target]
    if ok:
        return min(ok, key=lambda i: (points[i]["p50_ms"], -points[i]["qps"])), True
    return max(range(len(points)), key=lambda i: (points[i]["recall@10"],
                                                 -points[i]["p50_ms"])), False


def cache_check(searcher: Searcher, xq: np.ndarray, mode: str) -> dict:
    """Latency of repeated queries, served by the query cache."""
    searcher.search(list(xq), mode=mode)
    lat = []
    for v in xq:
        t = time.perf_counter()
        searcher.search([v], mode=mode)
        lat.append(time.perf_counter() - t)
    return {"mode": mode, "repeats": len(xq), "p50_ms": round(float(np.median(lat)) * 1e3, 4),
            **searcher.cache.stats()}
