"""Stage 8, duplicates: near-duplicate groups over the whole corpus.

1. For every image with a feature, its `--k` nearest other images through the index
   (IVF-PQ candidates, `--nprobe` lists, `--rerank` of them re-scored exactly from the
   re-rank store): one unit per feature shard, `duplicates/knn/shard-NNNNN.npz`, so a
   killed run resumes at the first shard not done, and an update of the corpus adds
   units for its new shards only (their neighbours reach the older images, and a link
   needs only one side).
2. Grouping (`index.grouping`): links at or above `--threshold`, or down to 0.20 below
   it where the two images' pHashes agree (`inputs.hashing`: near-exact copies whose
   similarity a small original made drop); components; then every member must reach
   its group's centre at `--threshold - --slack` (no chains). The representative is
   the largest original resolution, then the largest file, then the lowest id. The
   exact byte duplicates preprocess found are grouped too, with their original.
   Removed images are left out. Cheap next to step 1: a different threshold regroups
   without searching again.
3. `duplicates/groups.csv`, `remove-list.txt`, then `groups.json` last (`formats.
   duplicates`); its marker records what it was computed for, so a re-run with the same
   settings on the same corpus does nothing.
"""
from __future__ import annotations

import functools
import logging
import time
from dataclasses import dataclass

import numpy as np
from tqdm.auto import tqdm

from ..errors import DeadlineReached
from ..formats.duplicates import knn_file, load_knn, write_knn
from ..formats.evaluation import corpus_id
from ..formats.features import feature_markers, fetch_features
from ..formats.images import orig_sizes, stored_jpegs
from ..formats.layout import (
    ADD,
    CALIBRATION_FILE,
    DUPLICATES,
    GROUPS_CSV,
    GROUPS_FILE,
    REMOVE_LIST,
    REPORT_FILE,
)
from ..formats.plan import corpus_version, load_plan, planned_count
from ..formats.removed import load_removed, removal_version
from ..index.grouping import group, links, representative_order
from ..inputs.hashing import HASH_DISTANCE, HASH_MARGIN, hamming, phash
from ..inputs.sources import entry_size
from ..options import opt
from ..search.modes import SearchParams
from ..search.searcher import Searcher
from ..utils import Timeit
from .base import StageConfig, StageRun
from .calibration import calibrate, calibration_json, review_only_reason
from .review import commit_outputs

logger = logging.getLogger(__name__)

STAGE = DUPLICATES
GROUP = "duplicates"
MODE = "ivfpq+rerank"
RELEASE_EVERY = 256  # queries searched between two releases of the re-rank store's pages


@dataclass(frozen=True)
class DuplicatesConfig(StageConfig):
    """Settings of the duplicates stage; see `scripts/08_duplicates.py --help`."""
    threshold: float | None = opt(None, "cosine similarity at or above which two images "
                                  "are near-duplicates (default: measured on the store: "
                                  "what 85%% of edited copies of a sample of its images "
                                  "reach with its model; 0.90 for features of another "
                                  "origin)", type=float, group=GROUP, shown="calibrated")
    slack: float = opt(0.02, "every member of a group must reach its centre (the member "
                       "nearest the group's mean feature) at threshold - slack (stops "
                       "chains of small steps)", type=float,
                       group=GROUP)
    k: int = opt(10, "nearest images looked at for each image", type=int, group=GROUP)
    nprobe: int = opt(16, "inverted lists scanned for each image", type=int, group=GROUP)
    rerank: int = opt(50, "IVF-PQ candidates re-scored exactly for each image", type=int,
                      group=GROUP)
    report_groups: int = opt(5000, "groups shown in the review pages (duplicates/report.html "
                             "and report/; all of them are in groups.csv)", type=int,
                             group=GROUP)

    def checks(self) -> list[tuple[bool, str]]:
        r = self.require
        return super().checks() + [
            r("threshold", self.threshold is None or 0 < self.threshold <= 1,
              "must be in (0, 1]"),
            r("slack", 0 <= self.slack < (self.threshold or 1), "must be in [0, threshold)"),
            r("k", 1 <= self.k <= 1000, "must be 1..1000"),
            r("nprobe", self.nprobe >= 1, "must be at least 1"),
            r("rerank", self.rerank >= self.k, "must be at least --k"),
            r("report_groups", self.report_groups >= 0, "must be >= 0"),
        ]


CONFIG = DuplicatesConfig  # the stage's settings; the command line is built from its fields


@dataclass
class DuplicatesResult:
    complete: bool
    shards_done: int
    shards: int
    groups: int = 0
    grouped: int = 0
    seconds: float = 0.0
    store: str = ""

    review_only: str | None = None  # why the groups cannot be trusted, if they cannot

    def summary(self) -> str:
        if not self.complete:
            return (f"duplicates stopped early: {self.shards_done}/{self.shards} shards "
                    f"searched (re-run to resume); {self.seconds:.1f} s. Store: {self.store}")
        files = f"{GROUPS_CSV}, {REMOVE_LIST}" if not self.review_only else GROUPS_CSV
        text = (f"duplicates complete: {self.groups:,} groups holding {self.grouped:,} "
                f"images; {self.seconds:.1f} s.\nGroups: {self.store.rstrip('/')}/"
                f"{GROUPS_FILE} (and {files})")
        return text + (f"\nFOR REVIEW ONLY: {self.review_only}" if self.review_only else "")


def run(cfg: DuplicatesConfig) -> DuplicatesResult:
    """Search the neighbours of every shard not done yet, then group (again where the
    settings or the corpus changed)."""
    with StageRun(STAGE, cfg) as run:
        feats = feature_markers(run.store)
        fp = run.freeze({"k": cfg.k, "nprobe": cfg.nprobe, "rerank": cfg.rerank, "mode": MODE},
                        run.frozen_fingerprint(ADD))
        searcher = Searcher(run.store, cache_size=0)
        done = run.store.markers(STAGE)
        pending = [u for u in feats if u not in done]
        try:
            _search_all(run, searcher, {u: feats[u] for u in pending}, fp, len(feats))
        except DeadlineReached:
            run.stopped_early()
            left = [u for u in feats if run.store.marker(STAGE, u) is None]
            return DuplicatesResult(False, len(feats) - len(left), len(feats),
                                    seconds=run.seconds, store=run.store.url)
        n_groups, grouped, review_only = _group_all(run, searcher, list(feats), fp)
    return DuplicatesResult(True, len(feats), len(feats), n_groups, grouped, run.seconds,
                            run.store.url, review_only)


def _search_all(run: StageRun, searcher: Searcher, feats: dict, fp: str, total: int) -> None:
    cfg = run.cfg
    params = SearchParams(nprobe=cfg.nprobe, rerank=cfg.rerank)
    n = sum(m.extra["n"] for m in feats.values())
    last, t0 = 0.0, time.monotonic()
    with tqdm(total=n, unit="img", desc="duplicates: neighbours", mininterval=1.0,
              disable=not cfg.progress, dynamic_ncols=True) as bar:
        for unit, m in feats.items():
            run.check_deadline(last)
            t = time.monotonic()
            ids, x = fetch_features(run.store, m, run.work)
            x = x.astype(np.float32)
            keep = np.flatnonzero(np.any(x != 0, axis=1))  # images without a feature: none
            ids, x = ids[keep], x[keep]
            D, I = _neighbours(searcher, x, ids, cfg.k, params)
            path = run.work / f"{unit}.npz"
            write_knn(path, ids, I, np.where(I >= 0, D, -1.0))
            run.lease.check()
            run.store.commit(path, knn_file(unit), STAGE, unit, fp, {"n": int(len(ids))})
            path.unlink()
            last = time.monotonic() - t
            bar.update(m.extra["n"])
    if feats:
        took = time.monotonic() - t0
        logger.info("duplicates: the neighbours of %d images (%d of %d shards) took %.1f s, "
                    "%.0f images/s", n, len(feats), total, took, n / max(took, 1e-9))


def _neighbours(searcher: Searcher, x: np.ndarray, ids: np.ndarray, k: int,
                params: SearchParams) -> tuple[np.ndarray, np.ndarray]:
    """Each row's k nearest others, RELEASE_EVERY queries at a time, the re-rank store's
    pages let go after each: resident memory stays near 1 GB at 2M x 1280 (it reached
    5 GB, the whole store mapped, within one shard)."""
    D = np.zeros((len(ids), k), np.float32)
    I = np.full((len(ids), k), -1, np.int64)
    for lo in range(0, len(ids), RELEASE_EVERY):
        hi = lo + RELEASE_EVERY
        D[lo:hi], I[lo:hi] = searcher.search_vectors(x[lo:hi], k, MODE, params,
                                                     exclude=ids[lo:hi])
        searcher.release_pages()
    return D, I


def _group_all(run: StageRun, searcher: Searcher, units: list[str], fp: str) -> tuple[int, int]:
    """Group from the committed neighbours, unless groups.json is already for these
    settings and this corpus. Returns (groups, images grouped, why they are for review
    only or None)."""
    cfg, store = run.cfg, run.store
    corpus = corpus_id(corpus_version(store), removal_version(store))
    _, removed = load_removed(store)
    knn = functools.cache(lambda: tuple(np.concatenate(a) for a in zip(*(
        load_knn(store, store.marker(STAGE, u)) for u in units))))
    threshold, source = (cfg.threshold, "given") if cfg.threshold else \
        _calibrated(run, searcher, fp, knn)
    calibration = store.read_json(CALIBRATION_FILE) if source != "given" else None
    settings = {"threshold": threshold, "threshold_from": source, "slack": cfg.slack,
                "k": cfg.k, "corpus": corpus, "shards": len(units),
                "report_groups": cfg.report_groups,
                "review_only": review_only_reason(calibration)}
    m = store.marker(STAGE, "groups")
    if m is not None and all(m.extra.get(k) == v for k, v in settings.items()):
        return m.extra["groups"], m.extra["images"], settings["review_only"]
    t = time.monotonic()
    with Timeit("loading the neighbours", logging.INFO):
        ids, nbrs, sims = knn()
    alias, (ea, eb) = _exact_duplicates(store, removed)
    plan = load_plan(store, store.scratch / STAGE / "plan.h5")
    a, b, s = links(ids, nbrs, sims, threshold - HASH_MARGIN, drop=removed)
    with Timeit("pHashes of the images of candidate links", logging.INFO):
        hashes = _hashes(store, plan.bounds, alias, np.unique(np.concatenate([a, b, ea, eb])))
    keep = (s >= threshold) | hashes.near(a, b)  # or a pHash says it is a near-exact copy
    a, b = np.concatenate([a[keep], ea]), np.concatenate([b[keep], eb])
    groups = _find_groups(store, searcher, plan, (a, b), alias, hashes, threshold,
                          min(cfg.slack, threshold))
    logger.info("duplicates: %d links, %d groups in %.1f s", len(a), len(groups),
                time.monotonic() - t)
    keep = ~np.isin(ids, removed)
    if settings["review_only"]:
        logger.warning("duplicates: %s", settings["review_only"])
    with Timeit("writing the outputs and review pages", logging.INFO):
        commit_outputs(run, groups, settings, sims[keep, 0], calibration, plan.bounds, fp)
    return len(groups), sum(len(g["ids"]) for g in groups), settings["review_only"]


def _find_groups(store, searcher: Searcher, plan, pairs: tuple, alias: np.ndarray,
                 hashes: _Hashes, threshold: float, slack: float) -> list[dict]:
    """The groups of the linked pairs (`index.grouping.group`), as groups.json has them."""
    a, b = pairs
    linked = np.unique(np.concatenate([a, b]))
    pixels, sizes = _pixels(store, plan, linked), _file_sizes(plan, linked)
    xb = searcher.xb
    reasons: dict[int, str] = {}
    calls = [0]

    def pick(group_ids: np.ndarray) -> int:
        rep, why = representative_order(np.array([pixels[int(i)] for i in group_ids]),
                                        np.array([sizes[int(i)] for i in group_ids]),
                                        group_ids)
        reasons[rep] = why
        return rep

    def vectors(group_ids: np.ndarray) -> np.ndarray:
        rows, inv = np.unique(alias[group_ids], return_inverse=True)  # sorted reads
        out = np.asarray(xb[rows], np.float32)[inv]
        calls[0] += 1
        if calls[0] % RELEASE_EVERY == 0:  # groups all over the store: see _neighbours
            searcher.release_pages()
        return out

    def close(centre: int, group_ids: np.ndarray, s: np.ndarray) -> np.ndarray:
        return (s >= threshold - HASH_MARGIN) & hashes.near(np.int64(centre), group_ids)

    with Timeit(f"grouping {len(a):,} links", logging.INFO):
        found = group(a, b, pick, vectors, threshold, slack, close)
    return [{"representative": rep, "reason": reasons[rep], "ids": members.tolist(),
             "keys": [plan.keys[i] for i in members.tolist()],
             "scores": [round(float(s), 6) for s in scores], "centre": centre}
            for rep, members, scores, centre in found]


def _calibrated(run: StageRun, searcher: Searcher, fp: str, knn) -> tuple[float, str]:
    """The threshold measured on the store (`calibration`), once: committed as
    duplicates/calibration.json and reused; and "measured" (or "fallback" where the
    store's model could not be loaded)."""
    m = run.store.marker(STAGE, "calibration")
    if m is None:
        with Timeit("calibrating the threshold on edited copies of a sample", logging.INFO):
            result = calibrate(searcher, neighbours=knn)
        path = run.work / "calibration.json"
        path.write_bytes(calibration_json(result))
        run.lease.check()
        m = run.store.commit(path, CALIBRATION_FILE, STAGE, "calibration", fp,
                             {"threshold": result["threshold"],
                              "calibrated": result["calibrated"]})
        path.unlink()
    logger.info("duplicates: threshold %.3f, measured on the store (%s)",
                m.extra["threshold"], run.store.display(CALIBRATION_FILE))
    return m.extra["threshold"], "measured" if m.extra.get("calibrated", True) else "fallback"


class _Hashes:
    """pHashes of some ids; an id without one (no stored image) is near nothing."""

    def __init__(self, ids: np.ndarray, values: np.ndarray, known: np.ndarray):
        self.ids, self.values, self.known = ids, values, known

    def near(self, a: np.ndarray, b: np.ndarray) -> np.ndarray:
        """Pairs (a[i], b[i]), broadcast, whose hashes differ in HASH_DISTANCE bits or
        fewer."""
        pa, pb = np.searchsorted(self.ids, a), np.searchsorted(self.ids, b)
        return self.known[pa] & self.known[pb] & (
            hamming(self.values[pa], self.values[pb]) <= HASH_DISTANCE)


def _hashes(store, bounds: np.ndarray, alias: np.ndarray, ids: np.ndarray) -> _Hashes:
    """The pHash of each id's stored image (an exact duplicate's: its original's)."""
    src = alias[ids]
    jpegs = stored_jpegs(store, bounds, np.unique(src).tolist())
    values, known = np.zeros(len(ids), np.uint64), np.zeros(len(ids), bool)
    for n, i in enumerate(src.tolist()):
        h = phash(jpegs[i]) if jpegs.get(i) else None
        if h is not None:
            values[n], known[n] = h, True
    return _Hashes(ids, values, known)


def _exact_duplicates(store, removed: np.ndarray) -> tuple[np.ndarray, tuple]:
    """(alias[id]: the id whose feature stands for it (its original, for an exact
    duplicate preprocess found), links from each exact duplicate to its original)."""
    report = store.read_json(REPORT_FILE) or {}
    groups = report.get("duplicates", {}).get("groups", [])
    alias = np.arange(planned_count(store), dtype=np.int64)
    a, b = [], []
    gone = set(removed.tolist())
    for g in groups:
        first, *rest = (int(i) for i in g)
        for i in rest:
            alias[i] = first
            if first not in gone and i not in gone:
                a.append(first)
                b.append(i)
    return alias, (np.array(a, np.int64), np.array(b, np.int64))


def _pixels(store, plan, ids: np.ndarray) -> dict[int, int]:
    """Original width x height of each id."""
    return {int(i): int(w) * int(h) for i, (w, h) in zip(ids.tolist(),
                                                         orig_sizes(store, plan.bounds, ids))}


def _file_sizes(plan, ids: np.ndarray) -> dict[int, int]:
    """Size in bytes of each id's source file (-1 where it cannot be reached)."""
    f, out = plan.first_id, {}
    for i in ids.tolist():
        src = int(plan.source_idx[i - f])
        out[i] = entry_size(plan.sources[src], plan.locators[i - f], int(plan.sizes[i - f])) \
            if 0 <= src < len(plan.sources) else int(plan.sizes[i - f])
    return out
