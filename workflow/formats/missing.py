"""`images/missing.json`: the planned images whose files were gone at the last
`01_preprocess.py --update` (deleted from a folder, or their source dropped), by id and
key, for `python -m workflow remove --missing`. Rewritten by every update's scan."""
from __future__ import annotations

import json

from ..storage.store import Store
from .layout import MISSING_FILE, PREPROCESS


def commit_missing(store: Store, keys: list[str], ids: list[int], version: int,
                   fp: str) -> None:
    """Record the missing ids (as found by the scan of corpus version `version`)."""
    old = store.marker(PREPROCESS, "missing")
    if old is not None and old.extra.get("count") == len(ids) == 0:
        return
    doc = {"version": version, "ids": ids, "keys": [keys[i] for i in ids]}
    local = store.scratch / PREPROCESS / "missing.json"
    local.parent.mkdir(parents=True, exist_ok=True)
    local.write_text(json.dumps(doc, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
    store.commit(local, MISSING_FILE, PREPROCESS, "missing", fp, {"count": len(ids)})
    local.unlink()


def load_missing(store: Store) -> dict | None:
    """The last update's record ({version, ids, keys}), or None if no update ran."""
    if store.marker(PREPROCESS, "missing") is None:
        return None
    return store.read_json(MISSING_FILE)
