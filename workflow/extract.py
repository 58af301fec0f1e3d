"""Stage 2, extract: image shards -> `features/shard-NNNNN.h5` (L2-normalised float16).

Per shard: stage the image shard in from the store (the next one while this one is
computed), decode its small JPEGs into model input in worker threads (without a GPU:
OpenCV releases the GIL) or worker processes writing into batches in shared memory
(with a GPU: the inference loop then shares no GIL with decoding), feed ready batches
through a bounded queue to the model (so decoding overlaps inference), L2-normalise,
write the feature shard in scratch and commit it (in the background, while the next
shard is computed). Images that failed in preprocess (and exact duplicates, with
--drop-duplicates) are simply absent here.
"""
from __future__ import annotations

import concurrent.futures
import contextlib
import dataclasses
import json
import logging
import os
import queue
import threading
import time
from dataclasses import dataclass, field
from multiprocessing import shared_memory
from typing import NamedTuple

import cv2
import h5py
import numpy as np
from tqdm.auto import tqdm

from .errors import DeadlineReached, WorkflowError, check_settings
from .executors import EXECUTORS, make_executor, map_shards
from .imaging import (MODEL_INPUT_VERSION, ImageOptions, Status, model_input,
                      preprocess_image)
from .lease import Lease
from .models import Embedder, ModelSpec, load_embedder
from .pool import PAUSE
from .preprocess import STAGE as PREPROCESS, skip_ids
from .spark import run_in_scratch, task_cpus, worker_cached
from .store import Store
from .utils import Timeit

logger = logging.getLogger(__name__)

STAGE = "extract"
FOLDER = "features"
FORMAT_VERSION = 1
# Recorded in the shards but left out of the fingerprint: they change features only
# within float16 rounding, and a resume on another runtime must stay possible.
NOT_FINGERPRINTED = ("backend", "mixed_precision", "xla")


@dataclass(frozen=True)
class ExtractConfig:
    """Settings of the extract stage; see `scripts/02_extract.py --help`."""
    store: str
    scratch: str | None = None
    model: str = "efficientnet-b0"
    weights: str = "imagenet"
    input_size: int | None = None
    pooling: str = "avg"
    preprocessing: str | None = None
    embedding_tensor: str | None = None
    batch_size: int | None = None   # None: 32 on a CPU, 256 on a GPU
    executor: str = "auto"  # process with a GPU, thread without (see resolve_executor)
    workers: int = field(default_factory=lambda: max(1, (os.cpu_count() or 2) - 1))
    mixed_precision: str = "auto"
    xla: bool = False
    spark_master: str | None = None
    max_minutes: float | None = None
    takeover: bool = False
    wait_minutes: float = 0.0
    progress: bool = True

    def validate(self) -> "ExtractConfig":
        checks = [
            (self.executor in (*EXECUTORS, "spark", "auto"),
             f"--executor must be one of {sorted((*EXECUTORS, 'spark', 'auto'))}"),
            (self.workers >= 1, "--workers must be at least 1"),
            (self.batch_size is None or self.batch_size >= 1, "--batch-size must be >= 1"),
            (self.input_size is None or self.input_size >= 32, "--input-size must be >= 32"),
            (self.mixed_precision in ("auto", "on", "off"),
             "--mixed-precision must be auto, on or off"),
            (self.max_minutes is None or self.max_minutes > 0, "--max-minutes must be positive"),
        ]
        check_settings(checks)
        return self

    def spec(self) -> ModelSpec:
        return ModelSpec(self.model, self.weights, self.input_size, self.pooling,
                         self.preprocessing, self.embedding_tensor)


@dataclass
class ExtractResult:
    complete: bool
    n_shards: int
    shards_done: int
    n_features: int
    dim: int
    seconds: float
    timings: dict
    store: str
    shards: list = field(default_factory=list)  # per shard done now: images and timings

    def summary(self) -> str:
        state = "complete" if self.complete else "stopped early (re-run to resume)"
        t = ", ".join(f"{k} {v:.1f} s" for k, v in self.timings.items())
        return (f"extract {state}: {self.shards_done}/{self.n_shards} shards, "
                f"{self.n_features:,} features of dimension {self.dim}; {self.seconds:.1f} s "
                f"({t or 'nothing to do'}). Store: {self.store}")


def make_embedder(spec: ModelSpec, mixed_precision: str, xla: bool = False) -> Embedder:
    """Load the model; mixed precision where asked, or 'auto' on a GPU with Keras."""
    if spec.model.lower().endswith(".tflite"):
        return load_embedder(spec)
    from .keras_models import KerasEmbedder, gpu_available
    mixed = mixed_precision == "on" or (mixed_precision == "auto" and gpu_available())
    return KerasEmbedder(spec, mixed_precision=mixed, xla=xla)


def l2_normalize(x: np.ndarray) -> np.ndarray:
    n = np.linalg.norm(x, axis=1, keepdims=True)
    return x / np.maximum(n, 1e-12)


# Images per decoding job of the extract stage.
DECODE_CHUNK = 32


class DecodeChunk:
    """Worker job: stored JPEGs -> uint8 RGB batch [n, S, S, 3]. Picklable. The job is a
    list of JPEGs, or (JPEGs, where to decode into): an array where the worker shares our
    memory (threads), a `SharedSlice` where it does not (processes; the job then returns
    only the number of images written)."""

    def __init__(self, size: int):
        self.size = size
        self._attached: dict[str, tuple] = {}

    def __getstate__(self) -> dict:
        return {"size": self.size}

    def __setstate__(self, state: dict) -> None:
        self.__init__(state["size"])

    def __call__(self, job):
        jpegs, out = job if isinstance(job, tuple) else (job, None)
        shared = isinstance(out, SharedSlice)
        if shared:
            out = self._view(out)
        elif out is None:
            out = np.empty((len(jpegs), self.size, self.size, 3), np.uint8)
        for j, o in zip(jpegs, out):
            model_input(j, self.size, o)
        return len(jpegs) if shared else out

    def _view(self, s: "SharedSlice") -> np.ndarray:
        if s.name not in self._attached:
            for old in self._attached.values():  # the previous run's block
                old[0].close()
            self._attached.clear()
            cv2.setNumThreads(1)  # this process is one of many decoding workers
            shm = _attach_shared(s.name)
            self._attached[s.name] = (shm, np.ndarray(s.shape, np.uint8, buffer=shm.buf))
        return self._attached[s.name][1][s.slot, s.lo:s.hi]


class SharedSlice(NamedTuple):
    """Rows lo:hi of batch `slot` of the shared block `name` of shape [slots, bs, S, S, 3]."""
    name: str
    shape: tuple
    slot: int
    lo: int
    hi: int


def _attach_shared(name: str) -> shared_memory.SharedMemory:
    """Open a block another process created and will unlink (only it tracks the block)."""
    try:
        return shared_memory.SharedMemory(name, track=False)  # Python >= 3.13
    except TypeError:
        return shared_memory.SharedMemory(name)


# Names of our shared-memory blocks: the prefix, the creating process's pid, a random tag.
SHARED_PREFIX = "image-workflow-extract-"
SHARED_DIR = "/dev/shm"


def remove_orphaned_blocks() -> list[str]:
    """Unlink the blocks of extract runs whose process is gone. Python's resource tracker
    unlinks a block when its creator dies, but a SIGKILL of the whole process group
    (what a terminal, a notebook or a job scheduler sends) kills the tracker too, and
    the block would stay in /dev/shm until reboot. Returns the names removed."""
    try:
        names = [n for n in os.listdir(SHARED_DIR) if n.startswith(SHARED_PREFIX)]
    except OSError:
        return []
    removed = []
    for name in names:
        try:
            pid = int(name[len(SHARED_PREFIX):].split("-")[0])
            os.kill(pid, 0)
            continue  # its run is alive
        except ProcessLookupError:
            pass
        except (ValueError, PermissionError):
            continue  # not ours to judge
        try:
            os.unlink(os.path.join(SHARED_DIR, name))
            removed.append(name)
        except OSError:
            pass
    if removed:
        logger.info("extract: removed %d shared-memory block(s) left by killed runs",
                    len(removed))
    return removed


def shared_memory_free() -> int | None:
    """Bytes free where shared memory lives (/dev/shm on Linux), None where unknown.
    Docker gives containers 64 MB there unless told otherwise; a block larger than what
    is free is created all the same and kills its writer with SIGBUS later."""
    try:
        st = os.statvfs(SHARED_DIR)
    except (OSError, AttributeError):
        return None
    return st.f_bavail * st.f_frsize


class SharedBatches:
    """Batch arrays in one shared-memory block, for decoding processes to write model
    input into: no decoded pixels are pickled, and the inference loop shares no GIL with
    the decoding. `shape` is [slots, bs, S, S, 3] (uint8); `take` gives a free batch,
    `release` returns it."""

    def __init__(self, shape: tuple):
        self.shape = shape
        self.shm = shared_memory.SharedMemory(
            f"{SHARED_PREFIX}{os.getpid()}-{os.urandom(4).hex()}", create=True,
            size=int(np.prod(self.shape)))
        self.arrays = np.ndarray(self.shape, np.uint8, buffer=self.shm.buf)
        self.free = list(range(shape[0]))

    def take(self) -> int | None:
        """A free batch, or None while all are out."""
        return self.free.pop(0) if self.free else None

    def release(self, slot: int) -> None:
        self.free.append(slot)

    def slice(self, slot: int, lo: int, hi: int) -> SharedSlice:
        return SharedSlice(self.shm.name, self.shape, slot, lo, hi)

    def close(self) -> None:
        self.shm.unlink()
        del self.arrays
        try:
            self.shm.close()
        except BufferError:  # a batch is still referenced (we are unwinding an error)
            pass


def _decode_failed(payload, kind: str, message: str):
    return None


def _preprocess_fingerprint(store: Store) -> str:
    frozen = store.run_info()["stages"].get(PREPROCESS)
    if frozen is None or "report" not in store.markers(PREPROCESS):
        raise WorkflowError(f"the preprocess stage is not complete in {store.url}; run "
                            "scripts/01_preprocess.py first (`python -m workflow status` "
                            "shows where it stands)")
    return frozen["fingerprint"]


def resolve_executor(cfg: ExtractConfig, embedder: Embedder) -> ExtractConfig:
    """`auto`: with a GPU, decoding processes writing into shared memory, so that the
    inference loop has its Python to itself (on an H100 with 16 cores: 8,455 images/s
    for EfficientNet-B0 against 2,359 with threads, BENCHMARKS.md); without one,
    threads (the model is the limit, and threads cost nothing to start)."""
    if cfg.executor != "auto":
        return cfg
    executor = "process" if embedder.on_gpu else "thread"
    logger.info("extract: decoding in %d %s", cfg.workers,
                "processes" if executor == "process" else "threads")
    return dataclasses.replace(cfg, executor=executor)


def run(cfg: ExtractConfig) -> ExtractResult:
    """Run (or resume) the extract stage."""
    cfg.validate()
    t0 = time.monotonic()
    store = Store(cfg.store, cfg.scratch)
    with Lease(store, STAGE, takeover=cfg.takeover,
               wait=cfg.wait_minutes * 60) as lease:
        parent = _preprocess_fingerprint(store)
        with Timeit("loading the model", logging.INFO):
            embedder = make_embedder(cfg.spec(), cfg.mixed_precision, cfg.xla)
        settings = {k: v for k, v in embedder.info.items() if k not in NOT_FINGERPRINTED}
        settings.update(crop="centre", features="float16-l2", format=FORMAT_VERSION,
                        model_input=MODEL_INPUT_VERSION,
                        spec=dataclasses.asdict(cfg.spec()))
        fp = store.freeze_stage(STAGE, settings, parent)
        store.cleanup(STAGE, FOLDER)
        images = {u: m for u, m in store.markers(PREPROCESS).items() if u.startswith("shard-")}
        done = store.markers(STAGE)
        pending = [u for u in sorted(images) if u not in done]
        logger.info("extract: %d shards, %d done, %d to do; model %s, input %d px, dim %d",
                    len(images), len(images) - len(pending), len(pending),
                    embedder.info["model"], embedder.input_size, embedder.dim)
        cfg = resolve_executor(cfg, embedder)
        runner = _ShardRunner(cfg, store, embedder, fp, skip_ids(store))
        deadline = t0 + cfg.max_minutes * 60 if cfg.max_minutes else None
        complete = True
        try:
            runner.run(pending, images, lease, deadline)
        except DeadlineReached:
            logger.warning("extract: --max-minutes reached; re-run the same command to resume")
            complete = False
    markers = {u: m for u, m in store.markers(STAGE).items() if u.startswith("shard-")}
    return ExtractResult(complete and len(markers) == len(images), len(images), len(markers),
                         sum(m.extra["n"] for m in markers.values()), embedder.dim,
                         time.monotonic() - t0, runner.timings, store.url, runner.shards)


class _ShardRunner:
    """Turns image shards into feature shards with one model and one decoding pool."""

    def __init__(self, cfg: ExtractConfig, store: Store, embedder: Embedder, fp: str,
                 skip: set[int]):
        self.cfg, self.store, self.embedder, self.fp, self.skip = cfg, store, embedder, fp, skip
        self.bs = cfg.batch_size or (256 if embedder.on_gpu else 32)
        self.timings = {"read": 0.0, "decode wait": 0.0, "infer": 0.0, "write": 0.0}
        self.shards: list[dict] = []
        self.work = store.scratch / STAGE
        self.shared: SharedBatches | None = None
        self._writing: concurrent.futures.Future | None = None

    def run(self, pending: list[str], images: dict, lease: Lease, deadline) -> None:
        if not pending:
            return
        total = sum(images[u].extra["stats"]["ok"] for u in pending)
        bar = tqdm(total=total, unit="img", desc="extract", disable=not self.cfg.progress,
                   mininterval=1.0, smoothing=0.1, dynamic_ncols=True)
        if self.cfg.executor == "spark":
            task = ShardTask(self.cfg, self.fp, sorted(self.skip),
                             self.embedder.info["weights_sha256"])
            with bar:
                for unit, (n, timings) in map_shards(
                        "spark", task, pending, spark_master=self.cfg.spark_master,
                        stage=STAGE, deadline=deadline,
                        reachable={"store": self.store.display("run.json")}):
                    lease.check()
                    bar.update(n)
                    for k, v in timings.items():
                        self.timings[k] += v
            return
        shard_times: list[float] = []
        with Timeit(f"preparing the model for batches of {self.bs}", logging.INFO):
            self.embedder.warm_up(self.bs)
        # The next shard is fetched and read, and the last one written and committed,
        # while this one is computed.
        with self.decoder() as pool, bar, self._shared_batches(), \
                concurrent.futures.ThreadPoolExecutor(1, "extract-read") as reader, \
                concurrent.futures.ThreadPoolExecutor(1, "extract-write") as writer:
            try:
                ahead = reader.submit(self._load, pending[0], images[pending[0]])
                for i, unit in enumerate(pending):
                    if deadline is not None and time.monotonic() + (
                            np.mean(shard_times) if shard_times else 0.0) > deadline:
                        ahead.cancel()
                        raise DeadlineReached()
                    t = time.monotonic()
                    loaded = ahead.result()
                    if i + 1 < len(pending):
                        ahead = reader.submit(self._load, pending[i + 1],
                                              images[pending[i + 1]])
                    self._shard(unit, images[unit], pool, bar, loaded, time.monotonic() - t,
                                writer=writer, lease=lease)
                    lease.check()
                    shard_times.append(time.monotonic() - t)
            finally:
                self._written()  # a shard computed is a shard saved, whatever stopped us

    def shared_slots(self) -> int:
        """Batches in shared memory for decoding processes: the one being computed, the
        one being filled, those the workers' jobs reach into, and two to spare so
        that a slow job does not idle the other workers."""
        chunks = -(-self.bs // min(self.bs, DECODE_CHUNK))
        return 4 + -(-self.cfg.workers // chunks)

    @contextlib.contextmanager
    def _shared_batches(self):
        """With decoding processes, the batches they decode into, in shared memory."""
        if self.cfg.executor != "process":
            yield
            return
        size = self.embedder.input_size
        shape = (self.shared_slots(), self.bs, size, size, 3)
        need = int(np.prod(shape))
        remove_orphaned_blocks()  # before measuring the room: they take some
        free = shared_memory_free()
        if free is not None and free < need:
            logger.warning(
                "extract: /dev/shm has %.1f MB free, and decoding processes need %.1f MB there "
                "for their batches; decoded pixels are sent back through pipes instead "
                "(slower). Remedy: a larger /dev/shm (Docker: --shm-size=1g), a smaller "
                "--batch-size, or --executor thread", free / 2**20, need / 2**20)
            yield
            return
        self.shared = SharedBatches(shape)
        try:
            yield
        finally:
            self.shared.close()
            self.shared = None

    def decoder(self, executor: str | None = None):
        return make_executor(executor or self.cfg.executor,
                             DecodeChunk(self.embedder.input_size), self.cfg.workers, 600.0,
                             _decode_failed)

    def _load(self, unit: str, marker) -> tuple[np.ndarray, list[bytes]]:
        """(ids, stored JPEGs) of the images of an image shard that get a feature."""
        local = self.store.fetch(marker, self.work / "in" / f"{unit}.h5")
        with h5py.File(local, "r") as f:
            ids, status = f["ids"][:], f["status"][:]
            keep = (status == Status.OK) & ~np.isin(ids, list(self.skip))
            rows = np.flatnonzero(keep)
            stored = f["jpeg"][:]  # one read of the whole column, not one per image
            jpegs = [stored[i].tobytes() for i in rows]
        local.unlink()
        return ids[rows], jpegs

    def _shard(self, unit: str, marker, pool, bar, loaded=None, read_wait=None,
               writer: concurrent.futures.Executor | None = None,
               lease: Lease | None = None) -> None:
        """One shard; `loaded` is what `_load` returned where it was read ahead, and
        `read_wait` the time spent waiting for it. With a `writer`, the feature shard is
        written and committed there (after the lease is checked), one at a time, while
        the next shard is computed."""
        t = {"read": 0.0, "decode wait": 0.0, "infer": 0.0, "write": 0.0}
        t0 = time.monotonic()
        ids, jpegs = loaded if loaded is not None else self._load(unit, marker)
        t["read"] = read_wait if read_wait is not None else time.monotonic() - t0
        feats = np.zeros((len(ids), self.embedder.dim), np.float16)
        bs = self.bs
        inflight: list = []  # at most one batch being computed while the next is handed over

        def finish():
            k, n, result, release = inflight.pop(0)
            t1 = time.monotonic()
            feats[k * bs:k * bs + n] = l2_normalize(result())
            release()  # the model has consumed the batch: its array may be reused
            t["infer"] += time.monotonic() - t1
            if bar is not None:
                bar.update(n)
        for k, batch, release in self._batches(jpegs, pool, unit, t):
            t1 = time.monotonic()
            inflight.append((k, len(batch), self.embedder.launch(batch), release))
            t["infer"] += time.monotonic() - t1
            if len(inflight) > 1:
                finish()
        while inflight:
            finish()
        if writer is None:
            self._write(unit, ids, feats, t)
            return
        t1 = time.monotonic()
        self._written()
        t["write"] = time.monotonic() - t1  # waiting for the previous shard's write
        self._writing = writer.submit(self._write, unit, ids, feats, t, lease, True)

    def _written(self) -> None:
        """Wait for the shard being written, if any; its error is raised here."""
        if self._writing is not None:
            fut, self._writing = self._writing, None
            fut.result()

    def _write(self, unit: str, ids: np.ndarray, feats: np.ndarray, t: dict,
               lease: Lease | None = None, background: bool = False) -> None:
        """Write and commit a feature shard. `t` gets the time the computing loop spent
        on it: all of it inline, none of it in the background."""
        t1 = time.monotonic()
        out = self.work / f"{unit}.h5"
        write_feature_shard(str(out), ids, feats, self.fp, self.embedder.info)
        if lease is not None:
            lease.check()
        self.store.commit(out, f"{FOLDER}/{unit}.h5", STAGE, unit, self.fp,
                          {"n": int(len(ids)), "dim": int(self.embedder.dim)})
        out.unlink()
        spent = time.monotonic() - t1
        if not background:
            t["write"] += spent
        for k in t:
            self.timings[k] += t[k]
        self.shards.append({"unit": unit, "n": int(len(ids)),
                            **{k: round(v, 4) for k, v in t.items()}})
        logger.info("%s: %d images, read %.1f s, decode wait %.1f s, infer %.1f s, write "
                    "%.1f s%s", unit, len(ids), t["read"], t["decode wait"], t["infer"],
                    spent, " (in the background)" if background else "")

    def _batches(self, jpegs: list, pool, unit: str, t: dict):
        """(k, batch k, release) for the decoded batches of up to `bs` images, in order;
        release() once the model is done with the batch. A feeding thread hands
        decoding jobs of DECODE_CHUNK images to the pool, a bounded number ahead: small
        jobs, so that the first batch of a shard is ready soon after the shard starts.
        Threads write straight into their batch's array, processes into shared memory."""
        bs, size = self.bs, self.embedder.input_size
        dc = min(bs, DECODE_CHUNK)
        in_place = self.cfg.executor == "thread"
        shared = self.shared
        arrays: dict[int, np.ndarray] = {}
        slots: dict[int, int] = {}

        def jobs():
            for k, lo in enumerate(range(0, len(jpegs), bs)):
                hi = min(len(jpegs), lo + bs)
                if shared is not None:
                    # All batches out: let the pool collect results until one is freed.
                    while (slot := shared.take()) is None:
                        yield PAUSE
                    slots[k] = slot
                    arrays[k] = shared.arrays[slot, :hi - lo]
                else:
                    arrays[k] = np.empty((hi - lo, size, size, 3), np.uint8)
                for c in range(lo, hi, dc):
                    e = min(hi, c + dc)
                    if shared is not None:
                        into = shared.slice(slot, c - lo, e - lo)
                    else:
                        into = arrays[k][c - lo:e - lo] if in_place else None
                    yield c, (jpegs[c:e], into)
        ready: queue.Queue = queue.Queue(maxsize=max(4, 2 * self.cfg.workers))
        stop = threading.Event()

        def feed():
            try:
                for item in pool.imap_unordered(jobs()):
                    while not stop.is_set():
                        try:
                            ready.put(item, timeout=0.2)
                            break
                        except queue.Full:
                            continue
                    if stop.is_set():
                        return
            except BaseException as e:  # noqa: BLE001 - handed to the consumer
                ready.put((None, e))
        thread = threading.Thread(target=feed, name=f"decode-{unit}", daemon=True)
        thread.start()
        done: dict[int, int] = {}
        try:
            for k in range(-(-len(jpegs) // bs)):
                t0 = time.monotonic()
                while done.get(k, 0) < min(bs, len(jpegs) - k * bs):
                    key, part = ready.get()
                    if key is None:
                        raise part
                    if part is None:
                        raise WorkflowError(f"decoding images of {unit} crashed a worker; "
                                            "re-run, and report it if it happens again")
                    b, off = divmod(key, bs)  # key: the job's first image in the shard
                    n = part if isinstance(part, int) else len(part)
                    if not in_place and shared is None:
                        arrays[b][off:off + n] = part
                    done[b] = done.get(b, 0) + n
                t["decode wait"] += time.monotonic() - t0
                slot = slots.pop(k, None)
                yield k, arrays.pop(k), (lambda s=slot: shared.release(s)) \
                    if slot is not None else (lambda: None)
        finally:
            stop.set()
            thread.join(timeout=30)
            if shared is not None:  # batches never handed over (an error stopped us)
                for slot in slots.values():
                    shared.release(slot)


class ShardTask:
    """One shard as a task of the spark executor: `_ShardRunner._shard` with its own
    store handle and scratch, the model built once per Python worker, and decoding in
    threads."""

    def __init__(self, cfg: ExtractConfig, fp: str, skip: list[int], weights_sha256: str):
        self.cfg, self.fp, self.skip, self.weights = cfg, fp, skip, weights_sha256

    def __call__(self, unit: str) -> tuple[int, dict]:
        return run_in_scratch(STAGE, lambda scratch: self._run(unit, scratch))

    def _run(self, unit: str, scratch: str) -> tuple[int, dict]:
        cfg = self.cfg
        key = ("embedder", json.dumps(dataclasses.asdict(cfg.spec())), cfg.mixed_precision,
               cfg.xla)
        embedder = worker_cached(key, lambda: make_embedder(cfg.spec(), cfg.mixed_precision,
                                                            cfg.xla))
        if embedder.info["weights_sha256"] != self.weights:
            raise WorkflowError(f"the model loaded on this Spark executor has other weights "
                                f"than the driver's ({cfg.model}, {cfg.weights}): give a "
                                "weights file every executor can read")
        store = Store(cfg.store, scratch)
        runner = _ShardRunner(dataclasses.replace(cfg, workers=task_cpus()), store, embedder,
                              self.fp, set(self.skip))
        with runner.decoder("thread") as pool:
            runner._shard(unit, store.marker(PREPROCESS, unit), pool, None)
        n = store.marker(STAGE, unit).extra["n"]
        return n, runner.timings


def write_feature_shard(path: str, ids: np.ndarray, feats: np.ndarray, fp: str,
                        info: dict) -> None:
    """`features/shard-NNNNN.h5`: ids int64[m], features float16[m, d], model attributes."""
    assert feats.dtype == np.float16 and feats.shape[0] == len(ids)
    with h5py.File(path, "w") as f:
        f.create_dataset("ids", data=np.asarray(ids, np.int64), track_times=False)
        f.create_dataset("features", data=feats, track_times=False)
        f.attrs["fingerprint"] = fp
        f.attrs["model"] = info["model"]
        f.attrs["dim"] = int(feats.shape[1])
        f.attrs["model_info"] = json.dumps(info, sort_keys=True)
        f.attrs["format_version"] = FORMAT_VERSION


def fetch_features(store: Store, marker, work) -> tuple[np.ndarray, np.ndarray]:
    """(ids, float16 features) of a committed feature shard, via a verified local copy
    that is removed afterwards."""
    local = store.fetch(marker, work / f"{marker.unit}.h5")
    try:
        with h5py.File(local, "r") as f:
            return f["ids"][:], f["features"][:]
    finally:
        local.unlink()


def read_feature_shard(path_or_file) -> tuple[np.ndarray, np.ndarray, dict]:
    with h5py.File(path_or_file, "r") as f:
        return f["ids"][:], f["features"][:], dict(f.attrs)


class QueryEmbedder:
    """Embeds query images exactly as the corpus was: the store's frozen preprocess
    settings (resize, re-encode), the same crop and the same model."""

    def __init__(self, store: Store, embedder: Embedder | None = None):
        stages = store.run_info()["stages"]
        if PREPROCESS not in stages or STAGE not in stages:
            raise WorkflowError(f"{store.url} has no extracted features yet; run the "
                                "preprocess and extract stages first")
        pre, ext = stages[PREPROCESS]["settings"], stages[STAGE]["settings"]
        self.opts = ImageOptions(pre["image_size"], pre["jpeg_quality"], pre["max_pixels"])
        self.embedder = embedder or self._load(store, ext)
        if self.embedder.info["weights_sha256"] != ext["weights_sha256"]:
            raise WorkflowError("the model loaded for queries is not the one the corpus was "
                                "extracted with (weights differ)")

    @staticmethod
    def _load(store: Store, ext: dict) -> Embedder:
        return make_embedder(ModelSpec(**ext["spec"]), "auto")

    def embed(self, images: list) -> np.ndarray:
        """Image paths or bytes -> L2-normalised float32 features [n, d]. The
        preprocessed JPEGs are kept in `last_jpegs` (thumbnails of the queries)."""
        batch, self.last_jpegs = [], []
        for im in images:
            data = im if isinstance(im, (bytes, bytearray)) else open(im, "rb").read()
            r = preprocess_image(bytes(data), self.opts)
            if r.status != Status.OK:
                name = "query bytes" if isinstance(im, (bytes, bytearray)) else str(im)
                raise WorkflowError(f"{name}: {Status(r.status).label}: {r.reason}")
            batch.append(model_input(r.jpeg, self.embedder.input_size))
            self.last_jpegs.append(r.jpeg)
        return l2_normalize(self.embedder(np.stack(batch)))
