"""Index decisions from N, d and a memory budget: small pure functions, table-tested.

Everything here is arithmetic on sizes; nothing touches Faiss or the store.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

# Seconds of OPQ training per training vector, measured on 2 cores: OPQ64 on 100k x 1280
# took 874 s; OPQ32 on 20k x 64 took 140-280 s. The cost barely depends on d (the PQ
# re-training inside each of OPQ's 50 iterations dominates), so it is per vector.
OPQ_SECONDS_PER_VECTOR = 874 / 100_000
# Seconds of IVF-PQ training per (sample x nlist x d): IVF4096,PQ64 on 100k x 1280 took
# 84 s (129 s while Faiss's polysemous training of the PQ codes was still on).
KMEANS_SECONDS_PER_UNIT = 84 / (100_000 * 4096 * 1280)
MIN_POINTS_PER_CENTROID = 39     # Faiss warns below this
PQ_MIN_TRAIN = 256 * 39          # each sub-quantizer has 256 centroids
ID_BYTES = 8
ANNOY_SECONDS_PER_VECTOR = 1e-5      # read, PCA, add_item
ANNOY_SECONDS_PER_TREE_DIM = 2.5e-8  # per vector, tree and dimension (one build thread)


def choose_nlist(n: int) -> int:
    """About 4 sqrt(N) inverted lists, a power of two, with >= 39 points per list."""
    assert n > 0
    if n < 2 * MIN_POINTS_PER_CENTROID:
        return 1
    target = 4 * math.sqrt(n)
    nlist = 2 ** round(math.log2(target))
    while nlist > 1 and nlist * MIN_POINTS_PER_CENTROID > n:
        nlist //= 2
    return int(min(nlist, 1 << 18))


def pq_candidates(d: int) -> list[int]:
    """PQ sizes (bytes per code) Faiss accepts for d: divisors of d, >= 2 dims each."""
    return [m for m in (4, 8, 16, 24, 32, 48, 64, 96, 128) if d % m == 0 and d // m >= 2]


def estimate_index_bytes(n: int, d: int, nlist: int, m: int, opq: bool = False) -> int:
    """Memory of a filled IVF-PQ index: codes + ids + centroids (+ OPQ matrix)."""
    return n * (m + ID_BYTES) + nlist * d * 4 + (d * d * 4 if opq else 0) + 256 * d * 4


def choose_pq_m(n: int, d: int, memory_budget: int, nlist: int) -> int:
    """The largest PQ code of at most 64 bytes that keeps the filled index within half
    the memory budget (the rest is for search and re-ranking); the smallest otherwise."""
    cands = pq_candidates(d)
    if not cands:
        raise ValueError(f"no PQ size divides dimension {d}; pass an --index-factory")
    fitting = [m for m in cands if m <= 64 and
               estimate_index_bytes(n, d, nlist, m) <= memory_budget // 2]
    return max(fitting) if fitting else min(cands)


def choose_train_size(n: int, nlist: int) -> int:
    """Training sample: 39 points per list (k-means time grows with it, quality little
    beyond), enough for PQ's 256 centroids, at least 50k where there are that many."""
    return int(min(n, max(MIN_POINTS_PER_CENTROID * nlist, PQ_MIN_TRAIN, 50_000)))


def choose_pq_bits(train_size: int) -> int:
    """8 bits per PQ code where the sample can train 256 centroids, fewer on tiny sets."""
    if train_size >= PQ_MIN_TRAIN:
        return 8
    return max(1, min(8, int(math.log2(train_size / MIN_POINTS_PER_CENTROID))))


def estimate_train_seconds(train_size: int, d: int, nlist: int, opq: bool) -> float:
    """Rough CPU seconds on 2 cores: k-means, plus the OPQ rotation if asked."""
    t = KMEANS_SECONDS_PER_UNIT * train_size * nlist * d
    return t + (OPQ_SECONDS_PER_VECTOR * train_size if opq else 0.0)


def choose_opq(n: int, train_size: int, d: int, max_seconds: float = 60.0) -> bool:
    """OPQ where it pays: on corpora large enough for PQ error to matter (>= 20k), and
    where it trains within `max_seconds`. At the cost per training vector measured on 2
    cores (`OPQ_SECONDS_PER_VECTOR`) that is never the case with a useful sample: OPQ is
    for users who pass --opq (the exact re-rank recovers most of what PQ loses)."""
    return n >= 20_000 and OPQ_SECONDS_PER_VECTOR * train_size <= max_seconds


def choose_pca_dim(d: int, train_size: int | None = None) -> int:
    """Prefilter dimension: Annoy builds slow down sharply with dimension; 64 is plenty
    for a candidate generator that is re-ranked exactly. PCA cannot output more
    dimensions than it has training vectors."""
    return min(d, 64, train_size or d)


@dataclass(frozen=True)
class IndexPlan:
    """Every index decision, with the estimates that justify it."""
    n: int
    d: int
    nlist: int
    pq_m: int
    pq_bits: int
    opq: bool
    hnsw_quantizer: bool
    train_size: int
    pca_dim: int
    factory: str
    memory_bytes: int
    train_seconds: float

    def describe(self) -> str:
        opq = " with OPQ" if self.opq else ""
        codes = f"PQ {self.pq_m} x {self.pq_bits} bits/vector{opq}"
        return (f"{self.factory} for {self.n:,} x {self.d}: {self.nlist} lists, {codes}, "
                f"trained on "
                f"{self.train_size:,} vectors (about {self.train_seconds:.0f} s on 2 CPU "
                f"cores), filled index about {self.memory_bytes / 2**30:.2f} GiB; prefilter "
                f"PCA to {self.pca_dim} dims")


def plan_index(n: int, d: int, memory_budget: int, nlist: int | None = None,
               pq_m: int | None = None, opq: bool | None = None,
               train_size: int | None = None, pca_dim: int | None = None) -> IndexPlan:
    """Choose everything not given; the given values are kept as they are. The codes are
    PQ: RaBitQ over a PCA rotation (`--index-factory PCAR448,IVF4096,RaBitQ`) was the
    default once, for its speed on 2M synthetic vectors, but on 100,000 real image
    embeddings PQ64 answered as fast or faster at recall@10 0.99 (BENCHMARKS.md, "Index
    types on 100,000 real image embeddings")."""
    nlist = nlist or choose_nlist(n)
    pq_m = pq_m or choose_pq_m(n, d, memory_budget, nlist)
    train_size = min(n, train_size or choose_train_size(n, nlist))
    opq = choose_opq(n, train_size, d) if opq is None else opq
    bits = choose_pq_bits(train_size)
    hnsw = nlist >= 16384
    coarse = f"IVF{nlist}_HNSW32" if hnsw else f"IVF{nlist}"
    factory = (f"OPQ{pq_m}," if opq else "") + f"{coarse},PQ{pq_m}" + \
        (f"x{bits}" if bits != 8 else "")
    return IndexPlan(n, d, nlist, pq_m, bits, opq, hnsw, train_size,
                     pca_dim or choose_pca_dim(d, train_size),
                     factory, estimate_index_bytes(n, d, nlist, pq_m, opq),
                     estimate_train_seconds(train_size, d, nlist, opq))


def choose_annoy_trees(n: int) -> int:
    """Annoy trees: about 2 log2(N), between 8 and 50 (build time and file size grow
    linearly with trees; recall saturates, and the candidates are re-ranked exactly)."""
    return int(min(50, max(8, round(2 * math.log2(max(n, 2))))))


def estimate_annoy_seconds(n: int, dim: int, trees: int) -> float:
    """Rough CPU seconds of the prefilter build (reading and projecting the vectors,
    then the trees on one thread), calibrated on the 2M build in BENCHMARKS.md."""
    return n * (ANNOY_SECONDS_PER_VECTOR + ANNOY_SECONDS_PER_TREE_DIM * trees * dim)
