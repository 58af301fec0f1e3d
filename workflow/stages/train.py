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
import numpy as np
from tqdm.auto import tqdm

from ..errors import ConfigError
from ..formats.features import feature_count, feature_markers, fetch_rows
from ..formats.index import write_trained
from ..formats.layout import EXTRACT, PCA_FILE, TRAIN, TRAINED_INDEX_FILE
from ..index.estimate import IndexPlan, plan_index
from ..options import opt, size_option
from ..storage.marker import Marker
from ..storage.store import Store
from ..utils import Timeit
from .base import StageConfig, StageRun

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

    def summary(self) -> str:
        state = "complete" if self.complete else "not started (too little time left)"
        return (f"train {state}: {self.factory} for {self.n:,} vectors of dimension "
                f"{self.d}, trained on {self.train_size:,}; {self.seconds:.1f} s. "
                f"Store: {self.store}")


def allocate(sizes: list[int], total: int) -> list[int]:
    """How many sample rows each shard gives: proportional to its size, summing to total."""
    n = sum(sizes)
    total = min(total, n)
    share = [s * total // n for s in sizes] if n else [0] * len(sizes)
    for i in sorted(range(len(sizes)), key=lambda i: -(sizes[i] * total % n if n else 0)):
        if sum(share) >= total:
            break
        if share[i] < sizes[i]:
            share[i] += 1
    return share


def draw_sample(store: Store, markers: dict[str, Marker], size: int, seed: int,
                progress: bool = False) -> np.ndarray:
    """A seeded sample of `size` features, float32, read one shard at a time."""
    units = list(markers)
    counts = allocate([markers[u].extra["n"] for u in units], size)
    d = next(iter(markers.values())).extra["dim"]
    out = np.empty((sum(counts), d), np.float32)
    pos = 0
    for i, (unit, k) in enumerate(tqdm(list(zip(units, counts)), desc="sample", unit="shard",
                                       disable=not progress)):
        if k == 0:
            continue
        rng = np.random.default_rng([seed, i])
        rows = np.sort(rng.choice(markers[unit].extra["n"], k, replace=False))
        out[pos:pos + k] = fetch_rows(store, markers[unit], rows, store.scratch / STAGE)
        pos += k
    return out


def make_index(d: int, factory: str) -> faiss.Index:
    """An untrained index for inner product; a bad factory string is a ConfigError."""
    try:
        index = faiss.index_factory(d, factory, faiss.METRIC_INNER_PRODUCT)
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
    """Run the train stage (a finished one is not redone)."""
    with StageRun(STAGE, cfg) as run:
        markers = feature_markers(run.store)
        n, d = feature_count(markers)
        plan = plan_index(n, d, cfg.memory_budget, cfg.nlist, cfg.pq_m, cfg.opq,
                          cfg.train_size, cfg.pca_dim)
        factory = cfg.index_factory or plan.factory
        settings = {"factory": factory, "train_size": plan.train_size, "pca_dim": plan.pca_dim,
                    "seed": cfg.seed, "metric": "inner_product", "n": n, "d": d}
        done = run.store.marker(STAGE, "index") is not None
        fp = run.freeze(settings, run.frozen_fingerprint(EXTRACT), clean=not done)
        result = TrainResult(True, factory, n, d, plan.train_size, 0.0, run.store.url)
        if not done:
            logger.info("train: %s", plan.describe() if factory == plan.factory
                        else f"{factory} (--index-factory), trained on {plan.train_size:,}")
            if run.fits(plan.train_seconds):
                _train(run, markers, plan, factory, fp)
            else:
                result.complete = False
        result.seconds = run.seconds
        return result


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
                 {"factory": factory, "plan": json.loads(json.dumps(plan.__dict__))})
