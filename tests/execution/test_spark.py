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
