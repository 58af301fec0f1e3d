"""Stage 4, add: feature shards -> one index part each, then the final index and the
float16 re-rank store.

- `index/parts/shard-NNNNN.faiss`: the trained index filled with one feature shard
  (ids = image ids); a killed add resumes at the first missing part.
- `index/index.faiss`: the parts merged, in memory; or, when the filled index would not
  fit in half of --memory-budget (or with --on-disk), with its inverted lists in
  `index/index.ivfdata` (Faiss on-disk inverted lists, memory-mapped at search time).
- `index/rerank.npy`: every feature as float16, row = id (zeros for images without a
  feature), memory-mappable for exact re-ranking.
"""
from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path

import faiss
import numpy as np
from faiss.contrib.ondisk import merge_ondisk
from tqdm.auto import tqdm

from .errors import DeadlineReached, WorkflowError, check_settings
from .estimate import estimate_index_bytes
from .executors import SHARD_EXECUTORS, map_shards
from .extract import STAGE as EXTRACT, fetch_features
from .lease import Lease
from .preprocess import STAGE as PREPROCESS
from .spark import run_in_scratch, worker_cached
from .store import Store
from .train import STAGE as TRAIN, feature_markers, load_trained
from .utils import Timeit

logger = logging.getLogger(__name__)

STAGE = "add"
FOLDER = "index"
PARTS = f"{FOLDER}/parts"
INDEX_FILE = f"{FOLDER}/index.faiss"
IVFDATA_FILE = f"{FOLDER}/index.ivfdata"
RERANK_FILE = f"{FOLDER}/rerank.npy"


@dataclass(frozen=True)
class AddConfig:
    """Settings of the add stage; see `scripts/04_add.py --help`."""
    store: str
    scratch: str | None = None
    memory_budget: int = 8 << 30
    on_disk: str = "auto"
    executor: str = "local"
    workers: int = 2
    spark_master: str | None = None
    max_minutes: float | None = None
    takeover: bool = False
    wait_minutes: float = 0.0
    progress: bool = True

    def validate(self) -> "AddConfig":
        check_settings([
            (self.memory_budget > 0, "--memory-budget must be positive"),
            (self.on_disk in ("auto", "on", "off"), "--on-disk must be auto, on or off"),
            (self.executor in SHARD_EXECUTORS,
             f"--executor must be one of {', '.join(SHARD_EXECUTORS)}"),
            (self.workers >= 1, "--workers must be at least 1"),
            (self.max_minutes is None or self.max_minutes > 0, "--max-minutes must be > 0"),
        ])
        return self


@dataclass
class AddResult:
    complete: bool
    parts_done: int
    n_parts: int
    ntotal: int
    on_disk: bool
    seconds: float
    store: str

    def summary(self) -> str:
        state = "complete" if self.complete else "stopped early (re-run to resume)"
        where = "on-disk inverted lists" if self.on_disk else "in memory"
        return (f"add {state}: {self.parts_done}/{self.n_parts} parts, {self.ntotal:,} "
                f"vectors in the index ({where}); {self.seconds:.1f} s. Store: {self.store}")


def run(cfg: AddConfig) -> AddResult:
    """Run (or resume) the add stage."""
    cfg.validate()
    t0 = time.monotonic()
    store = Store(cfg.store, cfg.scratch)
    with Lease(store, STAGE, takeover=cfg.takeover,
               wait=cfg.wait_minutes * 60) as lease:
        feats = feature_markers(store)
        if store.marker(TRAIN, "index") is None:
            raise WorkflowError(f"{store.url} has no trained index; run scripts/03_train.py")
        trained, _ = load_trained(store)
        n = sum(m.extra["n"] for m in feats.values())
        ivf = faiss.extract_index_ivf(trained)
        big = estimate_index_bytes(n, trained.d, ivf.nlist, ivf.code_size) > \
            cfg.memory_budget // 2
        on_disk = cfg.on_disk == "on" or (cfg.on_disk == "auto" and big)
        parent = store.run_info()["stages"][TRAIN]["fingerprint"]
        fp = store.freeze_stage(STAGE, {"on_disk": on_disk, "format": 1}, parent)
        store.cleanup(STAGE, PARTS)
        done = store.markers(STAGE)
        pending = [u for u in feats if u not in done]
        logger.info("add: %d parts, %d done, %d to do", len(feats), len(feats) - len(pending),
                    len(pending))
        deadline = t0 + cfg.max_minutes * 60 if cfg.max_minutes else None
        complete = True
        try:
            _add_parts(cfg, store, trained, feats, pending, fp, lease, deadline)
            if "index" not in done:
                _rerank_store(cfg, store, feats, fp)
                _merge(cfg, store, trained, list(feats), fp, on_disk)
        except DeadlineReached:
            logger.warning("add: --max-minutes reached; re-run the same command to resume")
            complete = False
    markers = store.markers(STAGE)
    parts = [u for u in markers if u.startswith("shard-")]
    ntotal = markers["index"].extra["ntotal"] if "index" in markers else 0
    return AddResult(complete and "index" in markers, len(parts), len(feats), ntotal, on_disk,
                     time.monotonic() - t0, store.url)


def _add_parts(cfg, store, trained, feats, pending, fp, lease, deadline) -> None:
    total = sum(feats[u].extra["n"] for u in pending)
    task = PartTask(cfg, fp, None if cfg.executor != "local" else (store, trained))
    with tqdm(total=total, unit="vec", desc="add", disable=not cfg.progress,
              mininterval=1.0, dynamic_ncols=True) as bar:
        for unit, n in map_shards(cfg.executor, task, pending, cfg.workers, cfg.spark_master,
                                  STAGE, deadline, {"store": store.display("run.json")}):
            lease.check()
            bar.update(n)


class PartTask:
    """One index part: the trained index filled with one feature shard, committed. The
    same task runs in this process (`local`), in a process pool or on Spark, where the
    trained index is loaded once per worker."""

    def __init__(self, cfg: AddConfig, fp: str, here: tuple | None = None):
        self.cfg, self.fp, self.here = cfg, fp, here

    def __getstate__(self) -> dict:
        return {**self.__dict__, "here": None}  # the in-process store and index stay here

    def __call__(self, unit: str) -> int:
        if self.here is not None:
            store, trained = self.here
            return _add_part(store, trained, unit, self.fp, store.scratch / STAGE)
        return run_in_scratch(STAGE, lambda scratch: self._run(unit, scratch))

    def _run(self, unit: str, scratch: str) -> int:
        store = Store(self.cfg.store, scratch)
        m = store.marker(TRAIN, "index")
        trained = worker_cached(("trained", m.sha256), lambda: load_trained(store)[0])
        return _add_part(store, trained, unit, self.fp, Path(scratch))


def _add_part(store: Store, trained, unit: str, fp: str, work: Path) -> int:
    work.mkdir(parents=True, exist_ok=True)
    ids, x = fetch_features(store, store.marker(EXTRACT, unit), work)
    part = faiss.clone_index(trained)
    part.add_with_ids(x.astype(np.float32), ids)
    faiss.write_index(part, str(work / f"{unit}.faiss"))
    store.commit(work / f"{unit}.faiss", f"{PARTS}/{unit}.faiss", STAGE, unit, fp,
                 {"n": int(len(ids))})
    (work / f"{unit}.faiss").unlink()
    return int(len(ids))


def _rerank_store(cfg, store, feats, fp) -> None:
    """All features as one float16 .npy array, row = id, written in scratch then committed.

    Rows are written with plain file writes (runs of consecutive ids at once), not
    through a memory map, so the stage's memory does not grow with N."""
    n_ids = store.marker(PREPROCESS, "plan").extra["n"]
    d = next(iter(feats.values())).extra["dim"]
    work = store.scratch / STAGE
    work.mkdir(parents=True, exist_ok=True)
    path = work / "rerank.npy"
    row = d * 2
    with Timeit(f"writing the re-rank store ({n_ids:,} x {d} float16)", logging.INFO), \
            open(path, "wb") as out:
        np.lib.format.write_array_header_1_0(out, {"descr": np.dtype(np.float16).str,
                                                   "fortran_order": False,
                                                   "shape": (n_ids, d)})
        start = out.tell()
        out.truncate(start + n_ids * row)  # rows without a feature stay zero
        for m in feats.values():
            ids, x = fetch_features(store, m, work)
            for lo, hi in _runs(ids):
                out.seek(start + int(ids[lo]) * row)
                out.write(np.ascontiguousarray(x[lo:hi], np.float16).tobytes())
    store.commit(path, RERANK_FILE, STAGE, "rerank", fp, {"rows": n_ids, "dim": d})
    path.unlink()


def _runs(ids: np.ndarray) -> list[tuple[int, int]]:
    """[lo, hi) index ranges of ids that are consecutive integers."""
    if len(ids) == 0:
        return []
    breaks = np.flatnonzero(np.diff(ids) != 1) + 1
    edges = [0, *breaks.tolist(), len(ids)]
    return list(zip(edges[:-1], edges[1:]))


def _merge(cfg, store, trained, units, fp, on_disk: bool) -> None:
    work = store.scratch / STAGE
    parts = []
    for unit in units:
        m = store.marker(STAGE, unit)
        parts.append(str(store.fetch(m, work / "parts" / f"{unit}.faiss")))
    index = faiss.clone_index(trained)
    with Timeit(f"merging {len(parts)} parts ({'on disk' if on_disk else 'in memory'})",
                logging.INFO):
        if on_disk:
            merge_ondisk(index, parts, str(work / "index.ivfdata"))
        else:
            for p in parts:
                part = faiss.read_index(p)
                index.merge_from(part, 0)
    faiss.write_index(index, str(work / "index.faiss"))
    if on_disk:
        store.commit(work / "index.ivfdata", IVFDATA_FILE, STAGE, "ivfdata", fp)
    store.commit(work / "index.faiss", INDEX_FILE, STAGE, "index", fp,
                 {"ntotal": int(index.ntotal), "on_disk": on_disk})


def load_index(store: Store) -> faiss.Index:
    """The final index, staged in (with its on-disk inverted lists, memory-mapped)."""
    m = store.marker(STAGE, "index")
    if m is None:
        raise WorkflowError(f"{store.url} has no filled index; run scripts/04_add.py")
    folder = store.scratch / STAGE / "final"
    path = store.fetch(m, folder / "index.faiss")
    if m.extra.get("on_disk"):
        store.fetch(store.marker(STAGE, "ivfdata"), folder / "index.ivfdata")
        return faiss.read_index(str(path), faiss.IO_FLAG_ONDISK_SAME_DIR)
    return faiss.read_index(str(path))


def load_rerank(store: Store) -> np.ndarray:
    """The float16 re-rank store, memory-mapped from local disk."""
    m = store.marker(STAGE, "rerank")
    if m is None:
        raise WorkflowError(f"{store.url} has no re-rank store; run scripts/04_add.py")
    return np.load(store.fetch(m, store.scratch / STAGE / "final" / "rerank.npy"),
                   mmap_mode="r")
