"""Search without repeats: at most one image per near-duplicate group (the duplicates
stage's `groups.json`) in each query's results."""
from __future__ import annotations

import numpy as np

from ..errors import ConfigError
from ..formats.duplicates import load_groups, representative_of
from ..storage.store import Store

WIDEN = 4  # results searched per result kept, so that k remain after collapsing


def group_map(store: Store, n: int) -> np.ndarray:
    """rep[id]: the representative of the id's group (the id itself outside groups)."""
    groups = load_groups(store)
    if groups is None:
        raise ConfigError(f"{store.url} has no near-duplicate groups to collapse: run "
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
