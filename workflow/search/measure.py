"""Measuring a `Searcher` against exact results: the parameter grid of each mode, recall
and batch queries/s at every setting, single-query latency at the few settings that
decide the tuning, and tuning."""
from __future__ import annotations

import time
from dataclasses import replace

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


def measure(cfg, searcher: Searcher, mode: str, p: SearchParams, q: dict, warm_up=True):
    """One setting in batches: recall@1, recall@10 and tie-aware recall@10 against the
    ground truth, and queries/s, asking for K_MEASURED (10) results. Latency and
    recall@100 are left to `time_setting`, for the settings worth it (`to_time`).
    `warm_up`: one query first, outside the timing (not where one query is a full scan
    of a large store)."""
    xq, qids, gt_D, gt_I = q["xq"], q["query_ids"], q["D"], q["I"]
    excl = np.where(qids >= 0, qids, -2)
    if warm_up:
        searcher.search_vectors(xq[:1], K_MEASURED, mode, p, excl[:1])
    t = time.perf_counter()
    I10 = _batched(cfg, searcher, mode, p, xq, excl, K_MEASURED)
    qps = len(xq) / (time.perf_counter() - t)
    point = {"params": p.for_mode(mode), "qps": qps, "queries": len(xq), "latency_queries": 0,
             "p50_ms": None, "p95_ms": None, "p99_ms": None,
             "recall@1": recall_at(I10, gt_I, 1), "recall@10": recall_at(I10, gt_I, 10),
             "tie_recall@10": tie_aware_recall(I10, xq, searcher.xb, gt_D, 10,
                                               cfg.tie_epsilon),
             "recall@100": None}
    return _rounded(point), I10


def time_setting(cfg, searcher: Searcher, mode: str, p: SearchParams, q: dict,
                 k_gt: int) -> dict:
    """Single-query latency (p50/p95/p99 of `cfg.latency_queries` queries, one at a
    time, k=K_MEASURED) and recall@100 (the queries in batches once more, asking for
    `k_gt`: with candidate-based modes, asking for more looks further)."""
    xq, qids, gt_I = q["xq"], q["query_ids"], q["I"]
    excl = np.where(qids >= 0, qids, -2)
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
    return _rounded({"latency_queries": n_lat, "p50_ms": ms[0], "p95_ms": ms[1],
                     "p99_ms": ms[2], "recall@100": recall_at(I100, gt_I, 100)})


def _rounded(point: dict) -> dict:
    return {k: (round(float(v), 6) if isinstance(v, (float, np.floating)) else v)
            for k, v in point.items()}


TIMED = 3  # settings timed one query at a time per mode: the tuning's candidates


def dominated(params: dict, reached: list[dict]) -> bool:
    """Whether a setting that already reached the target asks for no more of every knob
    (nprobe, rerank, annoy; search_k alike): this one then costs more and cannot be the
    cheapest to reach it, so the sweep passes over it."""
    return any(all(params[k] >= r[k] if k != "search_k" else params[k] == r[k]
                   for k in params) for r in reached)


def params_of(point: dict) -> SearchParams:
    """The search parameters a sweep point was measured with."""
    return replace(SearchParams(), **point["params"])


def to_time(points: list[dict], target: float, n: int = TIMED) -> list[int]:
    """The settings whose single-query latency decides the tuning: the `n` with the most
    queries/s in batches among those reaching the target recall@10 (batch speed ranks
    the settings of one mode as their latency does, give or take neighbours); where
    none reaches it, the one with the best recall@10."""
    ok = [i for i, p in enumerate(points) if p["recall@10"] >= target]
    if ok:
        return sorted(sorted(ok, key=lambda i: -points[i]["qps"])[:n])
    return [max(range(len(points)), key=lambda i: (points[i]["recall@10"],
                                                   points[i]["qps"]))]


def tune(points: list[dict], target: float) -> tuple[int, bool]:
    """Index of the cheapest timed point (lowest p50, then highest queries/s) reaching
    the target recall@10; else of the timed point with the best recall@10; where none
    was timed (a mode out of the running), of the best recall@10 in batches. And
    whether it met it."""
    timed = [i for i, p in enumerate(points) if p.get("p50_ms") is not None]
    if not timed:
        i = max(range(len(points)), key=lambda i: (points[i]["recall@10"], points[i]["qps"]))
        return i, points[i]["recall@10"] >= target
    ok = [i for i in timed if points[i]["recall@10"] >= target]
    if ok:
        return min(ok, key=lambda i: (points[i]["p50_ms"], -points[i]["qps"])), True
    return max(timed, key=lambda i: (points[i]["recall@10"], -points[i]["p50_ms"])), False


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
