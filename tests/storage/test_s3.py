"""Stores and sources on an S3-compatible object store for real: moto's standalone server
in its own process on 127.0.0.1, reached through the standard variables (or
--storage-options) and, for the network cut, through a TCP proxy of the test's own.

Every stage with the store in one bucket and the sources in another equals, byte for
byte, the same job with the store on local disk; a network cut in the middle of a stage
costs retries, not data; search reads its shards from the bucket."""
import json
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import ROOT, leftovers, write_corpus

pytest.importorskip("s3fs", reason="s3fs is not installed (pip install -r requirements-s3.txt)")
pytest.importorskip("moto.server", reason="moto[server] is not installed "
                    "(pip install -r requirements-dev.txt)")

from object_store import MotoServer, env_with, make_bucket, s3_env  # noqa: E402

pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]
SMALL = ["--model", "efficientnet-b0", "--weights", "none", "--input-size", "32",
         "--batch-size", "8", "--shard-size", "8", "--queries", "8", "--no-progress"]
# what differs between two runs of the same job: when and where it ran, how fast
WHEN_AND_WHERE = {"committed", "created", "started", "host", "date", "tuned_on", "machine",
                  "store", "qps", "p50_ms", "p95_ms", "p99_ms", "tuned"}
# drawn from the timings: the recall-vs-speed plot, the report's text, the parameters
# tuned (the fastest of those that reach the target recall)
TIMING_VIEWS = ("evaluation/recall_vs_qps.png", "evaluation/report.md",
                "evaluation/search_defaults.json")


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    folder = tmp_path_factory.mktemp("moto")
    with MotoServer(folder / "server.log") as s:
        for bucket in ("src-images", "index-store"):
            make_bucket(s.endpoint, bucket)
        yield s


def s3(endpoint: str):
    import s3fs
    return s3fs.S3FileSystem(endpoint_url=endpoint, key="testing", secret="testing",
                             skip_instance_cache=True)


@pytest.fixture(scope="module")
def source(server, tmp_path_factory) -> str:
    folder = tmp_path_factory.mktemp("corpus")
    write_corpus(folder, 40, size=(48, 40))
    s3(server.endpoint).put(f"{folder}/", "src-images/corpus/", recursive=True)
    return "s3://src-images/corpus"


def run(cmd: list[str], env: dict[str, str], check: bool = True, timeout: float = 600):
    r = subprocess.run([sys.executable, *cmd], cwd=ROOT, env=env_with(env),
                       capture_output=True, text=True, timeout=timeout)
    if check:
        assert r.returncode == 0, f"{cmd[0]} exited with {r.returncode}:\n{r.stderr[-4000:]}"
    return r


def files(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes()
            for p in sorted(root.rglob("*")) if p.is_file()}


def download(endpoint: str, url: str, to: Path) -> Path:
    s3(endpoint).get(url.removeprefix("s3://") + "/", f"{to}/", recursive=True)
    return to


def without(value, keys=WHEN_AND_WHERE):
    if isinstance(value, dict):
        return {k: without(v, keys) for k, v in value.items() if k not in keys}
    if isinstance(value, list):
        return [without(v, keys) for v in value]
    return value


def assert_same_job(got: dict[str, bytes], want: dict[str, bytes]) -> None:
    """Every file byte for byte, but for the times and places in JSON records and the
    views of the speed figures; a marker's size and hash are compared unless its file
    is one of those."""
    assert sorted(got) == sorted(want)
    assert {n.split("/")[0] for n in want} >= {"images", "features", "index", "prefilter",
                                                "duplicates", "evaluation", "_done"}
    varies = set(TIMING_VIEWS)
    for name in sorted(want, key=lambda n: n.startswith("_done/")):  # markers last
        if name in TIMING_VIEWS or got[name] == want[name]:
            continue
        assert name.endswith(".json"), name
        a, b = json.loads(got[name]), json.loads(want[name])
        keys = WHEN_AND_WHERE | ({"size", "sha256"} if a.get("path") in varies else set())
        assert without(a, keys) == without(b, keys), name
        varies.add(name)


@pytest.fixture(scope="module")
def local_run(server, source, tmp_path_factory) -> Path:
    """The whole job with the store on local disk (the sources in the bucket)."""
    store = tmp_path_factory.mktemp("local") / "store"
    run(["scripts/run_all.py", "--source", source, "--store", str(store), *SMALL],
        s3_env(server.endpoint))
    return store


def test_every_stage_with_the_store_in_a_bucket_equals_a_local_disk_run(
        server, source, local_run, tmp_path):
    url = "s3://index-store/whole"
    env = s3_env(server.endpoint)  # the standard variables, nothing else
    run(["scripts/run_all.py", "--source", source, "--store", url, *SMALL], env)
    got, want = files(download(server.endpoint, url, tmp_path / "got")), files(local_run)
    assert_same_job(got, want)
    assert not leftovers(tmp_path / "got")
    assert server.endpoint not in got["run.json"].decode()
    run(["scripts/run_all.py", "--source", source, "--store", url, *SMALL], env)
    # a second run redoes nothing but the evaluation (which measures again)
    after = files(download(server.endpoint, url, tmp_path / "again"))
    assert_same_job(after, got)
    assert {n for n in got if after[n] != got[n]} <= {
        n for n in got if n.startswith(("evaluation/", "_done/evaluate/", "run.json"))}
