import json
import os

import fsspec
import pytest
from fsspec.implementations.memory import MemoryFileSystem

from workflow.errors import CorruptFile, FingerprintMismatch, StoreError
from workflow.storage.store import DONE_DIR, Store
from workflow.utils import retry_io


@pytest.fixture(params=["local", "memory"])
def store(request, tmp_path):
    if request.param == "local":
        yield Store(tmp_path / "store", scratch=tmp_path / "s")
        return
    url = f"memory://store-{os.getpid()}-{id(tmp_path)}"
    yield Store(url, scratch=tmp_path / "s")
    fsspec.filesystem("memory").rm(url.split("://")[1], recursive=True)


def _local_file(tmp_path, data=b"hello shard"):
    p = tmp_path / "out.bin"
    p.write_bytes(data)
    return p


def test_commit_writes_file_then_marker(store, tmp_path):
    m = store.commit(_local_file(tmp_path), "images/a.bin", "st", "a", "fp1", {"x": 1})
    assert store.read_bytes("images/a.bin") == b"hello shard"
    assert store.marker("st", "a") == m
    assert m.size == 11 and m.extra == {"x": 1}
    assert store.listdir("images") == ["a.bin"]


def test_marker_must_match_file(store, tmp_path):
    store.commit(_local_file(tmp_path), "images/a.bin", "st", "a", "fp")
    store.fs.pipe_file(store.path("images/a.bin"), b"short")
    assert store.marker("st", "a") is None


def test_cleanup_removes_leftovers_of_interrupted_commits(store, tmp_path):
    store.commit(_local_file(tmp_path), "images/good.bin", "st", "good", "fp")
    store.fs.pipe_file(store.path("images/half.bin.tmp-1234abcd"), b"partial")
    store.fs.pipe_file(store.path("images/nomarker.bin"), b"renamed, marker not yet written")
    store.commit(_local_file(tmp_path), "images/lost.bin", "st", "lost", "fp")
    store.remove("images/lost.bin")
    store.fs.pipe_file(store.path(f"{DONE_DIR}/st/x.json.tmp-00000000"), b"{")
    removed = store.cleanup("st", "images")
    assert set(removed) == {"images/half.bin.tmp-1234abcd", "images/nomarker.bin",
                            f"{DONE_DIR}/st/lost.json", f"{DONE_DIR}/st/x.json.tmp-00000000"}
    assert store.listdir("images") == ["good.bin"]
    assert set(store.markers("st")) == {"good"}


def test_replacing_a_unit_never_leaves_a_marker_for_other_bytes(store, tmp_path, monkeypatch):
    store.commit(_local_file(tmp_path, b"first version"), "ev/r.bin", "st", "r", "fp")
    second = _local_file(tmp_path, b"secnd version")  # same size, other bytes

    def killed(*a, **k):
        raise KeyboardInterrupt  # the process dies after the rename, before the marker
    monkeypatch.setattr(store, "write_json", killed)
    with pytest.raises(KeyboardInterrupt):
        store.commit(second, "ev/r.bin", "st", "r", "fp")
    monkeypatch.undo()
    assert store.marker("st", "r") is None
    assert store.cleanup("st", "ev") == ["ev/r.bin"]
    m = store.commit(second, "ev/r.bin", "st", "r", "fp")
    assert store.read_bytes("ev/r.bin") == b"secnd version" and store.marker("st", "r") == m


def test_fetch_verifies_against_marker(store, tmp_path):
    m = store.commit(_local_file(tmp_path), "images/a.bin", "st", "a", "fp")
    got = store.fetch(m, tmp_path / "in" / "a.bin")
    assert got.read_bytes() == b"hello shard"
    store.fs.pipe_file(store.path("images/a.bin"), b"hello SHARD")  # same size, other bytes
    (tmp_path / "in" / "a.bin").unlink()
    store.retries = 2
    store.retry_delay = 0.01
    with pytest.raises(CorruptFile, match="a.bin no longer matches the checksum .* run the "
                                          "st stage again"):
        store.fetch(m, tmp_path / "in" / "a.bin")
    assert not (tmp_path / "in" / "a.bin").exists()
    assert store.marker("st", "a") is None and not store.exists("images/a.bin")


def test_a_bad_transfer_is_retried_not_taken_for_damage(store, tmp_path, monkeypatch):
    m = store.commit(_local_file(tmp_path), "images/a.bin", "st", "a", "fp")
    real, calls = store.fs.get_file, []

    def garbled_once(src, dst, **kw):
        real(src, dst, **kw)
        calls.append(dst)
        if len(calls) == 1:
            with open(dst, "r+b") as f:
                f.write(b"X")
    monkeypatch.setattr(store.fs, "get_file", garbled_once)
    store.retry_delay = 0.01
    assert store.fetch(m, tmp_path / "in" / "a.bin").read_bytes() == b"hello shard"
    assert len(calls) == 2 and store.marker("st", "a") == m


def test_freeze_stage_names_the_differing_settings(store):
    fp = store.freeze_stage("preprocess", {"image_size": 256, "shard_size": 100})
    assert store.freeze_stage("preprocess", {"image_size": 256, "shard_size": 100}) == fp
    with pytest.raises(FingerprintMismatch) as e:
        store.freeze_stage("preprocess", {"image_size": 320, "shard_size": 100})
    msg = str(e.value)
    assert "image_size: frozen 256, now 320" in msg and "shard_size" not in msg
    assert "reset" in msg
    assert json.loads(store.read_bytes("run.json"))["stages"]["preprocess"]["fingerprint"] == fp


def test_parent_fingerprint_is_part_of_the_stage_fingerprint(store):
    a = store.freeze_stage("extract", {"model": "b0"}, parent="p1")
    store.forget_stage("extract")
    assert store.freeze_stage("extract", {"model": "b0"}, parent="p2") != a


class FlakyFS(MemoryFileSystem):
    """A memory filesystem whose put_file fails `fails` times, like a dropped mount."""
    fails = 0
    cachable = False

    def put_file(self, lpath, rpath, **kw):
        if FlakyFS.fails > 0:
            FlakyFS.fails -= 1
            super().pipe_file(rpath, b"half")  # leaves a partial temp file behind
            raise OSError(5, "Input/output error (transport endpoint is not connected)")
        return super().put_file(lpath, rpath, **kw)


def test_commit_retries_transient_errors_and_leaves_no_partial_file(tmp_path, caplog):
    fs = FlakyFS()
    store = Store("memory://flaky", scratch=tmp_path / "s", retry_delay=0.01)
    store.fs = fs
    FlakyFS.fails = 2
    store.commit(_local_file(tmp_path), "images/a.bin", "st", "a", "fp")
    assert store.read_bytes("images/a.bin") == b"hello shard"
    assert store.listdir("images") == ["a.bin"]
    assert sum("retry" in r.message for r in caplog.records) == 2
    FlakyFS.fails = 100
    with pytest.raises(StoreError, match="still failing after 6 attempts"):
        store.commit(_local_file(tmp_path), "images/b.bin", "st", "b", "fp")
    assert store.marker("st", "b") is None
    assert store.listdir("images") == ["a.bin"]
    FlakyFS.fails = 0
    fs.rm("/flaky", recursive=True)


def test_retry_io_does_not_retry_permanent_errors():
    calls = []

    def missing():
        calls.append(1)
        raise FileNotFoundError("nope")
    with pytest.raises(FileNotFoundError):
        retry_io(missing, "read", sleep=lambda s: None)
    assert len(calls) == 1


def test_a_store_that_is_not_writable_says_so(tmp_path, monkeypatch):
    s = Store(tmp_path / "store", scratch=tmp_path / "s")

    def denied(*a, **k):
        raise PermissionError(13, "Permission denied", str(tmp_path / "store" / "x"))
    monkeypatch.setattr(s.fs, "pipe_file", denied)
    with pytest.raises(StoreError, match="permission denied .*store is writable"):
        s.write_json("run.json", {})


def test_an_object_store_out_of_reach_is_a_store_error_not_a_traceback(tmp_path, monkeypatch):
    """botocore's network errors are no OSErrors: retried all the same, then one
    StoreError (exit status 2) that says what failed and where."""
    botocore = pytest.importorskip("botocore.exceptions")
    s = Store(f"memory://reach-{os.getpid()}", scratch=tmp_path / "s", retry_delay=0.001)

    def refused(*a, **k):
        raise botocore.EndpointConnectionError(endpoint_url="http://127.0.0.1:9/b/run.json")
    monkeypatch.setattr(s.fs, "cat_file", refused)
    with pytest.raises(StoreError, match=r"read memory://reach-\d+/run.json: "
                       r"EndpointConnectionError: .*http://127.0.0.1:9/b/run.json.* \(still "
                       r"failing after 6 attempts; check that the memory:// service is "
                       "reachable"):
        s.read_json("run.json")


def test_a_large_verified_copy_is_not_hashed_again_unless_it_changed(store, tmp_path,
                                                                     monkeypatch):
    import workflow.storage.store as mod
    monkeypatch.setattr(mod, "STAMP_MIN_BYTES", 4)
    src = tmp_path / "big.bin"
    src.write_bytes(b"a large re-rank store")
    m = store.commit(src, "index/big.bin", "add", "big", "fp")
    local = store.fetch(m, tmp_path / "in" / "big.bin")
    hashed = []
    real = mod.sha256_file
    monkeypatch.setattr(mod, "sha256_file", lambda p: hashed.append(p) or real(p))
    assert store.fetch(m, local) == local and hashed == []  # the stamp says it is verified
    local.write_bytes(b"a large re-rank storX")  # changed in place: hashed, fetched again
    assert store.fetch(m, local).read_bytes() == b"a large re-rank store" and hashed
