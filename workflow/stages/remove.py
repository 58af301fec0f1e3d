"""`python -m workflow remove`: take images out of every search result, evaluation and
thumbnail, or bring them back (`--restore`), by id, key, source, file or as found missing
by the last `01_preprocess.py --update`. The removal list (`formats.removed`) is one
committed, checksummed unit per change; searches filter it out as they run, so nothing is
rebuilt and a removal costs a few seconds at any corpus size."""
from __future__ import annotations

import logging
import os
from dataclasses import dataclass

import numpy as np

from ..errors import ConfigError, WorkflowError
from ..formats.layout import REMOVE, REMOVED
from ..formats.missing import load_missing
from ..formats.plan import load_keys_and_bounds, load_plan, planned_count
from ..formats.removed import commit_removed, load_removed, prune_removed
from ..storage.lease import Lease
from ..storage.store import Store

logger = logging.getLogger(__name__)


@dataclass
class Selection:
    """What to remove (or restore), as given on the command line."""
    ids: tuple[int, ...] = ()
    keys: tuple[str, ...] = ()
    missing: bool = False
    from_file: str | None = None
    sources: tuple[str, ...] = ()

    def empty(self) -> bool:
        return not (self.ids or self.keys or self.missing or self.from_file or self.sources)


@dataclass
class RemoveResult:
    changed: int
    total: int
    version: int
    restore: bool
    selected: int = -1  # images the selection named

    def summary(self) -> str:
        verb = "restored" if self.restore else "removed"
        if not self.selected:
            return (f"nothing to do: the selection names no image (--missing: the last "
                    f"`--update` found every image); {self.total:,} removed in all")
        if not self.changed:
            return (f"nothing to do: the {self.selected:,} images given are {verb} already; "
                    f"{self.total:,} removed in all")
        return (f"{verb} {self.changed:,} images; {self.total:,} removed in all (removal list "
                f"version {self.version}). Searches leave removed images out from now on"
                f"{'' if self.restore else '; `remove --restore` brings them back'}.")


def select(store: Store, sel: Selection) -> np.ndarray:
    """The ids a selection names, each checked; a ConfigError names what is unknown."""
    if sel.empty():
        raise ConfigError("name the images: --id, --key, --source, --missing or --from-file")
    n = planned_count(store)
    bad = [i for i in sel.ids if not 0 <= i < n]
    if bad:
        raise ConfigError(f"id {bad[0]} is not in the corpus (ids are 0..{n - 1})"
                          + (f"; {len(bad) - 1} more unknown ids" if len(bad) > 1 else ""))
    out = set(sel.ids)
    if sel.keys or sel.from_file:
        by_key = _keys(store)
        unknown = [k for k in sel.keys if k not in by_key]
        if unknown:
            raise ConfigError(f"no image has the key {unknown[0]!r}"
                              + (f" (nor {len(unknown) - 1} more keys)" if len(unknown) > 1
                                 else "") + "; keys are as `python -m workflow search` shows")
        out.update(_one_id(by_key, k) for k in sel.keys)
        if sel.from_file:
            out.update(read_removal_file(sel.from_file, by_key, n))
    if sel.missing:
        out.update(_missing(store))
    for src in sel.sources:
        out.update(_source_ids(store, src))
    return np.array(sorted(out), np.int64)


def _keys(store: Store) -> dict[str, list[int]]:
    """key -> the ids with that key (more than one only where sources collide)."""
    keys, _ = load_keys_and_bounds(store, store.scratch / REMOVE / "plan.h5")
    out: dict[str, list[int]] = {}
    for i, k in enumerate(keys):
        out.setdefault(k, []).append(i)
    return out


def _one_id(by_key: dict[str, list[int]], key: str, where: str = "") -> int:
    ids = by_key[key]
    if len(ids) > 1:
        raise ConfigError(f"{where}the key {key!r} names {len(ids)} images (ids "
                          f"{', '.join(map(str, ids))}): give the id instead (--id, or an "
                          "`id<TAB>key` line); nothing was removed")
    return ids[0]


def read_removal_file(path: str, by_key: dict[str, list[int]], n: int) -> list[int]:
    """Ids from a file of one image a line: `id<TAB>key` (as the duplicates stage's
    remove-list.txt: the key must be the id's), an id, or a key as it is; blank lines and
    `#` lines that are not a key are skipped."""
    try:
        with open(path, encoding="utf-8", newline="") as f:
            lines = f.read().split("\n")
    except (OSError, UnicodeDecodeError) as e:
        raise ConfigError(f"cannot read --from-file {path}: {e}") from None
    out = []
    for no, line in enumerate(lines, 1):
        line = line.removesuffix("\r")
        where = f"{path}:{no}: "
        first, tab, key = line.partition("\t")
        if tab and first.strip().isdigit():
            i = int(first)
            if not i < n or i not in by_key.get(key, ()):
                raise ConfigError(f"{where}id {i} is not the image with the key {key!r} in "
                                  "this corpus (a list from another store or version?); fix "
                                  "or delete that line (nothing was removed)")
            out.append(i)
        elif line in by_key:  # a key, whatever it holds (a leading #, spaces)
            out.append(_one_id(by_key, line, where))
        elif not line.strip() or line.lstrip().startswith("#"):
            continue
        elif line.strip().isdigit() and int(line) < n:
            out.append(int(line))
        else:
            raise ConfigError(f"{where}{line[:80]!r} is neither an id (0..{n - 1}), nor the "
                              "key of an image in the corpus, nor an `id<TAB>key` line; fix "
                              "or delete that line (nothing was removed)")
    return out


def _missing(store: Store) -> list[int]:
    record = load_missing(store)
    if record is None:
        raise WorkflowError("no images are recorded as missing: `01_preprocess.py --update` "
                            "records them when it lists the sources again; run it first")
    logger.info("%d images recorded as missing by the update of corpus version %d",
                len(record["ids"]), record["version"])
    return record["ids"]


def _source_ids(store: Store, src: str) -> list[int]:
    url = src if "://" in src else os.path.abspath(os.path.expanduser(src)).rstrip("/")
    plan = load_plan(store, store.scratch / REMOVE / "plan.h5")
    k = next((k for k, s in enumerate(plan.sources) if s.url.rstrip("/") == url), None)
    if k is None:
        raise ConfigError(f"{src} is not a source of this corpus (its sources: "
                          f"{', '.join(s.url for s in plan.sources)})")
    return np.flatnonzero(plan.source_idx == k).tolist()


def remove(store: Store, sel: Selection, restore: bool = False) -> RemoveResult:
    """Remove (or restore) the selected images: a new version of the removal list."""
    ids = select(store, sel)
    with Lease(store, REMOVE):
        store.cleanup(REMOVE, (REMOVED,))
        prune_removed(store)
        version, current = load_removed(store)
        new = np.setdiff1d(current, ids) if restore else np.union1d(current, ids)
        changed = abs(len(new) - len(current))
        if changed:
            commit_removed(store, new, version + 1, {"count": int(len(new))})
            version += 1
    return RemoveResult(changed, int(len(new)), version, restore, int(len(ids)))
