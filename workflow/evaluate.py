"""Stage 7, evaluate: recall of every search mode against exact search, speed, tuning.

- Queries: a seeded sample of corpus items (each query's own id left out of both the
  exact and the approximate results), or a folder of query images.
- `evaluation/groundtruth.npz`: the queries and their exact top 100, computed block by
  block over the feature shards (GPU where Faiss has one), checkpointed while it runs
  (`groundtruth-partial.npz`), so a killed evaluation resumes and a later one reuses it.
- `evaluation/sweep-<mode>.npz`: per mode, a sweep of its parameters: recall@1/10/100, a
  tie-aware recall@10, single-query latency p50/p95/p99 and batch queries/s (k=10), and
  each query's top 10 at each setting.
- `evaluation/search_defaults.json`: per mode, the cheapest measured parameters (lowest
  p50 latency) that reach --target-recall; the `Searcher` uses them as its defaults.
- `evaluation/report.json`, `report.md`, `recall_vs_qps.png`, and precision@k by class
  where the corpus is organised in a folder per class.
"""
from __future__ import annotations

import datetime as dt
import io
import json
import logging
import os
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from .errors import ConfigError, DeadlineReached, WorkflowError, check_settings
from .lease import Lease
from .search import (DEFAULTS_FILE, MODE_PARAMS, MODES, SearchParams, Searcher, drop_ids,
                     exact_search)
from .store import Store
from .utils import Timeit, cpu_name

logger = logging.getLogger(__name__)

STAGE = "evaluate"
FOLDER = "evaluation"
GT_FILE = f"{FOLDER}/groundtruth.npz"
GT_PARTIAL = f"{FOLDER}/groundtruth-partial.npz"
REPORT_JSON = f"{FOLDER}/report.json"
REPORT_MD = f"{FOLDER}/report.md"
PLOT_FILE = f"{FOLDER}/recall_vs_qps.png"
K_GT = 100
PRECISION_AT = (1, 10)
GRID_VERSION = 2
IMAGE_EXTS = {".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff", ".gif"}


@dataclass(frozen=True)
class EvaluateConfig:
    """Settings of the evaluate stage; see `scripts/07_evaluate.py --help`."""
    store: str
    scratch: str | None = None
    queries: int = 1000
    query_dir: str | None = None
    seed: int = 0
    target_recall: float = 0.95
    modes: tuple[str, ...] = MODES
    latency_queries: int = 200
    batch_size: int = 256
    tie_epsilon: float = 1e-4
    labels: str = "auto"
    remeasure: bool = False
    checkpoint_seconds: float = 30.0
    max_minutes: float | None = None
    takeover: bool = False
    wait_minutes: float = 0.0
    progress: bool = True

    def validate(self) -> "EvaluateConfig":
        check_settings([
            (self.queries >= 1, "--queries must be at least 1"),
            (0 < self.target_recall <= 1, "--target-recall must be in (0, 1]"),
            (bool(self.modes) and set(self.modes) <= set(MODES),
             f"--modes must be among {', '.join(MODES)}"),
            (self.latency_queries >= 1, "--latency-queries must be at least 1"),
            (self.batch_size >= 1, "--batch-size must be at least 1"),
            (self.tie_epsilon >= 0, "--tie-epsilon must be >= 0"),
            (self.labels in ("auto", "none"), "--labels must be auto or none"),
            (self.max_minutes is None or self.max_minutes > 0, "--max-minutes must be > 0"),
            (self.query_dir is None or os.path.isdir(self.query_dir),
             f"--query-dir {self.query_dir} is not a folder"),
        ])
        return self


@dataclass
class EvaluateResult:
    complete: bool
    n_queries: int
    report: dict = field(default_factory=dict)
    seconds: float = 0.0
    store: str = ""

    def summary(self) -> str:
        if not self.complete:
            return (f"evaluate stopped early (re-run to resume); {self.seconds:.1f} s. "
                    f"Store: {self.store}")
        return (f"evaluate complete: {self.n_queries:,} queries; {self.seconds:.1f} s.\n"
                + tuned_table(self.report) +
                f"\nReport: {self.store.rstrip('/')}/{REPORT_MD}")


# ------------------------------------------------------------------ metrics

def recall_at(I: np.ndarray, gt: np.ndarray, k: int) -> float:
    """Mean over queries of |top k ∩ exact top k| / (exact results among the top k)."""
    hits, total = 0, 0
    for a, b in zip(I[:, :k], gt[:, :k]):
        b = b[b >= 0]
        hits += len(np.intersect1d(a[a >= 0], b))
        total += len(b)
    return hits / total if total else 1.0


def tie_aware_recall(I: np.ndarray, xq: np.ndarray, xb: np.ndarray, gt_D: np.ndarray,
                     k: int = 10, eps: float = 1e-4) -> float:
    """recall@k where a result counts if its exact score is within eps of the k-th exact
    score: a duplicate of an exact neighbour is as good as the neighbour."""
    out = []
    for i in range(len(I)):
        ids = I[i, :k][I[i, :k] >= 0]
        kth = gt_D[i, :k][np.isfinite(gt_D[i, :k])]
        if len(kth) == 0:
            continue
        s = np.asarray(xb[np.sort(ids)], np.float32) @ xq[i] if len(ids) else np.zeros(0)
        out.append(min(1.0, float((s >= kth[-1] - eps).sum()) / len(kth)))
    return float(np.mean(out)) if out else 1.0


def precision_by_class(I: np.ndarray, query_labels: list[str], labels: list[str], k: int):
    """(mean precision@k over queries, {class: mean precision@k})."""
    per: dict[str, list[float]] = {}
    for row, ql in zip(I[:, :k], query_labels):
        got = [labels[i] == ql for i in row if i >= 0]
        per.setdefault(ql, []).append(sum(got) / k)
    allp = [p for v in per.values() for p in v]
    return float(np.mean(allp)), {c: float(np.mean(v)) for c, v in sorted(per.items())}


def class_label(key: str) -> str:
    """The class of an image in a folder-per-class corpus: its folder's name."""
    parts = key.replace("\\", "/").split("/")
    return parts[-2] if len(parts) > 1 else ""


def labelled(labels: list[str]) -> bool:
    """Folder-per-class: every item in a folder, at least two classes, and classes that
    hold more than one item on average."""
    classes = set(labels)
    return "" not in classes and 2 <= len(classes) <= len(labels) / 2


# ------------------------------------------------------------------ the stage

def run(cfg: EvaluateConfig) -> EvaluateResult:
    """Run (or resume) the evaluation; a finished ground truth and sweep are reused."""
    cfg.validate()
    t0 = time.monotonic()
    store = Store(cfg.store, cfg.scratch)
    deadline = t0 + cfg.max_minutes * 60 if cfg.max_minutes else None
    with Lease(store, STAGE, takeover=cfg.takeover,
               wait=cfg.wait_minutes * 60) as lease:
        searcher = Searcher(store, cache_size=1024)
        modes = _available_modes(store, cfg.modes)
        fp = store.freeze_stage(STAGE, _settings(cfg), _parent(store))
        store.cleanup(STAGE, FOLDER)
        if cfg.remeasure:
            for mode in MODES:
                store.remove_marker(STAGE, f"sweep-{mode}")
        try:
            q = _queries(cfg, store, searcher, fp, lease, deadline)
            sweeps = {}
            for mode in modes:
                sweeps[mode] = _sweep(cfg, store, searcher, mode, q, fp, lease, deadline)
        except DeadlineReached:
            logger.warning("evaluate: --max-minutes reached; re-run the same command to resume")
            return EvaluateResult(False, 0, seconds=time.monotonic() - t0, store=store.url)
        report = _report(cfg, store, searcher, q, sweeps)
        lease.check()
        _commit_report(store, report, fp)
    return EvaluateResult(True, len(q["xq"]), report, time.monotonic() - t0, store.url)


def _available_modes(store: Store, modes) -> list[str]:
    from .add import STAGE as ADD
    from .prefilter import STAGE as PREFILTER
    if store.marker(ADD, "index") is None:
        raise WorkflowError(f"{store.url} has no filled index; run the stages up to "
                            "scripts/04_add.py first")
    if store.marker(PREFILTER, "annoy") is None:
        skipped = [m for m in modes if "annoy" in MODE_PARAMS[m]]
        if skipped:
            logger.warning("no prefilter in the store (scripts/05_prefilter.py): not "
                           "evaluating %s", ", ".join(skipped))
        modes = [m for m in modes if m not in skipped]
    return list(modes)


def _settings(cfg: EvaluateConfig) -> dict:
    """What the ground truth depends on (timings and tuning are re-done at will)."""
    s = {"queries": cfg.queries, "seed": cfg.seed, "k": K_GT}
    if cfg.query_dir:
        files = _query_files(cfg.query_dir)
        s = {"query_dir": os.path.abspath(cfg.query_dir), "k": K_GT,
             "query_files": _digest([(str(p.relative_to(cfg.query_dir)), p.stat().st_size)
                                     for p in files])}
    return s


def _parent(store: Store) -> str:
    stages = store.run_info()["stages"]
    return "+".join(stages[s]["fingerprint"] for s in ("add", "prefilter") if s in stages)


def _digest(obj) -> str:
    import hashlib
    return hashlib.sha256(json.dumps(obj).encode()).hexdigest()[:16]


# ------------------------------------------------------------------ queries + ground truth

def _query_files(folder: str) -> list[Path]:
    root = Path(folder)
    return sorted(p for p in root.rglob("*") if p.suffix.lower() in IMAGE_EXTS and p.is_file())


def _queries(cfg, store: Store, searcher: Searcher, fp: str, lease, deadline) -> dict:
    """The queries and their exact top K_GT: from the store, or computed and committed."""
    m = store.marker(STAGE, "groundtruth")
    if m is None:
        if cfg.query_dir:
            qids, xq, qkeys = _embed_query_dir(cfg.query_dir, searcher, cfg.progress)
        else:
            qids = sample_query_ids(searcher.xb, cfg.queries, cfg.seed)
            xq = np.asarray(searcher.xb[qids], np.float32)
            qkeys = np.array([f"id:{i}" for i in qids])
        D, I = _ground_truth(cfg, store, xq, qids, fp, lease, deadline)
        _commit_npz(store, GT_FILE, "groundtruth", fp, {"n": len(qids)},
                    query_ids=qids, query_keys=qkeys, xq=xq, D=D, I=I)
        store.remove_marker(STAGE, "groundtruth-partial", remove_file=True)
        m = store.marker(STAGE, "groundtruth")
    with np.load(store.fetch(m, store.scratch / STAGE / "groundtruth.npz")) as f:
        return {k: f[k] for k in f.files}


def sample_query_ids(xb: np.ndarray, n: int, seed: int) -> np.ndarray:
    """n seeded ids with a feature (a non-zero row of the re-rank store), sorted."""
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(xb))
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


def _embed_query_dir(folder: str, searcher: Searcher, progress: bool):
    files = _query_files(folder)
    if not files:
        raise ConfigError(f"--query-dir {folder} holds no images ({', '.join(sorted(IMAGE_EXTS))})")
    xs, keys = [], []
    for p in tqdm(files, desc="embed queries", unit="img", mininterval=1.0,
                  disable=not progress):
        try:
            xs.append(searcher.embedder.embed([str(p)])[0])
            keys.append(str(p.relative_to(folder)))
        except WorkflowError as e:
            logger.warning("query image skipped: %s", e)
    if not xs:
        raise WorkflowError(f"no image in --query-dir {folder} could be used")
    return np.full(len(xs), -1, np.int64), np.stack(xs).astype(np.float32), np.array(keys)


def merge_topk(D1, I1, D2, I2, k: int):
    """The k best of two result sets per query (score descending, then id ascending)."""
    D, I = np.hstack([D1, D2]), np.hstack([I1, I2])
    order = np.lexsort((I, -D), axis=1)[:, :k] if D.size else np.zeros((len(D), 0), int)
    return np.take_along_axis(D, order, 1), np.take_along_axis(I, order, 1)


def _ground_truth(cfg, store: Store, xq: np.ndarray, qids: np.ndarray, fp: str, lease,
                  deadline):
    """Exact top K_GT per query (own id left out) over the feature shards, block by block;
    the partial result is committed every `checkpoint_seconds`, so a kill costs little."""
    from .extract import fetch_features
    from .train import feature_markers
    feats = feature_markers(store)
    kk = K_GT + 1
    D = np.full((len(xq), kk), -np.inf, np.float32)
    I = np.full((len(xq), kk), -1, np.int64)
    done: list[str] = []
    pm = store.marker(STAGE, "groundtruth-partial")
    if pm is not None:
        with np.load(store.fetch(pm, store.scratch / STAGE / "partial.npz")) as f:
            if f["D"].shape == D.shape and np.array_equal(f["qids"], qids):
                D, I, done = f["D"], f["I"], list(pm.extra["done"])
                logger.info("evaluate: exact search resumes after %d of %d shards",
                            len(done), len(feats))
    work = store.scratch / STAGE
    last = time.monotonic()
    todo = [u for u in feats if u not in done]
    with Timeit(f"exact top {K_GT} of {len(xq):,} queries", logging.INFO), \
            tqdm(total=len(feats), initial=len(done), unit="shard", desc="exact search",
                 disable=not cfg.progress, mininterval=1.0) as bar:
        for unit in todo:
            if deadline is not None and time.monotonic() > deadline:
                raise DeadlineReached()
            ids, x = fetch_features(store, feats[unit], work)
            Db, Ib = exact_search(xq, [(ids, x)], kk)
            D, I = merge_topk(D, I, Db, Ib, kk)
            done.append(unit)
            bar.update(1)
            if time.monotonic() - last >= cfg.checkpoint_seconds and len(done) < len(feats):
                lease.check()
                _commit_npz(store, GT_PARTIAL, "groundtruth-partial", fp,
                            {"done": done}, D=D, I=I, qids=qids)
                last = time.monotonic()
    excl = np.where(qids >= 0, qids, -2)
    return drop_ids(D, I, excl, K_GT)


def _commit_npz(store: Store, rel: str, unit: str, fp: str, extra: dict, **arrays) -> None:
    work = store.scratch / STAGE
    work.mkdir(parents=True, exist_ok=True)
    path = work / Path(rel).name
    with open(path, "wb") as f:
        np.savez(f, **arrays)
    store.commit(path, rel, STAGE, unit, fp, extra)
    path.unlink()


# ------------------------------------------------------------------ the sweep

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


def _sweep(cfg, store: Store, searcher: Searcher, mode: str, q: dict, fp: str, lease,
           deadline) -> dict:
    """The mode's sweep: from the store, or measured and committed."""
    m = store.marker(STAGE, f"sweep-{mode}")
    if m is None or m.extra.get("grid") != GRID_VERSION:  # absent, or measured otherwise
        if deadline is not None and time.monotonic() > deadline:
            raise DeadlineReached()
        import faiss
        nlist = faiss.extract_index_ivf(searcher.index).nlist
        grid = sweep_grid(mode, nlist, int(searcher.index.ntotal))
        points, results = [], []
        for p in tqdm(grid, desc=f"sweep {mode}", unit="setting", disable=not cfg.progress):
            point, I = measure(cfg, searcher, mode, p, q)
            points.append(point)
            results.append(I)
        lease.check()
        _commit_npz(store, f"{FOLDER}/sweep-{mode}.npz", f"sweep-{mode}", fp,
                    {"points": points, "grid": GRID_VERSION}, I=np.stack(results))
        m = store.marker(STAGE, f"sweep-{mode}")
    with np.load(store.fetch(m, store.scratch / STAGE / f"sweep-{mode}.npz")) as f:
        return {"points": m.extra["points"], "I": f["I"]}


def _batched(cfg, searcher: Searcher, mode: str, p: SearchParams, xq, excl, k: int):
    return np.vstack([searcher.search_vectors(xq[lo:lo + cfg.batch_size], k, mode, p,
                                              excl[lo:lo + cfg.batch_size])[1]
                      for lo in range(0, len(xq), cfg.batch_size)])


def measure(cfg, searcher: Searcher, mode: str, p: SearchParams, q: dict):
    """One setting: recall against the ground truth, batch queries/s, single-query latency.

    Searches ask for 10 results (recall@1, recall@10, queries/s, latency), and once more
    for 100 (recall@100): with candidate-based modes, asking for more looks further."""
    xq, qids, gt_D, gt_I = q["xq"], q["query_ids"], q["D"], q["I"]
    excl = np.where(qids >= 0, qids, -2)
    searcher.search_vectors(xq[:1], 10, mode, p, excl[:1])  # warm-up
    t = time.perf_counter()
    I10 = _batched(cfg, searcher, mode, p, xq, excl, 10)
    qps = len(xq) / (time.perf_counter() - t)
    I100 = _batched(cfg, searcher, mode, p, xq, excl, K_GT)
    n_lat = min(cfg.latency_queries, len(xq))
    if mode == "exact":  # a full scan per query: a few are enough (7 at 2M x 1280)
        n_lat = min(n_lat, max(3, min(20, int(2e10 // (len(searcher.xb) * searcher.d)))))
    lat = []
    for i in range(n_lat):
        t = time.perf_counter()
        searcher.search_vectors(xq[i:i + 1], 10, mode, p, excl[i:i + 1])
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


# ------------------------------------------------------------------ the report

def _report(cfg, store: Store, searcher: Searcher, q: dict, sweeps: dict) -> dict:
    import faiss
    tuned = {}
    for mode, s in sweeps.items():
        i, met = tune(s["points"], cfg.target_recall)
        tuned[mode] = {**s["points"][i], "target_met": met, "point": i}
    cpu = cpu_name()
    report = {
        "date": dt.datetime.now().strftime("%Y-%m-%d %H:%M"),
        "machine": f"{cpu}, {os.cpu_count()} cores, {faiss.get_num_gpus()} GPU(s)",
        "store": store.url, "n": int(searcher.index.ntotal), "d": searcher.d,
        "index": store.marker("train", "index").extra.get("factory"),
        "queries": len(q["xq"]), "query_source": cfg.query_dir or f"sample, seed {cfg.seed}",
        "target_recall": cfg.target_recall, "tie_epsilon": cfg.tie_epsilon,
        "tuned": tuned, "sweeps": {m: s["points"] for m, s in sweeps.items()},
        "precision": _precision(cfg, searcher, q, sweeps, tuned),
        "cache": _cache_check(searcher, q["xq"][:50], next(
            (m for m in ("hierarchical", "ivfpq+rerank") if m in tuned), "ivfpq")),
    }
    return report


def _precision(cfg, searcher: Searcher, q: dict, sweeps: dict, tuned: dict) -> dict | None:
    """Precision@k by class, for exact search and each mode at its tuned setting."""
    if cfg.labels == "none":
        return None
    try:
        labels = [class_label(k) for k in searcher.plan_info[0]]
    except Exception as e:  # noqa: BLE001 - a store without a readable plan has no labels
        logger.info("no class labels: %s", e)
        return None
    if not labelled(labels):
        return None
    if cfg.query_dir:
        qlabels = [class_label(str(k)) for k in q["query_keys"]]
    else:
        qlabels = [labels[i] for i in q["query_ids"]]
    out = {"classes": sorted(set(qlabels)), "by_mode": {}}
    results = {"exact (ground truth)": q["I"]}
    results.update({m: s["I"][tuned[m]["point"]] for m, s in sweeps.items()})
    for name, I in results.items():
        out["by_mode"][name] = {}
        for k in PRECISION_AT:
            mean, per = precision_by_class(I, qlabels, labels, k)
            out["by_mode"][name][f"P@{k}"] = {"mean": round(mean, 6),
                                             "by_class": {c: round(v, 6) for c, v in per.items()}}
    return out


def _cache_check(searcher: Searcher, xq: np.ndarray, mode: str) -> dict:
    """Latency of repeated queries, served by the query cache."""
    searcher.search(list(xq), mode=mode)
    lat = []
    for v in xq:
        t = time.perf_counter()
        searcher.search([v], mode=mode)
        lat.append(time.perf_counter() - t)
    return {"mode": mode, "repeats": len(xq), "p50_ms": round(float(np.median(lat)) * 1e3, 4),
            **searcher.cache.stats()}


def tuned_table(report: dict) -> str:
    """The Markdown table of each mode at its tuned setting."""
    rows = ["| mode | parameters | recall@1 | recall@10 | tie-aware recall@10 | recall@100 "
            "| p50 ms | p95 ms | p99 ms | queries/s |",
            "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for mode, t in report["tuned"].items():
        params = ", ".join(f"{k}={v}" for k, v in t["params"].items()) or "-"
        flag = "" if t["target_met"] else " (target not reached)"
        rows.append(f"| {mode} | {params}{flag} | {t['recall@1']:.3f} | {t['recall@10']:.3f} | "
                    f"{t['tie_recall@10']:.3f} | {t['recall@100']:.3f} | {t['p50_ms']:.2f} | "
                    f"{t['p95_ms']:.2f} | {t['p99_ms']:.2f} | {t['qps']:,.0f} |")
    return "\n".join(rows)


def report_markdown(report: dict) -> str:
    lines = [f"# Search evaluation, {report['date']}", "",
             f"- store: {report['store']}", f"- machine: {report['machine']}",
             f"- corpus: {report['n']:,} vectors of dimension {report['d']}, index "
             f"{report['index']}",
             f"- queries: {report['queries']:,} ({report['query_source']}); own id left out "
             "of every result list",
             f"- recall@k against exact search; tie-aware recall@10 counts a result whose "
             f"exact score is within {report['tie_epsilon']} of the 10th exact score",
             "- latency: single queries (k=10), one at a time; queries/s: batches (k=100)", "",
             f"## Each mode at its tuned setting (cheapest with recall@10 >= "
             f"{report['target_recall']})", "", tuned_table(report), ""]
    c = report.get("cache")
    if c:
        lines += [f"A repeated {c['mode']} query is served from the query cache in "
                  f"{c['p50_ms']:.3f} ms (p50 over {c['repeats']} repeats).", ""]
    p = report.get("precision")
    if p:
        lines += _precision_markdown(p)
    lines += ["## Sweeps", ""]
    for mode, points in report["sweeps"].items():
        lines += [f"### {mode}", "", "| parameters | recall@1 | recall@10 | tie-aware@10 | "
                  "recall@100 | p50 ms | p99 ms | queries/s |",
                  "|---|---:|---:|---:|---:|---:|---:|---:|"]
        for pt in points:
            params = ", ".join(f"{k}={v}" for k, v in pt["params"].items()) or "-"
            lines.append(f"| {params} | {pt['recall@1']:.3f} | {pt['recall@10']:.3f} | "
                         f"{pt['tie_recall@10']:.3f} | {pt['recall@100']:.3f} | "
                         f"{pt['p50_ms']:.2f} | {pt['p99_ms']:.2f} | {pt['qps']:,.0f} |")
        lines.append("")
    return "\n".join(lines)


def _precision_markdown(p: dict) -> list[str]:
    names = list(p["by_mode"])
    lines = ["## Precision@k by class (same folder = relevant)", "",
             "| | " + " | ".join(names) + " |", "|---|" + "---:|" * len(names)]
    for k in PRECISION_AT:
        lines.append(f"| mean P@{k} | " + " | ".join(
            f"{p['by_mode'][n][f'P@{k}']['mean']:.3f}" for n in names) + " |")
    for c in p["classes"]:
        lines.append(f"| {c} P@10 | " + " | ".join(
            f"{p['by_mode'][n]['P@10']['by_class'][c]:.3f}" for n in names) + " |")
    return lines + [""]


def recall_qps_plot(report: dict) -> bytes:
    """PNG: recall@10 against queries/s, one line per mode."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(7, 4.5), dpi=110)
    for mode, points in report["sweeps"].items():
        pts = sorted(points, key=lambda p: p["qps"])
        ax.plot([p["qps"] for p in pts], [p["recall@10"] for p in pts], "o-", ms=3,
                label=mode)
    ax.axhline(report["target_recall"], color="grey", ls="--", lw=0.8)
    ax.set_xscale("log")
    ax.set_xlabel("queries/s (batches, log scale)")
    ax.set_ylabel("recall@10 vs exact search")
    ax.set_title(f"{report['n']:,} vectors, {report['queries']:,} queries")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    buf = io.BytesIO()
    fig.tight_layout()
    fig.savefig(buf, format="png")
    plt.close(fig)
    return buf.getvalue()


def search_defaults(report: dict) -> dict:
    out = {m: t["params"] for m, t in report["tuned"].items()}
    out.update({"default_mode": "hierarchical" if "hierarchical" in out else
                next(iter(out)), "target_recall": report["target_recall"],
                "tuned_on": report["date"]})
    return out


def _commit_report(store: Store, report: dict, fp: str) -> None:
    work = store.scratch / STAGE
    work.mkdir(parents=True, exist_ok=True)
    files = {
        "report": (REPORT_JSON, json.dumps(report, indent=1).encode()),
        "report-md": (REPORT_MD, report_markdown(report).encode()),
        "plot": (PLOT_FILE, recall_qps_plot(report)),
        "defaults": (DEFAULTS_FILE, json.dumps(search_defaults(report), indent=1).encode()),
    }
    summary = {"queries": report["queries"], "target_recall": report["target_recall"],
               "tuned": {m: {"recall@10": t["recall@10"], "p50_ms": t["p50_ms"]}
                         for m, t in report["tuned"].items()}}
    for unit, (rel, data) in files.items():
        path = work / Path(rel).name
        path.write_bytes(data)
        store.commit(path, rel, STAGE, unit, fp, summary if unit == "report" else None)
        path.unlink()
