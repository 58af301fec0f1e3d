"""The duplicates stage's files.

- `duplicates/knn/shard-NNNNN.npz`, one per feature shard: `ids` [n] (the shard's images
  that have a feature), `nbrs` [n, k] (their nearest other images, -1 for none) and
  `sims` [n, k] (exact cosine similarities, descending).
- `duplicates/calibration.json`: the threshold measured on the store (`stages.
  calibration`) and what it was measured on.
- `duplicates/groups.json`: `{"threshold", "threshold_from" (given, measured or
  fallback), "slack", "k", "corpus", "shards", "groups": [{"representative", "reason",
  "ids", "keys", "scores", "centre"}]}`, the largest groups first;
  each group lists its representative first, then the others by descending similarity
  to it (`scores`, 1.0 for the representative); `centre` is the member every other
  reached to stay in the group (`index.grouping`).
- `duplicates/groups.csv`: id, key, group, representative, score: a row per grouped image.
- `duplicates/remove-list.txt`: `id<TAB>key` of every grouped image that is not its group's
  representative, one a line, for `python -m workflow remove --from-file`.
"""
from __future__ import annotations

import csv
import io
import json
from pathlib import Path

import numpy as np

from ..storage.marker import Marker
from ..storage.store import Store
from .layout import DUP_KNN, DUPLICATES, GROUPS_FILE


def knn_file(unit: str) -> str:
    return f"{DUP_KNN}/{unit}.npz"


def write_knn(path: Path, ids: np.ndarray, nbrs: np.ndarray, sims: np.ndarray) -> None:
    with open(path, "wb") as f:
        np.savez(f, ids=np.asarray(ids, np.int64), nbrs=np.asarray(nbrs, np.int64),
                 sims=np.asarray(sims, np.float32))


def load_knn(store: Store, marker: Marker) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(ids, nbrs, sims) of a committed unit, via a verified local copy."""
    local = store.fetch(marker, store.scratch / DUPLICATES / "in" / Path(marker.path).name)
    try:
        with np.load(local) as f:
            return f["ids"], f["nbrs"], f["sims"]
    finally:
        local.unlink()


def groups_json(groups: list[dict], settings: dict) -> bytes:
    return (json.dumps({**settings, "groups": groups}, ensure_ascii=False, indent=None,
                       separators=(",", ":")) + "\n").encode()


def groups_csv(groups: list[dict]) -> bytes:
    out = io.StringIO()
    w = csv.writer(out, lineterminator="\n")
    w.writerow(["id", "key", "group", "representative", "score"])
    for g, group in enumerate(groups):
        for i, key, s in zip(group["ids"], group["keys"], group["scores"]):
            w.writerow([i, key, g, group["representative"], f"{s:.6f}"])
    return out.getvalue().encode()


REMOVE_LIST_HEADER = ("# images to remove: `python -m workflow remove --from-file` this "
                      "file. One a line: the id, a tab, the key (checked against the id)\n")


def remove_list(groups: list[dict]) -> bytes:
    """`id<TAB>key` of every non-representative: the id names the image whatever its
    key holds (a leading #, spaces), the key lets a person read it and is checked."""
    lines = [(i, key) for g in groups for i, key in zip(g["ids"], g["keys"])
             if i != g["representative"]]
    return (REMOVE_LIST_HEADER + "".join(f"{i}\t{key}\n" for i, key in lines)).encode()


def load_groups(store: Store) -> dict | None:
    """`groups.json` as committed, or None before the stage finished."""
    if store.marker(DUPLICATES, "groups") is None:
        return None
    return json.loads(store.read_bytes(GROUPS_FILE))


def groups_summary(store: Store) -> dict | None:
    """{"groups", "images", "threshold"} of the committed groups, or None."""
    m = store.marker(DUPLICATES, "groups")
    return None if m is None else {k: m.extra[k] for k in ("groups", "images", "threshold")}


def representative_of(groups: dict | None, n: int) -> np.ndarray:
    """rep[id]: the representative of the id's group, or the id itself (n ids)."""
    rep = np.arange(n, dtype=np.int64)
    for g in (groups or {}).get("groups", []):
        ids = np.asarray(g["ids"], np.int64)
        rep[ids[ids < n]] = g["representative"]
    return rep
