"""Whether a store's files can be memory-mapped where they lie.

On a local disk they can: search, the service and the stages that only read the large
files (the re-rank store, the Annoy segments) map them in place, with nothing to copy
and no second copy taking disk space. Through Google Drive's FUSE mount, NFS, SMB or an
object-store mount, every random read would cost a round trip, so those files are first
copied to local scratch and verified (`Store.fetch`). File-system types not known to be
local disks are treated like network mounts. `WORKFLOW_STAGE_IN=always` copies in any
case (e.g. for a slow USB disk). `read_ahead` fills the page cache with such files, so
that the first random reads after a cold start do not each wait on the disk.
"""
from __future__ import annotations

import hashlib
import logging
import os
import re
from pathlib import Path

from ..errors import ConfigError

logger = logging.getLogger(__name__)

ENV = "WORKFLOW_STAGE_IN"
SETTINGS = ("auto", "always")
LOCAL_DISK_TYPES = frozenset({
    "ext2", "ext3", "ext4", "xfs", "btrfs", "zfs", "f2fs", "jfs", "reiserfs", "bcachefs",
    "nilfs2", "tmpfs", "ramfs", "overlay", "apfs", "hfs", "hfsplus"})
MOUNTINFO = "/proc/self/mountinfo"


def stage_in_setting() -> str:
    value = os.environ.get(ENV, "auto").strip().lower() or "auto"
    if value not in SETTINGS:
        raise ConfigError(f"{ENV}={value!r} is not understood: use one of "
                          f"{', '.join(SETTINGS)} (or leave it unset)")
    return value


def mount_type(path: str | os.PathLike, mountinfo: str = MOUNTINFO) -> str | None:
    """The type of the file system holding `path` (from Linux's mount table), or None
    where it cannot be told."""
    try:
        lines = Path(mountinfo).read_text().splitlines()
    except OSError:
        return None
    path = os.path.realpath(path)
    best, kind = None, None
    for line in lines:  # "id parent dev root MOUNT_POINT opts [tags] - TYPE source opts"
        fields = line.split()
        if "-" not in fields[6:] or len(fields) < 5:
            continue
        point = re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), fields[4])
        inside = path == point or path.startswith(point.rstrip("/") + "/")
        if inside and (best is None or len(point) >= len(best)):  # later mounts cover
            best, kind = point, fields[fields.index("-", 6) + 1]
    return kind


def reads_in_place(path: str | os.PathLike) -> bool:
    """Files under `path` can be memory-mapped where they lie (a local disk, and
    `WORKFLOW_STAGE_IN` is not `always`)."""
    return stage_in_setting() == "auto" and mount_type(path) in LOCAL_DISK_TYPES


def read_ahead(files: list[str], chunk: int = 4 << 20) -> None:
    """Read-ahead of whole files into the page cache, in chunks (Linux reads at most a
    few MB per request), as long as they fit in half the memory available."""
    if not hasattr(os, "posix_fadvise"):  # not Linux
        return
    import psutil
    budget = psutil.virtual_memory().available // 2
    for path in files:
        try:
            fd = os.open(path, os.O_RDONLY)
        except OSError:
            continue
        try:
            size = os.fstat(fd).st_size
            if size > budget:
                logger.info("not reading %s ahead: larger than half the free memory", path)
                break
            budget -= size
            for offset in range(0, size, chunk):
                os.posix_fadvise(fd, offset, chunk, os.POSIX_FADV_WILLNEED)
        except OSError as e:
            logger.debug("no read-ahead for %s: %s", path, e)
        finally:
            os.close(fd)


def default_scratch(store_url: str) -> Path:
    """A per-store scratch folder on local disk ($WORKFLOW_SCRATCH or the temp dir)."""
    base = os.environ.get("WORKFLOW_SCRATCH") or os.path.join(
        os.environ.get("TMPDIR", "/tmp"), "workflow-scratch")
    tag = hashlib.sha256(store_url.encode()).hexdigest()[:10]
    return Path(base) / tag
