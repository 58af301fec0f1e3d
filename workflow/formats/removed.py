"""The removal list, `removed/ids-00000V.npy`: the ids taken out of every search result,
evaluation and thumbnail (`python -m workflow remove`), as a sorted int64 `.npy`.

Each change writes the whole list as the next version and commits it (checksummed, with
its marker) before the older versions are deleted, so a kill at any moment leaves either
the old list or the new one in force, never none: the highest complete version is the
list. Its marker says `count` and `version`.
"""
from __future__ import annotations

import numpy as np

from ..storage.marker import Marker
from ..storage.store import DONE_DIR, Store
from .layout import REMOVE, REMOVED

UNIT_PREFIX = "ids-"


def removal_unit(version: int) -> str:
    return f"{UNIT_PREFIX}{version:06d}"


def removal_file(version: int) -> str:
    return f"{REMOVED}/{removal_unit(version)}.npy"


def removal_markers(store: Store) -> list[Marker]:
    """Markers of the list's versions whose files are complete, oldest first."""
    out = [m for u, m in store.markers(REMOVE).items() if u.startswith(UNIT_PREFIX)]
    out = [m for m in sorted(out, key=lambda m: m.extra["version"])
           if store.size(m.path) == m.size]
    return out


def removal_version(store: Store) -> int:
    """The list's version (0 before anything was ever removed)."""
    ms = removal_markers(store)
    return ms[-1].extra["version"] if ms else 0


def load_removed(store: Store) -> tuple[int, np.ndarray]:
    """(version, sorted int64 ids) of the removal list in force (0 and none if none)."""
    ms = removal_markers(store)
    if not ms:
        return 0, np.zeros(0, np.int64)
    m = ms[-1]
    local = store.fetch(m, store.scratch / REMOVE / f"{m.unit}.npy")
    return m.extra["version"], np.load(local)


def commit_removed(store: Store, ids: np.ndarray, version: int, extra: dict) -> Marker:
    """Commit `ids` as list version `version`, then delete the older versions."""
    work = store.scratch / REMOVE
    work.mkdir(parents=True, exist_ok=True)
    local = work / f"{removal_unit(version)}.npy"
    np.save(local, np.unique(np.asarray(ids, np.int64)))
    marker = store.commit(local, removal_file(version), REMOVE, removal_unit(version),
                          REMOVE, {"version": version, **extra})
    prune_removed(store)
    return marker


def prune_removed(store: Store) -> None:
    """Delete every version older than the one in force, and their markers."""
    ms = removal_markers(store)
    for m in ms[:-1]:
        store.remove(f"{DONE_DIR}/{REMOVE}/{m.unit}.json")
        store.remove(m.path)


def allowed_mask(n: int, valid: np.ndarray | None, removed: np.ndarray) -> np.ndarray:
    """allowed[id]: the id may appear in results (it has a feature, not removed)."""
    ok = np.ones(n, bool) if valid is None else np.asarray(valid, bool).copy()
    ok[removed[removed < n]] = False
    return ok
