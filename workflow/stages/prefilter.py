"""Stage 5, prefilter: an Annoy index over PCA-reduced features (`prefilter/annoy.ann`).

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
from ..formats.layout import ANNOY_FILE, PREFILTER, TRAIN
from ..formats.prefilter import new_prefilter
from ..index.estimate import choose_annoy_trees, estimate_annoy_seconds
from ..options import opt
from ..utils import Timeit
from .base import StageConfig, StageRun

logger = logging.getLogger(__name__)

STAGE = PREFILTER
GROUP = "prefilter"


@dataclass(frozen=True)
class PrefilterConfig(StageConfig):
    """Settings of the prefilter stage; see `scripts/05_prefilter.py --help`."""
    trees: int | None = opt(None, "Annoy trees (default: about 2 log2 N, between 8 and 50)",
                            type=int, group=GROUP)
    seed: int = opt(0, "seed of the Annoy build", type=int, flag="--annoy-seed", group=GROUP)

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
    """Build the prefilter (a finished one is not rebuilt). With --max-minutes, the build
    is not started where its estimate does not fit."""
    with StageRun(STAGE, cfg) as run:
        feats = feature_markers(run.store)
        if run.store.marker(TRAIN, "pca") is None:
            raise WorkflowError(f"{run.store.url} has no trained PCA; run scripts/03_train.py")
        _, pca = load_trained(run.store)
        n = sum(m.extra["n"] for m in feats.values())
        trees = cfg.trees or choose_annoy_trees(n)
        done = run.store.marker(STAGE, "annoy") is not None
        fp = run.freeze({"trees": trees, "seed": cfg.seed, "metric": "angular",
                         "dim": pca.d_out}, run.frozen_fingerprint(TRAIN), clean=not done)
        complete = done
        if not done and run.fits(estimate_annoy_seconds(n, pca.d_out, trees)):
            logger.info("prefilter: Annoy over %d vectors, %d PCA dimensions, %d trees",
                        n, pca.d_out, trees)
            path = _build(run, feats, pca, trees)
            run.lease.check()
            run.store.commit(path, ANNOY_FILE, STAGE, "annoy", fp,
                             {"n": n, "dim": pca.d_out, "trees": trees})
            path.unlink()
            complete = True
    return PrefilterResult(complete, n, pca.d_out, trees, run.seconds, run.store.url)


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
