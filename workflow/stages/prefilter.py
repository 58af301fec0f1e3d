"""Stage 5, prefilter: an Annoy index over PCA-reduced features (`prefilter/annoy.ann`),
plus one segment per corpus update over the shards it added (`formats.prefilter`).

A fast candidate generator for the hierarchical search, whose candidates are re-ranked
exactly. Annoy's build time grows with the dimension (BENCHMARKS.md), so it works in the
PCA space trained by the train stage. Built on local disk (`on_disk_build`), with one
build thread so that the same inputs give the same file, then committed.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
from tqdm.auto import tqdm

from ..errors import WorkflowError
from ..formats.features import feature_markers, fetch_features
from ..formats.index import load_trained
from ..formats.layout import PREFILTER, TRAIN
from ..formats.prefilter import (
    new_prefilter,
    segment_chain,
    segment_file,
    segment_unit,
    shard_range,
)
from ..index.estimate import choose_annoy_trees, estimate_annoy_seconds
from ..options import opt
from ..utils import Timeit
from .base import StageConfig, StageRun

logger = logging.getLogger(__name__)

STAGE = PREFILTER
GROUP = "prefilter"
MAX_SEGMENTS = 8


@dataclass(frozen=True)
class PrefilterConfig(StageConfig):
    """Settings of the prefilter stage; see `scripts/05_prefilter.py --help`."""
    trees: int | None = opt(None, "Annoy trees (default: about 2 log2 N, between 8 and 50)",
                            type=int, group=GROUP)
    seed: int = opt(0, "seed of the Annoy build", type=int, flag="--annoy-seed", group=GROUP)
    rebuild: bool = opt(False, "fold the segments that corpus updates added into one index "
                        f"(done by itself when they reach {MAX_SEGMENTS} or outgrow the "
                        "first)", action="store_true", group=GROUP)

    def checks(self) -> list[tuple[bool, str]]:
        return super().checks() + [
            self.require("trees", self.trees is None or self.trees >= 1, "must be >= 1")]


CONFIG = PrefilterConfig  # the stage's settings; the command line is built from its fields


@dataclass
class PrefilterResult:
    complete: bool
    n: int
    dim: int
    trees: int
    seconds: float
    store: str

    def summary(self) -> str:
        state = "complete" if self.complete else "not started (too little time left)"
        return (f"prefilter {state}: Annoy over {self.n:,} vectors in {self.dim} PCA "
                f"dimensions, {self.trees} trees; {self.seconds:.1f} s. Store: {self.store}")


def run(cfg: PrefilterConfig) -> PrefilterResult:
    """Build the prefilter, or, after a corpus update, a segment over the new shards (a
    finished one is not rebuilt). With --max-minutes, a build is not started where its
    estimate does not fit."""
    with StageRun(STAGE, cfg) as run:
        feats = feature_markers(run.store)
        if run.store.marker(TRAIN, "pca") is None:
            raise WorkflowError(f"{run.store.url} has no trained PCA; run scripts/03_train.py")
        _, pca = load_trained(run.store)
        units, counts = list(feats), [m.extra["n"] for m in feats.values()]
        fp = run.freeze({"trees": _trees_setting(run), "seed": cfg.seed, "metric": "angular",
                         "dim": pca.d_out}, run.frozen_fingerprint(TRAIN))
        chain, stale = segment_chain(run.store, counts)
        for m in stale:
            run.store.remove_marker(STAGE, m.unit, remove_file=True)
        covered = shard_range(chain[-1], counts)[1] if chain else 0
        first = 0 if _rebuild(cfg, chain, counts, covered) else covered
        n = sum(counts[first:])
        trees = cfg.trees or choose_annoy_trees(max(n, 1))
        complete = covered == len(units) and not (cfg.rebuild and len(chain) > 1)
        if not complete and run.fits(estimate_annoy_seconds(n, pca.d_out, trees)):
            logger.info("prefilter: Annoy over %d vectors (shards %d..%d), %d PCA dimensions, "
                        "%d trees", n, first, len(units) - 1, pca.d_out, trees)
            path = _build(run, {u: feats[u] for u in units[first:]}, pca, trees)
            run.lease.check()
            run.store.commit(path, segment_file(first), STAGE, segment_unit(first), fp,
                             {"n": n, "dim": pca.d_out, "trees": trees, "first": first,
                              "end": len(units)})
            path.unlink()
            for m in chain if first == 0 else []:  # folded into the new base
                if m.unit != segment_unit(0):
                    run.store.remove_marker(STAGE, m.unit, remove_file=True)
            complete = True
    if chain and first:
        trees = chain[0].extra["trees"]
    return PrefilterResult(complete, sum(counts), pca.d_out, trees, run.seconds, run.store.url)


def _trees_setting(run: StageRun):
    """--trees, or, for a store frozen before segments, the number it froze ("auto":
    each segment gets about 2 log2 of its size)."""
    if run.cfg.trees is not None:
        return run.cfg.trees
    frozen = run.store.run_info()["stages"].get(STAGE)
    return frozen["settings"]["trees"] if frozen else "auto"


def _rebuild(cfg: PrefilterConfig, chain: list, counts: list[int], covered: int) -> bool:
    """Build one index over everything: asked for, or the segments too many, or the new
    shards more than the first segment holds (its trees were sized for fewer)."""
    if not chain:
        return True
    new = sum(counts[covered:])
    return (cfg.rebuild and len(chain) > 1) or (new > 0 and (
        len(chain) >= MAX_SEGMENTS or new > chain[0].extra["n"]))


def _build(run: StageRun, feats: dict, pca, trees: int):
    path = run.work / "annoy.ann"
    index = new_prefilter(path, pca.d_out, run.cfg.seed)
    total = sum(m.extra["n"] for m in feats.values())
    with tqdm(total=total, unit="vec", desc="prefilter", disable=not run.cfg.progress,
              mininterval=1.0, dynamic_ncols=True) as bar:
        for m in feats.values():
            ids, x = fetch_features(run.store, m, run.work)
            for i, v in zip(ids.tolist(), pca.apply(x.astype(np.float32))):
                index.add_item(i, v)
            bar.update(len(ids))
    with Timeit(f"building {trees} Annoy trees", logging.INFO):
        index.build(trees, n_jobs=1)
    index.unload()
    return path
