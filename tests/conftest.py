"""Shared fixtures: small seeded images and corpora under tmp_path."""
from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import cv2
import h5py
import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
SHARED_ASSETS = ROOT.parent / "shared" / "assets"
# Spark (local or a test cluster) binds 127.0.0.1 only, not the machine's address
os.environ.setdefault("SPARK_LOCAL_IP", "127.0.0.1")
sys.path.insert(0, str(ROOT))


def jpeg_bytes(w: int, h: int, seed: int = 0, quality: int = 90) -> bytes:
    """A smooth, photo-like seeded test image as JPEG bytes."""
    rng = np.random.default_rng(seed)
    small = rng.integers(0, 256, (4, 4, 3), dtype=np.uint8)
    img = cv2.resize(small, (w, h), interpolation=cv2.INTER_CUBIC)
    img = cv2.add(img, rng.integers(0, 12, (h, w, 3), dtype=np.uint8))
    ok, enc = cv2.imencode(".jpg", img, [cv2.IMWRITE_JPEG_QUALITY, quality])
    assert ok
    return enc.tobytes()


def write_corpus(folder: Path, n: int, seed: int = 0, size=(64, 48)) -> list[Path]:
    """n small JPEGs in two sub-folders, names sorted by index."""
    paths = []
    for i in range(n):
        p = folder / f"class{i % 2}" / f"img{i:04d}.jpg"
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(jpeg_bytes(*size, seed=seed * 100_000 + i))
        paths.append(p)
    return paths


def leftovers(store: Path) -> list[str]:
    """Temporary files of interrupted writes anywhere in the store (every folder)."""
    return sorted(str(p.relative_to(store)) for p in Path(store).rglob("*") if ".tmp-" in p.name)


def evaluate_command(store: Path, scratch: Path, queries: int, latency_queries: int,
                     modes: tuple[str, ...]) -> list[str]:
    """`python -m workflow evaluate` on `store`, checkpointing at every chance (for the
    kill tests)."""
    return [sys.executable, "-m", "workflow", "evaluate", "--store", str(store), "--scratch",
            str(scratch), "--queries", str(queries), "--latency-queries",
            str(latency_queries), "--checkpoint-seconds", "0", "--modes", *modes,
            "--no-progress"]


def evaluate_units(store: Path) -> int:
    """The evaluate stage's committed units, and the queries done in its checkpoints."""
    from workflow.storage.store import Store
    m = Store(str(store), create=False).markers("evaluate")
    return len(m) + sum(len(p.extra["done"]) for u, p in m.items() if "partial" in u)


def kill_repeatedly(cmd: list[str], units_done: Callable[[], int], seed: int,
                    max_runs: int = 10, delay: float = 0.3) -> int:
    """Run `cmd` (a stage) again and again, killing it with SIGKILL at seeded random
    moments: after 0-2 more units are committed, plus a random delay. Returns the number of
    kills; the last run is left to finish (exit status 0 asserted)."""
    rng = np.random.default_rng(seed)
    kills = 0
    for _ in range(max_runs):
        p = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.DEVNULL,
                             stderr=subprocess.DEVNULL, start_new_session=True)
        target = units_done() + int(rng.integers(0, 3))
        while p.poll() is None and units_done() < target:
            time.sleep(0.005)
        time.sleep(float(rng.uniform(0, delay)))
        if p.poll() is not None:
            assert p.returncode == 0
            return kills
        os.killpg(p.pid, signal.SIGKILL)  # the stage and its worker processes
        p.wait()
        kills += 1
    assert subprocess.run(cmd, cwd=ROOT).returncode == 0
    return kills


def kill_during(cmd: list[str], took: float, seed: int, times: int = 4) -> None:
    """For a stage with one unit of work: start it `times` times and SIGKILL it at seeded
    moments spread over `took` seconds (the length of a whole run); then let it finish."""
    rng = np.random.default_rng(seed)
    for _ in range(times):
        p = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.DEVNULL,
                             stderr=subprocess.DEVNULL, start_new_session=True)
        time.sleep(float(rng.uniform(0.1, 0.95)) * took)
        os.killpg(p.pid, signal.SIGKILL)
        p.wait()
    assert subprocess.run(cmd, cwd=ROOT, capture_output=True).returncode == 0


@pytest.fixture
def shared_assets() -> Path:
    if not SHARED_ASSETS.is_dir():
        pytest.skip(f"test assets not found at {SHARED_ASSETS} (only in the development tree)")
    return SHARED_ASSETS


@pytest.fixture
def scratch(tmp_path) -> Path:
    p = tmp_path / "scratch"
    p.mkdir()
    return p


@pytest.fixture(autouse=True)
def _isolated_scratch(tmp_path, monkeypatch):
    monkeypatch.setenv("WORKFLOW_SCRATCH", str(tmp_path / "default-scratch"))
    os.environ.pop("CUDA_VISIBLE_DEVICES", None)


def brute(xq: np.ndarray, xb: np.ndarray, k: int):
    """Exact top k by inner product, ties by id: the reference for search tests."""
    s = xq @ xb.T
    order = np.lexsort((np.broadcast_to(np.arange(len(xb)), s.shape), -s), axis=1)[:, :k]
    return np.take_along_axis(s, order, 1), order


def structured_vectors(n: int, d: int, seed: int = 0, clusters: int = 20) -> np.ndarray:
    """L2-normalised vectors in clusters of a low-dimensional subspace, plus noise (iid
    Gaussian vectors would make IVF-PQ look broken)."""
    rng = np.random.default_rng(seed)
    basis = rng.normal(size=(16, d)).astype(np.float32)
    centers = rng.normal(size=(clusters, 16)).astype(np.float32) * 3
    x = centers[rng.integers(0, clusters, n)] + rng.normal(size=(n, 16)).astype(np.float32)
    x = x @ basis + 0.5 * rng.normal(size=(n, d)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def feature_store(tmp_path: Path, n: int = 300, d: int = 32, shard_size: int = 100,
                  x: np.ndarray | None = None) -> Path:
    """A store whose preprocess stage ran on n tiny images and whose extract stage holds
    structured synthetic features (row = id; or `x`), committed as the extract stage
    does."""
    from workflow.formats.features import write_feature_shard
    from workflow.stages.extract import STAGE
    from workflow.stages.preprocess import PreprocessConfig, run
    from workflow.storage.store import Store
    write_corpus(tmp_path / "tiny", n, size=(16, 16))
    store_path = tmp_path / "store"
    run(PreprocessConfig(store=str(store_path), sources=(str(tmp_path / "tiny"),),
                         workers=1, shard_size=shard_size, progress=False))
    store = Store(store_path)
    parent = store.run_info()["stages"]["preprocess"]["fingerprint"]
    fp = store.freeze_stage(STAGE, {"model": "synthetic", "dim": d}, parent)
    x = (structured_vectors(n, d) if x is None else x).astype(np.float16)
    work = tmp_path / "feature-shards"
    work.mkdir()
    for unit, m in sorted(store.markers("preprocess").items()):
        if unit.startswith("shard-"):
            with h5py.File(store.fetch(m, work / f"img-{unit}.h5"), "r") as f:
                ids = f["ids"][:]
            write_feature_shard(str(work / f"{unit}.h5"), ids, x[ids], fp,
                                {"model": "synthetic"})
            store.commit(work / f"{unit}.h5", f"features/{unit}.h5", STAGE, unit, fp,
                         {"n": len(ids), "dim": d})
    return store_path


def grow_feature_store(tmp_path: Path, n: int, new: int, d: int = 32,
                       shard_size: int = 100) -> None:
    """The collection of `feature_store(tmp_path, n, d, shard_size)` grows by `new`
    images: `preprocess --update`, then synthetic features of the same distribution for
    the new shards, committed as extract does."""
    from workflow.formats.features import write_feature_shard
    from workflow.stages.preprocess import PreprocessConfig, run
    from workflow.storage.store import Store
    write_corpus(tmp_path / "tiny", n + new, size=(16, 16))  # the first n are unchanged
    store_path = tmp_path / "store"
    run(PreprocessConfig(store=str(store_path), sources=(str(tmp_path / "tiny"),),
                         workers=1, shard_size=shard_size, progress=False, update=True))
    store = Store(store_path)
    fp = store.run_info()["stages"]["extract"]["fingerprint"]
    x = structured_vectors(n + new, d).astype(np.float16)  # the same basis and centres
    work = tmp_path / "feature-shards"
    for unit, m in sorted(store.markers("preprocess").items()):
        if unit.startswith("shard-") and store.marker("extract", unit) is None:
            with h5py.File(store.fetch(m, work / f"img-{unit}.h5"), "r") as f:
                ids = f["ids"][:]
            write_feature_shard(str(work / f"{unit}.h5"), ids, x[ids], fp,
                                {"model": "synthetic"})
            store.commit(work / f"{unit}.h5", f"features/{unit}.h5", "extract", unit, fp,
                         {"n": len(ids), "dim": d})


def indexed_store(tmp_path: Path, n: int = 600, d: int = 32, shard_size: int = 200,
                  x: np.ndarray | None = None) -> Path:
    """`feature_store` carried through the train, add and prefilter stages."""
    from workflow.stages import add, prefilter, train
    store = feature_store(tmp_path, n=n, d=d, shard_size=shard_size, x=x)
    train.run(train.TrainConfig(store=str(store), progress=False))
    add.run(add.AddConfig(store=str(store), progress=False))
    prefilter.run(prefilter.PrefilterConfig(store=str(store), progress=False))
    return store


@pytest.fixture(scope="session")
def spark_cluster(tmp_path_factory):
    """A Spark standalone cluster on 127.0.0.1 (a master and two workers of one core
    each, `tests/spark_cluster.py`), stopped with its process groups at the end."""
    pytest.importorskip("pyspark", reason="PySpark is not installed "
                        "(pip install -r requirements-spark.txt)")
    if shutil.which("java") is None:
        pytest.skip("Java is not installed (a Spark standalone cluster needs Java 17)")
    from spark_cluster import StandaloneCluster
    with StandaloneCluster(tmp_path_factory.mktemp("spark-cluster"), workers=2) as cluster:
        yield cluster


def tiny_keras_model(path) -> str:
    """A small convolutional Keras model at 32 px, seeded, saved at `path`: converted
    and calibrated for the CPU runtime in seconds."""
    import keras
    keras.utils.set_random_seed(3)
    inp = keras.Input((32, 32, 3))
    x = keras.layers.Conv2D(16, 3, activation="relu")(inp)
    x = keras.layers.Conv2D(32, 3, strides=2, activation="relu")(x)
    x = keras.layers.Conv2D(32, 3, activation="relu")(x)
    keras.Model(inp, keras.layers.GlobalAveragePooling2D()(x)).save(path)
    return str(path)
