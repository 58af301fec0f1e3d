"""The spark executor on a real local Spark (local[2], retries on): identical outputs to
the local executors for preprocess, extract and add, and a task killed mid-shard."""
import os
import shutil
from pathlib import Path

import pytest

from conftest import ROOT, write_corpus

pytest.importorskip("pyspark", reason="PySpark is not installed "
                    "(pip install -r requirements-spark.txt)")
if shutil.which("java") is None:
    pytest.skip("Java is not installed (PySpark's local mode needs Java 17)",
                allow_module_level=True)

from workflow.errors import WorkflowError  # noqa: E402
from workflow.execution.shards import map_shards  # noqa: E402
from workflow.stages import add, extract, preprocess, train  # noqa: E402

EXTRACT_EXECUTOR = {"local": "local", "process": "process", "spark": "spark"}
OUTPUTS = ("images", "features", "index")


@pytest.fixture(scope="module")
def spark():
    """A local Spark with 2 task slots and up to 4 attempts per task; its Python workers
    import the package and the test helpers from the checkout."""
    paths = [str(ROOT), str(ROOT / "tests"), os.environ.get("PYTHONPATH", "")]
    old = os.environ.get("PYTHONPATH")
    os.environ["PYTHONPATH"] = os.pathsep.join(p for p in paths if p)
    from pyspark.sql import SparkSession
    session = (SparkSession.builder.master("local[2,4]").appName("workflow-tests")
               .config("spark.ui.enabled", "false").config("spark.driver.memory", "1g")
               .getOrCreate())
    yield session
    session.stop()
    if old is None:
        os.environ.pop("PYTHONPATH")
    else:
        os.environ["PYTHONPATH"] = old


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    src = tmp_path_factory.mktemp("corpus")
    write_corpus(src, 24, size=(48, 40))
    return src


def pipeline(root: Path, src: Path, executor: str) -> Path:
    store = str(root / f"store-{executor}")
    preprocess.run(preprocess.PreprocessConfig(store=store, sources=(str(src),),
                                               executor=executor, workers=2, shard_size=8,
                                               progress=False))
    extract.run(extract.ExtractConfig(store=store, model="efficientnet-b0", weights="none",
                                      input_size=32, batch_size=4,
                                      executor=EXTRACT_EXECUTOR[executor], workers=2,
                                      progress=False))
    train.run(train.TrainConfig(store=store, progress=False))
    add.run(add.AddConfig(store=store, executor=executor, workers=2, progress=False))
    return Path(store)


def outputs(store: Path) -> dict[str, bytes]:
    return {str(p.relative_to(store)): p.read_bytes() for folder in OUTPUTS
            for p in sorted((store / folder).rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def reference(tmp_path_factory, corpus) -> dict[str, bytes]:
    return outputs(pipeline(tmp_path_factory.mktemp("ref"), corpus, "local"))


@pytest.mark.parametrize("executor", ["process", "spark"])
def test_every_executor_gives_identical_outputs(spark, corpus, reference, tmp_path,
                                                executor):
    got = outputs(pipeline(tmp_path, corpus, executor))
    assert sorted(got) == sorted(reference)
    assert len([k for k in got if k.startswith("index/parts/")]) == 3
    for name in reference:
        assert got[name] == reference[name], name
    # the session was the caller's: the stages used it and left it running
    assert spark.sparkContext._jsc is not None and not spark.sparkContext._jsc.sc().isStopped()


def test_a_task_killed_mid_shard_is_retried_with_the_same_result(spark, corpus, reference,
                                                                  tmp_path):
    from hostile import KillsItsTaskOnce
    flag = tmp_path / "killed"
    cfg = preprocess.PreprocessConfig(store=str(tmp_path / "store"), sources=(str(corpus),),
                                      executor="spark", shard_size=8, progress=False)
    res = preprocess.run(cfg, image_fn=KillsItsTaskOnce(cfg.image_options(), str(flag)))
    assert res.complete and flag.exists()
    got = outputs(tmp_path / "store")
    for name in (k for k in reference if k.startswith("images/")):
        assert got[name] == reference[name], name


def test_an_unreachable_store_is_named_before_any_work(spark, tmp_path):
    with pytest.raises(WorkflowError, match="Spark executors cannot see: store .*nowhere"):
        list(map_shards("spark", len, ["a"], stage="test",
                        reachable={"store": str(tmp_path / "nowhere" / "run.json")}))


def test_the_package_zip_is_the_package_and_the_same_for_the_same_files(tmp_path):
    import subprocess
    import sys
    import zipfile

    from workflow.execution.spark import package_zip
    first, again = package_zip(), package_zip()
    assert first == again and first.read_bytes() == again.read_bytes()
    names = zipfile.ZipFile(first).namelist()
    assert "workflow/__init__.py" in names and "workflow/execution/probe.py" in names
    assert not [n for n in names if "__pycache__" in n or n.endswith(".pyc")]
    code = ("import sys; sys.path.insert(0, sys.argv[1]); import workflow.stages.preprocess;"
            " print(workflow.__file__)")
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    out = subprocess.run([sys.executable, "-c", code, str(first)], cwd=tmp_path, env=env,
                         capture_output=True, text=True, check=True).stdout
    assert out.strip() == str(first / "workflow" / "__init__.py")


@pytest.fixture(scope="module")
def venvs(tmp_path_factory) -> tuple[Path, Path]:
    """A venv that has the project's packages (the system's, as a user's venv would have
    them installed) and a bare one, whose `python3` is first on PATH."""
    import subprocess
    import sys
    base = tmp_path_factory.mktemp("venvs")
    full, bare = base / "full", base / "bare"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", "--system-site-packages",
                    str(full)], check=True)
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(bare)], check=True)
    return full, bare


def _preprocess_in(venv: Path, bare: Path, corpus: Path, store: Path, *args: str, **env):
    """The stage run by a venv's Python called by its path, not activated, with a PATH
    whose first `python3` lacks the packages (as a scheduler or a notebook kernel runs)."""
    import subprocess
    run_env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYSPARK_PYTHON")}
    run_env.update(PATH=f"{bare / 'bin'}{os.pathsep}{os.environ['PATH']}", **env)
    return subprocess.run(
        [str(venv / "bin" / "python"), "scripts/01_preprocess.py", "--store", str(store),
         "--source", str(corpus), "--shard-size", "8", "--executor", "spark",
         "--spark-master", "local[2]", "--no-progress", *args],
        cwd=ROOT, env=run_env, capture_output=True, text=True, timeout=300)


def test_a_venv_python_called_by_path_runs_its_own_interpreter_in_local_spark(
        venvs, corpus, reference, tmp_path):
    full, bare = venvs
    r = _preprocess_in(full, bare, corpus, tmp_path / "store")
    assert r.returncode == 0, r.stderr[-3000:]
    got = outputs(tmp_path / "store")
    for name in (k for k in reference if k.startswith("images/")):
        assert got[name] == reference[name], name


@pytest.mark.parametrize("how", ["PYSPARK_PYTHON", "--spark-conf"])
def test_executors_python_without_the_packages_is_named_with_the_remedies(venvs, corpus,
                                                                          tmp_path, how):
    full, bare = venvs
    python = str(bare / "bin" / "python")
    if how == "PYSPARK_PYTHON":
        r = _preprocess_in(full, bare, corpus, tmp_path / "store", PYSPARK_PYTHON=python)
    else:
        r = _preprocess_in(full, bare, corpus, tmp_path / "store", "--spark-conf",
                           f"spark.pyspark.python={python}")
    assert r.returncode == 2, r.stderr[-3000:]
    err = r.stderr
    assert "lacks what the stage needs" in err and f"(now {python!r})" in err, err[-3000:]
    for what in ("fsspec (pip install fsspec)", "numpy", "h5py",
                 "cv2 (pip install opencv-python-headless)", "on every node", "venv-pack",
                 "spark.archives=env.tar.gz#environment"):
        assert what in err, err[-3000:]
    assert "Traceback" not in err and "py4j" not in err.lower(), err[-3000:]
    assert not list((tmp_path / "store").rglob("shard-*")), "work began before the check"


def test_a_task_that_lacks_a_module_is_named_with_the_remedies(spark):
    import importlib
    with pytest.raises(WorkflowError) as e:
        list(map_shards("spark", importlib.import_module, ["no_such_module_here"],
                        stage="test"))
    text = str(e.value)
    assert "a Spark executor's Python lacks no_such_module_here" in text
    assert "on every node" in text and "venv-pack" in text and "\n" not in text


def test_a_task_failing_for_its_own_reason_shows_its_error_in_one_paragraph(spark):
    with pytest.raises(WorkflowError) as e:
        list(map_shards("spark", int, ["not a number"], stage="test"))
    text = str(e.value)
    assert text.startswith("test not a number failed on Spark after its retries: ")
    assert "ValueError: invalid literal for int() with base 10: 'not a number'" in text
    assert "\n" not in text and "py4j" not in text.lower()


def test_spark_settings_are_key_value_pairs_named_on_error(tmp_path):
    from workflow.errors import ConfigError
    from workflow.execution.spark import parse_spark_conf
    assert parse_spark_conf(["spark.archives=env.tar.gz#environment", "spark.a.b=x=y"]) == {
        "spark.archives": "env.tar.gz#environment", "spark.a.b": "x=y"}
    with pytest.raises(ConfigError, match="--spark-conf 'memory=1g' is not a Spark"):
        parse_spark_conf(["memory=1g"])
    with pytest.raises(ConfigError, match="--spark-conf takes KEY=VALUE"):
        preprocess.PreprocessConfig(store=str(tmp_path), spark_conf=("executor",)).validate()
