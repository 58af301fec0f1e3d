"""Image shards (`images/shard-NNNNN.h5`) and the preprocess report
(`images/report.json`): the public formats written by preprocess, read by extract,
search (thumbnails) and tools.

Datasets: `ids` int64[n], `keys` UTF-8[n], `jpeg` vlen uint8[n] (empty when failed),
`orig_size` int32[n,2] (width, height), `status` uint8[n] (see imaging.Status),
`reason` UTF-8[n] (empty when ok), `content_hash` ASCII[n] (blake2b-128 of the source
bytes). Attributes: `fingerprint`, `image_size`, `jpeg_quality`, `shard`, `format_version`.

Items are written strictly in id order, so the same inputs give byte-identical files.
"""
from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import h5py
import numpy as np

from ..inputs.imaging import ImageResult, Status
from ..storage.store import Store
from .layout import PREPROCESS, REPORT_FILE, shard_name

FORMAT_VERSION = 1
_STR = h5py.string_dtype("utf-8")
_VLEN_U8 = h5py.vlen_dtype(np.uint8)
WRITE_BLOCK = 256                 # JPEGs written to the file at once
WRITE_BLOCK_BYTES = 16 << 20
READ_BLOCK = 1 << 20              # bytes an object store's file reads at a time


class ImageShardWriter:
    """Write one image shard; call `add` once per item in id order, then `close`."""

    def __init__(self, path: str, ids, keys, attrs: dict):
        self.n = len(ids)
        self.f = h5py.File(path, "w")
        for k, v in {**attrs, "format_version": FORMAT_VERSION}.items():
            self.f.attrs[k] = v
        self.f.create_dataset("ids", data=np.asarray(ids, np.int64), track_times=False)
        self.f.create_dataset("keys", data=list(keys), dtype=_STR, track_times=False)
        self.jpeg = self.f.create_dataset("jpeg", (self.n,), dtype=_VLEN_U8, track_times=False)
        self.status = np.zeros(self.n, np.uint8)
        self.size = np.zeros((self.n, 2), np.int32)
        self.reason: list[str] = [""] * self.n
        self.hash: list[bytes] = [b""] * self.n
        self.i = 0
        self._block: list[np.ndarray] = []  # the last JPEGs added, not yet written
        self._bytes = 0

    def add(self, r: ImageResult) -> None:
        i = self.i
        assert i < self.n, "more results than items"
        self._block.append(np.frombuffer(r.jpeg or b"", np.uint8))
        self._bytes += len(r.jpeg or b"")
        self.status[i], self.reason[i] = r.status, r.reason
        self.size[i] = (r.width, r.height)
        self.hash[i] = r.content_hash.encode()
        self.i += 1
        if len(self._block) >= WRITE_BLOCK or self._bytes >= WRITE_BLOCK_BYTES:
            self._flush()

    def _flush(self) -> None:
        """Write the pending JPEGs in one call: a third of the time of one call each."""
        if not self._block:
            return
        block = np.empty(len(self._block), dtype=object)
        for j, a in enumerate(self._block):
            block[j] = a
        # The low-level write: h5py's slice assignment takes a block of equal-length
        # arrays for a 2-d array and refuses it.
        space = self.jpeg.id.get_space()
        space.select_hyperslab((self.i - len(block),), (len(block),))
        self.jpeg.id.write(h5py.h5s.create_simple((len(block),)), space, block,
                           mtype=h5py.h5t.py_create(_VLEN_U8))
        self._block, self._bytes = [], 0

    def close(self) -> dict:
        """Finish the file; returns its statistics (ok count, failures by kind)."""
        assert self.i == self.n, f"shard has {self.n} items but {self.i} were written"
        self._flush()
        f = self.f
        f.create_dataset("status", data=self.status, track_times=False)
        f.create_dataset("orig_size", data=self.size, track_times=False)
        f.create_dataset("reason", data=self.reason, dtype=_STR, track_times=False)
        f.create_dataset("content_hash", data=np.array(self.hash, dtype="S32"),
                         track_times=False)
        f.close()
        return shard_stats(self.status)

    def abort(self) -> None:
        self.f.close()


def shard_stats(status: np.ndarray) -> dict:
    counts = Counter(int(s) for s in status)
    return {"n": int(len(status)), "ok": counts.pop(int(Status.OK), 0),
            "failed": {Status(s).label: c for s, c in sorted(counts.items())}}


def read_image_shard(path_or_file, with_jpeg: bool = True) -> dict:
    """All columns of an image shard as numpy arrays / lists (for tests and tools)."""
    with h5py.File(path_or_file, "r") as f:
        out = {"ids": f["ids"][:], "keys": list(f["keys"].asstr()[:]),
               "status": f["status"][:], "reason": list(f["reason"].asstr()[:]),
               "orig_size": f["orig_size"][:], "content_hash": f["content_hash"][:],
               "attrs": dict(f.attrs)}
        if with_jpeg:
            out["jpeg"] = [bytes(x) for x in f["jpeg"][:]]
    return out


def read_for_model(path, skip: set[int]) -> tuple[np.ndarray, list[bytes]]:
    """(ids, stored JPEGs) of the images of a shard that get a feature: decoded fine and
    not in `skip`."""
    with h5py.File(path, "r") as f:
        ids, status = f["ids"][:], f["status"][:]
        keep = (status == Status.OK) & ~np.isin(ids, list(skip))
        rows = np.flatnonzero(keep)
        stored = f["jpeg"][:]  # one read of the whole column, not one per image
        return ids[rows], [stored[i].tobytes() for i in rows]


def open_shard(store: Store, rel: str):
    """A shard in the store, opened for h5py's few small reads in small blocks: an object
    store's default block (s3fs: 50 MB) downloads most of a shard for a few KB (reading a
    60 MB shard's outcomes: 52 MB moved, against 1 MB in READ_BLOCKs)."""
    return store.fs.open(store.path(rel), "rb", block_size=READ_BLOCK)


def read_outcomes(store: Store, rel: str) -> tuple[np.ndarray, ...]:
    """(ids, status, content hashes, reasons) of the shard at `rel`, read in the store."""
    with open_shard(store, rel) as fh, h5py.File(fh, "r") as f:
        return f["ids"][:], f["status"][:], f["content_hash"][:], f["reason"].asstr()[:]


def read_stored_jpegs(store: Store, rel: str, offsets: list[int]) -> list[bytes]:
    """The stored JPEGs at these row offsets of the shard at `rel`, read in the store
    (empty for a row the shard does not hold)."""
    with open_shard(store, rel) as fh, h5py.File(fh, "r") as f:
        jpeg = f["jpeg"]
        return [bytes(jpeg[o]) if o < len(jpeg) else b"" for o in offsets]


def read_item(store: Store, rel: str, offset: int) -> dict:
    """Key, original size, status and reason of the item at row `offset` of a shard."""
    with open_shard(store, rel) as fh, h5py.File(fh, "r") as f:
        w, h = (int(v) for v in f["orig_size"][offset])
        return {"key": f["keys"].asstr()[offset], "orig_size": [w, h],
                "status": Status(int(f["status"][offset])).label,
                "reason": f["reason"].asstr()[offset]}


def by_image_shard(store: Store, bounds: np.ndarray, ids: np.ndarray):
    """For each committed image shard holding some of `ids`: (its marker, the positions
    in `ids` of those it holds, their row offsets in the shard)."""
    ids = np.asarray(ids, np.int64)
    shards = np.searchsorted(bounds, ids, side="right") - 1
    for s in np.unique(shards).tolist():
        m = store.marker(PREPROCESS, shard_name(s))
        if m is not None:
            rows = np.flatnonzero(shards == s)
            yield m, rows, ids[rows] - int(bounds[s])


def orig_sizes(store: Store, bounds: np.ndarray, ids: np.ndarray) -> np.ndarray:
    """Original (width, height) of each id [n, 2] (0 where its shard is not committed),
    reading each image shard that holds some of them once."""
    out = np.zeros((len(ids), 2), np.int64)
    for m, rows, offsets in by_image_shard(store, bounds, ids):
        with open_shard(store, m.path) as fh, h5py.File(fh, "r") as f:
            sizes = f["orig_size"][:]
        inside = offsets < len(sizes)  # a shard without its items' rows: unknown (0)
        out[rows[inside]] = sizes[offsets[inside]]
    return out


def stored_jpegs(store: Store, bounds: np.ndarray, ids: list[int]) -> dict[int, bytes]:
    """The stored JPEG of each id (sorted ids; none for an id whose shard is not
    committed), reading each image shard that holds some of them once."""
    out: dict[int, bytes] = {}
    for m, rows, offsets in by_image_shard(store, bounds, ids):
        jpegs = read_stored_jpegs(store, m.path, offsets.tolist())
        out.update(zip((ids[r] for r in rows.tolist()), jpegs))
    return out


def write_report(path: Path, report: dict) -> None:
    """`images/report.json`: totals, every failure with its reason, exact duplicates."""
    path.write_text(json.dumps(report, indent=1, ensure_ascii=False) + "\n")


def skip_ids(store: Store) -> set[int]:
    """Ids that later stages leave out: exact duplicates when --drop-duplicates was set."""
    report = store.read_json(REPORT_FILE) or {}
    dup = report.get("duplicates", {})
    return {i for g in dup.get("groups", []) for i in g[1:]} if dup.get("drop") else set()
