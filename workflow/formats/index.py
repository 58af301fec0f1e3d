"""Index files: the trained index and PCA (`trained/`), the index parts, the merged index
with its optional on-disk inverted lists, and the float16 re-rank store (`index/`).

- `trained/index.faiss`, `trained/pca.faiss`: Faiss's own serialisation.
- `index/parts/shard-NNNNN.faiss`: the trained index filled with one feature shard.
- `index/index.faiss` (+ `index/index.ivfdata` with on-disk inverted lists).
- `index/rerank.npy`: every feature as float16, row = id (zeros for ids without one),
  a plain `.npy` file, memory-mappable.
"""
from __future__ import annotations

import re
from collections.abc import Iterable
from pathlib import Path

import faiss
import numpy as np

from ..errors import WorkflowError
from ..storage.store import Store
from .layout import ADD, TRAIN


def write_trained(index: faiss.Index, pca: faiss.VectorTransform, folder: Path) -> None:
    """`index.faiss` and `pca.faiss` in a local folder, to be committed to `trained/`."""
    faiss.write_VectorTransform(pca, str(folder / "pca.faiss"))
    faiss.write_index(index, str(folder / "index.faiss"))


def load_trained(store: Store) -> tuple[faiss.Index, faiss.VectorTransform]:
    """The trained empty index and the PCA, staged in from the store and verified."""
    out = []
    for unit, reader in (("index", faiss.read_index), ("pca", faiss.read_VectorTransform)):
        m = store.marker(TRAIN, unit)
        if m is None:
            raise WorkflowError(f"{store.url} has no trained index; run scripts/03_train.py")
        out.append(reader(str(store.fetch(m, store.scratch / TRAIN / f"{unit}.faiss"))))
    return out[0], out[1]


def write_index(index: faiss.Index, path: Path) -> None:
    """An index part or the merged index, in Faiss's serialisation."""
    faiss.write_index(index, str(path))


def read_index(path: str) -> faiss.Index:
    return faiss.read_index(path)


def load_index(store: Store) -> faiss.Index:
    """The merged index, staged in (with its on-disk inverted lists, memory-mapped); as
    fast-scan where the trained factory asked for it (`plain_factory`)."""
    m = store.marker(ADD, "index")
    if m is None:
        raise WorkflowError(f"{store.url} has no filled index; run scripts/04_add.py")
    folder = store.scratch / ADD / "final"
    path = store.fetch(m, folder / "index.faiss")
    if m.extra.get("on_disk"):
        store.fetch(store.marker(ADD, "ivfdata"), folder / "index.ivfdata")
        index = faiss.read_index(str(path), faiss.IO_FLAG_ONDISK_SAME_DIR)
    else:
        index = faiss.read_index(str(path))
    trained = store.marker(TRAIN, "index")
    factory = trained.extra.get("factory", "") if trained is not None else ""
    return fast_scan(index) if plain_factory(factory) != factory else index


FAST_SCAN = re.compile(r"PQ(\d+)x4fs\b")


def plain_factory(factory: str) -> str:
    """The factory string with fast-scan PQ (`PQ<m>x4fs`) as the plain 4-bit PQ with the
    same codes (`PQ<m>x4`). Faiss merges the plain kind's parts reliably (merging 200
    fast-scan parts of a 2M index crashed in Faiss 1.15.1), so that is what the stages
    store; the searches run it as fast-scan."""
    return FAST_SCAN.sub(r"PQ\1x4", factory)


def fast_scan(index: faiss.Index) -> faiss.Index:
    """A plain 4-bit IVF-PQ as `IndexIVFPQFastScan`: the same codes, packed in blocks of
    32 for the SIMD kernel (in memory, also for an index whose lists were on disk)."""
    ivf = faiss.downcast_index(index)
    if not isinstance(ivf, faiss.IndexIVFPQ) or ivf.pq.nbits != 4:
        raise WorkflowError("the trained factory asks for fast-scan, but the index is not "
                            "a 4-bit IVF-PQ; re-run scripts/03_train.py and 04_add.py")
    out = faiss.IndexIVFPQFastScan(ivf)
    ivf.own_fields, out.own_fields = False, True  # the coarse quantizer is shared: moved
    return out


def write_rerank_store(path: Path, n_ids: int, d: int,
                       shards: Iterable[tuple[np.ndarray, np.ndarray]],
                       base: Path | None = None) -> None:
    """The re-rank store from (ids, features) shards: a float16 `.npy` [n_ids, d]. With
    `base` (the store of an earlier corpus version: its first rows), its rows are copied
    and only the shards' rows are written after them.

    Rows are written with plain file writes (runs of consecutive ids at once), not
    through a memory map, so the writer's memory does not grow with N."""
    row = d * 2
    with open(path, "wb") as out:
        np.lib.format.write_array_header_1_0(out, {"descr": np.dtype(np.float16).str,
                                                   "fortran_order": False,
                                                   "shape": (n_ids, d)})
        start = out.tell()
        if base is not None:
            _copy_rows(base, out, n_ids, d)
        out.truncate(start + n_ids * row)  # rows without a feature stay zero
        for ids, x in shards:
            for lo, hi in runs(ids):
                out.seek(start + int(ids[lo]) * row)
                out.write(np.ascontiguousarray(x[lo:hi], np.float16).tobytes())


def _copy_rows(base: Path, out, n_ids: int, d: int) -> None:
    old = np.load(base, mmap_mode="r")
    if old.ndim != 2 or old.shape[1] != d or old.shape[0] > n_ids or old.dtype != np.float16:
        raise WorkflowError(f"{base} is not an earlier re-rank store of this corpus "
                            f"({old.shape} {old.dtype}); delete it and re-run")
    offset, size = old.offset, old.shape[0] * d * 2
    del old
    with open(base, "rb") as f:
        f.seek(offset)
        while size > 0:
            chunk = f.read(min(size, 64 << 20))
            if not chunk:
                raise WorkflowError(f"{base} is shorter than its header says")
            out.write(chunk)
            size -= len(chunk)


def runs(ids: np.ndarray) -> list[tuple[int, int]]:
    """[lo, hi) index ranges of ids that are consecutive integers."""
    if len(ids) == 0:
        return []
    breaks = np.flatnonzero(np.diff(ids) != 1) + 1
    edges = [0, *breaks.tolist(), len(ids)]
    return list(zip(edges[:-1], edges[1:]))


def load_rerank(store: Store) -> np.ndarray:
    """The float16 re-rank store, memory-mapped (in place on a local disk, else from a
    verified copy in scratch: `Store.read_path`)."""
    m = store.marker(ADD, "rerank")
    if m is None:
        raise WorkflowError(f"{store.url} has no re-rank store; run scripts/04_add.py")
    return np.load(store.read_path(m, store.scratch / ADD / "final" / "rerank.npy"),
                   mmap_mode="r")
