"""Stage 3, train: a seeded sample of features -> a trained, empty IVF-PQ index and the
PCA used by the prefilter (`trained/index.faiss`, `trained/pca.faiss`).

The sample is streamed shard by shard (never all features in memory); its size and the
index parameters come from the estimators in `estimate.py`, are printed with their
estimated cost before the expensive step, and can all be overridden.
"""
from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass

import faiss
import h5py
import numpy as np
from tqdm.auto import tqdm

from .errors import ConfigError, WorkflowError, check_settings
from .estimate import IndexPlan, plan_index
from .extract import STAGE as EXTRACT
from .lease import Lease
from .preprocess import STAGE as PREPROCESS
from .store import Marker, Store
from .utils import Timeit

logger = logging.getLogger(__name__)

STAGE = "train"
FOLDER = "trained"
INDEX_FILE = f"{FOLDER}/index.faiss"
PCA_FILE = f"{FOLDER}/pca.faiss"


@dataclass(frozen=True)
class TrainConfig:
    """Settings of the train stage; see `scripts/03_train.py --help`."""
    store: str
    scratch: str | None = None
    index_factory: str | None = None
    memory_budget: int = 8 << 30
    nlist: int | None = None
    pq_m: int | None = None
    opq: bool | None = None
    train_size: int | None = None
    pca_dim: int | None = None
    seed: int = 0
    max_minutes: float | None = None
    takeover: bool = False
    wait_minutes: float = 0.0
    progress: bool = True

    def validate(self) -> "TrainConfig":
        check_settings([
            (self.memory_budget > 0, "--memory-budget must be positive"),
            (self.nlist is None or self.nlist >= 1, "--nlist must be at least 1"),
            (self.train_size is None or self.train_size >= 1, "--train-size must be >= 1"),
            (self.pca_dim is None or self.pca_dim >= 1, "--pca-dim must be at least 1"),
            (self.max_minutes is None or self.max_minutes > 0, "--max-minutes must be > 0"),
        ])
        return self


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


def feature_markers(store: Store) -> dict[str, Marker]:
    """The extract stage's shard markers, after checking that the stage is complete."""
    images = [u for u in store.markers(PREPROCESS) if u.startswith("shard-")]
    feats = {u: m for u, m in store.markers(EXTRACT).items() if u.startswith("shard-")}
    if EXTRACT not in store.run_info()["stages"] or not images or set(images) - set(feats):
        raise WorkflowError(f"the extract stage is not complete in {store.url} "
                            f"({len(feats)}/{len(images)} shards); run scripts/02_extract.py "
                            "first (`python -m workflow status` shows where it stands)")
    return dict(sorted(feats.items()))


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
        local = store.fetch(markers[unit], store.scratch / STAGE / f"{unit}.h5")
        with h5py.File(local, "r") as f:
            out[pos:pos + k] = f["features"][rows]
        local.unlink()
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
    cfg.validate()
    t0 = time.monotonic()
    store = Store(cfg.store, cfg.scratch)
    with Lease(store, STAGE, takeover=cfg.takeover,
               wait=cfg.wait_minutes * 60) as lease:
        markers = feature_markers(store)
        n = sum(m.extra["n"] for m in markers.values())
        d = next(iter(markers.values())).extra["dim"]
        plan = plan_index(n, d, cfg.memory_budget, cfg.nlist, cfg.pq_m, cfg.opq,
                          cfg.train_size, cfg.pca_dim)
        factory = cfg.index_factory or plan.factory
        settings = {"factory": factory, "train_size": plan.train_size, "pca_dim": plan.pca_dim,
                    "seed": cfg.seed, "metric": "inner_product", "n": n, "d": d}
        parent = store.run_info()["stages"][EXTRACT]["fingerprint"]
        fp = store.freeze_stage(STAGE, settings, parent)
        result = TrainResult(True, factory, n, d, plan.train_size, 0.0, store.url)
        if store.marker(STAGE, "index") is None:
            store.cleanup(STAGE, FOLDER)
            logger.info("train: %s", plan.describe() if factory == plan.factory
                        else f"{factory} (--index-factory), trained on {plan.train_size:,}")
            if cfg.max_minutes and plan.train_seconds > cfg.max_minutes * 60:
                logger.warning("train: the estimated %.0f s do not fit in --max-minutes %g; "
                               "run it when there is more time", plan.train_seconds,
                               cfg.max_minutes)
                result.complete = False
            else:
                _train(cfg, store, markers, plan, factory, fp, lease)
        result.seconds = time.monotonic() - t0
        return result


def _train(cfg: TrainConfig, store: Store, markers: dict, plan: IndexPlan, factory: str,
           fp: str, lease: Lease) -> None:
    with Timeit("drawing the training sample", logging.INFO):
        x = draw_sample(store, markers, plan.train_size, cfg.seed, cfg.progress)
    work = store.scratch / STAGE
    work.mkdir(parents=True, exist_ok=True)
    with Timeit("training the PCA", logging.INFO):
        pca = faiss.PCAMatrix(plan.d, plan.pca_dim)
        pca.train(x)
        faiss.write_VectorTransform(pca, str(work / "pca.faiss"))
    index = make_index(plan.d, factory)
    gpu = use_gpu_for_kmeans(index)
    with Timeit(f"training {factory} on {len(x):,} vectors{' (GPU k-means)' if gpu else ''}",
                logging.INFO):
        index.train(x)
    if gpu:
        faiss.extract_index_ivf(index).clustering_index = None
    faiss.write_index(index, str(work / "index.faiss"))
    lease.check()
    store.commit(work / "pca.faiss", PCA_FILE, STAGE, "pca", fp, {"dim": plan.pca_dim})
    store.commit(work / "index.faiss", INDEX_FILE, STAGE, "index", fp,
                 {"factory": factory, "plan": json.loads(json.dumps(plan.__dict__))})


def load_trained(store: Store) -> tuple[faiss.Index, faiss.VectorTransform]:
    """The trained empty index and the PCA, staged in from the store and verified."""
    out = []
    for unit, reader in (("index", faiss.read_index), ("pca", faiss.read_VectorTransform)):
        m = store.marker(STAGE, unit)
        if m is None:
            raise WorkflowError(f"{store.url} has no trained index; run scripts/03_train.py")
        out.append(reader(str(store.fetch(m, store.scratch / STAGE / f"{unit}.faiss"))))
    return out[0], out[1]

