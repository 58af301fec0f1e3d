"""Large committed files are memory-mapped in place on a local disk and staged in
through anything else (Drive's FUSE mount, NFS, an fsspec URL)."""
import os

import pytest

from workflow.errors import ConfigError, CorruptFile
from workflow.storage.mounts import ENV, mount_type, reads_in_place
from workflow.storage.store import Store

MOUNTINFO = """\
22 1 253:0 / / rw,relatime shared:1 - ext4 /dev/vda rw
40 22 0:35 / /content rw,nosuid - overlay overlay rw
51 40 0:44 / /content/drive rw,nosuid,nodev,relatime shared:7 - fuse.drive drive rw
52 51 0:45 / /content/drive/My\\040Drive/local rw - ext4 /dev/vdb rw
60 22 0:50 / /mnt/nfs rw - nfs4 server:/export rw
61 60 0:51 / /mnt/nfs rw - tmpfs tmpfs rw
"""


@pytest.fixture
def mountinfo(tmp_path):
    p = tmp_path / "mountinfo"
    p.write_text(MOUNTINFO)
    return str(p)


@pytest.mark.parametrize("path, kind", [
    ("/", "ext4"), ("/usr/lib", "ext4"), ("/content", "overlay"),
    ("/contentx/a", "ext4"),  # a name that starts like a mount point is not under it
    ("/content/drive/MyDrive/store", "fuse.drive"),
    ("/content/drive/My Drive/local/store", "ext4"),  # escaped space, nested mount
    ("/mnt/nfs/store", "tmpfs"),  # the later mount on the same point covers the first
])
def test_mount_type_is_the_innermost_latest_mount(mountinfo, path, kind):
    assert mount_type(path, mountinfo) == kind


def test_mount_type_is_unknown_without_a_mount_table(tmp_path):
    assert mount_type("/", str(tmp_path / "none")) is None


def test_the_setting_can_force_copies_and_is_checked(tmp_path, monkeypatch):
    monkeypatch.delenv(ENV, raising=False)
    local = mount_type(tmp_path) in ("ext4", "xfs", "btrfs", "tmpfs", "overlay")
    assert reads_in_place(tmp_path) == local
    monkeypatch.setenv(ENV, "always")
    assert not reads_in_place(tmp_path)
    monkeypatch.setenv(ENV, "sometimes")
    with pytest.raises(ConfigError, match=f"{ENV}='sometimes' is not understood"):
        reads_in_place(tmp_path)


def _committed(tmp_path, store: Store):
    src = tmp_path / "rerank.npy"
    src.write_bytes(b"x" * 64)
    return store.commit(src, "index/rerank.npy", "add", "rerank", "fp")


def test_read_path_is_the_stores_own_file_in_place(tmp_path, monkeypatch):
    store = Store(tmp_path / "store", scratch=tmp_path / "s")
    monkeypatch.setattr(Store, "in_place", True)
    m = _committed(tmp_path, store)
    got = store.read_path(m, tmp_path / "s" / "copy.npy")
    assert got == tmp_path / "store" / "index" / "rerank.npy"
    assert not (tmp_path / "s" / "copy.npy").exists()  # nothing copied


def test_read_path_stages_in_a_verified_copy_otherwise(tmp_path, monkeypatch):
    monkeypatch.setenv(ENV, "always")
    store = Store(tmp_path / "store", scratch=tmp_path / "s")
    assert not store.in_place
    m = _committed(tmp_path, store)
    got = store.read_path(m, tmp_path / "s" / "copy.npy")
    assert got == tmp_path / "s" / "copy.npy" and got.read_bytes() == b"x" * 64


def test_a_file_of_the_wrong_size_in_place_is_discarded_with_the_remedy(tmp_path,
                                                                        monkeypatch):
    store = Store(tmp_path / "store", scratch=tmp_path / "s")
    monkeypatch.setattr(Store, "in_place", True)
    m = _committed(tmp_path, store)
    with open(tmp_path / "store" / "index" / "rerank.npy", "ab") as f:
        f.write(b"more")
    with pytest.raises(CorruptFile, match=r"rerank.npy no longer matches .* run the add "):
        store.read_path(m, tmp_path / "s" / "copy.npy")
    assert store.marker("add", "rerank") is None
    assert not os.path.exists(tmp_path / "store" / "index" / "rerank.npy")


def test_read_ahead_asks_for_whole_files_in_chunks_while_they_fit(tmp_path, monkeypatch,
                                                                   caplog):
    import types

    import psutil

    from workflow.storage.mounts import read_ahead
    small, big = tmp_path / "small.npy", tmp_path / "big.ann"
    small.write_bytes(b"s" * 10)
    big.write_bytes(b"b" * 100)
    asked = []
    monkeypatch.setattr(os, "posix_fadvise", lambda fd, off, n, advice: asked.append(
        (os.fstat(fd).st_size, off, n, advice)), raising=False)
    monkeypatch.setattr(psutil, "virtual_memory", lambda: types.SimpleNamespace(
        available=2 * 50))
    with caplog.at_level("INFO"):
        read_ahead([str(small), str(tmp_path / "gone"), str(big)], chunk=4)
    assert asked == [(10, off, 4, os.POSIX_FADV_WILLNEED) for off in (0, 4, 8)]
    assert "not reading" in caplog.text and "big.ann" in caplog.text
