"""Batches in shared memory, for decoding processes to write model input into: no decoded
pixels are pickled, and the inference loop shares no GIL with the decoding.

Blocks are named after the creating process (`image-workflow-extract-<pid>-<tag>`), so
that a run can remove the blocks of runs that were killed (`remove_orphaned_blocks`).
"""
from __future__ import annotations

import logging
import os
from multiprocessing import shared_memory
from typing import NamedTuple

import numpy as np

logger = logging.getLogger(__name__)

# Names of our shared-memory blocks: the prefix, the creating process's pid, a random tag.
SHARED_PREFIX = "image-workflow-extract-"
SHARED_DIR = "/dev/shm"


class SharedSlice(NamedTuple):
    """Rows lo:hi of batch `slot` of the shared block `name` of shape [slots, bs, S, S, 3]."""
    name: str
    shape: tuple
    slot: int
    lo: int
    hi: int


def attach_shared(name: str) -> shared_memory.SharedMemory:
    """Open a block another process created and will unlink (only it tracks the block)."""
    try:
        return shared_memory.SharedMemory(name, track=False)  # Python >= 3.13
    except TypeError:
        return shared_memory.SharedMemory(name)


def remove_orphaned_blocks() -> list[str]:
    """Unlink the blocks of extract runs whose process is gone. Python's resource tracker
    unlinks a block when its creator dies, but a SIGKILL of the whole process group
    (what a terminal, a notebook or a job scheduler sends) kills the tracker too, and
    the block would stay in /dev/shm until reboot. Returns the names removed."""
    try:
        names = [n for n in os.listdir(SHARED_DIR) if n.startswith(SHARED_PREFIX)]
    except OSError:
        return []
    removed = []
    for name in names:
        try:
            pid = int(name[len(SHARED_PREFIX):].split("-")[0])
            os.kill(pid, 0)
            continue  # its run is alive
        except ProcessLookupError:
            pass
        except (ValueError, PermissionError):
            continue  # not ours to judge
        try:
            os.unlink(os.path.join(SHARED_DIR, name))
            removed.append(name)
        except OSError:
            pass
    if removed:
        logger.info("extract: removed %d shared-memory block(s) left by killed runs",
                    len(removed))
    return removed


def shared_memory_free() -> int | None:
    """Bytes free where shared memory lives (/dev/shm on Linux), None where unknown.
    Docker gives containers 64 MB there unless told otherwise; a block larger than what
    is free is created all the same and kills its writer with SIGBUS later."""
    try:
        st = os.statvfs(SHARED_DIR)
    except (OSError, AttributeError):
        return None
    return st.f_bavail * st.f_frsize


class SharedBatches:
    """Batch arrays in one shared-memory block. `shape` is [slots, bs, S, S, 3] (uint8);
    `take` gives a free batch, `release` returns it."""

    def __init__(self, shape: tuple):
        self.shape = shape
        self.shm = shared_memory.SharedMemory(
            f"{SHARED_PREFIX}{os.getpid()}-{os.urandom(4).hex()}", create=True,
            size=int(np.prod(self.shape)))
        self.arrays = np.ndarray(self.shape, np.uint8, buffer=self.shm.buf)
        self.free = list(range(shape[0]))

    def take(self) -> int | None:
        """A free batch, or None while all are out."""
        return self.free.pop(0) if self.free else None

    def release(self, slot: int) -> None:
        self.free.append(slot)

    def slice(self, slot: int, lo: int, hi: int) -> SharedSlice:
        return SharedSlice(self.shm.name, self.shape, slot, lo, hi)

    def close(self) -> None:
        self.shm.unlink()
        del self.arrays
        try:
            self.shm.close()
        except BufferError:  # a batch is still referenced (we are unwinding an error)
            pass
