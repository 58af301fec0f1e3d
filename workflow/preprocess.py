"""Stage 1, preprocess: source images -> `images/shard-NNNNN.h5` (small re-encoded JPEGs).

Lists the sources once and freezes the plan in the store; then, shard by shard, reads the
bytes (threads), decodes / orients / converts / resizes / re-encodes them in a pool of
worker processes, writes the shard in scratch and commits it. A killed run redoes at most
the shard it had in flight; the final shards are byte-identical to an uninterrupted run's.
"""
from __future__ import annotations

import json
import logging
import os
import time
from dataclasses import dataclass, field
from typing import Callable

import cv2
import h5py
import numpy as np
from tqdm.auto import tqdm

from .errors import ConfigError, DeadlineReached, SourceError, check_settings
from .executors import EXECUTORS, make_executor, map_shards
from .imaging import ImageOptions, ImageResult, Status, content_hash, preprocess_image
from .lease import Lease
from .plan import Plan, make_plan, shard_name
from .shards import ImageShardWriter
from .sources import Reader, list_entries, resolve_sources
from .spark import run_in_scratch, task_cpus, worker_cached
from .store import RUN_FILE, Store

logger = logging.getLogger(__name__)

STAGE = "preprocess"
FOLDER = "images"
PLAN_FILE = f"{FOLDER}/plan.h5"
REPORT_FILE = f"{FOLDER}/report.json"


@dataclass(frozen=True)
class PreprocessConfig:
    """Settings of the preprocess stage; see `scripts/01_preprocess.py --help`."""
    store: str
    sources: tuple[str, ...] = ()
    scratch: str | None = None
    executor: str = "process"
    workers: int = field(default_factory=lambda: os.cpu_count() or 1)
    shard_size: int = 10_000
    image_size: int = 256
    jpeg_quality: int = 90
    max_pixels: int = 200_000_000
    drop_duplicates: bool = False
    image_timeout: float = 60.0
    read_threads: int = 8
    spark_master: str | None = None
    max_minutes: float | None = None
    takeover: bool = False
    wait_minutes: float = 0.0
    progress: bool = True

    def validate(self) -> "PreprocessConfig":
        checks = [
            (self.executor in (*EXECUTORS, "spark"),
             f"--executor must be one of {sorted((*EXECUTORS, 'spark'))}"),
            (self.workers >= 1, "--workers must be at least 1"),
            (self.shard_size >= 1, "--shard-size must be at least 1"),
            (16 <= self.image_size <= 4096, "--image-size must be between 16 and 4096 px"),
            (1 <= self.jpeg_quality <= 100, "--jpeg-quality must be between 1 and 100"),
            (self.max_pixels >= 1, "--max-pixels must be positive"),
            (self.image_timeout > 0, "--image-timeout must be positive"),
            (self.read_threads >= 1, "--read-threads must be at least 1"),
            (self.max_minutes is None or self.max_minutes > 0, "--max-minutes must be positive"),
        ]
        check_settings(checks)
        return self

    def image_options(self) -> ImageOptions:
        return ImageOptions(self.image_size, self.jpeg_quality, self.max_pixels)


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


def settings_of(cfg: PreprocessConfig, sources: list[str]) -> dict:
    """What determines the output bytes (and so the fingerprint)."""
    return {"sources": sources, "shard_size": cfg.shard_size, "image_size": cfg.image_size,
            "jpeg_quality": cfg.jpeg_quality, "max_pixels": cfg.max_pixels,
            "drop_duplicates": cfg.drop_duplicates, "opencv": cv2.__version__,
            "shard_format": 1}


def _worker_init() -> None:
    cv2.setNumThreads(1)


def _on_failure(chunk: list, kind: str, message: str) -> list[ImageResult]:
    """The result of a one-image chunk whose worker hung or died."""
    (data, _), = chunk
    status = Status.TIMEOUT if kind == "timeout" else Status.CRASHED
    return [ImageResult(int(status), message, b"", 0, 0, content_hash(data) if data else "")]


class ImageWorker:
    """The per-image job, applied to a chunk: [(bytes | None, read error)] -> [ImageResult].

    Picklable; runs in the worker processes."""

    def __init__(self, opts: ImageOptions):
        self.opts = opts

    def __call__(self, chunk: list) -> list[ImageResult]:
        return [preprocess_image(data, self.opts, err) for data, err in chunk]


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
    Raises:
        DeadlineReached: when --max-minutes ran out; re-running resumes.
    """
    cfg.validate()
    t0 = time.monotonic()
    store = Store(cfg.store, cfg.scratch)
    with Lease(store, STAGE, takeover=cfg.takeover,
               wait=cfg.wait_minutes * 60) as lease:
        sources = _source_urls(cfg, store)
        fp = store.freeze_stage(STAGE, settings_of(cfg, sources))
        store.cleanup(STAGE, FOLDER)
        plan = _load_or_make_plan(store, sources, cfg.shard_size, fp)
        done = store.markers(STAGE)
        pending = [i for i in range(plan.n_shards) if shard_name(i) not in done]
        n_pending = sum(int(plan.bounds[i + 1] - plan.bounds[i]) for i in pending)
        logger.info("preprocess: %d images in %d shards; %d shards done, %d to do (%d images)",
                    plan.n, plan.n_shards, plan.n_shards - len(pending), len(pending), n_pending)
        fn = image_fn or ImageWorker(cfg.image_options())
        deadline = t0 + cfg.max_minutes * 60 if cfg.max_minutes else None
        try:
            _run_shards(cfg, store, plan, pending, n_pending, fp, fn, lease, deadline)
        except DeadlineReached:
            logger.warning("preprocess: --max-minutes reached; re-run the same command to "
                           "resume")
            return _result(store, plan, time.monotonic() - t0, complete=False)
        if "report" not in store.markers(STAGE):
            _write_report(store, plan, fp, cfg.drop_duplicates)
    return _result(store, plan, time.monotonic() - t0, complete=True)


def _source_urls(cfg: PreprocessConfig, store: Store) -> list[str]:
    if cfg.sources:
        return [s.url for s in resolve_sources(cfg.sources)]
    frozen = store.run_info()["stages"].get(STAGE)
    if frozen is None:
        raise ConfigError("give at least one --source (a folder, list file, tar or zip)")
    logger.info("resuming with the frozen sources: %s", ", ".join(frozen["settings"]["sources"]))
    return frozen["settings"]["sources"]


def _load_or_make_plan(store: Store, source_urls: list[str], shard_size: int,
                       fp: str) -> Plan:
    local = store.scratch / STAGE / "plan.h5"
    marker = store.marker(STAGE, "plan")
    if marker is not None:
        return Plan.load(str(store.fetch(marker, local)))
    sources = resolve_sources(source_urls)
    plan = make_plan(sources, [list_entries(s) for s in sources], shard_size)
    if plan.n == 0:
        raise ConfigError(f"no images found in {', '.join(source_urls)} (looked for files "
                          "with image extensions such as .jpg, .png, .webp, any case)")
    for s in sources:
        if s.streaming and plan.n_shards > 1:
            logger.warning("%s is compressed: every shard re-reads it from the start. "
                           "Repack it as an uncompressed .tar (JPEGs do not compress) for "
                           "faster runs.", s.url)
    local.parent.mkdir(parents=True, exist_ok=True)
    plan.save(str(local))
    store.commit(local, PLAN_FILE, STAGE, "plan", fp, {"n": plan.n, "shards": plan.n_shards})
    return plan


def _worker_env(cfg: PreprocessConfig) -> dict:
    return {"OPENCV_IO_MAX_IMAGE_PIXELS": str(cfg.max_pixels), "OPENCV_LOG_LEVEL": "ERROR"}


def _run_shards(cfg, store, plan, pending, n_pending, fp, fn, lease, deadline) -> None:
    if not pending:
        return
    bar = tqdm(total=n_pending, unit="img", desc="preprocess", disable=not cfg.progress,
               mininterval=1.0, smoothing=0.1, dynamic_ncols=True)
    if cfg.executor == "spark":
        reachable = {"store": store.display(RUN_FILE),
                     **{f"source {s.name}": s.url for s in plan.sources}}
        with bar:
            for i, stats in map_shards("spark", ShardTask(cfg, fp, fn), pending,
                                       spark_master=cfg.spark_master, stage=STAGE,
                                       deadline=deadline, reachable=reachable):
                lease.check()
                bar.update(stats["n"])
        return
    check_sources_present(plan.sources)
    shard_times: list[float] = []
    with make_executor(cfg.executor, fn, cfg.workers, cfg.image_timeout, _on_failure,
                       init=_worker_init, env=_worker_env(cfg), split=True) as ex, bar, \
            Reader(plan.sources, threads=cfg.read_threads) as reader:
        for i in pending:
            if deadline is not None:
                expected = np.mean(shard_times) if shard_times else 0.0
                if time.monotonic() + expected > deadline:
                    raise DeadlineReached()
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
        check_sources_present(plan.sources)  # a vanished drive, not bad images: keep none
    store.commit(local, f"{FOLDER}/{name}.h5", STAGE, name, fp, {"stats": stats})
    local.unlink()
    return stats


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
        store = Store(cfg.store, scratch)
        m = store.marker(STAGE, "plan")
        plan = worker_cached(("plan", m.sha256),
                             lambda: Plan.load(str(store.fetch(m, f"{scratch}/plan.h5"))))
        with make_executor("process", self.image_fn, task_cpus(), cfg.image_timeout,
                           _on_failure, init=_worker_init, env=_worker_env(cfg),
                           split=True) as ex, \
                Reader(plan.sources, threads=cfg.read_threads) as reader:
            return _process_shard(cfg, store, plan, i, self.fp, ex, reader, None)


def _write_report(store: Store, plan: Plan, fp: str, drop: bool) -> None:
    """images/report.json: totals, every failure with its reason, exact duplicate groups."""
    first: dict[bytes, int] = {}
    groups: dict[int, list[int]] = {}
    failures, totals = [], {"ok": 0}
    for i in range(plan.n_shards):
        with store.fs.open(store.path(f"{FOLDER}/{shard_name(i)}.h5"), "rb") as fh, \
                h5py.File(fh, "r") as f:
            ids, status, hashes = f["ids"][:], f["status"][:], f["content_hash"][:]
            reasons = f["reason"].asstr()[:]
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
    local.write_text(json.dumps(report, indent=1, ensure_ascii=False) + "\n")
    store.commit(local, REPORT_FILE, STAGE, "report", fp,
                 {"duplicates": report["duplicates"]["count"]})


def _result(store: Store, plan: Plan, seconds: float, complete: bool) -> PreprocessResult:
    markers = store.markers(STAGE)
    ok, failed, done = 0, {}, 0
    for unit, m in markers.items():
        if unit.startswith("shard-"):
            done += 1
            ok += m.extra["stats"]["ok"]
            for k, v in m.extra["stats"]["failed"].items():
                failed[k] = failed.get(k, 0) + v
    dups = markers["report"].extra["duplicates"] if "report" in markers else 0
    return PreprocessResult(complete, plan.n, plan.n_shards, done, ok, failed, dups, seconds,
                            store.url)


def skip_ids(store: Store) -> set[int]:
    """Ids that later stages leave out: exact duplicates when --drop-duplicates was set."""
    report = store.read_json(REPORT_FILE) or {}
    dup = report.get("duplicates", {})
    return {i for g in dup.get("groups", []) for i in g[1:]} if dup.get("drop") else set()

