"""The prefilter: Annoy indexes (angular metric) over the PCA-reduced features, item =
image id, in segments. `prefilter/annoy.ann` covers the feature shards there were when it
was built; each corpus update adds a segment `prefilter/annoy-NNNNN.ann` over the new
shards from shard NNNNN on (an Annoy index cannot grow once built), until a rebuild folds
them into one again. A segment's marker says its shard range [`first`, `end`), `n`,
`dim` and `trees`; the segments in force are the chain that covers shards 0, 1, ... in
order (any other is a leftover of a rebuild)."""
from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from ..errors import WorkflowError
from ..storage.marker import Marker
from ..storage.store import Store
from .layout import EXTRACT, PREFILTER, is_shard

if TYPE_CHECKING:
    import annoy

METRIC = "angular"
BASE = "annoy"
MIN_K = 10  # candidates a segment gives at the least (search measures recall@10)


def segment_unit(first: int) -> str:
    return BASE if first == 0 else f"{BASE}-{first:05d}"


def segment_file(first: int) -> str:
    return f"{PREFILTER}/{segment_unit(first)}.ann"


def new_prefilter(path: Path, dim: int, seed: int) -> annoy.AnnoyIndex:
    """An empty Annoy index that builds straight into the file at `path`."""
    import annoy  # here, so that reading the segments' markers (status) needs no Annoy
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


def chain_of(markers: dict[str, Marker], counts: list[int]) -> tuple[list[Marker], int]:
    """(the segments in force among a prefilter's markers, in shard order; how many
    feature shards they cover), given the feature shards' vector counts in shard order."""
    ranges = {u: shard_range(m, counts) for u, m in markers.items() if u.startswith(BASE)}
    chain: list[str] = []
    pos = 0
    while (u := next((u for u, (a, _) in ranges.items() if a == pos and u not in chain),
                     None)) is not None:
        if ranges[u][1] <= pos or ranges[u][1] > len(counts):
            break
        chain.append(u)
        pos = ranges[u][1]
    return [markers[u] for u in chain], pos


def segment_chain(store: Store, counts: list[int]) -> tuple[list[Marker], list[Marker]]:
    """(the segments in force, in shard order; the others: leftovers of a rebuild)."""
    markers = {u: m for u, m in store.markers(PREFILTER).items() if u.startswith(BASE)}
    chain, _ = chain_of(markers, counts)
    return chain, [m for m in markers.values() if m not in chain]


class Prefilter:
    """The segments in force, queried together: each returns its own k nearest."""

    def __init__(self, segments: list[tuple[annoy.AnnoyIndex, int]], files: list[str] = ()):
        self.segments, self.files = segments, list(files)  # the memory-mapped files
        self.n = sum(n for _, n in segments)

    def get_n_items(self) -> int:
        return self.n

    def get_nns_by_vector(self, v, k: int, search_k: int = -1) -> list[int]:
        """Candidates from every segment, the larger segments first: k in all, shared
        among the segments by size (at least `MIN_K` each, so that a small segment still
        gives its best for a top 10), like `search_k`."""
        if len(self.segments) == 1:
            return self.segments[0][0].get_nns_by_vector(v, k, search_k=search_k)
        out: list[int] = []
        for index, n in self.segments:
            kk = min(k, max(MIN_K, int(np.ceil(k * n / self.n))))
            sk = -1 if search_k < 0 else max(kk, int(np.ceil(search_k * n / self.n)))
            out += index.get_nns_by_vector(v, kk, search_k=sk)
        return out

    def max_results(self, k: int) -> int:
        """The most candidates `get_nns_by_vector` returns for k."""
        return sum(min(k, max(MIN_K, int(np.ceil(k * n / self.n)))) for _, n in self.segments)


def load_prefilter(store: Store, counts: list[int] | None = None) -> Prefilter:
    """The prefilter, its segments memory-mapped (`Store.read_path`). `counts` (the feature
    shards' vector counts) is needed only for a base built before segments existed."""
    markers = store.markers(PREFILTER)
    if BASE not in markers:
        raise WorkflowError(f"{store.url} has no prefilter; run scripts/05_prefilter.py")
    import annoy
    chain, _ = segment_chain(store, counts or _counts(store))
    segments, files = [], []
    for m in chain:
        index = annoy.AnnoyIndex(m.extra["dim"], METRIC)
        files.append(str(store.read_path(m, store.scratch / PREFILTER / "final" /
                                         Path(m.path).name)))
        index.load(files[-1])
        segments.append((index, m.extra["n"]))
    return Prefilter(sorted(segments, key=lambda s: -s[1]), files)


def _counts(store: Store) -> list[int]:
    return [m.extra["n"] for u, m in sorted(store.markers(EXTRACT).items()) if is_shard(u)]
