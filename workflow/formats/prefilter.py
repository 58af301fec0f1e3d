"""The prefilter file, `prefilter/annoy.ann`: an Annoy index (angular metric) over the
PCA-reduced features, item = image id. Its dimension is recorded in its marker."""
from __future__ import annotations

from pathlib import Path

import annoy

from ..errors import WorkflowError
from ..storage.store import Store
from .layout import PREFILTER

METRIC = "angular"


def new_prefilter(path: Path, dim: int, seed: int) -> annoy.AnnoyIndex:
    """An empty Annoy index that builds straight into the file at `path`."""
    path.unlink(missing_ok=True)
    index = annoy.AnnoyIndex(dim, METRIC)
    index.set_seed(seed)
    index.on_disk_build(str(path))
    return index


def load_prefilter(store: Store) -> annoy.AnnoyIndex:
    """The Annoy index, staged in and memory-mapped."""
    m = store.marker(PREFILTER, "annoy")
    if m is None:
        raise WorkflowError(f"{store.url} has no prefilter; run scripts/05_prefilter.py")
    index = annoy.AnnoyIndex(m.extra["dim"], METRIC)
    index.load(str(store.fetch(m, store.scratch / PREFILTER / "final" / "annoy.ann")))
    return index
