"""Stage 2, extract: image shards -> `features/shard-NNNNN.h5` (L2-normalised float16).

Per shard: stage the image shard in from the store, decode its small JPEGs into model
input in worker threads (OpenCV releases the GIL; no pixels are copied between
processes) or processes, feed ready batches through a bounded queue to the model (so
decoding overlaps inference), L2-normalise, write the feature shard in scratch, commit.
Images that failed in preprocess (and exact duplicates, with --drop-duplicates) are
simply absent here.
"""
from __future__ import annotations

import concurrent.futures
import dataclasses
import json
import logging
import os
import queue
import threading
import time
from dataclasses import dataclass, field

import h5py
import numpy as np
from tqdm.auto import tqdm

from .errors import DeadlineReached, WorkflowError, check_settings
from .executors import EXECUTORS, make_executor, map_shards
from .imaging import (MODEL_INPUT_VERSION, ImageOptions, Status, model_input,
                      preprocess_image)
from .lease import Lease
from .models import Embedder, ModelSpec, load_embedder
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
    executor: str = "thread"
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
            (self.executor in (*EXECUTORS, "spark"),
             f"--executor must be one of {sorted((*EXECUTORS, 'spark'))}"),
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
    list of JPEGs, or (JPEGs, array to decode into) where the worker shares our memory."""

    def __init__(self, size: int):
        self.size = size

    def __call__(self, job) -> np.ndarray:
        jpegs, out = job if isinstance(job, tuple) else (job, None)
        if out is None:
            out = np.empty((len(jpegs), self.size, self.size, 3), np.uint8)
        for j, o in zip(jpegs, out):
            model_input(j, self.size, o)
        return out


def _decode_failed(payload, kind: str, message: str):
    return None


def _preprocess_fingerprint(store: Store) -> str:
    frozen = store.run_info()["stages"].get(PREPROCESS)
    if frozen is None or "report" not in store.markers(PREPROCESS):
        raise WorkflowError(f"the preprocess stage is not complete in {store.url}; run "
                            "scripts/01_preprocess.py first (`python -m workflow status` "
                            "shows where it stands)")
    return frozen["fingerprint"]


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
                         time.monotonic() - t0, runner.timings, store.url)


class _ShardRunner:
    """Turns image shards into feature shards with one model and one decoding pool."""

    def __init__(self, cfg: ExtractConfig, store: Store, embedder: Embedder, fp: str,
                 skip: set[int]):
        self.cfg, self.store, self.embedder, self.fp, self.skip = cfg, store, embedder, fp, skip
        self.bs = cfg.batch_size or (256 if embedder.on_gpu else 32)
        self.timings = {"read": 0.0, "decode wait": 0.0, "infer": 0.0, "write": 0.0}
        self.work = store.scratch / STAGE

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
        # The next shard is fetched and read while this one is computed.
        with self.decoder() as pool, bar, \
                concurrent.futures.ThreadPoolExecutor(1, "extract-read") as reader:
            ahead = reader.submit(self._load, pending[0], images[pending[0]])
            for i, unit in enumerate(pending):
                if deadline is not None and time.monotonic() + (
                        np.mean(shard_times) if shard_times else 0.0) > deadline:
                    ahead.cancel()
                    raise DeadlineReached()
                t = time.monotonic()
                loaded = ahead.result()
                if i + 1 < len(pending):
                    ahead = reader.submit(self._load, pending[i + 1], images[pending[i + 1]])
                self._shard(unit, images[unit], pool, bar, loaded, time.monotonic() - t)
                lease.check()
                shard_times.append(time.monotonic() - t)

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

    def _shard(self, unit: str, marker, pool, bar, loaded=None, read_wait=None) -> None:
        """One shard; `loaded` is what `_load` returned where it was read ahead, and
        `read_wait` the time spent waiting for it."""
        t = {"read": 0.0, "decode wait": 0.0, "infer": 0.0, "write": 0.0}
        t0 = time.monotonic()
        ids, jpegs = loaded if loaded is not None else self._load(unit, marker)
        t["read"] = read_wait if read_wait is not None else time.monotonic() - t0
        feats = np.zeros((len(ids), self.embedder.dim), np.float16)
        bs = self.bs
        inflight: list = []  # at most one batch being computed while the next is handed over

        def finish():
            k, n, result = inflight.pop(0)
            t1 = time.monotonic()
            feats[k * bs:k * bs + n] = l2_normalize(result())
            t["infer"] += time.monotonic() - t1
            if bar is not None:
                bar.update(n)
        for k, batch in self._batches(jpegs, pool, unit, t):
            t1 = time.monotonic()
            inflight.append((k, len(batch), self.embedder.launch(batch)))
            t["infer"] += time.monotonic() - t1
            if len(inflight) > 1:
                finish()
        while inflight:
            finish()
        t1 = time.monotonic()
        out = self.work / f"{unit}.h5"
        write_feature_shard(str(out), ids, feats, self.fp, self.embedder.info)
        self.store.commit(out, f"{FOLDER}/{unit}.h5", STAGE, unit, self.fp,
                          {"n": int(len(ids)), "dim": int(self.embedder.dim)})
        out.unlink()
        t["write"] = time.monotonic() - t1
        for k in t:
            self.timings[k] += t[k]
        logger.info("%s: %d images, read %.1f s, decode wait %.1f s, infer %.1f s, write "
                    "%.1f s", unit, len(ids), t["read"], t["decode wait"], t["infer"],
                    t["write"])

    def _batches(self, jpegs: list, pool, unit: str, t: dict):
        """Decoded batches of up to `bs` images, in order. A feeding thread hands decoding
        jobs of DECODE_CHUNK images to the pool, a bounded number ahead: small jobs, so
        that the first batch of a shard is ready soon after the shard starts. With
        threads, the jobs write straight into their batch's array."""
        bs, size = self.bs, self.embedder.input_size
        dc = min(bs, DECODE_CHUNK)
        in_place = self.cfg.executor == "thread"
        arrays: dict[int, np.ndarray] = {}

        def jobs():
            for k, lo in enumerate(range(0, len(jpegs), bs)):
                hi = min(len(jpegs), lo + bs)
                arrays[k] = out = np.empty((hi - lo, size, size, 3), np.uint8)
                for c in range(lo, hi, dc):
                    e = min(hi, c + dc)
                    yield c, (jpegs[c:e], out[c - lo:e - lo] if in_place else None)
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
                    if not in_place:
                        arrays[b][off:off + len(part)] = part
                    done[b] = done.get(b, 0) + len(part)
                t["decode wait"] += time.monotonic() - t0
                yield k, arrays.pop(k)
        finally:
            stop.set()
            thread.join(timeout=30)


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
