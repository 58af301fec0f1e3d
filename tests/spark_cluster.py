"""A real Spark standalone cluster for the tests: a master and workers on 127.0.0.1,
started from the installed `pyspark` package with its `spark-class` launcher.

Each daemon runs in its own process group, so `kill_worker` takes the worker's executor
JVM and its Python workers with it, as a machine that dies does. The daemons get an
environment without PYTHONPATH: an executor's Python finds the package only if the
driver ships it.
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import time
import urllib.request
from pathlib import Path

from object_store import free_port, wait_for_port


def spark_home() -> Path:
    import pyspark
    return Path(pyspark.__file__).resolve().parent


class StandaloneCluster:
    """`with StandaloneCluster(folder, workers=2) as c:` ... `c.master` is its URL."""

    def __init__(self, folder: Path, workers: int = 2, cores: int = 1, memory: str = "1g"):
        self.folder = Path(folder)
        self.n, self.cores, self.memory = workers, cores, memory
        self.port, self.ui_port = free_port(), free_port()
        self.master_proc: subprocess.Popen | None = None
        self.workers: list[subprocess.Popen | None] = []

    @property
    def master(self) -> str:
        return f"spark://127.0.0.1:{self.port}"

    def __enter__(self) -> StandaloneCluster:
        self.folder.mkdir(parents=True, exist_ok=True)
        try:
            self.master_proc = self._daemon(
                "master", "org.apache.spark.deploy.master.Master", "--host", "127.0.0.1",
                "--port", str(self.port), "--webui-port", str(self.ui_port))
            wait_for_port(self.port, timeout=60, proc=self.master_proc)
            wait_for_port(self.ui_port, timeout=60, proc=self.master_proc)
            self.workers = [None] * self.n
            for i in range(self.n):
                self.start_worker(i, wait=False)
            self.wait_for_workers(self.n)
        except BaseException:
            self.__exit__()
            raise
        return self

    def __exit__(self, *exc) -> None:
        for p in [*self.workers, self.master_proc]:
            if p is not None and p.poll() is None:
                _kill_group(p, signal.SIGTERM)
        for p in [*self.workers, self.master_proc]:
            if p is not None:
                try:
                    p.wait(20)
                except subprocess.TimeoutExpired:
                    _kill_group(p, signal.SIGKILL)
                    p.wait()

    def start_worker(self, i: int, wait: bool = True, path: str | None = None) -> None:
        """Start worker `i`; `path` first on its PATH decides the `python3` its executors
        run (Spark's default executor Python)."""
        work = self.folder / f"worker-{i}"
        env = {"SPARK_LOCAL_DIRS": str(work / "local")}
        if path:
            env["PATH"] = f"{path}{os.pathsep}{os.environ['PATH']}"
        self.workers[i] = self._daemon(
            f"worker-{i}", "org.apache.spark.deploy.worker.Worker", "--host", "127.0.0.1",
            "--cores", str(self.cores), "--memory", self.memory, "--webui-port", "0",
            "--work-dir", str(work), self.master, env=env)
        if wait:
            self.wait_for_workers(sum(p is not None and p.poll() is None
                                      for p in self.workers))

    def kill_worker(self, i: int, timeout: float = 60) -> None:
        """SIGKILL worker `i`, its executors and their Python workers; return once the
        master has seen it go."""
        _kill_group(self.workers[i], signal.SIGKILL)
        self.workers[i].wait()
        deadline = time.monotonic() + timeout
        alive = sum(p is not None and p.poll() is None for p in self.workers)
        while time.monotonic() < deadline:
            try:
                workers = self.state().get("workers", [])
            except OSError:
                workers = []
            if sum(w["state"] == "ALIVE" for w in workers) <= alive:
                return
            time.sleep(0.2)

    def busy_worker(self) -> int | None:
        """A live worker whose executor (of the newest application) runs a task now,
        read from the executor's own log: more "Running task" lines than finished ones."""
        logs = [(app.name, i, app) for i, p in enumerate(self.workers)
                if p is not None and p.poll() is None
                for app in (self.folder / f"worker-{i}").glob("app-*")]
        if not logs:
            return None
        newest = max(name for name, _, _ in logs)
        for name, i, app in logs:
            if name != newest:
                continue
            text = "".join(f.read_text(errors="replace") for f in app.glob("*/stderr"))
            if text.count("Executor: Running task") > text.count("Executor: Finished task"):
                return i
        return None

    def state(self) -> dict:
        with urllib.request.urlopen(f"http://127.0.0.1:{self.ui_port}/json/", timeout=5) as r:
            return json.load(r)

    def wait_for_workers(self, n: int, timeout: float = 90) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                workers = self.state().get("workers", [])
            except OSError:  # the web UI is up before its /json/ page answers
                workers = []
            if sum(w["state"] == "ALIVE" for w in workers) >= n:
                return
            time.sleep(0.3)
        log = (self.folder / "master.log").read_text(errors="replace")[-4000:]
        raise TimeoutError(f"{n} Spark workers did not register with {self.master} in "
                           f"{timeout:.0f} s; the master's log:\n{log}")

    def _daemon(self, name: str, cls: str, *args: str,
                env: dict[str, str] | None = None) -> subprocess.Popen:
        base = {k: v for k, v in os.environ.items()
                if k not in ("PYTHONPATH", "PYSPARK_PYTHON", "SPARK_HOME")}
        base.update(SPARK_HOME=str(spark_home()), SPARK_LOCAL_IP="127.0.0.1",
                    SPARK_LOG_DIR=str(self.folder), SPARK_NO_DAEMONIZE="1",
                    SPARK_LOCAL_DIRS=str(self.folder / "local"))
        base.update(env or {})
        env = base
        with open(self.folder / f"{name}.log", "ab") as log:
            return subprocess.Popen([str(spark_home() / "bin" / "spark-class"), cls, *args],
                                    stdout=log, stderr=subprocess.STDOUT, env=env,
                                    start_new_session=True)


def _kill_group(proc: subprocess.Popen, sig: int) -> None:
    try:
        os.killpg(proc.pid, sig)
    except ProcessLookupError:
        pass
