"""The frozen plan: which source item goes to which shard, under which id.

Computed once by `preprocess` from the listed sources, committed to the store, and
reused on every resume, so that ids never change and sources are listed only once.
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass
from typing import NamedTuple, Sequence

import h5py
import numpy as np

from .sources import Entry, Source

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


def shard_name(i: int) -> str:
    return f"shard-{i:05d}"


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
    def load(cls, path: str) -> "Plan":
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
