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
from dataclasses import dataclass
from pathlib import Path

import faiss
import numpy as np
from faiss.contrib.ondisk import merge_ondisk
from tqdm.auto import tqdm

from ..errors import DeadlineReached, WorkflowError
from ..execution.shards import SHARD_EXECUTORS, map_shards
from ..execution.spark import (
    SPARK_MASTER_HELP,
    run_in_scratch,
    spark_conf_check,
    spark_conf_field,
    worker_cached,
)
from ..formats.features import feature_markers, fetch_features
from ..formats.index import load_trained, read_index, write_index, write_rerank_store
from ..formats.layout import ADD, EXTRACT, INDEX_FILE, IVFDATA_FILE, PARTS, RERANK_FILE, TRAIN
from ..formats.plan import first_new_shard, planned_count
from ..index.estimate import estimate_index_bytes
from ..options import opt, size_option
from ..storage.marker import Marker
from ..storage.store import Store
from ..utils import Timeit
from .base import StageConfig, StageRun, task_store

logger = logging.getLogger(__name__)

STAGE = ADD
SPARK_NEEDS = ("numpy", "h5py", "faiss")  # on every executor (--executor spark)


@dataclass(frozen=True)
class AddConfig(StageConfig):
    """Settings of the add stage; see `scripts/04_add.py --help`."""
    memory_budget: int = opt(8 << 30, "above half of this, the merged index keeps its "
                             "inverted lists on disk (memory-mapped)", type=size_option,
                             shown="8G")
    on_disk: str = opt("auto", "on-disk inverted lists: auto = when over the memory budget",
                       choices=["auto", "on", "off"])
    executor: str = opt("local", "where the index parts are built: local: one after another "
                        "here (Faiss uses every core); process: --workers processes; spark: "
                        "one Spark task per shard. The merge always runs here",
                        choices=["local", "process", "spark"])
    workers: int = opt(2, "processes, with --executor process", type=int)
    spark_master: str | None = opt(None, SPARK_MASTER_HELP, metavar="URL")
    spark_conf: tuple[str, ...] = spark_conf_field()

    def checks(self) -> list[tuple[bool, str]]:
        r = self.require
        return super().checks() + [
            spark_conf_check(self),
            r("memory_budget", self.memory_budget > 0, "must be positive"),
            r("on_disk", self.on_disk in ("auto", "on", "off"), "must be auto, on or off"),
            r("executor", self.executor in SHARD_EXECUTORS,
              f"must be one of {', '.join(SHARD_EXECUTORS)}"),
            r("workers", self.workers >= 1, "must be at least 1"),
        ]


CONFIG = AddConfig  # the stage's settings; the command line is built from its fields


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
    """Run (or resume) the add stage. After an update, only the new feature shards get a
    part; the merged index and the re-rank store are extended from the previous ones."""
    with StageRun(STAGE, cfg) as run:
        feats = feature_markers(run.store)
        if run.store.marker(TRAIN, "index") is None:
            raise WorkflowError(f"{run.store.url} has no trained index; run "
                                "scripts/03_train.py")
        trained, _ = load_trained(run.store)
        n = sum(m.extra["n"] for m in feats.values())
        on_disk = _on_disk(run, trained, n)
        run.freeze({"on_disk": on_disk, "format": 1}, run.frozen_fingerprint(TRAIN))
        done = run.store.markers(STAGE)
        pending = [u for u in feats if u not in done]
        logger.info("add: %d parts, %d done, %d to do", len(feats), len(feats) - len(pending),
                    len(pending))
        complete = True
        try:
            _add_parts(run, trained, feats, pending)
            rerank = done.get("rerank")
            if rerank is None or rerank.extra["rows"] != planned_count(run.store):
                _rerank_store(run, feats, rerank)
            index = done.get("index")
            if index is None or index.extra.get("parts", len(feats)) != len(feats) or \
                    index.extra["ntotal"] != n:
                _merge(run, trained, feats, on_disk, index)
        except DeadlineReached:
            run.stopped_early()
            complete = False
    markers = run.store.markers(STAGE)
    parts = [u for u in markers if u.startswith("shard-")]
    ntotal = markers["index"].extra["ntotal"] if "index" in markers else 0
    return AddResult(complete and "index" in markers, len(parts), len(feats), ntotal, on_disk,
                     run.seconds, run.store.url)


def _on_disk(run: StageRun, trained, n: int) -> bool:
    """Whether the merged index keeps its lists on disk: as frozen once decided (a corpus
    that grows keeps its layout), unless --on-disk says otherwise."""
    frozen = run.store.run_info()["stages"].get(STAGE)
    if run.cfg.on_disk == "auto" and frozen is not None:
        return bool(frozen["settings"]["on_disk"])
    ivf = faiss.extract_index_ivf(trained)
    big = estimate_index_bytes(n, trained.d, ivf.nlist, ivf.code_size) > \
        run.cfg.memory_budget // 2
    return run.cfg.on_disk == "on" or (run.cfg.on_disk == "auto" and big)


def _add_parts(run: StageRun, trained, feats: dict, pending: list[str]) -> None:
    cfg, store = run.cfg, run.store
    total = sum(feats[u].extra["n"] for u in pending)
    task = PartTask(cfg, run.fp, None if cfg.executor != "local" else (store, trained))
    with tqdm(total=total, unit="vec", desc="add", disable=not cfg.progress,
              mininterval=1.0, dynamic_ncols=True) as bar:
        for _unit, n in map_shards(cfg.executor, task, pending, cfg.workers, cfg.spark_master,
                                  STAGE, run.deadline, {"store": store.display("run.json")},
                                  SPARK_NEEDS, cfg.spark_conf):
            run.lease.check()
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
        store = task_store(self.cfg, scratch)
        m = store.marker(TRAIN, "index")
        trained = worker_cached(("trained", m.sha256), lambda: load_trained(store)[0])
        return _add_part(store, trained, unit, self.fp, Path(scratch))


def _add_part(store: Store, trained, unit: str, fp: str, work: Path) -> int:
    work.mkdir(parents=True, exist_ok=True)
    ids, x = fetch_features(store, store.marker(EXTRACT, unit), work)
    part = faiss.clone_index(trained)
    part.add_with_ids(x.astype(np.float32), ids)
    write_index(part, work / f"{unit}.faiss")
    store.commit(work / f"{unit}.faiss", f"{PARTS}/{unit}.faiss", STAGE, unit, fp,
                 {"n": int(len(ids))})
    (work / f"{unit}.faiss").unlink()
    return int(len(ids))


def _rerank_store(run: StageRun, feats: dict, old: Marker | None) -> None:
    """All features as one float16 .npy array, row = id, written in scratch then committed.
    The rows of an earlier store (`old`, of an earlier corpus version) are copied from
    it, and only the shards added since are read."""
    store = run.store
    n_ids = planned_count(store)
    d = next(iter(feats.values())).extra["dim"]
    units, base = list(feats), None
    if old is not None and old.extra["rows"] < n_ids:
        base = store.read_path(old, run.work / "rerank-old.npy")
        first = first_new_shard(store, old.extra["rows"])
        units = [u for u in units if int(u.split("-")[1]) >= first]
    path = run.work / "rerank.npy"
    with Timeit(f"writing the re-rank store ({n_ids:,} x {d} float16; {len(units)} shards "
                f"read{', the rest copied' if base else ''})", logging.INFO):
        write_rerank_store(path, n_ids, d, (fetch_features(store, feats[u], run.work)
                                            for u in units), base)
    run.lease.check()
    store.commit(path, RERANK_FILE, STAGE, "rerank", run.fp, {"rows": n_ids, "dim": d})
    path.unlink()
    if base is not None and run.work in base.parents:  # a staged copy, not the store's
        base.unlink()


def _merge(run: StageRun, trained, feats: dict, on_disk: bool, old: Marker | None) -> None:
    """The parts merged into one index. In memory, an earlier merged index (`old`) is
    extended with the parts added since: the same bytes as merging every part."""
    store, work, fp, units = run.store, run.work, run.fp, list(feats)
    start = _merged_before(old, feats) if old is not None and not on_disk else 0
    if start:
        index = read_index(str(store.fetch(old, work / "index-old.faiss")))
    else:
        index = faiss.clone_index(trained)
    parts = [str(store.fetch(store.marker(STAGE, u), work / "parts" / f"{u}.faiss"))
             for u in units[start:]]
    with Timeit(f"merging {len(parts)} parts{f' into the {start} merged before' if start else ''}"
                f" ({'on disk' if on_disk else 'in memory'})", logging.INFO):
        if on_disk:
            merge_ondisk(index, parts, str(work / "index.ivfdata"))
        else:
            for p in parts:
                index.merge_from(read_index(p), 0)
    write_index(index, work / "index.faiss")
    run.lease.check()
    if on_disk:
        store.commit(work / "index.ivfdata", IVFDATA_FILE, STAGE, "ivfdata", fp)
    store.commit(work / "index.faiss", INDEX_FILE, STAGE, "index", fp,
                 {"ntotal": int(index.ntotal), "on_disk": on_disk, "parts": len(units)})
    for p in [work / "index-old.faiss", *map(Path, parts)]:
        p.unlink(missing_ok=True)


def _merged_before(old: Marker, feats: dict) -> int:
    """How many of the (sorted) parts an earlier merged index holds: its `parts`, or,
    for one merged before that was recorded, the parts whose counts add up to it."""
    if "parts" in old.extra:
        return old.extra["parts"] if old.extra["parts"] <= len(feats) else 0
    total = 0
    for k, m in enumerate(feats.values(), 1):
        total += m.extra["n"]
        if total == old.extra["ntotal"]:
            return k
    return 0
