"""Stage 1, preprocess: source images -> `images/shard-NNNNN.h5` (small re-encoded JPEGs).

Lists the sources once and freezes the plan in the store; then, shard by shard, reads the
bytes (threads), decodes / orients / converts / resizes / re-encodes them in a pool of
worker processes, writes the shard in scratch and commits it. A killed run redoes at most
the shard it had in flight; the final shards are byte-identical to an uninterrupted run's.
"""
from __future__ import annotations

import argparse
import logging
import os
import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from tqdm.auto import tqdm

from ..errors import DeadlineReached, SourceError
from ..execution.executors import EXECUTORS, make_executor
from ..execution.shards import map_shards
from ..execution.spark import (
    SPARK_MASTER_HELP,
    run_in_scratch,
    spark_conf_check,
    spark_conf_field,
    task_cpus,
    worker_cached,
)
from ..formats.images import ImageShardWriter, read_outcomes, write_report
from ..formats.layout import IMAGES, PREPROCESS, REPORT_FILE, is_shard, shard_name
from ..formats.plan import Plan, load_plan, plan_markers, preprocess_complete
from ..inputs.imaging import ImageOptions, ImageResult, Status
from ..inputs.sources import Reader
from ..inputs.worker import ImageWorker, on_failure, worker_init
from ..options import opt
from ..storage.store import RUN_FILE, Store
from .base import StageConfig, StageRun, task_store
from .planning import freeze, load_or_make_plan, source_urls

logger = logging.getLogger(__name__)

STAGE = PREPROCESS
SPARK_NEEDS = ("numpy", "h5py", "cv2")  # on every executor (--executor spark)


def _pixels(text: str) -> int:
    try:
        return int(float(text.replace("_", "")))
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a pixel count (e.g. 200e6)") from None


@dataclass(frozen=True)
class PreprocessConfig(StageConfig):
    """Settings of the preprocess stage; see `scripts/01_preprocess.py --help`."""
    sources: tuple[str, ...] = opt(
        (), "a folder (recursive), a list file (.txt: one path per line; .csv: a 'path' "
        "column), a tar or zip archive; local or fsspec URL; repeat or give several. May "
        "be left out when resuming", flag="--source", action="extend", nargs="+",
        metavar="SRC", to_config=tuple)
    workers: int = opt(help="decoding processes", type=int, shown="the number of cores",
                       default_factory=lambda: os.cpu_count() or 1)
    executor: str = opt("process", "process: a supervised pool of --workers processes (a "
                        "hung or crashing image costs only that image); local: all in this "
                        "process; spark: one Spark task per shard (see --spark-master)",
                        choices=["local", "process", "spark"])
    spark_master: str | None = opt(None, SPARK_MASTER_HELP, metavar="URL")
    spark_conf: tuple[str, ...] = spark_conf_field()
    shard_size: int = opt(10_000, "images per shard (about)", type=int)
    image_size: int = opt(256, "short side of the stored images in px (never upscaled)",
                          type=int)
    jpeg_quality: int = opt(90, "quality of the stored JPEGs", type=int)
    max_pixels: int = opt(200_000_000, "images with more pixels are refused (decompression "
                          "bombs)", type=_pixels)
    image_timeout: float = opt(60.0, "seconds one image may take before its worker is "
                               "killed", type=float)
    read_threads: int = opt(8, "threads reading source files (helps on network drives)",
                            type=int)
    drop_duplicates: bool = opt(False, "later stages leave out exact duplicate files (they "
                                "are always reported in images/report.json)",
                                action="store_true")
    update: bool = opt(False, "the collection changed: the --source list given is the "
                       "complete one (old and new sources); list them again and add the "
                       "images not seen before as new shards (ids continue after the last "
                       "one; nothing done is redone). Images whose files are gone are "
                       "recorded for `python -m workflow remove --missing`",
                       action="store_true")

    def checks(self) -> list[tuple[bool, str]]:
        r = self.require
        return super().checks() + [
            spark_conf_check(self),
            r("executor", self.executor in (*EXECUTORS, "spark"),
              f"must be one of {sorted((*EXECUTORS, 'spark'))}"),
            r("workers", self.workers >= 1, "must be at least 1"),
            r("shard_size", self.shard_size >= 1, "must be at least 1"),
            r("image_size", 16 <= self.image_size <= 4096, "must be between 16 and 4096 px"),
            r("jpeg_quality", 1 <= self.jpeg_quality <= 100, "must be between 1 and 100"),
            r("max_pixels", self.max_pixels >= 1, "must be positive"),
            r("image_timeout", self.image_timeout > 0, "must be positive"),
            r("read_threads", self.read_threads >= 1, "must be at least 1"),
        ]

    def urls(self) -> tuple[str, ...]:
        return (self.store, *self.sources)

    def image_options(self) -> ImageOptions:
        return ImageOptions(self.image_size, self.jpeg_quality, self.max_pixels)


CONFIG = PreprocessConfig  # the stage's settings; the command line is built from its fields


@dataclass
class PreprocessResult:
    complete: bool
    n_images: int
    n_shards: int
    shards_done: int
    ok: int
    failed: dict[str, int]
    duplicates: int
    seconds: float
    store: str

    def summary(self) -> str:
        failed = sum(self.failed.values())
        by = ", ".join(f"{k} {v}" for k, v in sorted(self.failed.items())) or "none"
        state = "complete" if self.complete else "stopped early (re-run to resume)"
        return (f"preprocess {state}: {self.shards_done}/{self.n_shards} shards, "
                f"{self.n_images:,} images planned; ok {self.ok:,}, failed {failed:,} "
                f"({by}); exact duplicates {self.duplicates:,}; {self.seconds:.1f} s. "
                f"Store: {self.store}")


def chunked(pairs, max_items: int = 16, max_bytes: int = 2 << 20):
    """Group (data, error) pairs into chunks of at most max_items and about max_bytes.

    Chunks save a hand-off per image where images are small; where they are large the
    work per image dominates, and small chunks keep the workers evenly loaded."""
    chunk, size = [], 0
    for data, err in pairs:
        chunk.append((data, err))
        size += len(data or b"")
        if len(chunk) >= max_items or size >= max_bytes:
            yield chunk
            chunk, size = [], 0
    if chunk:
        yield chunk


def run(cfg: PreprocessConfig, image_fn: Callable | None = None) -> PreprocessResult:
    """Run (or resume) the preprocess stage.

    Args:
        cfg: the stage settings.
        image_fn: the per-image job (default `ImageWorker`); must be picklable.
    """
    with StageRun(STAGE, cfg) as run:
        sources = source_urls(cfg, run.store)
        fp = freeze(run, sources)
        plan = load_or_make_plan(run, sources, fp)
        done = run.store.markers(STAGE)
        pending = [i for i in range(plan.n_shards) if shard_name(i) not in done]
        n_pending = sum(int(plan.bounds[i + 1] - plan.bounds[i]) for i in pending)
        logger.info("preprocess: %d images in %d shards; %d shards done, %d to do (%d images)",
                    plan.n, plan.n_shards, plan.n_shards - len(pending), len(pending), n_pending)
        fn = image_fn or ImageWorker(cfg.image_options())
        try:
            _run_shards(run, plan, pending, n_pending, fn)
        except DeadlineReached:
            run.stopped_early()
            return _result(run.store, plan, run.seconds, complete=False)
        if not preprocess_complete(run.store):
            _write_report(run.store, plan, fp, cfg.drop_duplicates)
    return _result(run.store, plan, run.seconds, complete=True)


def _worker_env(cfg: PreprocessConfig) -> dict:
    return {"OPENCV_IO_MAX_IMAGE_PIXELS": str(cfg.max_pixels), "OPENCV_LOG_LEVEL": "ERROR"}


def _run_shards(run: StageRun, plan: Plan, pending: list[int], n_pending: int, fn) -> None:
    if not pending:
        return
    cfg, store, fp, lease = run.cfg, run.store, run.fp, run.lease
    bar = tqdm(total=n_pending, unit="img", desc="preprocess", disable=not cfg.progress,
               mininterval=1.0, smoothing=0.1, dynamic_ncols=True)
    if cfg.executor == "spark":
        reachable = {"store": store.display(RUN_FILE),
                     **{f"source {s.name}": s.url for s in plan.sources}}
        with bar:
            for _, stats in map_shards("spark", ShardTask(cfg, fp, fn), pending,
                                       spark_master=cfg.spark_master, stage=STAGE,
                                       deadline=run.deadline, reachable=reachable,
                                       needs=SPARK_NEEDS, spark_conf=cfg.spark_conf):
                lease.check()
                bar.update(stats["n"])
        return
    check_sources_present(_used_sources(plan, pending))
    shard_times: list[float] = []
    with make_executor(cfg.executor, fn, cfg.workers, cfg.image_timeout, on_failure,
                       init=worker_init, env=_worker_env(cfg), split=True) as ex, bar, \
            Reader(plan.sources, threads=cfg.read_threads) as reader:
        for i in pending:
            run.check_deadline(np.mean(shard_times) if shard_times else 0.0)
            t = time.monotonic()
            stats = _process_shard(cfg, store, plan, i, fp, ex, reader, bar)
            lease.check()
            shard_times.append(time.monotonic() - t)
            bar.set_postfix_str(f"shard {i + 1}/{plan.n_shards}: {stats['ok']} ok")


def _process_shard(cfg, store, plan, i, fp, ex, reader, bar) -> dict:
    items = plan.shard_items(i)
    name = shard_name(i)
    local = store.scratch / STAGE / f"{name}.h5"
    local.parent.mkdir(parents=True, exist_ok=True)
    attrs = {"fingerprint": fp, "image_size": cfg.image_size, "jpeg_quality": cfg.jpeg_quality,
             "shard": i}
    writer = ImageShardWriter(str(local), [it.id for it in items], [it.key for it in items],
                              attrs)
    try:
        pairs = ((data, err) for _, data, err in reader.iter_bytes(items))
        buffered: dict[int, list[ImageResult]] = {}
        done = 0
        for k, results in ex.imap_unordered(enumerate(chunked(pairs))):
            buffered[k] = results
            while done in buffered:
                chunk = buffered.pop(done)
                for r in chunk:
                    writer.add(r)
                if bar is not None:
                    bar.update(len(chunk))
                done += 1
        stats = writer.close()
    except BaseException:
        writer.abort()
        raise
    if stats["ok"] == 0 and stats["n"]:
        check_sources_present(_used_sources(plan, [i]))  # a vanished drive: keep none
    store.commit(local, f"{IMAGES}/{name}.h5", STAGE, name, fp, {"stats": stats})
    local.unlink()
    return stats


def _used_sources(plan: Plan, shards: list[int]) -> list:
    """The sources that the items of these shards come from."""
    used = set()
    for i in shards:
        used.update(np.unique(plan.source_idx[plan.bounds[i]:plan.bounds[i + 1]]).tolist())
    return [plan.sources[k] for k in sorted(used)]


def check_sources_present(sources) -> None:
    """Stop, naming the source, when one listed in the plan is gone (an unmounted drive)
    rather than record its every image as unreadable."""
    import fsspec
    for src in sources:
        fs, path = fsspec.core.url_to_fs(src.url)
        try:
            present = fs.info(path) is not None
        except FileNotFoundError:
            present = False
        if not present:
            raise SourceError(
                f"the source {src.url} is gone (it was there when the plan was made): is the "
                "drive mounted, or was it moved? Nothing more was recorded; bring it back "
                "and re-run the same command to resume.")


class ShardTask:
    """One shard as a task of the spark executor: `_process_shard` with its own store
    handle and scratch, source reader, and a supervised pool of as many processes as
    the task has CPUs (so a hanging or crashing image still costs only that image)."""

    def __init__(self, cfg: PreprocessConfig, fp: str, image_fn: Callable):
        self.cfg, self.fp, self.image_fn = cfg, fp, image_fn

    def __call__(self, i: int) -> dict:
        return run_in_scratch(STAGE, lambda scratch: self._run(i, scratch))

    def _run(self, i: int, scratch: str) -> dict:
        cfg = self.cfg
        store = task_store(cfg, scratch)
        key = ("plan", *(m.sha256 for m in plan_markers(store)))
        plan = worker_cached(key, lambda: load_plan(store, f"{scratch}/plan.h5"))
        with make_executor("process", self.image_fn, task_cpus(), cfg.image_timeout,
                           on_failure, init=worker_init, env=_worker_env(cfg),
                           split=True) as ex, \
                Reader(plan.sources, threads=cfg.read_threads) as reader:
            return _process_shard(cfg, store, plan, i, self.fp, ex, reader, None)


def _write_report(store: Store, plan: Plan, fp: str, drop: bool) -> None:
    """images/report.json: totals, every failure with its reason, exact duplicate groups."""
    first: dict[bytes, int] = {}
    groups: dict[int, list[int]] = {}
    failures, totals = [], {"ok": 0}
    for i in range(plan.n_shards):
        ids, status, hashes, reasons = read_outcomes(store, f"{IMAGES}/{shard_name(i)}.h5")
        for id_, s, h, why in zip(ids.tolist(), status.tolist(), hashes.tolist(), reasons):
            if s != Status.OK:
                label = Status(s).label
                totals[label] = totals.get(label, 0) + 1
                failures.append({"id": id_, "key": plan.keys[id_], "status": label,
                                 "reason": why})
                continue
            totals["ok"] += 1
            if h in first:
                groups.setdefault(first[h], []).append(id_)
            else:
                first[h] = id_
    report = {"images": plan.n, "totals": totals, "failures": failures,
              "duplicates": {"drop": drop, "count": sum(len(g) for g in groups.values()),
                             "groups": [[k, *v] for k, v in sorted(groups.items())]}}
    local = store.scratch / STAGE / "report.json"
    write_report(local, report)
    store.commit(local, REPORT_FILE, STAGE, "report", fp,
                 {"duplicates": report["duplicates"]["count"], "version": plan.segment})


def _result(store: Store, plan: Plan, seconds: float, complete: bool) -> PreprocessResult:
    markers = store.markers(STAGE)
    ok, failed, done = 0, {}, 0
    for unit, m in markers.items():
        if is_shard(unit):
            done += 1
            ok += m.extra["stats"]["ok"]
            for k, v in m.extra["stats"]["failed"].items():
                failed[k] = failed.get(k, 0) + v
    dups = markers["report"].extra["duplicates"] if "report" in markers else 0
    return PreprocessResult(complete, plan.n, plan.n_shards, done, ok, failed, dups, seconds,
                            store.url)
