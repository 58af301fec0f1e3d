"""The prefilter: Annoy indexes (angular metric) over the PCA-reduced features, item =
image id, in segments. `prefilter/annoy.ann` covers the feature shards there were when it
was built; each corpus update adds a segment `prefilter/annoy-NNNNN.ann` over the new
shards from shard NNNNN on (an Annoy index cannot grow once built), until a rebuild folds
them into one again. A segment's marker says its shard range [`first`, `end`), `n`,
`dim` and `trees`; the segments in force are the chain that covers shards 0, 1, ... in
order (any other is a leftover of a rebuild)."""
from __future__ import annotations

from pathlib import Path

import annoy
import numpy as np

from ..errors import WorkflowError
from ..storage.marker import Marker
from ..storage.store import Store
from .layout import PREFILTER

METRIC = "angular"
BASE = "annoy"


def segment_unit(first: int) -> str:
    return BASE if first == 0 else f"{BASE}-{first:05d}"


def segment_file(first: int) -> str:
    return f"{PREFILTER}/{segment_unit(first)}.ann"


def new_prefilter(path: Path, dim: int, seed: int) -> annoy.AnnoyIndex:
    """An empty Annoy index that builds straight into the file at `path`."""
    path.unlink(missing_ok=True)
    index = annoy.AnnoyIndex(dim, METRIC)
    index.set_seed(seed)
    index.on_disk_build(str(path))
    return index


def shard_range(m: Marker, counts: list[int]) -> tuple[int, int]:
    """[first, end) shards of a segment; for a base built before segments existed, the
    shards whose counts add up to its n."""
    if "first" in m.extra:
        return m.extra["first"], m.extra["end"]
    total, end = 0, 0
    while end < len(counts) and total < m.extra["n"]:
        total += counts[end]
        end += 1
    return 0, end


def segment_chain(store: Store, counts: list[int]) -> tuple[list[Marker], list[Marker]]:
    """(the segments in force, in shard order; the others) given the feature shards'
    vector counts in shard order."""
    markers = {u: m for u, m in store.markers(PREFILTER).items() if u.startswith(BASE)}
    ranges = {u: shard_range(m, counts) for u, m in markers.items()}
    chain, pos = [], 0
    while (u := next((u for u, (a, _) in ranges.items() if a == pos and u not in
                      [c.unit for c in chain]), None)) is not None:
        if ranges[u][1] <= pos or ranges[u][1] > len(counts):
            break
        chain.append(markers[u])
        pos = ranges[u][1]
    return chain, [m for u, m in markers.items() if m not in chain]


class Prefilter:
    """The segments in force, queried together: each returns its own k nearest."""

    def __init__(self, segments: list[tuple[annoy.AnnoyIndex, int]]):
        self.segments = segments
        self.n = sum(n for _, n in segments)

    def get_n_items(self) -> int:
        return self.n

    def get_nns_by_vector(self, v, k: int, search_k: int = -1) -> list[int]:
        """Ids of the candidates of every segment (each segment's best k, best first),
        the larger segments first; `search_k` is shared among them by size."""
        out: list[int] = []
        for index, n in self.segments:
            sk = -1 if search_k < 0 else max(k, int(np.ceil(search_k * n / self.n)))
            out += index.get_nns_by_vector(v, k, search_k=sk)
        return out


def load_prefilter(store: Store, counts: list[int] | None = None) -> Prefilter:
    """The prefilter, its segments staged in and memory-mapped. `counts` (the feature
    shards' vector counts) is needed only for a base built before segments existed."""
    markers = store.markers(PREFILTER)
    if BASE not in markers:
        raise WorkflowError(f"{store.url} has no prefilter; run scripts/05_prefilter.py")
    chain, _ = segment_chain(store, counts or _counts(store))
    segments = []
    for m in chain:
        index = annoy.AnnoyIndex(m.extra["dim"], METRIC)
        index.load(str(store.fetch(m, store.scratch / PREFILTER / "final" / Path(m.path).name)))
        segments.append((index, m.extra["n"]))
    return Prefilter(sorted(segments, key=lambda s: -s[1]))


def _counts(store: Store) -> list[int]:
    from .layout import EXTRACT, is_shard
    return [m.extra["n"] for u, m in sorted(store.markers(EXTRACT).items()) if is_shard(u)]
