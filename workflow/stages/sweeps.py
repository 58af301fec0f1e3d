"""The evaluate stage's sweeps: per mode and query kind, recall@10 and queries/s in
batches at every setting not dominated by one that reached the target, single-query
latency at the settings that decide the tuning; `exact` last, and not timed where it
cannot win."""
from __future__ import annotations

import logging

import numpy as np
from tqdm.auto import tqdm

from ..formats.evaluation import commit_npz, load_npz, of_corpus
from ..formats.layout import EVALUATE, EVALUATION, sweep_file
from ..search import measure as meter
from ..search.searcher import Searcher
from .base import StageRun
from .groundtruth import K_GT

logger = logging.getLogger(__name__)

STAGE = EVALUATE
GRID_VERSION = 2
# exact is timed whenever a query in batches takes less than this: on a small corpus
# a batch's fixed costs can exceed one query's time, and timing it costs little anyway
# (at 2M x 1280 a query in batches takes about 60 ms, one alone 7 s)
SKIP_TIMING_MS = 20.0
# exact's sweep runs on the first queries that take this many multiply-adds (about 5 s on
# 2 cores), at least EXACT_SWEEP_MIN_QUERIES and at most a batch, where a pass over all of
# them would take more: at 2M x 1280 a pass over 1,000 queries takes a minute, and exact's
# answers are the ground truth's by definition
EXACT_SWEEP_MACS = 3e11
EXACT_SWEEP_MIN_QUERIES = 100


def sweeps(run: StageRun, searcher: Searcher, modes: list[str], q: dict, corpus: str,
            kind: str) -> dict:
    """Every mode's sweep (`_sweep`), `exact` last: by then the cheapest p50 that reached
    the target is known, and where exact's time a query in batches already exceeds it
    (at 2M: seconds a query) it is not timed one query at a time. (The other modes are
    all timed: each one's own tuned setting is its default when it is asked for.)"""
    done: dict = {}
    for mode in sorted(modes, key=lambda m: m == "exact"):
        rival = _cheapest(done, run.cfg.target_recall) if mode == "exact" else None
        done[mode] = _sweep(run, searcher, mode, q, corpus, kind, rival)
    return {m: done[m] for m in modes}


def _exact_sample(cfg, searcher: Searcher, q: dict) -> tuple[dict, bool]:
    """(the queries exact's sweep runs on, whether to warm up): all of them, or the
    first ones within EXACT_SWEEP_MACS (see there) where a pass over all would cost more;
    then without a warm-up query, which would be a full scan of its own."""
    nq, per_query = len(q["xq"]), len(searcher.xb) * searcher.d
    n = min(cfg.batch_size, max(EXACT_SWEEP_MIN_QUERIES, int(EXACT_SWEEP_MACS // per_query)))
    if per_query * nq <= EXACT_SWEEP_MACS or n >= nq:
        return q, True
    logger.info("evaluate: exact searched for the first %d of the %d queries (all of them "
                "would be %.1e multiply-adds)", n, nq, len(searcher.xb) * searcher.d * nq)
    return {k: (v[:n] if k in ("xq", "query_ids", "D", "I") else v) for k, v in q.items()}, \
        False


def _cheapest(sweeps: dict, target: float) -> tuple[str, float] | None:
    """(mode, p50 ms) of the lowest single-query p50 measured that reaches the target."""
    best = [(p["p50_ms"], mode) for mode, s in sweeps.items() for p in s["points"]
            if p.get("p50_ms") is not None and p["recall@10"] >= target]
    return (min(best)[1], min(best)[0]) if best else None


def out_of_running(point: dict, rival: tuple[str, float] | None) -> str | None:
    """Why `point` need not be timed one query at a time, or None: in batches it already
    takes longer a query than the `rival`'s single-query p50 (a full scan shared by a
    batch is one scan per query alone), and longer than SKIP_TIMING_MS."""
    if rival is None or not point["qps"]:
        return None
    per_query = 1e3 / point["qps"]
    if per_query <= max(rival[1], SKIP_TIMING_MS):
        return None
    return (f"not timed: {per_query:.1f} ms a query in batches, above the p50 of "
            f"{rival[0]} ({rival[1]:.2f} ms), so it cannot be the cheapest")


def _sweep(run: StageRun, searcher: Searcher, mode: str, q: dict, corpus: str,
           kind: str = "", rival: tuple[str, float] | None = None) -> dict:
    """The mode's sweep: recall and queries/s in batches at each setting not `dominated`
    by one that reached the target, latency at those `to_time` picks (every setting
    with --full-sweep); from the store, measured where missing (a new target may want
    other settings timed, a higher one the settings passed over), and committed.
    `corpus` identifies the corpus and the queries; `kind` is "" or TEXT."""
    import faiss
    store, unit, cfg = run.store, f"sweep{kind}-{mode}", run.cfg
    m = store.marker(STAGE, unit)
    grid = meter.sweep_grid(mode, faiss.extract_index_ivf(searcher.index).nlist,
                            int(searcher.index.ntotal))
    fresh = not of_corpus(m, corpus) or m.extra.get("grid") != GRID_VERSION or \
        cfg.target_recall > (m.extra.get("pruned_for") or 1.0)  # passed over what it needs
    if fresh:
        run.check_deadline()
        points, results, reached = [], [], []
        for p in tqdm(grid, desc=f"sweep {mode}{' (words)' if kind else ''}", unit="setting",
                      disable=not cfg.progress):
            if not cfg.full_sweep and meter.dominated(p.for_mode(mode), reached):
                continue
            sample, warm = _exact_sample(cfg, searcher, q) if mode == "exact" else (q, True)
            point, I = meter.measure(cfg, searcher, mode, p, sample, warm_up=warm)
            points.append(point)
            results.append(I)
            if point["recall@10"] >= cfg.target_recall:
                reached.append(point["params"])
        I = np.stack(results)
    else:
        points, I = [dict(p) for p in m.extra["points"]], load_npz(store, m)["I"]
    wanted = range(len(points)) if cfg.full_sweep else meter.to_time(points, cfg.target_recall)
    todo = []
    for i in wanted:
        if points[i].get("p50_ms") is not None:
            continue
        why = None if cfg.full_sweep else out_of_running(points[i], rival)
        if why:
            logger.info("evaluate: %s %s", mode, why)
            points[i]["not_timed"] = why
        else:
            points[i].pop("not_timed", None)
            todo.append(i)
    if todo:
        run.check_deadline()
    for i in tqdm(todo, desc=f"time {mode}", unit="setting", disable=not cfg.progress):
        points[i].update(meter.time_setting(cfg, searcher, mode, meter.params_of(points[i]),
                                            q, K_GT))
    if fresh or todo:
        run.lease.check()
        rel = sweep_file(mode) if not kind else f"{EVALUATION}/{unit}.npz"
        commit_npz(store, rel, unit, run.fp,
                   {"points": points, "grid": GRID_VERSION, "corpus": corpus, "pruned_for":
                    (None if cfg.full_sweep else cfg.target_recall) if fresh
                    else m.extra.get("pruned_for")}, I=I)
    return {"points": points, "I": I}


