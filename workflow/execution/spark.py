"""The `spark` executor: one Spark task per shard, for preprocess, extract and add.

The driver (the stage's `run`) keeps the lease, the plan and the progress bar; each shard
is one Spark job of one task that runs the stage's own shard task (the same function the
local executors run) and commits its output through the store. A commit is atomic and
its bytes depend only on the inputs, so Spark's task retries and speculative copies are
safe: a second copy of a shard writes the same bytes under the same name.

PySpark is optional (`pip install -r requirements-spark.txt`) and imported only here. An
active Spark session is reused (a notebook's, or `spark-submit`'s); a session the
workflow created is stopped at the end.
"""
from __future__ import annotations

import concurrent.futures as cf
import functools
import logging
import os
import shutil
import tempfile
from collections.abc import Callable, Iterable, Iterator
from typing import Any

from ..errors import ConfigError, WorkflowError
from .executors import bounded_map

logger = logging.getLogger(__name__)

SPARK_MASTER_HELP = (
    "with --executor spark: local[N], spark://HOST:7077, yarn or k8s://...; default: the "
    "active Spark session, else Spark's default (spark-submit --master). The store and the "
    "sources must be reachable from every executor")

APP_NAME = "image-index-workflow"
_WORKER_CACHE: dict = {}


def worker_cached(key, build: Callable[[], Any]):
    """`build()` once per Python worker process (a model, a trained index, a plan)."""
    if key not in _WORKER_CACHE:
        _WORKER_CACHE[key] = build()
    return _WORKER_CACHE[key]


def task_cpus() -> int:
    """CPUs of the running Spark task (spark.task.cpus), 1 outside Spark."""
    try:
        from pyspark import TaskContext
        ctx = TaskContext.get()
        return max(1, int(ctx.cpus())) if ctx is not None else 1
    except Exception:  # noqa: BLE001 - no PySpark, or an old one without cpus()
        return 1


def task_scratch(stage: str) -> str:
    """A fresh local folder for one task attempt (two attempts may share a machine)."""
    base = os.environ.get("WORKFLOW_SCRATCH") or tempfile.gettempdir()
    os.makedirs(base, exist_ok=True)
    return tempfile.mkdtemp(prefix=f"{stage}-task-", dir=base)


class SparkShards:
    """Runs a picklable `task(unit)` per shard on Spark, up to the cluster's default
    parallelism at once, yielding `(unit, result)` as shards finish.

    Args:
        master: `local[N]`, `spark://host:7077`, `yarn`, `k8s://...`; None uses the active
            session, or Spark's own default (`spark-submit --master`, `local[*]`).
        stage: the stage name, for job descriptions in the Spark UI.
    """

    def __init__(self, master: str | None, stage: str):
        self.master, self.stage = master, stage
        self.spark = None
        self.created = False

    def __enter__(self) -> SparkShards:
        try:
            from pyspark import SparkContext
            from pyspark.sql import SparkSession
        except ImportError:
            raise ConfigError("--executor spark needs PySpark: pip install -r "
                              "requirements-spark.txt (and Java 17 for local mode)") from None
        active = SparkSession.getActiveSession()
        if active is None and SparkContext._active_spark_context is not None:
            # a session of this process that is not this thread's active one (it is per
            # thread, and loading some native libraries, OpenVINO's, loses it): still
            # the caller's, to use and leave running
            active = SparkSession.builder.getOrCreate()
        if active is not None:
            self.spark = active
            if self.master and active.sparkContext.master != self.master:
                logger.warning("using the active Spark session (master %s), not --spark-master "
                               "%s", active.sparkContext.master, self.master)
        else:
            builder = SparkSession.builder.appName(APP_NAME)
            if self.master:
                builder = builder.master(self.master)
            self.spark = builder.getOrCreate()
            self.created = True
        self.sc = self.spark.sparkContext
        logger.info("%s on Spark: master %s, %d task slots%s", self.stage, self.sc.master,
                    self.sc.defaultParallelism, "" if self.created else " (active session)")
        return self

    def __exit__(self, *exc) -> None:
        if self.created:
            self.spark.stop()

    @property
    def is_local(self) -> bool:
        return self.sc.master.startswith("local")

    def check_reachable(self, paths: dict[str, str]) -> None:
        """Fail clearly unless every executor sees each of `paths` (name -> path or URL)."""
        n = max(1, self.sc.defaultParallelism)
        items = sorted(paths.items())
        rows = self.sc.parallelize(range(n), n).flatMap(lambda _: _probe(items)).collect()
        missing = sorted({(host, name, url) for host, name, url, ok in rows if not ok})
        if missing:
            where = "; ".join(f"{name} {url} on host {host}" for host, name, url in missing)
            raise WorkflowError(
                f"Spark executors cannot see: {where}. Every executor must reach the store "
                "and the sources: use a path mounted on every node (NFS, /dbfs/... on "
                "Databricks) or an fsspec URL such as gs://, s3:// or hdfs://"
                + ("" if self.is_local else " (a local path works only with a local[N] "
                   "master)") + ".")

    def map(self, task: Callable, units: Iterable) -> Iterator[tuple[Any, Any]]:
        """(unit, task(unit)) as each shard's Spark job finishes. Closing the iterator
        early submits no more shards and waits for those in flight."""
        slots = max(1, self.sc.defaultParallelism)
        with cf.ThreadPoolExecutor(slots, thread_name_prefix="spark-job") as pool:
            try:
                yield from bounded_map(pool, functools.partial(self._job, task), list(units),
                                       slots)
            except KeyboardInterrupt:
                self.sc.cancelAllJobs()
                raise

    def _job(self, task: Callable, unit):
        self.sc.setLocalProperty("spark.job.description", f"{self.stage} {unit}")
        try:
            return self.sc.parallelize([unit], 1).map(task).collect()[0]
        except Exception as e:  # noqa: BLE001 - Py4J errors carry the task's traceback
            last = [ln for ln in str(e).splitlines() if ln.strip()]
            cause = next((ln for ln in reversed(last) if "Error" in ln), last[-1] if last
                         else repr(e))
            raise WorkflowError(f"{self.stage} {unit} failed on Spark after its retries: "
                                f"{cause.strip()[:500]}") from None


def _probe(items: list[tuple[str, str]]) -> list[tuple[str, str, str, bool]]:
    import socket

    import fsspec
    out = []
    for name, url in items:
        try:
            fs, path = fsspec.core.url_to_fs(url)
            ok = bool(fs.exists(path))
        except Exception:  # noqa: BLE001 - unreachable for any reason
            ok = False
        out.append((socket.gethostname(), name, url, ok))
    return out


def run_in_scratch(stage: str, fn: Callable[[str], Any]):
    """fn(scratch) in a fresh task scratch folder, removed afterwards."""
    scratch = task_scratch(stage)
    try:
        return fn(scratch)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
