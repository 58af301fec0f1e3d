"""Stage 5, prefilter: an Annoy index over PCA-reduced features (`prefilter/annoy.ann`).

A fast candidate generator for the hierarchical search, whose candidates are re-ranked
exactly. Annoy over the full dimension takes hours to build at 2M, so it works in the
PCA space trained by the train stage. Built on local disk (`on_disk_build`), with one
build thread so that the same inputs give the same file, then committed.
"""
from __future__ import annotations

import logging
import time
from dataclasses import dataclass

import annoy
import numpy as np
from tqdm.auto import tqdm

from .errors import WorkflowError, check_settings
from .estimate import choose_annoy_trees
from .extract import fetch_features
from .lease import Lease
from .store import Store
from .train import STAGE as TRAIN, feature_markers, load_trained
from .utils import Timeit

logger = logging.getLogger(__name__)

STAGE = "prefilter"
FOLDER = "prefilter"
ANNOY_FILE = f"{FOLDER}/annoy.ann"


@dataclass(frozen=True)
class PrefilterConfig:
    """Settings of the prefilter stage; see `scripts/05_prefilter.py --help`."""
    store: str
    scratch: str | None = None
    trees: int | None = None
    seed: int = 0
    max_minutes: float | None = None
    takeover: bool = False
    wait_minutes: float = 0.0
    progress: bool = True

    def validate(self) -> "PrefilterConfig":
        check_settings([(self.trees is None or self.trees >= 1, "--trees must be >= 1"),
                        (self.max_minutes is None or self.max_minutes > 0,
                         "--max-minutes must be > 0")])
        return self


@dataclass
class PrefilterResult:
    complete: bool
    n: int
    dim: int
    trees: int
    seconds: float
    store: str

    def summary(self) -> str:
        return (f"prefilter complete: Annoy over {self.n:,} vectors in {self.dim} PCA "
                f"dimensions, {self.trees} trees; {self.seconds:.1f} s. Store: {self.store}")


def run(cfg: PrefilterConfig) -> PrefilterResult:
    """Build the prefilter (a finished one is not rebuilt)."""
    cfg.validate()
    t0 = time.monotonic()
    store = Store(cfg.store, cfg.scratch)
    with Lease(store, STAGE, takeover=cfg.takeover,
               wait=cfg.wait_minutes * 60) as lease:
        feats = feature_markers(store)
        if store.marker(TRAIN, "pca") is None:
            raise WorkflowError(f"{store.url} has no trained PCA; run scripts/03_train.py")
        _, pca = load_trained(store)
        n = sum(m.extra["n"] for m in feats.values())
        trees = cfg.trees or choose_annoy_trees(n)
        parent = store.run_info()["stages"][TRAIN]["fingerprint"]
        fp = store.freeze_stage(STAGE, {"trees": trees, "seed": cfg.seed,
                                        "metric": "angular", "dim": pca.d_out}, parent)
        if store.marker(STAGE, "annoy") is None:
            store.cleanup(STAGE, FOLDER)
            logger.info("prefilter: Annoy over %d vectors, %d PCA dimensions, %d trees",
                        n, pca.d_out, trees)
            path = _build(cfg, store, feats, pca, trees)
            lease.check()
            store.commit(path, ANNOY_FILE, STAGE, "annoy", fp,
                         {"n": n, "dim": pca.d_out, "trees": trees})
            path.unlink()
    return PrefilterResult(True, n, pca.d_out, trees, time.monotonic() - t0, store.url)


def _build(cfg: PrefilterConfig, store: Store, feats: dict, pca, trees: int):
    work = store.scratch / STAGE
    work.mkdir(parents=True, exist_ok=True)
    path = work / "annoy.ann"
    path.unlink(missing_ok=True)
    index = annoy.AnnoyIndex(pca.d_out, "angular")
    index.set_seed(cfg.seed)
    index.on_disk_build(str(path))
    total = sum(m.extra["n"] for m in feats.values())
    with tqdm(total=total, unit="vec", desc="prefilter", disable=not cfg.progress,
              mininterval=1.0, dynamic_ncols=True) as bar:
        for m in feats.values():
            ids, x = fetch_features(store, m, work)
            for i, v in zip(ids.tolist(), pca.apply(x.astype(np.float32))):
                index.add_item(i, v)
            bar.update(len(ids))
    with Timeit(f"building {trees} Annoy trees", logging.INFO):
        index.build(trees, n_jobs=1)
    index.unload()
    return path


def load_prefilter(store: Store) -> annoy.AnnoyIndex:
    """The Annoy index, staged in and memory-mapped."""
    m = store.marker(STAGE, "annoy")
    if m is None:
        raise WorkflowError(f"{store.url} has no prefilter; run scripts/05_prefilter.py")
    index = annoy.AnnoyIndex(m.extra["dim"], "angular")
    index.load(str(store.fetch(m, store.scratch / STAGE / "final" / "annoy.ann")))
    return index
