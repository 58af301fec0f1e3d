"""The frozen plan, `images/plan.h5`: which source item goes to which shard, under which id.

Computed once by `preprocess` from the listed sources, committed to the store, and
reused on every resume, so that ids never change and sources are listed only once.
Datasets: `keys` UTF-8[n], `locators` bytes[n], `source` int16[n], `offset` and `size`
int64[n], `shard_bounds` int64[shards + 1]; attributes `version` and `sources` (JSON).
"""
from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import NamedTuple

import h5py
import numpy as np

from ..errors import WorkflowError
from ..inputs.sources import Entry, Source
from ..storage.store import Store
from .layout import PREPROCESS

PLAN_VERSION = 1


class Item(NamedTuple):
    """One planned image: its id, source index, key and where its bytes lie."""
    id: int
    source: int
    key: str
    locator: str
    offset: int
    size: int


def shard_bounds(n: int, shard_size: int) -> np.ndarray:
    """Start offsets of ceil(n / shard_size) shards of near-equal size, plus n at the end."""
    assert shard_size > 0 and n >= 0
    n_shards = max(1, math.ceil(n / shard_size)) if n else 0
    return np.array([i * n // n_shards for i in range(n_shards)] + [n], dtype=np.int64) \
        if n_shards else np.zeros(1, dtype=np.int64)


def display_key(key: str) -> str:
    """A key as valid UTF-8: a name that is not (undecodable bytes from the file system)
    shows U+FFFD where its bad bytes were; the file is still read by its real name."""
    return key.encode("utf-8", "surrogateescape").decode("utf-8", "replace")


def source_prefixes(sources: Sequence[Source]) -> list[str]:
    """Key prefixes: none for a single source, else each source's unique base name."""
    if len(sources) == 1:
        return [""]
    names, out = {}, []
    for s in sources:
        n = names[s.name] = names.get(s.name, 0) + 1
        out.append(f"{s.name}/" if n == 1 else f"{s.name}~{n}/")
    return out


@dataclass
class Plan:
    """Columns of the planned items (row = id) and the shard boundaries."""
    sources: list[Source]
    keys: list[str]
    source_idx: np.ndarray
    locators: list[str]
    offsets: np.ndarray
    sizes: np.ndarray
    bounds: np.ndarray

    @property
    def n(self) -> int:
        return len(self.keys)

    @property
    def n_shards(self) -> int:
        return len(self.bounds) - 1

    def shard_items(self, i: int) -> list[Item]:
        lo, hi = int(self.bounds[i]), int(self.bounds[i + 1])
        return [Item(j, int(self.source_idx[j]), self.keys[j], self.locators[j],
                     int(self.offsets[j]), int(self.sizes[j])) for j in range(lo, hi)]

    def save(self, path: str) -> None:
        str_t = h5py.string_dtype()
        # locators are file system names, which need not be UTF-8: kept as raw bytes
        locators = [loc.encode("utf-8", "surrogateescape") for loc in self.locators]
        with h5py.File(path, "w") as f:
            f.attrs["version"] = PLAN_VERSION
            f.attrs["sources"] = json.dumps([s.to_json() for s in self.sources])
            for name, data, dt in (("keys", self.keys, str_t),
                                   ("locators", locators, h5py.string_dtype("ascii")),
                                   ("source", self.source_idx, np.int16),
                                   ("offset", self.offsets, np.int64),
                                   ("size", self.sizes, np.int64),
                                   ("shard_bounds", self.bounds, np.int64)):
                f.create_dataset(name, data=np.asarray(data, dtype=dt), track_times=False)

    @classmethod
    def load(cls, path: str) -> Plan:
        with h5py.File(path, "r") as f:
            sources = [Source(**d) for d in json.loads(f.attrs["sources"])]
            locators = [b.decode("utf-8", "surrogateescape") if isinstance(b, bytes) else b
                        for b in f["locators"][:]]
            return cls(sources, list(f["keys"].asstr()[:]), f["source"][:], locators,
                       f["offset"][:], f["size"][:], f["shard_bounds"][:])


def make_plan(sources: Sequence[Source], listings: Sequence[Sequence[Entry]],
              shard_size: int) -> Plan:
    """Number the listed entries (sources in the order given) and split them into shards."""
    assert len(sources) == len(listings)
    prefixes = source_prefixes(sources)
    keys, src, locs, offs, sizes = [], [], [], [], []
    for i, (prefix, entries) in enumerate(zip(prefixes, listings)):
        for e in entries:
            keys.append(display_key(prefix + e.key))
            src.append(i)
            locs.append(e.locator)
            offs.append(e.offset)
            sizes.append(e.size)
    return Plan(list(sources), keys, np.asarray(src, np.int16), locs,
                np.asarray(offs, np.int64), np.asarray(sizes, np.int64),
                shard_bounds(len(keys), shard_size))


def _plan_marker(store: Store):
    m = store.marker(PREPROCESS, "plan")
    if m is None:
        raise WorkflowError(f"{store.url} has no plan; run scripts/01_preprocess.py")
    return m


def load_plan(store: Store, local) -> Plan:
    """The committed plan, staged in to `local` and verified."""
    return Plan.load(str(store.fetch(_plan_marker(store), local)))


def load_keys_and_bounds(store: Store, local) -> tuple[list[str], np.ndarray]:
    """(keys by id, shard bounds) of the committed plan: what search needs of it."""
    with h5py.File(store.fetch(_plan_marker(store), local), "r") as f:
        return list(f["keys"].asstr()[:]), f["shard_bounds"][:]


def planned_count(store: Store) -> int:
    """How many items the plan numbers (ids are 0 .. count - 1)."""
    return int(_plan_marker(store).extra["n"])
