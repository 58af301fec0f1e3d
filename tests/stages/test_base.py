"""The stage scaffold: run-control checks, the deadline, and the cleanup of every folder a
stage commits into, tested with a kill at the worst moment of a commit in each stage."""
from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

from workflow.errors import ConfigError, DeadlineReached
from workflow.formats.layout import STAGES, stage_folders
from workflow.options import opt
from workflow.stages.base import StageConfig, StageRun
from workflow.storage.store import Store

from conftest import ROOT, leftovers, write_corpus


@dataclass(frozen=True)
class _Config(StageConfig):
    size: int = opt(1, "a size", type=int)

    def checks(self):
        return super().checks() + [self.require("size", self.size >= 1, "must be >= 1")]


def test_checks_name_the_flags_of_the_run_control_and_of_the_stage(tmp_path):
    with pytest.raises(ConfigError) as e:
        _Config(store=str(tmp_path), max_minutes=0, wait_minutes=-1, size=0).validate()
    assert str(e.value) == ("--max-minutes must be positive; --wait-minutes must be >= 0; "
                            "--size must be >= 1")


def test_the_deadline_stops_before_a_unit_that_would_not_fit(tmp_path, caplog):
    with StageRun("train", _Config(store=str(tmp_path), max_minutes=1 / 60)) as run:
        run.check_deadline(0.0)
        with pytest.raises(DeadlineReached):
            run.check_deadline(5.0)
        assert run.fits(0.1) and not run.fits(120.0)
        assert "do not fit in --max-minutes" in caplog.text
    with StageRun("train", _Config(store=str(tmp_path))) as run:
        run.check_deadline(1e9)  # no --max-minutes: never stops
        assert run.fits(1e9)


def test_every_stage_cleans_every_folder_it_commits_into(tmp_path):
    assert stage_folders("add") == ("index", "index/parts")
    root = tmp_path / "store"
    for s in STAGES:
        for folder in s.folders:
            (root / folder).mkdir(parents=True, exist_ok=True)
            (root / folder / "x.bin.tmp-0000abcd").write_bytes(b"partial")
            (root / folder / "unmarked.bin").write_bytes(b"orphan")
    (root / "run.json.tmp-0000abcd").write_bytes(b"{")
    store = Store(root)
    for s in STAGES:
        with StageRun(s.name, _Config(store=store.url)) as run:
            run.freeze({"size": 1})
    assert leftovers(Path(store.root)) == []
    left = sorted(str(p.relative_to(store.root)) for p in Path(store.root).rglob("*.bin"))
    assert left == []
    assert (Path(store.root) / "index" / "parts").is_dir()  # a nested folder is not an orphan


# ------------------------------------------------------------------ a kill mid-commit

CORPUS_N, SHARD = 40, 20
COMMANDS = {
    "preprocess": ["--source", "{corpus}", "--shard-size", str(SHARD), "--workers", "2"],
    "extract": ["--weights", "none", "--input-size", "32", "--workers", "1"],
    "train": [], "add": [], "prefilter": [],
    "evaluate": ["--queries", "20", "--latency-queries", "3"],
}


@pytest.fixture(scope="module")
def built(tmp_path_factory) -> tuple[Path, Path]:
    """A tiny corpus taken through every stage by the main command: (corpus, store)."""
    root = tmp_path_factory.mktemp("built")
    corpus = root / "corpus"
    write_corpus(corpus, CORPUS_N, size=(48, 40))
    store = root / "store"
    r = subprocess.run([sys.executable, "-m", "workflow", "all", "--source", str(corpus),
                        "--store", str(store), "--scratch", str(root / "scratch"),
                        "--shard-size", str(SHARD), "--workers", "2", "--weights", "none",
                        "--input-size", "32", "--queries", "20", "--no-progress"],
                       cwd=ROOT, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr[-3000:]
    return corpus, store


def _command(stage: str, store: Path, corpus: Path, scratch: Path) -> list[str]:
    extra = [a.format(corpus=corpus) for a in COMMANDS[stage]]
    return [stage, "--store", str(store), "--scratch", str(scratch), "--no-progress", *extra]


def _same_outputs(stage: str, got: Path, want: Path) -> None:
    if stage == "evaluate":  # timings differ; the ground truth may not
        with np.load(got / "evaluation" / "groundtruth.npz") as a, \
                np.load(want / "evaluation" / "groundtruth.npz") as b:
            assert all(np.array_equal(a[k], b[k]) for k in b.files)
        return
    folder = stage_folders(stage)[0]
    files = sorted(p.relative_to(want) for p in (want / folder).rglob("*") if p.is_file())
    assert files
    for rel in files:
        assert (got / rel).read_bytes() == (want / rel).read_bytes(), rel


@pytest.mark.slow
@pytest.mark.parametrize("stage,target", [
    ("preprocess", "images/shard-00001.h5"), ("preprocess", "images/report.json"),
    ("extract", "features/shard-00000.h5"),
    ("train", "trained/index.faiss"),
    ("add", "index/parts/shard-00001.faiss"), ("add", "index/rerank.npy"),
    ("add", "index/index.faiss"),
    ("prefilter", "prefilter/annoy.ann"),
    ("evaluate", "evaluation/report.md"),
])
def test_a_kill_while_a_file_is_committed_leaves_nothing_behind(tmp_path, built, stage,
                                                                  target):
    """SIGKILL while the temporary copy of `target` is in the store, complete and not yet
    renamed; the same command again gives the uninterrupted run's bytes and leaves no
    temporary file in any folder."""
    corpus, ref = built
    store = tmp_path / "store"
    shutil.copytree(ref, store)
    r = subprocess.run([sys.executable, "-m", "workflow", "reset", stage, "--store",
                        str(store), "--yes"], cwd=ROOT, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    cmd = _command(stage, store, corpus, tmp_path / "scratch")
    flag = tmp_path / "held"
    p = subprocess.Popen([sys.executable, str(ROOT / "tests" / "slow_commit.py"), target,
                          str(flag), *cmd], cwd=ROOT, stdout=subprocess.DEVNULL,
                         stderr=subprocess.DEVNULL, start_new_session=True)
    t0 = time.monotonic()
    while not flag.exists() and p.poll() is None and time.monotonic() - t0 < 300:
        time.sleep(0.01)
    assert flag.exists(), f"the stage never committed {target} (exit status {p.poll()})"
    os.killpg(p.pid, signal.SIGKILL)
    p.wait()
    assert [x for x in leftovers(store) if x.startswith(target)], "the kill came too late"
    r = subprocess.run([sys.executable, "-m", "workflow", *cmd], cwd=ROOT,
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stderr[-3000:]
    assert leftovers(store) == []
    _same_outputs(stage, store, ref)
