"""`python -m workflow status`: per stage its progress, rate, ETA and last progress; the
corpus version and removed counts; the one next command (or waiting for a live run)."""
import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

from workflow.formats.prefilter import chain_of as prefilter_chain
from workflow.stages.evaluate import EvaluateConfig
from workflow.stages.evaluate import run as evaluate
from workflow.stages.preprocess import PreprocessConfig
from workflow.stages.preprocess import run as preprocess
from workflow.stages.remove import Selection, remove
from workflow.stages.status import burst_rate, stage_status, status_report
from workflow.storage.lease import process_start
from workflow.storage.marker import Marker
from workflow.storage.store import Store

from conftest import ROOT, feature_store, indexed_store, write_corpus

FMT = "%Y-%m-%dT%H:%M:%SZ"


def _report(store: Path) -> list[str]:
    return status_report(Store(store, create=False)).splitlines()


def _line(lines: list[str], stage: str) -> str:
    return next(x for x in lines if x.startswith(f"  {stage:<11} "))[14:]


def _marker(store: Path, stage: str, unit: str) -> Path:
    return store / "_done" / stage / f"{unit}.json"


def _edit(store: Path, stage: str, unit: str, **changes) -> None:
    p = _marker(store, stage, unit)
    p.write_text(json.dumps({**json.loads(p.read_text()), **changes}))


def _committed(t: float) -> str:
    return time.strftime(FMT, time.gmtime(t))


def test_burst_rate_is_over_the_latest_burst_only():
    assert burst_rate([(0, 5), (10, 10), (20, 10)]) == 1.0  # the first one's items are before
    assert burst_rate([(0, 500), (10_000, 10), (10_010, 10)]) == 1.0  # an hour's gap: a new burst
    assert burst_rate([(20, 10), (0, 5), (10, 10)]) == 1.0  # in any order
    assert burst_rate([(0, 5)]) is None and burst_rate([(0, 5), (9000, 5)]) is None
    assert burst_rate([(7, 5), (7, 5)]) is None  # committed in the same second


def test_an_empty_store_says_to_run_preprocess_with_a_source(tmp_path):
    store = tmp_path / "store"
    Store(store)
    lines = _report(store)
    assert lines[1] == "corpus: no plan yet (the sources are not listed)"
    assert all(_line(lines, s) == "not started" for s in ("preprocess", "extract", "evaluate"))
    assert lines[-1] == f"next: python scripts/01_preprocess.py --store {store} --source FOLDER"
    assert stage_status(Store(store), "train") == "not started"
    r = subprocess.run([sys.executable, "-m", "workflow", "status", "--store", str(store)],
                       cwd=ROOT, capture_output=True, text=True)
    assert r.returncode == 0 and r.stdout.splitlines() == lines, r.stderr


def test_extract_in_progress_shows_its_rate_eta_and_the_next_command(tmp_path):
    store = feature_store(tmp_path, n=500, d=8, shard_size=100)
    for unit in ("shard-00003", "shard-00004"):
        _marker(store, "extract", unit).unlink()
    now = int(time.time())
    # shard 0 an hour before: the latest burst is shards 1 and 2, 100 features in 50 s
    for unit, t in (("shard-00000", now - 5000), ("shard-00001", now - 100),
                    ("shard-00002", now - 50)):
        _edit(store, "extract", unit, committed=_committed(t))
    lines = _report(store)
    assert lines[1] == "corpus: version 1, 500 images planned; 0 removed; 0 missing"
    assert _line(lines, "preprocess").startswith(
        "complete: 5/5 shards; 500 of 500 images done: 500 ok; 0 exact duplicates; "
        "last progress ")
    extract = _line(lines, "extract")
    # 200 images left at 2 img/s: 100 s
    assert extract.startswith("in progress: 3/5 shards; 300 features of dimension 8; "
                              "2.0 img/s, ETA 2 min; last progress 5"), extract
    assert extract.endswith(" s ago") and "\n" not in stage_status(Store(store), "extract")
    assert _line(lines, "train") == "not started"
    assert lines[-1] == f"next: python scripts/02_extract.py --store {store}"


def test_a_complete_stage_shows_no_rate_and_an_old_one_its_date(tmp_path):
    store = feature_store(tmp_path, n=300, d=8, shard_size=100)
    for m in (store / "_done" / "preprocess").glob("*.json"):
        _edit(store, "preprocess", m.stem, committed="2020-01-02T03:04:05Z")
    for i, unit in enumerate(("shard-00000", "shard-00001", "shard-00002")):
        _edit(store, "extract", unit, committed=_committed(time.time() - 600 + 60 * i))
    lines = _report(store)
    assert _line(lines, "preprocess").endswith("; last progress 2020-01-02 03:04 UTC")
    assert _line(lines, "extract") == ("complete: 3/3 shards; 300 features of dimension 8; "
                                       "last progress 8 min ago")
    assert lines[-1] == f"next: python scripts/03_train.py --store {store}"


def test_an_update_counts_every_plan_segment_and_resumes_without_sources(tmp_path):
    store = feature_store(tmp_path, n=300, d=8, shard_size=100)
    write_corpus(tmp_path / "new", 150, seed=3, size=(16, 16))
    preprocess(PreprocessConfig(store=str(store), update=True, workers=1, shard_size=100,
                                sources=(str(tmp_path / "tiny"), str(tmp_path / "new")),
                                progress=False))
    lines = _report(store)
    assert lines[1] == "corpus: version 2, 450 images planned; 0 removed; 0 missing"
    assert _line(lines, "preprocess").startswith(
        "complete: 5/5 shards; 450 of 450 images done: 450 ok")
    assert _line(lines, "extract").startswith("in progress: 3/5 shards; 300 features")
    assert lines[-1] == f"next: python scripts/02_extract.py --store {store}"
    # stopped before its last shard: the report is still of version 1
    _marker(store, "preprocess", "shard-00004").unlink()
    _edit(store, "preprocess", "report", version=1)
    lines = _report(store)
    assert _line(lines, "preprocess").startswith(  # the new 150 in two shards of 75
        "in progress: 4/5 shards; 375 of 450 images done: 375 ok; ")
    assert lines[-1] == f"next: python scripts/01_preprocess.py --store {store}"


def test_add_in_progress_shows_vectors_per_second(tmp_path):
    store = indexed_store(tmp_path, n=500, d=32, shard_size=100)
    assert _line(_report(store), "add").startswith("complete: 5/5 parts; 500 vectors merged")
    for unit in ("shard-00003", "shard-00004", "index"):
        _marker(store, "add", unit).unlink()
    now = int(time.time())
    for i, unit in enumerate(("shard-00000", "shard-00001", "shard-00002")):
        _edit(store, "add", unit, committed=_committed(now - 30 + 10 * i))
    lines = _report(store)
    assert _line(lines, "add").startswith("in progress: 3/5 parts; 10 vec/s, ETA 20 s; ")
    assert _line(lines, "prefilter").startswith("complete: Annoy over 500 vectors")
    assert lines[-1] == f"next: python scripts/04_add.py --store {store}"


def test_removals_and_a_stale_evaluation(tmp_path):
    store = indexed_store(tmp_path, n=300, d=32, shard_size=100)
    assert _report(store)[-1] == f"next: python scripts/07_evaluate.py --store {store}"
    evaluate(EvaluateConfig(store=str(store), queries=40, latency_queries=5, progress=False))
    lines = _report(store)
    assert _line(lines, "evaluate").startswith("complete: 40 queries; tuned recall@10")
    assert lines[-1] == (f"next: python -m workflow search --store {store} --query IMAGE (or "
                         f"find the near-duplicates: python scripts/08_duplicates.py --store "
                         f"{store})")
    assert _line(lines, "duplicates") == "not started"
    remove(Store(store), Selection(ids=(1, 2)))
    lines = _report(store)
    assert lines[1] == "corpus: version 1, 300 images planned; 2 removed; 0 missing"
    assert _line(lines, "evaluate").startswith(
        "complete before the latest removals or restores (re-run evaluate): 40 queries")
    assert lines[-1] == f"next: python scripts/07_evaluate.py --store {store}"
    evaluate(EvaluateConfig(store=str(store), queries=40, latency_queries=5, progress=False))
    assert _line(_report(store), "evaluate").startswith("complete: 40 queries")
    _edit(store, "evaluate", "report", corpus="0.0")  # the report names its corpus
    assert _line(_report(store), "evaluate").startswith(
        "complete for corpus version 0 (the corpus is now version 1: re-run evaluate)")
    # a report that does not (older ones): the ground truth's, unless the report is older
    p = _marker(store, "evaluate", "report")
    p.write_text(json.dumps({k: v for k, v in json.loads(p.read_text()).items()
                             if k != "corpus"}))
    assert _line(_report(store), "evaluate").startswith("complete: 40 queries")
    _edit(store, "evaluate", "report", committed="2020-01-02T03:04:05Z")
    assert _line(_report(store), "evaluate").startswith(
        "complete for an earlier corpus (the corpus is now version 1: re-run evaluate)")


def test_the_train_line_passes_on_the_advice_to_retrain(tmp_path):
    store = indexed_store(tmp_path, n=300, d=32, shard_size=100)
    s = Store(store)
    local = tmp_path / "fit.json"
    local.write_text("{}\n")
    s.commit(local, "trained/fit.json", "train", "fit", "fp", {"version": 1, "retrain": False})
    lines = _report(store)
    assert _line(lines, "train").startswith("complete: IVF")
    assert "the fit check found that it still fits" in _line(lines, "train")
    assert lines[-1] == f"next: python scripts/07_evaluate.py --store {store}"
    s.commit(local, "trained/fit.json", "train", "fit", "fp", {"version": 1, "retrain": True})
    lines = _report(store)
    assert "the fit check advises retraining (see trained/fit.json)" in _line(lines, "train")
    # advice, not an order: the next step stays the first stage left to run
    assert lines[-1] == f"next: python scripts/07_evaluate.py --store {store}"
    # trained for fewer vectors than there are now, and no fit check for this version
    s.remove_marker("train", "fit")
    index = json.loads(_marker(store, "train", "index").read_text())
    _edit(store, "train", "index", plan={**index["plan"], "n": 200})
    lines = _report(store)
    assert "its fit to the 100 vectors added since is not checked yet" in _line(lines, "train")
    assert lines[-1] == f"next: python scripts/03_train.py --store {store}"


def test_a_live_lease_means_wait_and_a_stale_one_is_flagged(tmp_path):
    store = feature_store(tmp_path, n=300, d=8, shard_size=100)
    lease = {"holder": "x", "host": socket.gethostname(), "pid": os.getpid(),
             "started": process_start(os.getpid()), "stage": "train",
             "heartbeat": time.time() - 3}
    (store / "_leases").mkdir(exist_ok=True)
    (store / "_leases" / "train.json").write_text(json.dumps(lease))
    lines = _report(store)
    assert f"  lease: train held by host {socket.gethostname()} pid {os.getpid()}, " \
           "heartbeat 3 s ago" in lines
    assert lines[-1].startswith("next: wait: the train stage is running")
    (store / "_leases" / "train.json").write_text(json.dumps({**lease, "heartbeat": 1.0}))
    lines = _report(store)
    assert lines[-2].endswith(" (stale: the next run takes it over)")
    assert lines[-1] == f"next: python scripts/03_train.py --store {store}"


def test_the_prefilter_chain_follows_the_segments_from_shard_0():
    def seg(unit, **extra):
        return Marker("prefilter", unit, f"prefilter/{unit}.ann", 1, "", "", extra)
    counts = [100, 100, 100, 50, 50]
    base = seg("annoy", n=300, first=0, end=3)
    new = seg("annoy-00003", n=100, first=3, end=5)
    left = seg("annoy-00002", n=150, first=2, end=4)  # a leftover: not in the chain
    chain, covered = prefilter_chain({m.unit: m for m in (base, new, left)}, counts)
    assert [m.unit for m in chain] == ["annoy", "annoy-00003"] and covered == 5
    chain, covered = prefilter_chain({"annoy": base}, counts)
    assert [m.unit for m in chain] == ["annoy"] and covered == 3
    old = seg("annoy", n=300)  # built before segments: its n says which shards it covers
    assert prefilter_chain({"annoy": old}, counts)[1] == 3
    assert prefilter_chain({}, counts) == ([], 0)
