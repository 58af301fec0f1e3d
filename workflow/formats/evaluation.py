"""Evaluation files (`evaluation/`): the exact ground truth and its checkpoint, one sweep
per mode (NumPy `.npz`), the report (JSON, Markdown, PNG) and `search_defaults.json`,
which the `Searcher` reads for its defaults.

- `groundtruth.npz`: `query_ids` int64[nq] (-1 for images from a query folder),
  `query_keys`, `xq` float32[nq, d], `D` float32[nq, 100], `I` int64[nq, 100].
- `groundtruth-partial.npz`: `D`, `I`, `qids` while the exact search runs.
- `sweep-<mode>.npz`: `I` int64[settings, nq, 10]; the measured points are in its marker.
- `search_defaults.json`: per mode its tuned parameters, `default_mode`, `target_recall`.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from ..storage.marker import Marker
from ..storage.store import Store
from .layout import DEFAULTS_FILE, EVALUATE

LEGACY_CORPUS = "1.0"  # what evaluations made before corpus updates existed belong to


def corpus_id(plan_version: int, removal_version: int) -> str:
    """The corpus a ground truth, a sweep or a report belongs to: "<plan version>.<removal
    list version>"."""
    return f"{plan_version}.{removal_version}"


def of_corpus(marker: Marker | None, corpus: str) -> bool:
    """The unit is committed and belongs to `corpus`."""
    return marker is not None and marker.extra.get("corpus", LEGACY_CORPUS) == corpus


def commit_npz(store: Store, rel: str, unit: str, fp: str, extra: dict | None,
               **arrays: np.ndarray) -> None:
    """Write arrays as `.npz` in scratch and commit them to `rel` as the unit."""
    commit_bytes(store, rel, unit, fp, extra, lambda f: np.savez(f, **arrays))


def commit_bytes(store: Store, rel: str, unit: str, fp: str, extra: dict | None,
                 write) -> None:
    """Commit the evaluate stage's file `rel`, written by `write(binary file)`."""
    work = store.scratch / EVALUATE
    work.mkdir(parents=True, exist_ok=True)
    path = work / Path(rel).name
    with open(path, "wb") as f:
        if callable(write):
            write(f)
        else:
            f.write(write)
    store.commit(path, rel, EVALUATE, unit, fp, extra)
    path.unlink()


def load_npz(store: Store, marker: Marker) -> dict[str, np.ndarray]:
    """All arrays of a committed `.npz`, staged in and verified."""
    with np.load(store.fetch(marker, store.scratch / EVALUATE / Path(marker.path).name)) as f:
        return {k: f[k] for k in f.files}


def read_search_defaults(store: Store) -> dict:
    """The tuned search defaults ({} where the store has not been evaluated)."""
    return store.read_json(DEFAULTS_FILE) or {}


def search_defaults_json(defaults: dict) -> bytes:
    """The bytes of `search_defaults.json`."""
    return json.dumps(defaults, indent=1).encode()


def report_json(report: dict) -> bytes:
    """The bytes of `report.json`: everything measured, with the date and the machine."""
    return json.dumps(report, indent=1).encode()
