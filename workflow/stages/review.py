"""The duplicates stage's outputs, committed in an order that a kill cannot spoil:
groups.csv, remove-list.txt (none where the groups are for review only), nearest.png,
the review pages (the last first), then groups.json, whose marker says what they were
all made for. Pages left from an earlier run that had more of them are removed."""
from __future__ import annotations

import numpy as np

from ..formats.duplicates import groups_csv, groups_json, remove_list
from ..formats.images import stored_jpegs
from ..formats.layout import DUP_DIR, DUPLICATES, GROUPS_CSV, GROUPS_FILE, NEAREST_PNG, REMOVE_LIST
from ..report.duplicates import (
    GROUPS_PER_PAGE,
    n_pages,
    nearest_histogram_png,
    page_html,
    page_name,
    summary_html,
    thumbnail,
)
from .base import StageRun

PAGE_UNIT = "page-"


def commit_outputs(run: StageRun, groups: list[dict], settings: dict, nearest: np.ndarray,
                   calibration: dict | None, bounds: np.ndarray, fp: str) -> None:
    store = run.store
    grouped = sum(len(g["ids"]) for g in groups)
    histogram = nearest_histogram_png(nearest, settings["threshold"])
    _commit(run, GROUPS_CSV, "csv", groups_csv(groups), fp)
    if settings.get("review_only"):  # groups a model could not measure: no delete list
        if store.marker(DUPLICATES, "remove-list") is not None:
            store.remove_marker(DUPLICATES, "remove-list", remove_file=True)
    else:
        _commit(run, REMOVE_LIST, "remove-list", remove_list(groups), fp)
    _commit(run, NEAREST_PNG, "nearest", histogram, fp)
    pages = n_pages(len(groups), settings["report_groups"])
    shown = min(len(groups), settings["report_groups"])
    summary = summary_html(settings, len(groups), grouped, calibration, histogram)
    for page in range(pages, 0, -1):
        lo, hi = (page - 1) * GROUPS_PER_PAGE, min(page * GROUPS_PER_PAGE, shown)
        ids = sorted({i for g in groups[lo:hi] for i in g["ids"]})
        thumbs = {i: thumbnail(j) for i, j in stored_jpegs(store, bounds, ids).items()}
        text = page_html(page, pages, groups[lo:hi], lo, thumbs,
                         summary if page == 1 else "", len(groups) - shown)
        _commit(run, f"{DUP_DIR}/{page_name(page)}", f"{PAGE_UNIT}{page:04d}",
                text.encode(), fp)
    for unit in store.markers(DUPLICATES):
        if unit.startswith(PAGE_UNIT) and int(unit[len(PAGE_UNIT):]) > pages:
            store.remove_marker(DUPLICATES, unit, remove_file=True)
    _commit(run, GROUPS_FILE, "groups", groups_json(groups, settings), fp,
            {**settings, "groups": len(groups), "images": grouped})


def _commit(run: StageRun, rel: str, unit: str, data: bytes, fp: str,
            extra: dict | None = None) -> None:
    path = run.work / rel.replace("/", "_")
    path.write_bytes(data)
    run.lease.check()
    run.store.commit(path, rel, DUPLICATES, unit, fp, extra)
    path.unlink()
