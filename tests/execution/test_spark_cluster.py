"""The spark executor on a real standalone cluster (a master and two workers on
127.0.0.1, one core each): the package reaches the executors by itself, outputs equal
the process executor's byte for byte, a worker killed mid-stage costs a retry and a
driver killed mid-stage resumes when its command runs again."""
import os
import re
import shutil
import signal
import site
import subprocess
import sys
import time
from pathlib import Path

import pytest

from workflow.options import EXIT_ERROR
from workflow.stages import add, extract, preprocess, train

from conftest import ROOT, leftovers, write_corpus

# each test bounded; the first one also starts the cluster (about 10 s)
pytestmark = [pytest.mark.slow, pytest.mark.timeout(360)]
EXTRACT = ["--model", "efficientnet-b0", "--weights", "none", "--input-size", "32",
           "--batch-size", "4"]
SHARDS = 6


@pytest.fixture(scope="module")
def cluster(spark_cluster):
    return spark_cluster


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    src = tmp_path_factory.mktemp("corpus")
    write_corpus(src, 4 * SHARDS, size=(48, 40))
    return src


@pytest.fixture(scope="module")
def reference(tmp_path_factory, corpus) -> Path:
    """The whole pipeline with the process executor."""
    store = str(tmp_path_factory.mktemp("ref") / "store")
    preprocess.run(preprocess.PreprocessConfig(store=store, sources=(str(corpus),),
                                               executor="process", workers=2, shard_size=4,
                                               progress=False))
    extract.run(extract.ExtractConfig(store=store, model="efficientnet-b0", weights="none",
                                      input_size=32, batch_size=4, executor="process",
                                      workers=2, progress=False))
    train.run(train.TrainConfig(store=store, progress=False))
    add.run(add.AddConfig(store=store, executor="process", workers=2, progress=False))
    return Path(store)


def command(script: str, store: Path, master: str, *args: str) -> list[str]:
    return [sys.executable, str(ROOT / "scripts" / script), "--store", str(store),
            "--no-progress", "--executor", "spark", "--spark-master", master, *args]


def run(cmd: list[str], log: Path) -> None:
    """`cmd` from a folder outside the repository, as a user runs a script by its path."""
    with open(log, "ab") as out:
        rc = subprocess.run(cmd, cwd=log.parent, stdout=out, stderr=subprocess.STDOUT,
                            env=driver_env()).returncode
    assert rc == 0, f"{cmd[1]} exited with {rc}:\n{log.read_text()[-4000:]}"


def driver_env() -> dict[str, str]:
    """No PYTHONPATH: the executors get the package from the driver or not at all."""
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYSPARK_PYTHON")}
    return {**env, "SPARK_LOCAL_IP": "127.0.0.1"}


def outputs(store: Path, folders=("images", "features", "index")) -> dict[str, bytes]:
    return {str(p.relative_to(store)): p.read_bytes() for folder in folders
            for p in sorted((store / folder).rglob("*")) if p.is_file()}


def done(store: Path, stage: str) -> int:
    d = store / "_done" / stage
    return len(list(d.glob("shard-*.json"))) if d.is_dir() else 0


def assert_same(got: dict[str, bytes], want: dict[str, bytes]) -> None:
    assert sorted(got) == sorted(want)
    for name in want:
        assert got[name] == want[name], name


def start_after(cmd: list[str], log: Path, store: Path, stage: str, n: int,
                timeout: float = 240) -> subprocess.Popen:
    """Start `cmd`; return once `n` of its shards are committed."""
    out = open(log, "ab")
    p = subprocess.Popen(cmd, cwd=log.parent, stdout=out, stderr=subprocess.STDOUT,
                         env=driver_env(), start_new_session=True)
    out.close()
    deadline = time.monotonic() + timeout
    while done(store, stage) < n:
        assert p.poll() is None, f"{stage} ended early ({p.returncode}):\n{log.read_text()}"
        assert time.monotonic() < deadline, f"{stage}: {n} shards not done in {timeout} s"
        time.sleep(0.05)
    return p


def test_the_stages_on_a_standalone_cluster_equal_the_process_executor(
        cluster, corpus, reference, tmp_path):
    store, log = tmp_path / "store", tmp_path / "driver.log"
    # paths relative to the driver's folder, which no executor runs in
    rel, source = Path("store"), os.path.relpath(corpus, tmp_path)
    run(command("01_preprocess.py", rel, cluster.master, "--source", source,
                "--shard-size", "4"), log)
    run(command("02_extract.py", rel, cluster.master, *EXTRACT), log)
    run([sys.executable, str(ROOT / "scripts" / "03_train.py"), "--store", str(rel),
         "--no-progress"], log)
    run(command("04_add.py", rel, cluster.master), log)
    assert_same(outputs(store), outputs(reference))
    assert "shipped to the Spark executors" in log.read_text()
    assert done(store, "extract") == SHARDS and not leftovers(store)
    # both workers took part
    apps = cluster.state()["completedapps"]
    assert len(apps) >= 3 and all(a["state"] == "FINISHED" for a in apps)


def preprocessed(reference: Path, store: Path) -> None:
    shutil.copytree(reference, store, ignore=shutil.ignore_patterns(
        "features", "index", "extract", "train", "add"))


def test_a_worker_killed_while_tasks_run_costs_a_retry(cluster, reference, tmp_path):
    store, log = tmp_path / "store", tmp_path / "driver.log"
    preprocessed(reference, store)
    p = start_after(command("02_extract.py", store, cluster.master, *EXTRACT), log, store,
                    "extract", 1)
    deadline = time.monotonic() + 120
    while (busy := cluster.busy_worker()) is None:
        assert p.poll() is None and time.monotonic() < deadline, "no task ran to kill"
        time.sleep(0.02)
    cluster.kill_worker(busy)  # the worker, its executor and the executor's Python workers
    try:
        assert p.wait(300) == 0, log.read_text()[-4000:]
    finally:
        cluster.start_worker(busy)
    text = log.read_text()
    assert re.search(r"Lost executor \d+ on 127\.0\.0\.1", text), text[-4000:]
    assert_same(outputs(store, ("features",)), outputs(reference, ("features",)))
    assert done(store, "extract") == SHARDS and not leftovers(store)


def test_a_driver_killed_mid_stage_resumes_when_run_again(cluster, corpus, reference,
                                                          tmp_path):
    store, log = tmp_path / "store", tmp_path / "driver.log"
    cmd = command("01_preprocess.py", store, cluster.master, "--source", str(corpus),
                  "--shard-size", "4")
    p = start_after(cmd, log, store, "preprocess", 2)
    os.killpg(p.pid, signal.SIGKILL)  # the driver and its JVM
    p.wait()
    assert done(store, "preprocess") < SHARDS
    run(cmd, log)
    assert_same(outputs(store, ("images",)), outputs(reference, ("images",)))
    assert not leftovers(store)


def python_without(module: str, folder: Path) -> Path:
    """A virtual environment with every package of this Python but `module` (a node whose
    install lacks it); returns its bin folder, whose `python3` a worker finds first."""
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(folder)], check=True)
    target = Path(next(folder.glob("lib/python3*/site-packages")))
    for src in site.getsitepackages():
        for entry in Path(src).iterdir():
            top = re.split(r"[-.]", entry.name)[0].lower()
            if top != module.lower() and not (target / entry.name).exists():
                (target / entry.name).symlink_to(entry)
    return folder / "bin"


def test_an_executor_without_a_library_is_named_with_the_remedies_before_any_work(
        cluster, corpus, tmp_path):
    bin_dir = python_without("h5py", tmp_path / "no-h5py")
    store = tmp_path / "store"
    cluster.kill_worker(1)
    cluster.start_worker(1, path=str(bin_dir))
    try:
        r = subprocess.run(command("01_preprocess.py", store, cluster.master, "--source",
                                   str(corpus), "--shard-size", "4"),
                           cwd=tmp_path, env=driver_env(), capture_output=True, text=True,
                           timeout=240)
    finally:
        cluster.kill_worker(1)
        cluster.start_worker(1)
    err = r.stderr
    assert r.returncode == EXIT_ERROR, err[-4000:]
    assert re.search(r"host \S+ \(Python \S*no-h5py/bin/python3 [\d.]+\): "
                     r"h5py \(pip install h5py\)", err), err[-4000:]
    for remedy in ("on every node", "venv-pack", "spark.archives=env.tar.gz#environment",
                   "spark.pyspark.python=./environment/bin/python"):
        assert remedy in err, err[-4000:]
    assert "Traceback" not in err and "py4j" not in err.lower(), err[-4000:]
    assert not list(store.rglob("shard-*")), "work began before the check"
