"""Search without repeats: at most one image per near-duplicate group (the duplicates
stage's `groups.json`) in each query's results."""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace

import numpy as np

from ..errors import NotBuilt
from ..formats.duplicates import load_groups, representative_of
from ..storage.store import Store
from .modes import MAX_CANDIDATES, SearchParams

WIDEN = 4  # results searched per result kept, so that k remain after collapsing


def group_map(store: Store, n: int) -> np.ndarray:
    """rep[id]: the representative of the id's group (the id itself outside groups)."""
    groups = load_groups(store)
    if groups is None:
        raise NotBuilt(f"{store.url} has no near-duplicate groups to collapse: run "
                          "scripts/08_duplicates.py first (python -m workflow duplicates)")
    return representative_of(groups, n)


def collapse(D: np.ndarray, I: np.ndarray, rep: np.ndarray, k: int):
    """Each row's results keeping only the best-scoring image of each group, first k;
    -1/-inf where fewer remain."""
    D2 = np.full((len(I), k), -np.inf, np.float32)
    I2 = np.full((len(I), k), -1, np.int64)
    for row in range(len(I)):
        ids = I[row][I[row] >= 0]
        _, first = np.unique(rep[ids], return_index=True)  # the best of each group
        keep = np.sort(first)[:k]
        D2[row, :len(keep)], I2[row, :len(keep)] = D[row, keep], ids[keep]
    return D2, I2


def collapsed_search(search: Callable, xq: np.ndarray, k: int, p: SearchParams,
                     excl: np.ndarray | None, rep: np.ndarray, n: int):
    """Top k with at most one image per group, from `search(xq, depth, params=,
    exclude=)` -> (D, I): searched WIDEN x k deep, then deeper (x4 each time, up to the corpus's `n`
    ids or MAX_CANDIDATES) for the queries that still have fewer than k groups while
    their search had more to give."""
    depth = k * WIDEN
    D, I = collapse(*search(xq, depth, params=p, exclude=excl), rep, k)
    rows = np.arange(len(xq))
    limit = min(n, max(MAX_CANDIDATES, depth))
    while depth < limit:
        short = rows[(I[rows] >= 0).sum(axis=1) < k]
        if not len(short):
            break
        depth = min(depth * 4, limit)
        deeper = replace(p, rerank=max(p.rerank, depth),
                         annoy=max(p.annoy, depth) if p.annoy else 0)
        Dw, Iw = search(xq[short], depth, params=deeper,
                        exclude=None if excl is None else excl[short])
        D[short], I[short] = collapse(Dw, Iw, rep, k)
        rows = short[(Iw >= 0).sum(axis=1) >= depth]  # the others have no more to give
    return D, I
