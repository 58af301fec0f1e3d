"""A fault-injecting filesystem, `flaky://`, for tests: the local filesystem, except that
with seeded probabilities an operation raises an I/O error, stalls, or a copy stops
half-way (an upload that leaves a partial file, a download that drops the connection),
like a Drive mount that disconnects.

    register(p_error=0.05, seed=1)          # then use a store URL flaky:///abs/path
"""
from __future__ import annotations

import collections
import os
import random
import threading
import time

import fsspec
from fsspec.implementations.local import LocalFileSystem


class FlakyFileSystem(LocalFileSystem):
    protocol = "flaky"
    root_marker = "/"
    p_error = 0.0
    p_stall = 0.0
    p_partial = 0.0
    stall_seconds = 0.05
    rng = random.Random(0)
    lock = threading.Lock()
    injected: collections.Counter = collections.Counter()

    @classmethod
    def _strip_protocol(cls, path):
        if isinstance(path, str) and path.startswith("flaky://"):
            path = path[len("flaky://"):]
        return super()._strip_protocol(path)

    def _fault(self, op: str, path, copy: bool = False) -> bool:
        """Maybe stall; raise an injected error with probability p_error; for a copy,
        return whether it should stop half-way."""
        with self.lock:
            stall, err, partial = (self.rng.random() < self.p_stall,
                                   self.rng.random() < self.p_error,
                                   self.rng.random() < self.p_partial)
        if stall:
            self.injected["stall"] += 1
            time.sleep(self.stall_seconds)
        if err:
            self.injected[f"error:{op}"] += 1
            raise OSError(f"flaky drive: injected I/O error in {op} {path}")
        if partial and copy:
            self.injected[f"cut:{op}"] += 1
        return partial and copy

    def _open(self, path, mode="rb", **kw):
        self._fault("open", path)
        return super()._open(path, mode, **kw)

    def ls(self, path, detail=False, **kw):
        self._fault("ls", path)
        return super().ls(path, detail=detail, **kw)

    def info(self, path, **kw):
        self._fault("info", path)
        return super().info(path, **kw)

    def mv(self, path1, path2, **kw):
        self._fault("rename", path1)
        return super().mv(path1, path2, **kw)

    def rm(self, path, recursive=False, maxdepth=None):
        self._fault("rm", path)
        return super().rm(path, recursive=recursive, maxdepth=maxdepth)

    def put_file(self, lpath, rpath, **kw):
        if self._fault("upload", rpath, copy=True):  # half the bytes arrive, then the link drops
            self._half_copy(lpath, self._strip_protocol(rpath))
            raise OSError(f"flaky drive: connection dropped while uploading {rpath}")
        return super().put_file(lpath, rpath, **kw)

    def get_file(self, rpath, lpath, **kw):
        if self._fault("download", rpath, copy=True):
            self._half_copy(self._strip_protocol(rpath), lpath)
            raise OSError(f"flaky drive: connection dropped while downloading {rpath}")
        return super().get_file(rpath, lpath, **kw)

    @staticmethod
    def _half_copy(src: str, dst: str) -> None:
        with open(src, "rb") as f:
            data = f.read()
        os.makedirs(os.path.dirname(dst) or ".", exist_ok=True)
        with open(dst, "wb") as f:
            f.write(data[:len(data) // 2])


def register(p_error: float = 0.05, p_stall: float = 0.02, p_partial: float = 0.05,
             seed: int = 0) -> type[FlakyFileSystem]:
    """Make `flaky://` available with these fault rates (reset the counts)."""
    FlakyFileSystem.p_error, FlakyFileSystem.p_stall = p_error, p_stall
    FlakyFileSystem.p_partial = p_partial
    FlakyFileSystem.rng = random.Random(seed)
    FlakyFileSystem.injected = collections.Counter()
    fsspec.register_implementation("flaky", FlakyFileSystem, clobber=True)
    FlakyFileSystem.clear_instance_cache()
    return FlakyFileSystem
