"""The `spark` executor: one Spark task per shard, for preprocess, extract and add.

The driver (the stage's `run`) keeps the lease, the plan and the progress bar; each shard
is one Spark job of one task that runs the stage's own shard task (the same function the
local executors run) and commits its output through the store. A commit is atomic and
its bytes depend only on the inputs, so Spark's task retries and speculative copies are
safe: a second copy of a shard writes the same bytes under the same name.

PySpark is optional (`pip install -r requirements-spark.txt`) and imported only here. An
active Spark session is reused (a notebook's, or `spark-submit`'s); a session the
workflow created is stopped at the end.

Before any shard (`prepare`), every executor's Python is probed (`probe`, sent by value:
it runs where nothing of the workflow is installed): with a local master the workers run
the driver's own interpreter unless PYSPARK_PYTHON or spark.pyspark.python says
otherwise; when an executor cannot import this version of the package, the driver's copy
is shipped to the executors as a zip (`SparkContext.addPyFile`); what is still missing
there (Faiss, OpenCV, TensorFlow, s3fs, a store it cannot see) is named, with the
setting to change, before any work.
"""
from __future__ import annotations

import concurrent.futures as cf
import functools
import hashlib
import io
import logging
import os
import re
import shutil
import sys
import tempfile
import time
import zipfile
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

from ..errors import ConfigError, WorkflowError
from ..options import opt
from ..utils import user_cache_dir
from . import probe
from .executors import bounded_map

logger = logging.getLogger(__name__)

SPARK_MASTER_HELP = (
    "with --executor spark: local[N], spark://HOST:7077, yarn or k8s://...; default: the "
    "active Spark session, else Spark's default (spark-submit --master). The store and the "
    "sources must be reachable from every executor")

SPARK_CONF_HELP = (
    "with --executor spark: a Spark setting KEY=VALUE for the session the stage creates "
    "(repeat it), e.g. spark.archives=env.tar.gz#environment and "
    "spark.pyspark.python=./environment/bin/python to ship a packed environment to "
    "executors that lack the packages; not used when a Spark session is already active")
PACKED_ENV_REMEDY = (
    "or ship a packed environment: `venv-pack -o env.tar.gz` (or `conda-pack`) in a "
    "Python that has them, then --spark-conf spark.archives=env.tar.gz#environment "
    "--spark-conf spark.pyspark.python=./environment/bin/python (with spark-submit: "
    "--archives env.tar.gz#environment --conf "
    "spark.pyspark.python=./environment/bin/python)")

APP_NAME = "image-index-workflow"
# what `pip install` is called for the modules a stage needs, for the error message
PIP_NAMES = {"cv2": "opencv-python-headless", "faiss": "faiss-cpu", "PIL": "pillow",
             "workflow": "image-index-workflow", "yaml": "pyyaml"}
# the driver's variables a session it creates on a cluster passes to the executors: the
# object store's endpoint and credentials, fsspec's own settings, the scratch folder
FORWARDED_ENV = ("AWS_", "FSSPEC_", "GOOGLE_APPLICATION_CREDENTIALS", "WORKFLOW_SCRATCH")
# the probe: rounds at most, and how long each probe task lasts on a cluster, so that the
# tasks of a round spread over every executor's slots rather than one executor's
PROBE_ROUNDS = 3
PROBE_TASK_SECONDS = 0.25
STARTED = 30.0  # seconds after which a session's executors count as registered
MISSING_MODULE = re.compile(r"ModuleNotFoundError: No module named '([\w.]+)'")
_WORKER_CACHE: dict = {}


def spark_conf_field():
    """The --spark-conf option of a stage's config (KEY=VALUE items, repeatable)."""
    return opt((), SPARK_CONF_HELP, action="append", metavar="KEY=VALUE", to_config=tuple)


def spark_conf_check(cfg) -> tuple[bool, str]:
    """The config check of --spark-conf: every item KEY=VALUE with a spark.* key."""
    ok = all("=" in i and i.strip().startswith("spark.") for i in cfg.spark_conf)
    return cfg.require("spark_conf", ok, "takes KEY=VALUE with a spark.* key, e.g. "
                       "spark.executor.memory=4g")


def parse_spark_conf(items: Iterable[str]) -> dict[str, str]:
    """{key: value} from --spark-conf's KEY=VALUE items; a clear error for anything else."""
    conf = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key.strip().startswith("spark."):
            raise ConfigError(f"--spark-conf {item!r} is not a Spark setting: give "
                              "KEY=VALUE with a key such as spark.executor.memory")
        conf[key.strip()] = value
    return conf


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
        conf: `KEY=VALUE` Spark settings for a session it creates (--spark-conf).
    """

    def __init__(self, master: str | None, stage: str, conf: Iterable[str] = ()):
        self.master, self.stage = master, stage
        self.conf = parse_spark_conf(conf)
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
            unused = sorted(k for k, v in self.conf.items() if active.conf.get(k, None) != v)
            if unused:
                logger.warning("--spark-conf %s not used: a Spark session is active",
                               ", ".join(unused))
        else:
            self.spark = self._builder(SparkSession.builder).getOrCreate()
            self.created = True
        self.sc = self.spark.sparkContext
        self.python = self._worker_python()
        logger.info("%s on Spark: master %s, %d task slots%s", self.stage, self.sc.master,
                    self.sc.defaultParallelism, "" if self.created else " (active session)")
        return self

    def _builder(self, builder):
        from pyspark import SparkConf
        builder = builder.appName(APP_NAME)
        # the stage shows progress per shard; Spark's own bar would interleave with it
        builder = builder.config("spark.ui.showConsoleProgress", "false")
        if self.master:
            builder = builder.master(self.master)
        for k, v in self.conf.items():
            builder = builder.config(k, v)
        # spark-submit's --master, when --spark-master is left out
        master = self.master or SparkConf().get("spark.master", "local[*]")
        if not master.startswith("local"):
            for k, v in sorted(os.environ.items()):
                if k.startswith(FORWARDED_ENV):
                    builder = builder.config(f"spark.executorEnv.{k}", v)
        return builder

    def __exit__(self, *exc) -> None:
        if self.created:
            self.spark.stop()

    @property
    def is_local(self) -> bool:
        return self.sc.master.startswith("local")

    def _worker_python(self) -> str:
        """The Python the executors run, and where that was decided: with a local
        master, the driver's own interpreter unless the user chose one (a venv's Python
        called by its path must not get the first `python3` on PATH)."""
        chosen = os.environ.get("PYSPARK_PYTHON") or self.sc.getConf().get(
            "spark.pyspark.python")
        if chosen:
            self.sc.pythonExec = chosen  # spark.pyspark.python too, outside spark-submit
        elif self.is_local:
            self.sc.pythonExec = sys.executable
        return self.sc.pythonExec

    def prepare(self, needs: tuple[str, ...] = (), task_module: str | None = None,
                paths: dict[str, str] | None = None) -> None:
        """Fail clearly, before any shard, unless every executor's Python has the
        modules `needs` (top-level names), this version of the package (shipped from
        here when it has not) and imports `task_module`, and sees each of `paths`
        (name -> path or URL)."""
        from .. import __version__
        args = (["fsspec", *needs], task_module, sorted((paths or {}).items()))
        rows = self._probe(*args)
        if any(r["workflow"] != __version__ for r in rows):
            self.sc.addPyFile(str(package_zip()))
            logger.info("%s: the package shipped to the Spark executors (%s could not "
                        "import workflow %s)", self.stage, _hosts(
                            r for r in rows if r["workflow"] != __version__), __version__)
            rows = self._probe(*args)
        for r in rows:
            if r["workflow"] != __version__:
                r["missing"].insert(0, f"workflow {__version__} (it imports "
                                       f"{r['workflow'] or 'none'})")
        self._raise_missing([r for r in rows if r["missing"]])
        self._raise_unreachable(rows)

    def _probe(self, modules, task_module, paths) -> list[dict]:
        """Every executor's `probe.report`: rounds of short tasks, two per task slot,
        until as many executors (host and working folder) answered as are registered."""
        import fsspec.config
        from pyspark import cloudpickle
        cloudpickle.register_pickle_by_value(probe)  # executors may lack the package
        protocols = {p for _, url in paths if (p := url.split("://")[0]) != url}
        conf = {p: o for p, o in fsspec.config.conf.items() if p in protocols}
        fn = functools.partial(probe.report, modules, task_module, paths, conf,
                               0.0 if self.is_local else PROBE_TASK_SECONDS)
        expected = self._executors()
        rows: list[dict] = []
        for _ in range(PROBE_ROUNDS):
            n = 2 * max(1, self.sc.defaultParallelism)
            try:
                rows += self.sc.parallelize(range(n), n).mapPartitions(fn).collect()
            except Exception as e:  # noqa: BLE001 - Py4J: the executor's Python did not run
                raise WorkflowError(
                    f"the Spark executors could not run Python {self.python!r}: "
                    f"{_cause(e)}. They need Python {sys.version_info[0]}."
                    f"{sys.version_info[1]} (the driver's) with requirements-spark.txt "
                    f"installed: set PYSPARK_PYTHON or spark.pyspark.python to it, "
                    f"{PACKED_ENV_REMEDY}") from None
            if len({(r["host"], r["where"]) for r in rows}) >= expected:
                break
        return rows

    def _executors(self, timeout: float = 60.0, settle: float = 2.0) -> int:
        """The number of executors, once it has stopped growing (a cluster's executors
        register a few seconds after the application); 1 for a local master."""
        if self.is_local:
            return 1
        status = self.sc._jsc.sc().getExecutorMemoryStatus  # the driver's block manager too
        t0 = last_change = time.monotonic()
        n = status().size() - 1
        if n > 0 and time.time() - self.sc.startTime / 1000 > STARTED:
            return n  # a session that has been running a while: its executors are up
        while time.monotonic() - t0 < timeout:
            time.sleep(0.2)
            now = status().size() - 1
            if now != n:
                n, last_change = now, time.monotonic()
            elif n > 0 and time.monotonic() - last_change >= settle:
                break
        if n == 0:
            logger.warning("%s: no Spark executor has registered with %s after %.0f s (no "
                           "free worker?); the stage waits for one", self.stage,
                           self.sc.master, timeout)
        return max(1, n)

    def _raise_missing(self, rows: list[dict]) -> None:
        if not rows:
            return
        where = "; ".join(
            f"host {r['host']} (Python {r['python']} {r['python_version']}): "
            + ", ".join(_pip_hint(m) for m in r["missing"]) for r in _unique(rows))
        raise WorkflowError(f"{self.stage}: the Spark executors' Python lacks what the stage "
                            f"needs: {where}. {self._remedy()}")

    def _remedy(self) -> str:
        return ("Install it into that Python on every node (pip install -r "
                "requirements-spark.txt, and requirements-s3.txt for s3://), "
                f"{PACKED_ENV_REMEDY}; or set PYSPARK_PYTHON (now {self.python!r}) to a "
                "Python that has them.")

    def _raise_unreachable(self, rows: list[dict]) -> None:
        missing = sorted({(r["host"], *u) for r in rows for u in r["unreachable"]})
        if missing:
            where = "; ".join(f"{name} {url} on host {host} ({why})"
                              for host, name, url, why in missing)
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
            cause = _cause(e)
            if m := MISSING_MODULE.search(cause):  # an executor that joined after the probe
                raise WorkflowError(
                    f"{self.stage} {unit}: a Spark executor's Python lacks "
                    f"{_pip_hint(m[1].split('.')[0])}. {self._remedy()}") from None
            raise WorkflowError(f"{self.stage} {unit} failed on Spark after its retries: "
                                f"{cause}") from None


def package_zip() -> Path:
    """The driver's `workflow` package as a zip for `addPyFile`, named by a hash of its
    files (a changed package is a new name) and kept in the user cache; written under a
    temporary name and renamed, so that a killed driver leaves no half zip."""
    root = Path(__file__).resolve().parents[1]
    files = sorted(p for p in root.rglob("*") if p.is_file() and "__pycache__" not in
                   p.parts and p.suffix not in (".pyc", ".pyo"))
    h = hashlib.sha256()
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as z:
        for p in files:
            rel = p.relative_to(root.parent).as_posix()
            data = p.read_bytes()
            h.update(rel.encode() + b"\0" + data)
            z.writestr(zipfile.ZipInfo(rel, (2020, 1, 1, 0, 0, 0)), data,
                       zipfile.ZIP_DEFLATED)
    out = user_cache_dir() / "spark" / f"workflow-{h.hexdigest()[:16]}.zip"
    if not out.exists():
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp = out.with_name(f"{out.name}.tmp-{os.getpid()}")
        tmp.write_bytes(buf.getvalue())
        os.replace(tmp, out)
    return out


def _cause(e: Exception) -> str:
    """The line of a Py4J error that names the cause (its traceback's last error)."""
    last = [ln for ln in str(e).splitlines() if ln.strip()]
    cause = next((ln for ln in reversed(last) if "Error" in ln), last[-1] if last
                 else repr(e))
    return cause.strip()[:500]


def _pip_hint(module: str) -> str:
    top = module.split(" ")[0].split(".")[0]
    name = PIP_NAMES.get(top, top)
    return module if " " in module else f"{module} (pip install {name})"


def _unique(rows: list[dict]) -> list[dict]:
    """One row per (host, python, what is missing): a host has several slots."""
    seen, out = set(), []
    for r in rows:
        key = (r["host"], r["python"], tuple(r["missing"]))
        if key not in seen:
            seen.add(key)
            out.append(r)
    return out


def _hosts(rows) -> str:
    return ", ".join(sorted({r["host"] for r in rows}))


def run_in_scratch(stage: str, fn: Callable[[str], Any]):
    """fn(scratch) in a fresh task scratch folder, removed afterwards."""
    scratch = task_scratch(stage)
    try:
        return fn(scratch)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
