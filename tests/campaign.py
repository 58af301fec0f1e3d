"""A crash campaign: the whole workflow, stage by stage in subprocesses, killed with
SIGKILL at seeded random moments (some while a file is being committed) and resumed
until done; then compared with an uninterrupted run.

Used by `tests/test_campaign.py` (a short campaign on every CI run) and by
`bench/crash_campaign.py` (30 kills or more).
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import h5py
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
TMP_TAG = ".tmp-"


def stage_commands(store: Path, corpus: Path, shard_size: int,
                   update: list[Path] | None = None) -> list[tuple[str, list[str]]]:
    """Each stage's command line, as a user runs them one after another; with `update`
    (the complete source list), after the collection changed."""
    base = [sys.executable, "-m", "workflow"]
    common = ["--store", str(store), "--no-progress", "--scratch", str(store) + "-scratch"]
    sources = ["--source", str(corpus)] if update is None else \
        ["--update", *(a for src in update for a in ("--source", str(src)))]
    return [
        ("preprocess", base + ["preprocess", *sources, "--shard-size",
                               str(shard_size), "--workers", "2", *common]),
        ("extract", base + ["extract", "--weights", "none", "--input-size", "32",
                            "--batch-size", "4", *common]),
        ("train", base + ["train", *common]),
        ("add", base + ["add", *common]),
        ("prefilter", base + ["prefilter", *common]),
        ("evaluate", base + ["evaluate", "--queries", "30", "--latency-queries", "3",
                             "--checkpoint-seconds", "0", *common]),
    ]


def units_done(store: Path, stage: str) -> int:
    """Committed units of a stage (markers), plus exact-search shards checkpointed."""
    d = store / "_done" / stage
    if not d.is_dir():
        return 0
    n = sum(1 for p in d.iterdir() if p.suffix == ".json" and TMP_TAG not in p.name)
    partial = d / "groundtruth-partial.json"
    try:
        n += len(json.loads(partial.read_text())["done"])
    except (OSError, ValueError, KeyError):
        pass
    return n


def committing(store: Path) -> bool:
    """A temporary file exists in the store: a commit is under way."""
    return any(TMP_TAG in p.name for p in store.rglob("*"))


@dataclass
class StageLog:
    stage: str
    runs: int = 0
    kills: int = 0
    kills_in_commit: int = 0
    seconds: float = 0.0
    reference_seconds: float = 0.0


@dataclass
class Campaign:
    stages: list[StageLog] = field(default_factory=list)

    @property
    def kills(self) -> int:
        return sum(s.kills for s in self.stages)

    def summary(self) -> str:
        """Kills survived and time lost per stage. Each kill loses at most the unit in
        flight (a shard, a part, or the single unit of train and prefilter), plus the
        start-up of the run it ended."""
        lines = ["| stage | kills | during a commit | runs | uninterrupted | with kills | "
                 "time lost |", "|---|---:|---:|---:|---:|---:|---:|"]
        for s in self.stages:
            lines.append(f"| {s.stage} | {s.kills} | {s.kills_in_commit} | {s.runs} | "
                         f"{s.reference_seconds:.1f} s | {s.seconds:.1f} s | "
                         f"{s.seconds - s.reference_seconds:.1f} s |")
        ref = sum(s.reference_seconds for s in self.stages)
        got = sum(s.seconds for s in self.stages)
        lines.append(f"| all | {self.kills} | {sum(s.kills_in_commit for s in self.stages)} "
                     f"| {sum(s.runs for s in self.stages)} | {ref:.1f} s | {got:.1f} s | "
                     f"{got - ref:.1f} s |")
        return "\n".join(lines)


def _run(cmd: list[str]) -> float:
    t = time.monotonic()
    r = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr[-3000:]
    return time.monotonic() - t


def reference_run(store: Path, corpus: Path, shard_size: int) -> dict[str, float]:
    return {name: _run(cmd) for name, cmd in stage_commands(store, corpus, shard_size)}


def crash_stage(store: Path, name: str, cmd: list[str], kills: int, rng, took: float,
                log: StageLog) -> None:
    """Kill the stage `kills` times, then let it finish. A third of the kills wait for a
    commit to be under way; the others come at a random moment of a run's length."""
    while log.kills < kills:
        t = time.monotonic()
        p = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.DEVNULL,
                             stderr=subprocess.DEVNULL, start_new_session=True)
        log.runs += 1
        in_commit = rng.random() < 1 / 3
        when = t + float(rng.uniform(0.05, 0.8)) * took
        while p.poll() is None and not (committing(store) if in_commit
                                        else time.monotonic() >= when):
            time.sleep(0.001)
        if p.poll() is not None:  # it finished first: the stage is done
            assert p.returncode == 0, f"{name} exited with {p.returncode}"
            log.seconds += time.monotonic() - t
            return
        log.kills_in_commit += committing(store)
        os.killpg(p.pid, signal.SIGKILL)
        p.wait()
        log.kills += 1
        log.seconds += time.monotonic() - t
    log.runs += 1
    log.seconds += _run(cmd)


def crash_campaign(root: Path, corpus: Path, kills: int, seed: int,
                   shard_size: int = 5) -> tuple[Campaign, Path, Path]:
    """The campaign with `kills` kills spread over the stages (kills a stage finished too
    soon for pass on to the next), each stage run uninterrupted into the reference store
    just before: the kills come at moments drawn from its time, measured under the same
    load. Returns the log and both stores."""
    ref, store = root / "reference", root / "crashed"
    rng = np.random.default_rng(seed)
    cmds = stage_commands(store, corpus, shard_size)
    share = np.full(len(cmds), kills // len(cmds))
    share[:kills % len(cmds)] += 1
    camp = Campaign()
    carry = 0
    for (name, cmd), (_, ref_cmd), k in zip(cmds, stage_commands(ref, corpus, shard_size),
                                            share):
        log = StageLog(name, reference_seconds=_run(ref_cmd))
        crash_stage(store, name, cmd, int(k) + carry, rng, log.reference_seconds, log)
        carry = int(k) + carry - log.kills  # kills a stage finished too soon for go on
        camp.stages.append(log)
    return camp, ref, store


def update_campaign(root: Path, corpus: Path, grow, kills: int, seed: int,
                    shard_size: int = 5) -> tuple[Campaign, Path, Path, Path]:
    """Build the first corpus version uninterrupted, then let `grow()` change the
    collection (it returns the complete source list) and run the update twice from copies
    of that store: uninterrupted, and with `kills` kills spread over its stages. Returns
    the log, the store before the update, and both updated stores."""
    import shutil
    before, ref, store = root / "before", root / "reference", root / "crashed"
    reference_run(before, corpus, shard_size)
    sources = grow()
    shutil.copytree(before, ref)
    shutil.copytree(before, store)
    rng = np.random.default_rng(seed)
    cmds = stage_commands(store, corpus, shard_size, sources)
    camp, carry = Campaign(), 0
    for i, ((name, cmd), (_, ref_cmd)) in enumerate(
            zip(cmds, stage_commands(ref, corpus, shard_size, sources))):
        k = kills // len(cmds) + (i < kills % len(cmds))
        log = StageLog(name, reference_seconds=_run(ref_cmd))  # as in crash_campaign
        crash_stage(store, name, cmd, k + carry, rng, log.reference_seconds, log)
        carry = k + carry - log.kills
        camp.stages.append(log)
    return camp, before, ref, store


def unchanged_by_update(before: Path, after: Path) -> None:
    """Every shard, part, plan segment and id committed before an update is still there,
    byte for byte."""
    kept = [p for folder in ("images", "features", "index/parts")
            for p in (before / folder).glob("*") if p.is_file() and
            (p.name.startswith(("shard-", "plan")))]
    assert kept
    for p in kept:
        rel = p.relative_to(before)
        assert (after / rel).read_bytes() == p.read_bytes(), f"{rel} changed in the update"


# ------------------------------------------------------------------ the checks

def compare_stores(ref: Path, got: Path) -> None:
    """Shards byte-identical, the same index results, the same recall; nothing left over."""
    for folder in ("images", "features", "trained", "index", "prefilter"):
        want = {p.relative_to(ref): p.read_bytes() for p in (ref / folder).rglob("*")
                if p.is_file()}
        have = {p.relative_to(got): p.read_bytes() for p in (got / folder).rglob("*")
                if p.is_file()}
        assert sorted(have) == sorted(want), folder
        for rel in want:
            assert have[rel] == want[rel], f"{rel} differs from the uninterrupted run's"
    assert _recalls(got) == _recalls(ref)
    with np.load(ref / "evaluation" / "groundtruth.npz") as a, \
            np.load(got / "evaluation" / "groundtruth.npz") as b:
        assert all(np.array_equal(a[k], b[k]) for k in a.files)


def _recalls(store: Path) -> dict:
    rep = json.loads((store / "evaluation" / "report.json").read_text())
    return {m: [{k: v for k, v in p.items() if k.startswith(("recall", "tie", "params"))}
                for p in pts] for m, pts in rep["sweeps"].items()}


def check_clean(store: Path) -> None:
    """No temporary or orphan file; every id exactly once; one marker per unit."""
    files = {str(p.relative_to(store)) for p in store.rglob("*") if p.is_file()}
    tmp = sorted(f for f in files if TMP_TAG in f)
    assert not tmp, f"temporary files left in the store: {tmp}"
    markers = [json.loads((store / f).read_text()) for f in files if f.startswith("_done/")]
    marked = [m["path"] for m in markers]
    assert len(marked) == len(set(marked)), "a file is marked done twice"
    units = [(m["stage"], m["unit"]) for m in markers]
    assert len(units) == len(set(units)), "a unit is counted done twice"
    outputs = {f for f in files if not f.startswith(("_done/", "_leases/")) and f != "run.json"}
    assert outputs == set(marked), f"orphans: {sorted(outputs - set(marked))[:5]}"
    ids = []
    for f in sorted(f for f in files if f.startswith("images/shard-")):
        with h5py.File(store / f, "r") as h:
            ids.extend(h["ids"][:].tolist())
    assert ids == list(range(len(ids))), "an id is lost or duplicated in the image shards"
    fids = []
    for f in sorted(f for f in files if f.startswith("features/shard-")):
        with h5py.File(store / f, "r") as h:
            fids.extend(h["ids"][:].tolist())
    assert len(fids) == len(set(fids)) and set(fids) <= set(ids), "feature ids"
