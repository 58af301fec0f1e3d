"""Feature shards, `features/shard-NNNNN.h5`: the public format written by extract and
read by train, add, prefilter and evaluate.

Datasets: `ids` int64[m] (the images that got a feature), `features` float16[m, d]
(L2-normalised). Attributes: `fingerprint`, `model`, `dim`, `model_info` (JSON),
`format_version`.
"""
from __future__ import annotations

import json
from pathlib import Path

import h5py
import numpy as np
from tqdm.auto import tqdm

from ..errors import WorkflowError
from ..storage.marker import Marker
from ..storage.store import Store
from .layout import EXTRACT, PREPROCESS, is_shard

FORMAT_VERSION = 1


def write_feature_shard(path: str, ids: np.ndarray, feats: np.ndarray, fp: str,
                        info: dict) -> None:
    """Write one feature shard: ids int64[m], features float16[m, d], model attributes."""
    assert feats.dtype == np.float16 and feats.shape[0] == len(ids)
    with h5py.File(path, "w") as f:
        f.create_dataset("ids", data=np.asarray(ids, np.int64), track_times=False)
        f.create_dataset("features", data=feats, track_times=False)
        f.attrs["fingerprint"] = fp
        f.attrs["model"] = info["model"]
        f.attrs["dim"] = int(feats.shape[1])
        f.attrs["model_info"] = json.dumps(info, sort_keys=True)
        f.attrs["format_version"] = FORMAT_VERSION


def read_feature_shard(path_or_file) -> tuple[np.ndarray, np.ndarray, dict]:
    """(ids, float16 features, attributes) of a feature shard file."""
    with h5py.File(path_or_file, "r") as f:
        return f["ids"][:], f["features"][:], dict(f.attrs)


def fetch_features(store: Store, marker: Marker, work: Path) -> tuple[np.ndarray, np.ndarray]:
    """(ids, float16 features) of a committed feature shard, via a verified local copy
    that is removed afterwards."""
    local = store.fetch(marker, work / f"{marker.unit}.h5")
    try:
        with h5py.File(local, "r") as f:
            return f["ids"][:], f["features"][:]
    finally:
        local.unlink()


def fetch_rows(store: Store, marker: Marker, rows: np.ndarray, work: Path) -> np.ndarray:
    """The float16 features at these (sorted) rows of a committed feature shard."""
    local = store.fetch(marker, work / f"{marker.unit}.h5")
    try:
        with h5py.File(local, "r") as f:
            return f["features"][rows]
    finally:
        local.unlink()


def feature_markers(store: Store) -> dict[str, Marker]:
    """The extract stage's shard markers by unit, after checking that it is complete."""
    images = [u for u in store.markers(PREPROCESS) if is_shard(u)]
    feats = {u: m for u, m in store.markers(EXTRACT).items() if is_shard(u)}
    if EXTRACT not in store.run_info()["stages"] or not images or set(images) - set(feats):
        raise WorkflowError(f"the extract stage is not complete in {store.url} "
                            f"({len(feats)}/{len(images)} shards); run scripts/02_extract.py "
                            "first (`python -m workflow status` shows where it stands)")
    return dict(sorted(feats.items()))


def feature_count(markers: dict[str, Marker]) -> tuple[int, int]:
    """(features in all shards, their dimension) from the markers alone."""
    return (sum(m.extra["n"] for m in markers.values()),
            next(iter(markers.values())).extra["dim"])


def allocate(sizes: list[int], total: int) -> list[int]:
    """How many sample rows each shard gives: proportional to its size, summing to total."""
    n = sum(sizes)
    total = min(total, n)
    share = [s * total // n for s in sizes] if n else [0] * len(sizes)
    for i in sorted(range(len(sizes)), key=lambda i: -(sizes[i] * total % n if n else 0)):
        if sum(share) >= total:
            break
        if share[i] < sizes[i]:
            share[i] += 1
    return share


def draw_sample(store: Store, markers: dict[str, Marker], size: int, seed: int,
                progress: bool = False) -> np.ndarray:
    """A seeded sample of `size` features, float32, read one shard at a time."""
    units = list(markers)
    counts = allocate([markers[u].extra["n"] for u in units], size)
    d = next(iter(markers.values())).extra["dim"]
    out = np.empty((sum(counts), d), np.float32)
    pos = 0
    for i, (unit, k) in enumerate(tqdm(list(zip(units, counts)), desc="sample", unit="shard",
                                       disable=not progress)):
        if k == 0:
            continue
        rng = np.random.default_rng([seed, i])
        rows = np.sort(rng.choice(markers[unit].extra["n"], k, replace=False))
        out[pos:pos + k] = fetch_rows(store, markers[unit], rows, store.scratch / "sample")
        pos += k
    return out
