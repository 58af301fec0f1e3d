"""Stage 3, train: a seeded sample of features -> a trained, empty IVF-PQ index and the
PCA used by the prefilter (`trained/index.faiss`, `trained/pca.faiss`).

The sample is streamed shard by shard (never all features in memory); its size and the
index parameters come from the estimators in `estimate.py`, are printed with their
estimated cost before the expensive step, and can all be overridden.
"""
from __future__ import annotations

import argparse
import json
import logging
from dataclasses import dataclass

import faiss

from ..errors import ConfigError
from ..formats.features import draw_sample, feature_count, feature_markers
from ..formats.index import plain_factory, write_trained
from ..formats.layout import (
    ADD,
    DUPLICATES,
    EVALUATE,
    EXTRACT,
    PCA_FILE,
    PREFILTER,
    TRAIN,
    TRAINED_INDEX_FILE,
)
from ..index.estimate import IndexPlan, plan_index
from ..options import opt, size_option
from ..storage.store import Store
from ..utils import Timeit
from .base import StageConfig, StageRun, reset_stage
from .fit import check_fit

logger = logging.getLogger(__name__)

STAGE = TRAIN
INDEX = "index"


MEMORY_BUDGET_HELP = ("memory the filled index may use (half of it, the rest is for search): "
                      "decides the PQ code size")


@dataclass(frozen=True)
class TrainConfig(StageConfig):
    """Settings of the train stage; see `scripts/03_train.py --help`."""
    index_factory: str | None = opt(None, "a Faiss index factory string (e.g. "
                                    "'OPQ64,IVF4096,PQ64'); default: chosen from N, d and the "
                                    "memory budget", group=INDEX)
    memory_budget: int = opt(8 << 30, MEMORY_BUDGET_HELP, type=size_option, shown="8G",
                             group=INDEX)
    nlist: int | None = opt(None, "inverted lists (default ~4 sqrt N)", type=int, group=INDEX)
    pq_m: int | None = opt(None, "PQ bytes per vector", type=int, group=INDEX)
    opq: bool | None = opt(None, "OPQ rotation (default: where it trains in about a minute)",
                           action=argparse.BooleanOptionalAction, group=INDEX)
    train_size: int | None = opt(None, "training sample (default: 39 per list, at least 50k)",
                                 type=int, group=INDEX)
    pca_dim: int | None = opt(None, "prefilter dimension (default 64)", type=int, group=INDEX)
    seed: int = opt(0, "seed of the training sample", type=int, group=INDEX)
    retrain: bool = opt(False, "train again for the corpus as it is now (after updates "
                        "made it drift or grow: the stage's report says when it is worth "
                        "it). Deletes the trained index and what was built on it (add, "
                        "prefilter, evaluate), which must then be run again",
                        action="store_true", group=INDEX)

    def checks(self) -> list[tuple[bool, str]]:
        r = self.require
        return super().checks() + [
            r("memory_budget", self.memory_budget > 0, "must be positive"),
            r("nlist", self.nlist is None or self.nlist >= 1, "must be at least 1"),
            r("train_size", self.train_size is None or self.train_size >= 1, "must be >= 1"),
            r("pca_dim", self.pca_dim is None or self.pca_dim >= 1, "must be at least 1"),
        ]


CONFIG = TrainConfig  # the stage's settings; the command line is built from its fields


@dataclass
class TrainResult:
    complete: bool
    factory: str
    n: int
    d: int
    train_size: int
    seconds: float
    store: str
    fit: dict | None = None  # how well a finished index fits vectors added since

    def summary(self) -> str:
        state = "complete" if self.complete else "not started (too little time left)"
        out = (f"train {state}: {self.factory} for {self.n:,} vectors of dimension "
               f"{self.d}, trained on {self.train_size:,}; {self.seconds:.1f} s. "
               f"Store: {self.store}")
        return out + (f"\n{self.fit['summary']}" if self.fit else "")


def make_index(d: int, factory: str) -> faiss.Index:
    """An untrained index for inner product; a bad factory string is a ConfigError. A
    fast-scan IVF-PQ (`PQ<m>x4fs`) is built, trained and filled as the plain 4-bit IVF-PQ
    with the same codes (`PQ<m>x4`), whose parts Faiss merges reliably; the index is
    turned into fast-scan when it is loaded for search (`formats.index.load_index`)."""
    try:
        index = faiss.index_factory(d, plain_factory(factory), faiss.METRIC_INNER_PRODUCT)
    except RuntimeError as e:
        raise ConfigError(f"--index-factory {factory!r} is not a valid Faiss index for "
                          f"dimension {d}: {str(e).splitlines()[-1][:200]}") from e
    try:
        ivf = faiss.downcast_index(faiss.extract_index_ivf(index))
    except RuntimeError:  # not an IVF index
        return index
    if isinstance(ivf, faiss.IndexIVFPQ):
        # Faiss's default also trains the PQ codes for polysemous (Hamming) filtering, which
        # the searches here never use: 4x the training time of IVF512,PQ64 on 60k vectors.
        ivf.do_polysemous_training = False
    return index


def use_gpu_for_kmeans(index: faiss.Index) -> bool:
    """Train the coarse quantizer's k-means on the GPUs where Faiss has any."""
    if faiss.get_num_gpus() == 0:
        return False
    ivf = faiss.extract_index_ivf(index)
    ivf.clustering_index = faiss.index_cpu_to_all_gpus(faiss.IndexFlatIP(ivf.d))
    return True


def run(cfg: TrainConfig) -> TrainResult:
    """Run the train stage. A trained index is not trained again (unless --retrain) when
    the corpus grows: new vectors are added to it, and how well it fits them is reported."""
    with StageRun(STAGE, cfg) as run:
        markers = feature_markers(run.store)
        n, d = feature_count(markers)
        if cfg.retrain:
            _forget_training(run.store, n)
        done = run.store.marker(STAGE, "index")
        if done is not None:
            run.cleanup()  # a fit report a killed run left half-committed
            fit = check_fit(run, markers, done)
            return TrainResult(True, done.extra["factory"], n, d,
                               done.extra["plan"]["train_size"], run.seconds, run.store.url,
                               fit)
        plan = plan_index(n, d, cfg.memory_budget, cfg.nlist, cfg.pq_m, cfg.opq,
                          cfg.train_size, cfg.pca_dim)
        factory = cfg.index_factory or plan.factory
        settings = {"factory": factory, "train_size": plan.train_size, "pca_dim": plan.pca_dim,
                    "seed": cfg.seed, "metric": "inner_product", "n": n, "d": d}
        fp = run.freeze(settings, run.frozen_fingerprint(EXTRACT))
        result = TrainResult(True, factory, n, d, plan.train_size, 0.0, run.store.url)
        logger.info("train: %s", plan.describe() if factory == plan.factory
                    else f"{factory} (--index-factory), trained on {plan.train_size:,}")
        if run.fits(plan.train_seconds):
            _train(run, markers, plan, factory, fp)
        else:
            result.complete = False
        result.seconds = run.seconds
        return result


def _forget_training(store: Store, n: int) -> None:
    """--retrain: the trained index and every stage built on it start over, unless it
    was trained for these n vectors already (a re-run of a --retrain that was stopped)."""
    m = store.marker(STAGE, "index")
    if m is not None and m.extra["plan"]["n"] == n:
        logger.info("--retrain: the index was trained for these %d vectors already", n)
        return
    # every stage built on the trained index; train's own lease is this run's
    for stage in (TRAIN, ADD, PREFILTER, EVALUATE, DUPLICATES):
        if reset_stage(store, stage, keep_lease=stage == TRAIN):
            logger.warning("--retrain: deleted the %s stage's outputs", stage)


def _train(run: StageRun, markers: dict, plan: IndexPlan, factory: str, fp: str) -> None:
    cfg, store = run.cfg, run.store
    with Timeit("drawing the training sample", logging.INFO):
        x = draw_sample(store, markers, plan.train_size, cfg.seed, cfg.progress)
    with Timeit("training the PCA", logging.INFO):
        pca = faiss.PCAMatrix(plan.d, plan.pca_dim)
        pca.train(x)
    index = make_index(plan.d, factory)
    gpu = use_gpu_for_kmeans(index)
    with Timeit(f"training {factory} on {len(x):,} vectors{' (GPU k-means)' if gpu else ''}",
                logging.INFO):
        index.train(x)
    if gpu:
        faiss.extract_index_ivf(index).clustering_index = None
    write_trained(index, pca, run.work)
    run.lease.check()
    store.commit(run.work / "pca.faiss", PCA_FILE, STAGE, "pca", fp, {"dim": plan.pca_dim})
    store.commit(run.work / "index.faiss", TRAINED_INDEX_FILE, STAGE, "index", fp,
                 {"factory": factory, "plan": json.loads(json.dumps(plan.__dict__)),
                  "shards": len(markers)})
