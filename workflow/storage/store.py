"""Drive-style storage that survives the runtime: atomic commits, markers, run.json.

Commit protocol for every output file: write it completely in local scratch, copy it to
the store under a temporary name, check its size and sha256, rename it to its final name,
then write its marker `_done/<stage>/<unit>.json` last. A unit is done if and only if its
marker exists and matches the file; anything else in the store is the leftover of an
interrupted run and is removed by `cleanup`.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import uuid
from collections.abc import Sequence
from functools import cached_property
from pathlib import Path
from typing import Any

import fsspec

from ..errors import CorruptFile, StoreError
from ..utils import retry_io, sha256_file
from .frozen import freeze
from .marker import Marker
from .mounts import default_scratch, reads_in_place
from .remote import endpoint_of, failure, open_bucket, protocols

logger = logging.getLogger(__name__)

RUN_FILE = "run.json"
DONE_DIR = "_done"
TMP_TAG = ".tmp-"
STAMP = ".verified"  # beside a fetched local copy: the marker it was checked against
STAMP_MIN_BYTES = 16 << 20
FORMAT_VERSION = 1


class Store:
    """A store root (local path or fsspec URL) plus a local scratch folder; every call
    that touches the store is retried on transient I/O errors."""

    def __init__(self, url: str | os.PathLike, scratch: str | os.PathLike | None = None,
                 verify: str = "sha256", retries: int = 6, retry_delay: float = 0.5,
                 storage_options: dict | None = None, create: bool = True):
        url = os.fspath(url)
        if "://" not in url:
            url = os.path.abspath(url)
        self.url = url
        self.fs, self.root = fsspec.core.url_to_fs(url, **(storage_options or {}))
        self.root = self.root.rstrip("/") or "/"
        self.is_local = "file" in protocols(self.fs)
        self.scratch = Path(scratch) if scratch else default_scratch(url)
        self.scratch.mkdir(parents=True, exist_ok=True)
        if verify not in ("sha256", "size"):
            raise ValueError(f"verify must be 'sha256' or 'size', not {verify!r}")
        self.verify, self.retries, self.retry_delay = verify, retries, retry_delay
        # in a bucket (s3fs, gcsfs, ...) there are no folders to make, and the bucket is
        # never made here: it is checked first
        self.bucketed = not self.is_local and hasattr(self.fs, "split_path")
        if self.bucketed:
            open_bucket(self.fs, self.root, url)
        elif create:
            self._retry(lambda: self.fs.makedirs(self.root, exist_ok=True), f"create store {url}")
        if not create and not self._retry(lambda: self.fs.isdir(self.root), f"open store {url}"):
            raise StoreError(f"there is no store at {url}; check --store " + (
                "(nothing is under that prefix in its bucket)" if self.bucketed
                else "(is Drive mounted?)"))

    def __repr__(self) -> str:
        return f"Store({self.url!r})"

    # -- paths and retried primitives -----------------------------------------------
    def path(self, rel: str) -> str:
        return f"{self.root}/{rel}" if self.root != "/" else f"/{rel}"

    def display(self, rel: str) -> str:
        """The path a user would type for `rel` (local path or URL)."""
        return f"{self.url.rstrip('/')}/{rel}"

    def _retry(self, fn, what: str):
        try:
            return retry_io(fn, what, attempts=self.retries, base_delay=self.retry_delay)
        except FileNotFoundError:
            raise
        except Exception as e:
            error = failure(what, e, self.fs, self.is_local, self.retries)
            if error is None:
                raise
            raise error from e

    @property
    def endpoint(self) -> str:
        """Where an object store's requests go, for messages (`remote.endpoint_of`)."""
        return endpoint_of(self.fs)

    def exists(self, rel: str) -> bool:
        def probe():  # not fs.exists(): it answers False on any error, even a dropped mount
            try:
                self.fs.info(self.path(rel))
                return True
            except FileNotFoundError:
                return False
        return self._retry(probe, f"check {self.display(rel)}")

    def size(self, rel: str) -> int | None:
        try:
            return int(self._retry(lambda: self.fs.info(self.path(rel))["size"],
                                   f"stat {self.display(rel)}"))
        except FileNotFoundError:
            return None

    def listdir(self, rel: str) -> list[str]:
        """Names (not paths) of the files directly inside `rel` ("" for the root); [] if
        it does not exist."""
        p = self.path(rel) if rel else self.root

        def ls():
            try:
                return self.fs.ls(p, detail=False)
            except FileNotFoundError:
                return []
        self._invalidate()
        return sorted(x.rstrip("/").rsplit("/", 1)[-1] for x in self._retry(ls, f"list {p}"))

    def remove(self, rel: str) -> None:
        def rm():
            try:
                self.fs.rm(self.path(rel), recursive=True)
            except FileNotFoundError:
                pass
        self._retry(rm, f"remove {self.display(rel)}")

    def read_bytes(self, rel: str) -> bytes:
        return self._retry(lambda: self.fs.cat_file(self.path(rel)), f"read {self.display(rel)}")

    def read_json(self, rel: str) -> Any | None:
        """The parsed JSON file at `rel`, or None if it does not exist."""
        try:
            data = self.read_bytes(rel)
        except FileNotFoundError:
            return None
        try:
            return json.loads(data)
        except ValueError as e:
            raise StoreError(f"{self.display(rel)} is not valid JSON ({e}); it was damaged "
                             "outside the workflow: delete it and re-run the stage") from e

    def write_json(self, rel: str, obj: Any) -> None:
        """Atomically replace the small JSON file at `rel` (temporary name, then rename)."""
        data = (json.dumps(obj, indent=2, sort_keys=True, ensure_ascii=False) + "\n").encode()
        tmp = f"{rel}{TMP_TAG}{uuid.uuid4().hex[:8]}"

        def write():
            try:
                self._makedirs(rel)
                self.fs.pipe_file(self.path(tmp), data)
                self._rename(tmp, rel)
            except BaseException:
                self._remove_quietly(tmp)
                raise
        self._retry(write, f"write {self.display(rel)}")

    def _makedirs(self, rel: str) -> None:
        """The folder of `rel` (none in a bucket: a request saved per write)."""
        if not self.bucketed:
            self.fs.makedirs(self.path(rel).rsplit("/", 1)[0], exist_ok=True)

    def _remove_quietly(self, rel: str) -> None:
        """Remove a temporary file, retrying; never raises (the connection may be gone
        for good: cleanup() at the stage's next start removes what is left)."""
        def rm():  # not fs.exists(): it answers False on any error
            try:
                self.fs.rm(self.path(rel))
            except FileNotFoundError:
                pass
        try:
            self._retry(rm, f"remove {self.display(rel)}")
        except Exception:  # noqa: BLE001
            pass

    def _rename(self, src: str, dst: str) -> None:
        if self.is_local:
            os.replace(self.path(src), self.path(dst))
        elif self.bucketed:  # a copy and a delete, as fs.mv does, without its 2 listings
            self.fs.cp_file(self.path(src), self.path(dst))
            self.fs.rm_file(self.path(src))
        else:
            self.fs.mv(self.path(src), self.path(dst))
        self._invalidate()

    def _invalidate(self) -> None:
        self.fs.invalidate_cache()

    # -- markers and commits -------------------------------------------------------
    @staticmethod
    def marker_path(stage: str, unit: str) -> str:
        return f"{DONE_DIR}/{stage}/{unit}.json"

    def marker(self, stage: str, unit: str) -> Marker | None:
        """The unit's marker if it exists and matches its file (size), else None."""
        d = self.read_json(self.marker_path(stage, unit))
        m = None if d is None else Marker.from_json(d)
        return m if m is not None and self.size(m.path) == m.size else None

    def markers(self, stage: str) -> dict[str, Marker]:
        """All markers of a stage by unit, without checking their files."""
        out = {}
        for name in self.listdir(f"{DONE_DIR}/{stage}"):
            if name.endswith(".json") and TMP_TAG not in name:
                d = self.read_json(f"{DONE_DIR}/{stage}/{name}")
                if d is not None:
                    out[d["unit"]] = Marker.from_json(d)
        return out

    def remove_marker(self, stage: str, unit: str, remove_file: bool = False) -> None:
        """Forget that a unit is done (its file too, with remove_file); no-op if absent."""
        m = self.marker(stage, unit)
        if m is not None:
            self.remove(self.marker_path(stage, unit))
            if remove_file and self.exists(m.path):
                self.remove(m.path)

    def commit(self, local: str | os.PathLike, rel: str, stage: str, unit: str,
               stage_fingerprint: str, extra: dict | None = None) -> Marker:
        """Copy a finished local file to `rel` in the store, verify it, then mark it done."""
        local = os.fspath(local)
        size, sha = sha256_file(local)
        marker = Marker(stage, unit, rel, size, sha, stage_fingerprint, dict(extra or {}))
        if self.exists(self.marker_path(stage, unit)):
            # replacing a unit: its old marker goes first, so that a kill before the new
            # marker is written leaves an unmarked file (removed by cleanup), never a
            # marker that describes other bytes
            self.remove(self.marker_path(stage, unit))
        self._retry(lambda: self._upload(local, rel, size, sha), f"commit {self.display(rel)}")
        self.write_json(self.marker_path(stage, unit), marker.to_json())
        logger.debug("committed %s (%d bytes)", self.display(rel), size)
        return marker

    def _upload(self, local: str, rel: str, size: int, sha: str) -> None:
        tmp = f"{rel}{TMP_TAG}{uuid.uuid4().hex[:8]}"
        try:
            self._makedirs(rel)
            self.fs.put_file(local, self.path(tmp))
            self._invalidate()
            got = int(self.fs.info(self.path(tmp))["size"])
            if got != size:
                raise OSError(f"uploaded copy has {got} bytes, expected {size}")
            if self.verify == "sha256" and self._sha256(tmp) != sha:
                raise OSError("uploaded copy's sha256 differs from the local file")
            self._rename(tmp, rel)
        except BaseException:
            self._remove_quietly(tmp)
            raise

    def _sha256(self, rel: str) -> str:
        h = hashlib.sha256()
        with self.fs.open(self.path(rel), "rb", block_size=1 << 22) as f:
            while chunk := f.read(1 << 22):
                h.update(chunk)
        return h.hexdigest()

    def fetch(self, marker: Marker, local: str | os.PathLike) -> Path:
        """Stage a committed file in to local disk and verify it against its marker.

        A verified copy already at `local` is reused.
        """
        local = Path(local)
        if local.exists() and self._verified(local, marker):
            return local
        local.parent.mkdir(parents=True, exist_ok=True)
        tmp = local.with_name(local.name + TMP_TAG + uuid.uuid4().hex[:8])

        def get():
            self.fs.get_file(self.path(marker.path), str(tmp))
            if sha256_file(str(tmp)) != (marker.size, marker.sha256):
                if self._damaged(marker):
                    raise self._discard(marker)
                raise OSError("copy does not match its marker's size and sha256")
        try:
            self._retry(get, f"fetch {self.display(marker.path)}")
            os.replace(tmp, local)
        finally:
            tmp.unlink(missing_ok=True)
        _stamp(local, marker)
        return local

    @cached_property
    def in_place(self) -> bool:
        """Committed files can be memory-mapped where they lie (`storage.mounts`)."""
        return self.is_local and reads_in_place(self.root)

    def read_path(self, marker: Marker, local: str | os.PathLike) -> Path:
        """A file to read (memory-map, never write) a committed file from: the store's
        own file where the store is on a local disk (its size checked against the
        marker), else a verified copy staged in at `local` (`fetch`)."""
        if not self.in_place:
            return self.fetch(marker, local)
        if self.size(marker.path) != marker.size:
            raise self._discard(marker)
        return Path(self.path(marker.path))

    @staticmethod
    def _verified(local: Path, marker: Marker) -> bool:
        """The local copy matches the marker: by the stamp written when it was verified
        (same size and modification time), else by hashing it (a 5 GB re-rank store
        takes some 15 s to hash; a restarted search service should not)."""
        stamp = local.with_name(local.name + STAMP)
        st = local.stat()
        try:
            if json.loads(stamp.read_text()) == [marker.sha256, st.st_size, st.st_mtime_ns]:
                return True
        except (OSError, ValueError):
            pass
        if sha256_file(str(local)) != (marker.size, marker.sha256):
            return False
        _stamp(local, marker)
        return True

    def _damaged(self, marker: Marker) -> bool:
        """The store's own copy differs from what was committed (not just the transfer)."""
        return (self.size(marker.path) != marker.size or
                self._sha256(marker.path) != marker.sha256)

    def _discard(self, marker: Marker) -> CorruptFile:
        """Forget a damaged unit, so that its stage recomputes it; the error to raise."""
        for rel in (self.marker_path(marker.stage, marker.unit), marker.path):  # marker 1st
            if self.exists(rel):
                self.remove(rel)
        logger.error("%s is damaged: it no longer matches the checksum recorded when it was "
                     "committed; removed it and its marker", self.display(marker.path))
        return CorruptFile(
            f"{self.display(marker.path)} no longer matches the checksum recorded when it "
            f"was committed (damaged in the store), so it was not used. It has been removed: "
            f"run the {marker.stage} stage again (`python -m workflow {marker.stage} --store "
            f"{self.url}`; only that {marker.unit} is recomputed), then this stage.")

    def cleanup(self, stage: str, folders: str | Sequence[str]) -> list[str]:
        """Remove leftovers of interrupted commits of `stage`: in each of its `folders`
        (a folder listed among them is not a leftover of its parent), temporary files
        and files without a matching marker; markers whose file is missing or of the
        wrong size; temporary marker files. Returns what was removed."""
        folders = (folders,) if isinstance(folders, str) else tuple(folders)
        removed = []
        marked = {}
        for unit, m in self.markers(stage).items():
            if self.size(m.path) == m.size:
                marked[m.path] = m
            else:
                self.remove(self.marker_path(stage, unit))
                removed.append(self.marker_path(stage, unit))
        for folder in folders:
            for name in self.listdir(folder):
                rel = f"{folder}/{name}"
                if rel not in folders and (TMP_TAG in name or rel not in marked):
                    self.remove(rel)
                    removed.append(rel)
        removed += self.remove_temporary(f"{DONE_DIR}/{stage}")
        removed += self.remove_temporary("", RUN_FILE + TMP_TAG)
        if removed:
            logger.info("removed %d leftover(s) of an interrupted run: %s", len(removed),
                        ", ".join(removed[:5]) + (" ..." if len(removed) > 5 else ""))
        return removed

    def remove_temporary(self, folder: str, prefix: str = "") -> list[str]:
        """Remove the temporary files (of interrupted writes) in `folder` whose names
        start with `prefix`; returns them."""
        removed = []
        for name in self.listdir(folder):
            if TMP_TAG in name and name.startswith(prefix):
                rel = f"{folder}/{name}" if folder else name
                self.remove(rel)
                removed.append(rel)
        return removed

    # -- run.json and stage fingerprints -----------------------------------------------
    def run_info(self) -> dict:
        return self.read_json(RUN_FILE) or {"format": FORMAT_VERSION, "stages": {}}

    def freeze_stage(self, stage: str, settings: dict, parent: str | None = None,
                     **kw) -> str:
        """Record the stage's settings in run.json, or check them (`storage.frozen`)."""
        return freeze(self, stage, settings, parent, **kw)

    def forget_stage(self, stage: str) -> None:
        info = self.run_info()
        if info["stages"].pop(stage, None) is not None:
            self.write_json(RUN_FILE, info)


def _stamp(local: Path, marker: Marker) -> None:
    """Record that `local` was verified against `marker` (for `Store._verified`); only
    for large files, which are slow to hash again."""
    st = local.stat()
    if st.st_size < STAMP_MIN_BYTES:
        return
    local.with_name(local.name + STAMP).write_text(
        json.dumps([marker.sha256, st.st_size, st.st_mtime_ns]))
