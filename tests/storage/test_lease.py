import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from workflow.errors import LeaseError
from workflow.storage.lease import Lease, proc_stat, read_leases
from workflow.storage.store import Store


@pytest.fixture
def store(tmp_path):
    return Store(tmp_path / "store", scratch=tmp_path / "s")


def test_second_run_is_refused_while_the_first_holds_the_lease(store):
    with Lease(store, "preprocess"):
        assert set(read_leases(store)) == {"preprocess"}
        with pytest.raises(LeaseError, match="--takeover"):
            Lease(store, "preprocess").acquire()
        with Lease(store, "extract"):  # other stages are independent
            pass
    assert read_leases(store) == {}


def test_lease_of_a_dead_process_on_this_host_is_taken_over(store):
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    old = Lease(store, "preprocess")
    store.write_json(old.rel, {**old._record(), "pid": dead.pid})
    with Lease(store, "preprocess") as new:
        assert store.read_json(new.rel)["holder"] == new.holder


needs_proc = pytest.mark.skipif(not os.path.exists("/proc/self/stat"),
                                reason="needs Linux's /proc")


@needs_proc
def test_lease_of_a_killed_run_left_a_zombie_is_taken_over_at_once(store):
    """A run killed with SIGKILL whose parent has not reaped it (a container whose PID 1
    reaps no orphans) is a zombie: os.kill(pid, 0) still succeeds, yet it is dead."""
    from conftest import ROOT
    code = textwrap.dedent(f"""
        import time
        from workflow.storage.lease import Lease
        from workflow.storage.store import Store
        Lease(Store({store.root!r}, scratch={str(store.scratch)!r}), "preprocess").acquire()
        print("held", flush=True)
        time.sleep(600)
    """)
    child = subprocess.Popen([sys.executable, "-c", code], cwd=ROOT, stdout=subprocess.PIPE,
                             text=True)
    try:
        assert child.stdout.readline().strip() == "held"
        assert read_leases(store)["preprocess"]["pid"] == child.pid
        os.kill(child.pid, signal.SIGKILL)  # and no wait(): it stays a zombie
        until = time.monotonic() + 10
        while proc_stat(child.pid)[0] != "Z" and time.monotonic() < until:
            time.sleep(0.02)
        assert proc_stat(child.pid)[0] == "Z"
        t = time.monotonic()
        with Lease(store, "preprocess") as new:  # no LeaseError, no waiting
            assert store.read_json(new.rel)["holder"] == new.holder
        assert time.monotonic() - t < 5
    finally:
        child.kill()
        child.wait()
        child.stdout.close()


@needs_proc
def test_lease_of_a_live_pid_with_another_start_time_is_taken_over(store):
    """The pid was reused: the process that holds it now is not the run that took the
    lease (its start time differs from the one recorded)."""
    old = Lease(store, "preprocess")  # this live process, as far as host and pid go
    store.write_json(old.rel, {**old._record(), "started": old.started + 1})
    with Lease(store, "preprocess") as new:
        assert store.read_json(new.rel)["holder"] == new.holder
        assert store.read_json(new.rel)["started"] == old.started


def test_stale_heartbeat_is_taken_over_and_the_old_holder_notices(store):
    old = Lease(store, "preprocess", heartbeat=0.05).acquire()
    rec = store.read_json(old.rel)
    store.write_json(old.rel, {**rec, "pid": 1, "host": "elsewhere",
                               "heartbeat": time.time() - 3600})
    new = Lease(store, "preprocess").acquire()
    time.sleep(0.3)
    with pytest.raises(LeaseError, match="taken over"):
        old.check()
    old.release()  # must not remove the new holder's lease
    assert store.read_json(new.rel)["holder"] == new.holder
    new.release()


def test_takeover_flag_takes_a_fresh_lease(store):
    first = Lease(store, "preprocess").acquire()
    rec = store.read_json(first.rel)
    store.write_json(first.rel, {**rec, "host": "other-host"})
    with pytest.raises(LeaseError, match="other-host"):
        Lease(store, "preprocess").acquire()
    Lease(store, "preprocess", takeover=True).acquire().release()
    first.release()


def test_a_second_run_waits_for_the_lease_when_asked(store):
    import threading
    first = Lease(store, "train").acquire()
    threading.Timer(0.6, first.release).start()
    t = time.monotonic()
    with Lease(store, "train", wait=10, poll=0.1):
        assert time.monotonic() - t >= 0.5
    with Lease(store, "train"):
        with pytest.raises(LeaseError, match="--wait-minutes"):
            Lease(store, "train", wait=0.3, poll=0.1).acquire()


def test_a_stage_started_while_another_run_holds_it(tmp_path):
    """A real second run of a stage: refused at once naming the holder, or, with
    --wait-minutes, waiting until the holder finishes and then doing the work."""
    import os
    import threading

    from conftest import ROOT, feature_store
    store_path = feature_store(tmp_path, n=300, d=32, shard_size=100)
    holder = Lease(Store(store_path), "train", heartbeat=0.5).acquire()
    cmd = [sys.executable, "-m", "workflow", "train", "--store", str(store_path),
           "--no-progress"]
    refused = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
    assert refused.returncode == 2, refused.stderr[-2000:]
    assert "is being run by another process (host" in refused.stderr
    assert f"pid {os.getpid()}" in refused.stderr
    assert not (store_path / "trained").exists()  # nothing done, nothing lost
    threading.Timer(2.0, holder.release).start()
    waited = subprocess.run(cmd + ["--wait-minutes", "2"], cwd=ROOT, capture_output=True,
                            text=True)
    assert waited.returncode == 0, waited.stderr[-2000:]
    assert "waiting" in waited.stderr and "train complete" in waited.stdout


def test_temporary_lease_files_of_killed_runs_are_removed_by_the_next_holder(store):
    lease_dir = Path(store.root) / "_leases"
    lease_dir.mkdir(parents=True, exist_ok=True)
    (lease_dir / "extract.json.tmp-d4126fa1").write_text("{")  # killed mid-heartbeat
    (lease_dir / "train.json.tmp-0000abcd").write_text("{")    # another stage's
    with Lease(store, "extract"):
        assert sorted(p.name for p in lease_dir.iterdir()) == ["extract.json",
                                                               "train.json.tmp-0000abcd"]


def test_a_holder_leaves_no_temporary_lease_file_when_it_releases(store):
    lease_dir = Path(store.root) / "_leases"
    with Lease(store, "extract"):
        (lease_dir / "extract.json.tmp-0badbeat").write_text("{")  # a write cut short
        (lease_dir / "train.json.tmp-0000abcd").write_text("{")    # another stage's
    assert sorted(p.name for p in lease_dir.iterdir()) == ["train.json.tmp-0000abcd"]
