"""The frozen plan: which source item goes to which shard, under which id.

A plan is a chain of segments, each committed once and never rewritten: `images/plan.h5`
(segment 1, listed by the first preprocess run) and one `images/plan-00000V.h5` per
`--update` that found new items (segment V, the corpus version). A segment numbers its
items after the last id of the one before, and its shards after the last shard, so ids,
keys and shards never change. Sources are listed once per segment.

Datasets: `keys` UTF-8[m], `locators` bytes[m], `source` int16[m] (an index into the
segment's `sources`), `offset` and `size` int64[m], `shard_bounds` int64[shards + 1]
(global ids); attributes `version` (the format), `sources` (JSON: the complete source list
at that version), `prefixes` (JSON: each source's key prefix; absent in a first segment
made before updates existed: see `source_prefixes`), `segment`, `first_id`.
"""
from __future__ import annotations

import json
import logging
import math
import posixpath
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import h5py
import numpy as np

from ..errors import WorkflowError
from ..inputs.sources import Entry, Source
from ..storage.marker import Marker
from ..storage.store import Store
from .layout import PREPROCESS, plan_unit

PLAN_VERSION = 1
logger = logging.getLogger(__name__)


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


def unique_key(key: str, taken: set[str]) -> str:
    """`key`, or where another item holds it, `key` with `~2`, `~3`... before its
    extension; the key returned is added to `taken`. Keys can meet: an unprefixed first
    source that later grows a folder named like a newer source's prefix, two names whose
    undecodable bytes show the same, an archive that holds one name twice."""
    if key in taken:
        stem, ext = posixpath.splitext(key)
        n = 2
        while f"{stem}~{n}{ext}" in taken:
            n += 1
        key = f"{stem}~{n}{ext}"
    taken.add(key)
    return key


def _keys(prefix: str, entries: Sequence[Entry], taken: set[str]) -> list[str]:
    """The keys of a source's new entries, unique against `taken` (which they join)."""
    wanted = [display_key(prefix + e.key) for e in entries]
    keys = [unique_key(k, taken) for k in wanted]
    renamed = [(w, k) for w, k in zip(wanted, keys) if w != k]
    if renamed:
        logger.warning("%d new keys were in use already and got a ~N suffix (e.g. %s is %s)",
                       len(renamed), *renamed[0])
    return keys


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
    """Columns of the planned items (row = id - first_id) and the shard boundaries (in
    global ids). A loaded plan is all segments joined (first_id 0); `sources` then holds
    every source any segment named, and `current` those of the latest segment."""
    sources: list[Source]
    keys: list[str]
    source_idx: np.ndarray
    locators: list[str]
    offsets: np.ndarray
    sizes: np.ndarray
    bounds: np.ndarray
    prefixes: list[str] | None = None
    segment: int = 1
    first_id: int = 0
    current: list[str] | None = None  # urls of the latest segment's sources

    @property
    def n(self) -> int:
        return len(self.keys)

    @property
    def n_shards(self) -> int:
        return len(self.bounds) - 1

    def shard_items(self, i: int) -> list[Item]:
        """The items of global shard i."""
        lo, hi = int(self.bounds[i]), int(self.bounds[i + 1])
        f = self.first_id
        return [Item(j, int(self.source_idx[j - f]), self.keys[j - f], self.locators[j - f],
                     int(self.offsets[j - f]), int(self.sizes[j - f])) for j in range(lo, hi)]

    def source_prefixes(self) -> list[str]:
        return self.prefixes if self.prefixes is not None else source_prefixes(self.sources)

    def save(self, path: str) -> None:
        str_t = h5py.string_dtype()
        # locators are file system names, which need not be UTF-8: kept as raw bytes
        locators = [loc.encode("utf-8", "surrogateescape") for loc in self.locators]
        with h5py.File(path, "w") as f:
            f.attrs["version"] = PLAN_VERSION
            f.attrs["sources"] = json.dumps([s.to_json() for s in self.sources])
            f.attrs["prefixes"] = json.dumps(self.source_prefixes())
            f.attrs["segment"] = self.segment
            f.attrs["first_id"] = self.first_id
            for name, data, dt in (("keys", self.keys, str_t),
                                   ("locators", locators, h5py.string_dtype("ascii")),
                                   ("source", self.source_idx, np.int16),
                                   ("offset", self.offsets, np.int64),
                                   ("size", self.sizes, np.int64),
                                   ("shard_bounds", self.bounds, np.int64)):
                f.create_dataset(name, data=np.asarray(data, dtype=dt), track_times=False)

    @classmethod
    def load(cls, path: str) -> Plan:
        """One segment file."""
        with h5py.File(path, "r") as f:
            sources = [Source(**d) for d in json.loads(f.attrs["sources"])]
            locators = [b.decode("utf-8", "surrogateescape") if isinstance(b, bytes) else b
                        for b in f["locators"][:]]
            prefixes = json.loads(f.attrs["prefixes"]) if "prefixes" in f.attrs else None
            return cls(sources, list(f["keys"].asstr()[:]), f["source"][:], locators,
                       f["offset"][:], f["size"][:], f["shard_bounds"][:], prefixes,
                       int(f.attrs.get("segment", 1)), int(f.attrs.get("first_id", 0)))


def join(segments: Sequence[Plan]) -> Plan:
    """The segments of a plan as one (ids from 0; sources: every one any segment
    named, in order of first appearance, with its prefix)."""
    if len(segments) == 1:
        p = segments[0]
        p.prefixes, p.current = p.source_prefixes(), [s.url for s in p.sources]
        return p
    sources, prefixes, where = [], [], {}
    for seg in segments:
        for s, prefix in zip(seg.sources, seg.source_prefixes()):
            if s.url not in where:
                where[s.url] = len(sources)
                sources.append(s)
                prefixes.append(prefix)
    src = [np.array([where[s.url] for s in seg.sources] or [-1], np.int16)[seg.source_idx]
           for seg in segments]  # -1: a segment without sources (synthetic benchmarks)
    return Plan(sources, [k for seg in segments for k in seg.keys], np.concatenate(src),
                [x for seg in segments for x in seg.locators],
                np.concatenate([seg.offsets for seg in segments]),
                np.concatenate([seg.sizes for seg in segments]),
                np.concatenate([segments[0].bounds] + [seg.bounds[1:] for seg in segments[1:]]),
                prefixes, segments[-1].segment, 0, [s.url for s in segments[-1].sources])


def make_plan(sources: Sequence[Source], listings: Sequence[Sequence[Entry]],
              shard_size: int) -> Plan:
    """Number the listed entries (sources in the order given) and split them into shards."""
    assert len(sources) == len(listings)
    prefixes = source_prefixes(sources)
    keys, src, locs, offs, sizes, taken = [], [], [], [], [], set()
    for i, (prefix, entries) in enumerate(zip(prefixes, listings)):
        keys += _keys(prefix, entries, taken)
        for e in entries:
            src.append(i)
            locs.append(e.locator)
            offs.append(e.offset)
            sizes.append(e.size)
    return Plan(list(sources), keys, np.asarray(src, np.int16), locs,
                np.asarray(offs, np.int64), np.asarray(sizes, np.int64),
                shard_bounds(len(keys), shard_size))


def extend_plan(plan: Plan, sources: Sequence[Source], listings: Sequence[Sequence[Entry]],
                shard_size: int) -> tuple[Plan | None, list[int]]:
    """The next segment of a joined plan: the listed entries it does not hold yet,
    numbered after its last id and shard (None where there are none and the source list
    is the same); and the ids of planned items of these sources that are no longer
    listed (their files are gone)."""
    have: dict[str, dict[str, int]] = {}
    for j, (si, loc) in enumerate(zip(plan.source_idx.tolist(), plan.locators)):
        have.setdefault(plan.sources[si].url, {})[loc] = j
    missing: list[int] = []
    for s, entries in zip(sources, listings):
        known = have.get(s.url, {})
        if known:
            listed = {e.locator for e in entries}
            missing += [j for loc, j in known.items() if loc not in listed]
    prefixes = _prefixes_after(plan, sources)
    keys, src, locs, offs, sizes, taken = [], [], [], [], [], set(plan.keys)
    for i, (s, entries) in enumerate(zip(sources, listings)):
        known = have.get(s.url, {})
        new = [e for e in entries if e.locator not in known]
        keys += _keys(prefixes[i], new, taken)
        for e in new:
            src.append(i)
            locs.append(e.locator)
            offs.append(e.offset)
            sizes.append(e.size)
    if not keys and [s.url for s in sources] == plan.current:
        return None, sorted(missing)  # a segment of no items still records a new source list
    seg = Plan(list(sources), keys, np.asarray(src, np.int16), locs, np.asarray(offs, np.int64),
               np.asarray(sizes, np.int64), shard_bounds(len(keys), shard_size) + plan.n,
               prefixes, plan.segment + 1, plan.n)
    return seg, sorted(missing)


def _prefixes_after(plan: Plan, sources: Sequence[Source]) -> list[str]:
    """Key prefixes of the sources of a new segment: a source already planned keeps its
    own (keys never change, even the unprefixed ones of a first single source); a new
    source gets its base name, made unique against every prefix and key in use."""
    known = dict(zip((s.url for s in plan.sources), plan.source_prefixes()))
    taken = set(known.values()) | {k.split("/", 1)[0] + "/" for k in plan.keys if "/" in k}
    out = []
    for s in sources:
        if s.url in known:
            out.append(known[s.url])
            continue
        prefix, n = f"{s.name}/", 1
        while prefix in taken:
            n += 1
            prefix = f"{s.name}~{n}/"
        taken.add(prefix)
        out.append(prefix)
    return out


def plan_chain(markers: dict[str, Marker]) -> list[Marker]:
    """The plan segments' markers among the preprocess stage's, in order (none before
    the sources are listed)."""
    out = []
    while (m := markers.get(plan_unit(len(out) + 1))) is not None:
        out.append(m)
    return out


def plan_markers(store: Store) -> list[Marker]:
    """The committed plan segments' markers, in order (segment 1 first)."""
    out = plan_chain(store.markers(PREPROCESS))
    if not out:
        raise WorkflowError(f"{store.url} has no plan; run scripts/01_preprocess.py")
    return out


def corpus_version(store: Store) -> int:
    """The corpus version: how many plan segments there are (1 before any update)."""
    return len(plan_markers(store))


def _segment_files(store: Store, local) -> list[str]:
    local = Path(local)
    return [str(store.fetch(m, local if v == 1 else local.with_name(f"{m.unit}.h5")))
            for v, m in enumerate(plan_markers(store), 1)]


def load_plan(store: Store, local) -> Plan:
    """The committed plan, every segment staged in next to `local` and verified."""
    return join([Plan.load(p) for p in _segment_files(store, local)])


def load_keys_and_bounds(store: Store, local) -> tuple[list[str], np.ndarray]:
    """(keys by id, shard bounds) of the committed plan: what search needs of it."""
    keys, bounds = [], [np.zeros(1, np.int64)]
    for path in _segment_files(store, local):
        with h5py.File(path, "r") as f:
            keys += list(f["keys"].asstr()[:])
            bounds.append(f["shard_bounds"][1:])
    return keys, np.concatenate(bounds)


def preprocess_complete(store: Store) -> bool:
    """Every shard of the latest corpus version is done and reported."""
    markers = store.markers(PREPROCESS)
    report = markers.get("report")
    return report is not None and report.extra.get("version", 1) == len(plan_chain(markers))


def first_new_shard(store: Store, first_id: int) -> int:
    """The number of the first shard of the segment whose ids start at `first_id` (the
    shards before it hold the ids below it)."""
    shards, total = 0, 0
    for m in plan_markers(store):
        if total >= first_id:
            break
        shards += int(m.extra["shards"])
        total += int(m.extra["n"])
    return shards


def planned_count(store: Store) -> int:
    """How many items the plan numbers (ids are 0 .. count - 1)."""
    return sum(int(m.extra["n"]) for m in plan_markers(store))
