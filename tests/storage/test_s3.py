"""Stores and sources on an S3-compatible object store for real: moto's standalone server
in its own process on 127.0.0.1, reached through the standard variables (or
--storage-options) and, for the network cut, through a TCP proxy of the test's own.

Every stage with the store in one bucket and the sources in another equals, byte for
byte, the same job with the store on local disk; a network cut in the middle of a stage
costs retries, not data; an endpoint out of reach, a missing bucket and a wrong key stop
a stage at its start with one message; a restarted service reuses the large files it
staged in from the bucket."""
import json
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from conftest import ROOT, leftovers, write_corpus

pytest.importorskip("s3fs", reason="s3fs is not installed (pip install -r requirements-s3.txt)")
pytest.importorskip("moto.server", reason="moto[server] is not installed "
                    "(pip install -r requirements-dev.txt)")

from object_store import (  # noqa: E402
    MotoServer,
    TcpProxy,
    env_with,
    free_port,
    make_bucket,
    require_credentials,
    s3_env,
)

pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]
SMALL = ["--model", "efficientnet-b0", "--weights", "none", "--input-size", "32",
         "--batch-size", "8", "--shard-size", "8", "--queries", "8", "--no-progress"]
# what differs between two runs of the same job: when and where it ran, how fast
WHEN_AND_WHERE = {"committed", "created", "started", "host", "date", "tuned_on", "machine",
                  "store", "qps", "p50_ms", "p95_ms", "p99_ms", "tuned"}
# drawn from the timings: the recall-vs-speed plot, the report's text, the parameters
# tuned (the fastest of those that reach the target recall), the results page (searched
# in the tuned default mode, named in its title)
TIMING_VIEWS = ("evaluation/recall_vs_qps.png", "evaluation/report.md",
                "evaluation/search_defaults.json", "evaluation/results.html")


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


@pytest.fixture(scope="module")
def bucket_run(server, source) -> str:
    """The whole job with the store in a bucket, reached through the standard variables
    and nothing else."""
    url = "s3://index-store/whole"
    run(["scripts/run_all.py", "--source", source, "--store", url, *SMALL],
        s3_env(server.endpoint))
    return url


def test_every_stage_with_the_store_in_a_bucket_equals_a_local_disk_run(
        server, source, bucket_run, local_run, tmp_path):
    url, env = bucket_run, s3_env(server.endpoint)
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


# ------------------------------------------------------------------ faults

CUT_SECONDS = 5
EXTRACT_ARGS = SMALL[:8]  # the model, its weights, input and batch size
assert EXTRACT_ARGS[-2:] == ["--batch-size", "8"]


def assert_one_clear_error(r: subprocess.CompletedProcess, *names: str) -> str:
    """Exit status 2 and one error line that names each of `names` (the endpoint, the
    bucket), no traceback; the error line."""
    errors = [ln for ln in r.stderr.splitlines() if " ERROR " in ln]
    assert r.returncode == 2 and len(errors) == 1, r.stderr[-4000:]
    assert "Traceback" not in r.stderr, r.stderr[-4000:]
    assert all(n in errors[0] for n in names), errors[0]
    return errors[0]


def test_a_network_cut_in_extract_and_in_add_costs_retries_not_data(
        server, source, local_run, tmp_path):
    """The network is cut for a few seconds while extract uploads a feature shard, and
    while add downloads one: each stage finishes (or stops with a clear error and its
    re-run finishes), with the bytes of an uncut run and no temporary object left."""
    url = "s3://index-store/cut"
    run(["scripts/01_preprocess.py", "--source", source, "--store", url, "--shard-size",
         "8", "--no-progress"], s3_env(server.endpoint))
    with TcpProxy(server.port) as proxy:
        for script, args, cut_at in (
                ("02_extract.py", EXTRACT_ARGS, b"PUT /index-store/cut/features/shard-00002"),
                ("03_train.py", [], None),
                ("04_add.py", [], b"GET /index-store/cut/features/shard-00003.h5 ")):
            cmd = [f"scripts/{script}", "--store", url, "--no-progress", *args]
            if cut_at:
                proxy.cut_when(cut_at, CUT_SECONDS)
            r = run(cmd, s3_env(proxy.endpoint), check=False)
            if cut_at:
                assert proxy.cuts[-1] == cut_at, f"{script} never sent {cut_at!r}"
                assert proxy.wait_until_back(60)
            if r.returncode != 0:  # it gave up: a clear error, then the re-run finishes
                assert_one_clear_error(r, proxy.endpoint)
                run(cmd, s3_env(proxy.endpoint))
    assert len(proxy.cuts) == 2
    got = files(download(server.endpoint, url, tmp_path / "got"))
    assert not leftovers(tmp_path / "got")
    want = files(local_run)
    parts = ("features/", "index/", "_done/extract/", "_done/add/")
    assert sorted(n for n in got if n.startswith(parts)) == \
        sorted(n for n in want if n.startswith(parts))
    for name in (n for n in want if n.startswith(parts)):
        if name.endswith(".json"):
            assert without(json.loads(got[name])) == without(json.loads(want[name])), name
        else:
            assert got[name] == want[name], name


def test_an_endpoint_out_of_reach_a_missing_bucket_and_a_wrong_key_stop_at_once(
        server, tmp_path):
    """Each stops the stage at its start with exit status 2 and one message that says
    which and what to do; a missing bucket is not created; no secret is printed."""
    nowhere = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    extract = ["scripts/02_extract.py", "--no-progress", *EXTRACT_ARGS, "--store"]
    t = time.monotonic()
    r = run([*extract, "s3://index-store/job"], s3_env(nowhere), check=False)
    assert "cannot reach" in assert_one_clear_error(r, nowhere, "AWS_ENDPOINT_URL")
    assert time.monotonic() - t < 60  # the client's own retries, not minutes of ours

    for cmd in ([*extract, "s3://no-such-bucket/job"],
                ["-m", "workflow", "status", "--store", "s3://no-such-bucket/job"]):
        r = run(cmd, s3_env(server.endpoint), check=False)
        assert "there is no bucket 'no-such-bucket'" in assert_one_clear_error(
            r, server.endpoint, "create it")
    assert not s3(server.endpoint).exists("no-such-bucket")

    with MotoServer(tmp_path / "auth.log") as strict:
        make_bucket(strict.endpoint, "index-store")
        key, secret = require_credentials(strict.endpoint)
        wrong = "wrong" + secret[5:]
        env = {**s3_env(strict.endpoint), "AWS_ACCESS_KEY_ID": key,
               "AWS_SECRET_ACCESS_KEY": wrong}
        r = run([*extract, "s3://index-store/job"], env, check=False)
        line = assert_one_clear_error(r, strict.endpoint, "'index-store'",
                                      "AWS_SECRET_ACCESS_KEY")
        assert "refused access" in line
        assert wrong not in r.stdout + r.stderr and secret not in r.stdout + r.stderr


def _serve(url: str, scratch: Path, endpoint: str) -> None:
    """Start `serve`, wait for its /health, stop it (SIGINT)."""
    port = free_port()
    p = subprocess.Popen([sys.executable, "-m", "workflow", "serve", "--store", url,
                          "--scratch", str(scratch), "--port", str(port)], cwd=ROOT,
                         env=env_with(s3_env(endpoint)), stdout=subprocess.DEVNULL,
                         stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 120
        while True:
            assert p.poll() is None, p.stderr.read()[-4000:]
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2):
                    break
            except OSError:
                assert time.monotonic() < deadline, "no /health in 120 s"
                time.sleep(0.25)
    finally:
        p.send_signal(signal.SIGINT)
        try:
            p.wait(15)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()
        p.stderr.close()


def test_a_second_serve_start_reuses_the_checked_copies_in_scratch(
        server, bucket_run, tmp_path):
    """The index, the re-rank store and the Annoy segments are downloaded to scratch by
    the first start, and a restart finds them checked there: no download again."""
    large = ("/index/index.faiss", "/index/rerank.npy", ".ann")
    scratch = tmp_path / "scratch"
    downloads = []
    for _ in range(2):
        before = len(server.requests())
        _serve(bucket_run, scratch, server.endpoint)
        downloads.append(sorted(path for method, path, _ in server.requests()[before:]
                                if method == "GET" and path.endswith(large)))
    prefix = "/" + bucket_run.removeprefix("s3://")
    assert downloads[0] == sorted({f"{prefix}/index/index.faiss", f"{prefix}/index/rerank.npy",
                                   f"{prefix}/prefilter/annoy.ann"})
    assert downloads[1] == []
    assert (scratch / "add" / "final" / "rerank.npy").is_file()


def test_a_few_reads_of_an_image_shard_move_a_few_blocks_not_the_shard(server, tmp_path):
    """A shard's outcomes, or three of its JPEGs, read in the bucket: h5py's small reads
    fetch small blocks (an object store's default block, 50 MB with s3fs, moved most of
    a shard each time)."""
    import h5py
    import numpy as np

    from workflow.formats.images import read_outcomes, read_stored_jpegs
    from workflow.storage.store import Store
    n, rng = 1000, np.random.default_rng(0)
    path = tmp_path / "shard-00000.h5"
    with h5py.File(path, "w") as f:
        f["ids"], f["status"] = np.arange(n), np.zeros(n, np.int8)
        f["content_hash"] = np.zeros((n, 16), np.uint8)
        f.create_dataset("reason", data=[""] * n, dtype=h5py.string_dtype())
        jpeg = f.create_dataset("jpeg", (n,), dtype=h5py.vlen_dtype(np.uint8))
        for i in range(n):
            jpeg[i] = rng.integers(0, 255, 20_000, dtype=np.uint8)  # 20 MB in all
    s3(server.endpoint).put(str(path), "index-store/blocks/images/shard-00000.h5")
    with TcpProxy(server.port) as proxy:
        store = Store("s3://index-store/blocks", tmp_path / "scratch", storage_options={
            "endpoint_url": proxy.endpoint, "key": "testing", "secret": "testing"})
        before = proxy.received
        ids, *_ = read_outcomes(store, "images/shard-00000.h5")
        outcomes = proxy.received - before
        got = read_stored_jpegs(store, "images/shard-00000.h5", [5, 500, 995])
        jpegs = proxy.received - before - outcomes
    assert ids.tolist() == list(range(n)) and [len(j) for j in got] == [20_000] * 3
    assert outcomes < 3e6 and jpegs < 6e6, (outcomes, jpegs)
