"""Stage 2, extract: image shards -> `features/shard-NNNNN.h5` (L2-normalised float16).

Per shard: stage the image shard in from the store (the next one while this one is
computed), decode its small JPEGs into model input (`execution.decoding`: worker threads
without a GPU, worker processes writing into shared memory with one), feed the batches
to the model as they are ready (one batch in flight), L2-normalise, write the feature
shard in scratch and commit it (in the background, while the next shard is computed).
Images that failed in preprocess (and exact duplicates, with --drop-duplicates) are
simply absent here.
"""
from __future__ import annotations

import concurrent.futures
import dataclasses
import json
import logging
import os
import time
from dataclasses import dataclass, field

import numpy as np
from tqdm.auto import tqdm

from ..errors import DeadlineReached, WorkflowError
from ..execution.decoding import DecodePipeline
from ..execution.executors import EXECUTORS
from ..execution.shards import map_shards
from ..execution.spark import (
    SPARK_MASTER_HELP,
    run_in_scratch,
    spark_conf_check,
    spark_conf_field,
    task_cpus,
    worker_cached,
)
from ..formats.features import write_feature_shard
from ..formats.images import read_for_model, skip_ids
from ..formats.layout import EXTRACT, FEATURES, PREPROCESS, is_shard
from ..formats.plan import preprocess_complete
from ..models.converted import RUNTIMES
from ..models.loading import make_embedder
from ..models.precision import PRECISIONS, store_sampler
from ..models.registry import (
    HUB_MODELS,
    KERAS_APPS,
    POOLING,
    PREPROCESSING,
    Embedder,
    ModelSpec,
    l2_normalize,
)
from ..options import opt
from ..storage.lease import Lease
from ..storage.store import Store
from ..utils import Timeit
from .base import StageConfig, StageRun, task_store
from .extract_model import fingerprinted, load_model, record

logger = logging.getLogger(__name__)

STAGE = EXTRACT
SPARK_NEEDS = ("numpy", "h5py", "cv2", "tensorflow")  # on every executor
MODEL = "model"


@dataclass(frozen=True)
class ExtractConfig(StageConfig):
    """Settings of the extract stage; see `scripts/02_extract.py --help`."""
    model: str = opt("efficientnet-b0", f"a Keras application ({', '.join(KERAS_APPS)}), an "
                     f"image-text model from KerasHub ({', '.join(HUB_MODELS)}: the store "
                     "can then be searched by words too), or a path to your own .keras/.h5 "
                     "model, SavedModel folder or .tflite file", group=MODEL,
                     shown="efficientnet-b0")
    weights: str = opt("imagenet", "imagenet (downloaded once by Keras; for an image-text "
                       "model: its KerasHub preset, downloaded once), none (random: for "
                       "tests only) or a path to a weights file (for an image-text model: "
                       "a local preset folder)", group=MODEL, shown="imagenet")
    input_size: int | None = opt(None, "model input in px (default: the model's native size)",
                                 type=int, group=MODEL)
    pooling: str = opt("avg", "global pooling", choices=POOLING, group=MODEL)
    preprocessing: str | None = opt(None, "input scaling for your own model (raw 0..255, "
                                    "unit 0..1, tf -1..1, caffe, torch); Keras applications "
                                    "know their own", choices=PREPROCESSING, group=MODEL)
    embedding_tensor: str | None = opt(None, "TFLite: the name of the tensor to read "
                                       "(default: the output)", group=MODEL)
    batch_size: int | None = opt(None, "images per model call", type=int, group=MODEL,
                                 shown="32 on a CPU, 256 on a GPU")
    mixed_precision: str = opt("auto", "float16 compute for Keras models; auto = on where a "
                               "GPU is present", choices=["auto", "on", "off"], group=MODEL)
    xla: bool = opt(False, "compile the model with XLA (TensorFlow backend). Measure first: "
                    "on some CPUs it is much slower", action="store_true", group=MODEL)
    runtime: str = opt("auto", "what runs a Keras model: auto: OpenVINO (where installed) "
                       "or TFLite/XNNPACK on a CPU, converted once and cached, Keras on a "
                       "GPU; keras: Keras itself (the features of earlier releases, byte "
                       "for byte); tflite, openvino: that runtime",
                       choices=list(RUNTIMES), group=MODEL)
    precision: str = opt("auto", "what OpenVINO computes in: auto: the fastest of f32, bf16 "
                         "and int8 that passes the fidelity check against float32 on "
                         "held-out images of the store (on a store begun: its precision); "
                         "f32; bf16 (CPUs with AVX512_BF16 or AMX); int8 (NNCF post-training "
                         "quantization calibrated on the store's images; pip install nncf)",
                         choices=list(PRECISIONS), group=MODEL)
    accept_mixed_precision: bool = opt(False, "go on with work begun in another --precision "
                                       "(recorded)", action="store_true", group=MODEL)
    workers: int = opt(help="decoding threads (or processes, with --executor process)",
                       type=int, shown="the number of cores - 1",
                       default_factory=lambda: max(1, (os.cpu_count() or 2) - 1))
    executor: str = opt("auto", "where stored JPEGs are decoded: auto: process with a GPU, "
                        "thread without; thread: --workers threads (OpenCV releases the GIL; "
                        "the fastest without a GPU); process: --workers processes writing "
                        "into batches in shared memory, so the inference loop shares no GIL "
                        "with decoding (the fastest with a GPU; BENCHMARKS.md); local: one "
                        "thread, one batch at a time; spark: one Spark task per shard, the "
                        "model built once per Python worker",
                        choices=["auto", "local", "thread", "process", "spark"])
    spark_master: str | None = opt(None, SPARK_MASTER_HELP, metavar="URL")
    spark_conf: tuple[str, ...] = spark_conf_field()

    def checks(self) -> list[tuple[bool, str]]:
        r = self.require
        return super().checks() + [
            spark_conf_check(self),
            r("executor", self.executor in (*EXECUTORS, "spark", "auto"),
              f"must be one of {sorted((*EXECUTORS, 'spark', 'auto'))}"),
            r("workers", self.workers >= 1, "must be at least 1"),
            r("batch_size", self.batch_size is None or self.batch_size >= 1, "must be >= 1"),
            r("input_size", self.input_size is None or self.input_size >= 32, "must be >= 32"),
            r("mixed_precision", self.mixed_precision in ("auto", "on", "off"),
              "must be auto, on or off"),
        ]

    def spec(self) -> ModelSpec:
        return ModelSpec(self.model, self.weights, self.input_size, self.pooling,
                         self.preprocessing, self.embedding_tensor)


CONFIG = ExtractConfig  # the stage's settings; the command line is built from its fields


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


def resolve_executor(cfg: ExtractConfig, embedder: Embedder) -> ExtractConfig:
    """`auto`: with a GPU, decoding processes writing into shared memory, so that the
    inference loop has its Python to itself; without one, threads (the model is the
    limit, and threads cost nothing to start). BENCHMARKS.md has the figures."""
    if cfg.executor != "auto":
        return cfg
    executor = "process" if embedder.on_gpu else "thread"
    logger.info("extract: decoding in %d %s", cfg.workers,
                "processes" if executor == "process" else "threads")
    return dataclasses.replace(cfg, executor=executor)


def _preprocess_fingerprint(run: StageRun) -> str:
    fp = run.frozen_fingerprint(PREPROCESS)
    if fp is None or not preprocess_complete(run.store):
        raise WorkflowError(f"the preprocess stage is not complete in {run.store.url}; run "
                            "scripts/01_preprocess.py first (`python -m workflow status` "
                            "shows where it stands)")
    return fp


def run(cfg: ExtractConfig) -> ExtractResult:
    """Run (or resume) the extract stage."""
    with StageRun(STAGE, cfg) as run:
        parent = _preprocess_fingerprint(run)
        images = {u: m for u, m in run.store.markers(PREPROCESS).items() if is_shard(u)}
        done = run.store.markers(STAGE)
        pending = [u for u in sorted(images) if u not in done]
        started = any(is_shard(u) for u in done)
        with Timeit("loading the model", logging.INFO):
            embedder = load_model(run.store, cfg, bool(pending), started)
        fp = run.freeze(fingerprinted(cfg, embedder), parent)
        if not started:
            record(run.store, embedder)
        logger.info("extract: %d shards, %d done, %d to do; model %s (%s, %s), input %d px, "
                    "dim %d", len(images), len(images) - len(pending), len(pending),
                    embedder.info["model"], embedder.info.get("runtime", embedder.info["kind"]),
                    embedder.info["precision"], embedder.input_size, embedder.dim)
        cfg = resolve_executor(run.cfg, embedder)
        runner = ShardRunner(cfg, run.store, embedder, fp, skip_ids(run.store))
        complete = True
        if pending:
            total = sum(images[u].extra["stats"]["ok"] for u in pending)
            try:
                with tqdm(total=total, unit="img", desc="extract", disable=not cfg.progress,
                          mininterval=1.0, smoothing=0.1, dynamic_ncols=True) as bar:
                    if cfg.executor == "spark":
                        _run_spark(run, runner, pending, bar)
                    else:
                        _run_here(run, runner, pending, images, bar)
            except DeadlineReached:
                run.stopped_early()
                complete = False
    markers = {u: m for u, m in run.store.markers(STAGE).items() if is_shard(u)}
    return ExtractResult(complete and len(markers) == len(images), len(images), len(markers),
                         sum(m.extra["n"] for m in markers.values()), embedder.dim,
                         run.seconds, runner.timings, run.store.url, runner.shards)


def _run_spark(run: StageRun, runner: ShardRunner, pending: list[str], bar) -> None:
    info = runner.embedder.info
    # the executors run the model as the driver resolved it (the probe checks they can)
    runtime = info.get("runtime", "keras" if info["kind"] == "keras" else runner.cfg.runtime)
    cfg = dataclasses.replace(runner.cfg, runtime=runtime, precision=info["precision"])
    needs = SPARK_NEEDS + (("openvino",) if runtime == "openvino" else ()) + \
        (("keras_hub",) if cfg.model in HUB_MODELS else ()) + \
        (("nncf",) if cfg.precision == "int8" else ())  # to calibrate where not cached
    task = ShardTask(cfg, runner.fp, sorted(runner.skip), info["weights_sha256"],
                     info.get("calibration"))
    for _, (n, timings) in map_shards("spark", task, pending, spark_master=cfg.spark_master,
                                      stage=STAGE, deadline=run.deadline,
                                      reachable={"store": run.store.display("run.json")},
                                      needs=needs, spark_conf=cfg.spark_conf):
        run.lease.check()
        bar.update(n)
        for k, v in timings.items():
            runner.timings[k] += v


def _run_here(run: StageRun, runner: ShardRunner, pending: list[str], images: dict,
              bar) -> None:
    """Shard after shard; the next shard is fetched and read, and the last one written
    and committed, while this one is computed."""
    shard_times: list[float] = []
    with Timeit(f"preparing the model for batches of {runner.bs}", logging.INFO):
        runner.embedder.warm_up(runner.bs)
    with runner.pipeline() as decoding, \
            concurrent.futures.ThreadPoolExecutor(1, "extract-read") as reader, \
            concurrent.futures.ThreadPoolExecutor(1, "extract-write") as writer:
        try:
            ahead = reader.submit(runner.load, pending[0], images[pending[0]])
            for i, unit in enumerate(pending):
                try:
                    run.check_deadline(np.mean(shard_times) if shard_times else 0.0)
                except DeadlineReached:
                    ahead.cancel()
                    raise
                t = time.monotonic()
                loaded = ahead.result()
                if i + 1 < len(pending):
                    ahead = reader.submit(runner.load, pending[i + 1], images[pending[i + 1]])
                runner.shard(unit, images[unit], decoding, bar, loaded, time.monotonic() - t,
                             writer=writer, lease=run.lease)
                run.lease.check()
                shard_times.append(time.monotonic() - t)
        finally:
            runner.written()  # a shard computed is a shard saved, whatever stopped us


class ShardRunner:
    """Turns image shards into feature shards with one model."""

    def __init__(self, cfg: ExtractConfig, store: Store, embedder: Embedder, fp: str,
                 skip: set[int]):
        self.cfg, self.store, self.embedder, self.fp, self.skip = cfg, store, embedder, fp, skip
        self.bs = cfg.batch_size or (256 if embedder.on_gpu else 32)
        self.timings = {"read": 0.0, "decode wait": 0.0, "infer": 0.0, "write": 0.0}
        self.shards: list[dict] = []
        self.work = store.scratch / STAGE
        self._writing: concurrent.futures.Future | None = None

    def pipeline(self, executor: str | None = None) -> DecodePipeline:
        return DecodePipeline(executor or self.cfg.executor, self.cfg.workers,
                              self.embedder.input_size, self.bs)

    def load(self, unit: str, marker) -> tuple[np.ndarray, list[bytes]]:
        """(ids, stored JPEGs) of the images of an image shard that get a feature."""
        local = self.store.fetch(marker, self.work / "in" / f"{unit}.h5")
        try:
            return read_for_model(local, self.skip)
        finally:
            local.unlink()

    def shard(self, unit: str, marker, decoding: DecodePipeline, bar, loaded=None,
              read_wait=None, writer: concurrent.futures.Executor | None = None,
              lease: Lease | None = None) -> None:
        """One shard; `loaded` is what `load` returned where it was read ahead, and
        `read_wait` the time spent waiting for it. With a `writer`, the feature shard is
        written and committed there (after the lease is checked), one at a time, while
        the next shard is computed."""
        t = {"read": 0.0, "decode wait": 0.0, "infer": 0.0, "write": 0.0}
        t0 = time.monotonic()
        ids, jpegs = loaded if loaded is not None else self.load(unit, marker)
        t["read"] = read_wait if read_wait is not None else time.monotonic() - t0
        feats = self.features(jpegs, decoding, unit, t, bar)
        if writer is None:
            self.write(unit, ids, feats, t)
            return
        t1 = time.monotonic()
        self.written()
        t["write"] = time.monotonic() - t1  # waiting for the previous shard's write
        self._writing = writer.submit(self.write, unit, ids, feats, t, lease, True)

    def features(self, jpegs: list[bytes], decoding: DecodePipeline, unit: str, t: dict,
                 bar) -> np.ndarray:
        """L2-normalised float16 features of the JPEGs, with at most one batch being
        computed while the next is handed over."""
        feats = np.zeros((len(jpegs), self.embedder.dim), np.float16)
        bs = self.bs
        inflight: list = []

        def finish():
            k, n, result, release = inflight.pop(0)
            t1 = time.monotonic()
            feats[k * bs:k * bs + n] = l2_normalize(result())
            release()  # the model has consumed the batch: its array may be reused
            t["infer"] += time.monotonic() - t1
            if bar is not None:
                bar.update(n)
        for k, batch, release in decoding.batches(jpegs, unit, t):
            t1 = time.monotonic()
            inflight.append((k, len(batch), self.embedder.launch(batch), release))
            t["infer"] += time.monotonic() - t1
            if len(inflight) > 1:
                finish()
        while inflight:
            finish()
        return feats

    def written(self) -> None:
        """Wait for the shard being written, if any; its error is raised here."""
        if self._writing is not None:
            fut, self._writing = self._writing, None
            fut.result()

    def write(self, unit: str, ids: np.ndarray, feats: np.ndarray, t: dict,
              lease: Lease | None = None, background: bool = False) -> None:
        """Write and commit a feature shard. `t` gets the time the computing loop spent
        on it: all of it inline, none of it in the background."""
        t1 = time.monotonic()
        out = self.work / f"{unit}.h5"
        write_feature_shard(str(out), ids, feats, self.fp, self.embedder.info)
        if lease is not None:
            lease.check()
        self.store.commit(out, f"{FEATURES}/{unit}.h5", STAGE, unit, self.fp,
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


class ShardTask:
    """One shard as a task of the spark executor: `ShardRunner.shard` with its own store
    handle and scratch, the model built once per Python worker, and decoding in
    threads."""

    def __init__(self, cfg: ExtractConfig, fp: str, skip: list[int], weights_sha256: str,
                 calibration: dict | None = None):
        self.cfg, self.fp, self.skip, self.weights = cfg, fp, skip, weights_sha256
        self.calibration = calibration  # INT8: what the driver's model was calibrated on

    def __call__(self, unit: str) -> tuple[int, dict]:
        return run_in_scratch(STAGE, lambda scratch: self._run(unit, scratch))

    def _run(self, unit: str, scratch: str) -> tuple[int, dict]:
        cfg = self.cfg
        store = task_store(cfg, scratch)
        key = ("embedder", json.dumps(dataclasses.asdict(cfg.spec())), cfg.mixed_precision,
               cfg.xla, cfg.runtime, cfg.precision)
        embedder = worker_cached(key, lambda: make_embedder(
            cfg.spec(), cfg.mixed_precision, cfg.xla, cfg.runtime, cfg.precision,
            store_sampler(store, self.calibration), calibration=self.calibration))
        if embedder.info["weights_sha256"] != self.weights:
            raise WorkflowError(f"the model loaded on this Spark executor has other weights "
                                f"than the driver's ({cfg.model}, {cfg.weights}): give a "
                                "weights file every executor can read")
        store = task_store(cfg, scratch)
        runner = ShardRunner(dataclasses.replace(cfg, workers=task_cpus()), store, embedder,
                             self.fp, set(self.skip))
        with runner.pipeline("thread") as decoding:
            runner.shard(unit, store.marker(PREPROCESS, unit), decoding, None)
        n = store.marker(STAGE, unit).extra["n"]
        return n, runner.timings
