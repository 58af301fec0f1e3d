"""Result pages: each query and its top k as thumbnails with scores and keys.

`write_results_page` writes a self-contained HTML page (thumbnails embedded, so the
file can be downloaded from a notebook and opened anywhere) or, for a `.png` path, a
contact sheet. Thumbnails are the stored JPEGs of the image shards.
"""
from __future__ import annotations

import base64
import html
from collections.abc import Sequence
from pathlib import Path

import cv2
import numpy as np

from ..errors import ConfigError

CELL = 160  # px, thumbnail box of the PNG sheet
LABEL_H = 34


def write_results_page(results: Sequence, thumbs: dict[int, bytes], path: str | Path,
                       title: str = "search results") -> Path:
    """Write `results` (QueryResult) as an .html page or a .png sheet; returns the path."""
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in (".html", ".htm", ".png"):
        raise ConfigError(f"--out {path}: the result page must end in .html or .png")
    path.parent.mkdir(parents=True, exist_ok=True)
    if suffix == ".png":
        sheet = contact_sheet(results, thumbs)
        if not cv2.imwrite(str(path), sheet):
            raise ConfigError(f"could not write {path}")
    else:
        path.write_text(results_html(results, thumbs, title), encoding="utf-8")
    return path


def _img_tag(jpeg: bytes | None, alt: str) -> str:
    if not jpeg:
        return f'<div class="missing">{html.escape(alt)}</div>'
    data = base64.b64encode(jpeg).decode("ascii")
    return f'<img src="data:image/jpeg;base64,{data}" alt="{html.escape(alt)}">'


def _query_jpeg(r, thumbs: dict[int, bytes]) -> bytes | None:
    if r.query_jpeg:
        return r.query_jpeg
    if r.query.startswith("id:"):
        return thumbs.get(int(r.query[3:]))
    return None


def results_html(results: Sequence, thumbs: dict[int, bytes], title: str) -> str:
    rows = []
    for r in results:
        cells = [f'<figure class="query">{_img_tag(_query_jpeg(r, thumbs), r.query)}'
                 f"<figcaption><b>query</b><br>{html.escape(r.query)}"
                 f"{' (cached)' if r.cached else ''}</figcaption></figure>"]
        for rank, (i, key, s) in enumerate(zip(r.ids, r.keys, r.scores), 1):
            cells.append(f'<figure>{_img_tag(thumbs.get(i), key)}<figcaption>#{rank} '
                         f"score {s:.3f}<br>id {i}<br>{html.escape(key)}</figcaption></figure>")
        rows.append('<div class="row">' + "".join(cells) + "</div>")
    return f"""<!DOCTYPE html>
<html><head><meta charset="utf-8"><title>{html.escape(title)}</title>
<style>
body {{ font-family: sans-serif; margin: 1em; }}
.row {{ display: flex; flex-wrap: wrap; gap: 6px; margin-bottom: 18px;
        border-bottom: 1px solid #ccc; padding-bottom: 8px; }}
figure {{ margin: 0; width: 150px; font-size: 11px; word-break: break-all; }}
figure img, .missing {{ width: 150px; height: 150px; object-fit: contain; background: #eee; }}
.query img {{ outline: 3px solid #2a6; }}
</style></head><body>
<h2>{html.escape(title)}</h2>
{"".join(rows)}
</body></html>
"""


def _thumb(jpeg: bytes | None) -> np.ndarray:
    box = np.full((CELL, CELL, 3), 235, np.uint8)
    img = cv2.imdecode(np.frombuffer(jpeg, np.uint8), cv2.IMREAD_COLOR) if jpeg else None
    if img is None:
        return box
    h, w = img.shape[:2]
    s = CELL / max(h, w)
    img = cv2.resize(img, (max(1, round(w * s)), max(1, round(h * s))),
                     interpolation=cv2.INTER_AREA)
    y, x = (CELL - img.shape[0]) // 2, (CELL - img.shape[1]) // 2
    box[y:y + img.shape[0], x:x + img.shape[1]] = img
    return box


def _cell(jpeg: bytes | None, lines: list[str], border=None) -> np.ndarray:
    cell = np.full((CELL + LABEL_H, CELL, 3), 255, np.uint8)
    cell[:CELL] = _thumb(jpeg)
    if border is not None:
        cv2.rectangle(cell, (0, 0), (CELL - 1, CELL - 1), border, 3)
    for j, text in enumerate(lines[:2]):
        text = text if len(text) <= 26 else "..." + text[-23:]
        cv2.putText(cell, text, (3, CELL + 13 + 15 * j), cv2.FONT_HERSHEY_SIMPLEX, 0.37,
                    (0, 0, 0), 1, cv2.LINE_AA)
    return cell


def contact_sheet(results: Sequence, thumbs: dict[int, bytes]) -> np.ndarray:
    """One row per query: the query (green frame), then its results with scores."""
    rows = []
    width = 1 + max(len(r.ids) for r in results)
    for r in results:
        cells = [_cell(_query_jpeg(r, thumbs), ["query", r.query], border=(60, 170, 40))]
        cells += [_cell(thumbs.get(i), [f"#{n} {s:.3f} id {i}", key])
                  for n, (i, key, s) in enumerate(zip(r.ids, r.keys, r.scores), 1)]
        cells += [np.full_like(cells[0], 255)] * (width - len(cells))
        rows.append(np.hstack(cells))
    return np.vstack(rows)


def commit_results_page(store, n_queries: int = 6, k: int = 8) -> str:
    """A result page for a few sample corpus images and their neighbours, committed as
    `evaluation/results.html` (a unit of the evaluate stage); returns where it is."""
    from ..formats.layout import EVALUATE, RESULTS_PAGE
    from ..search.measure import sample_query_ids
    from ..search.searcher import Searcher
    searcher = Searcher(store)
    ids = sample_query_ids(searcher.xb, n_queries, seed=1).tolist()
    results = searcher.search(ids, k=k, exclude_self=True)
    thumbs = searcher.thumbnails([i for r in results for i in r.ids] + ids)
    path = write_results_page(results, thumbs, store.scratch / EVALUATE / "results.html",
                              f"{len(ids)} corpus images and their {k} nearest neighbours "
                              f"({searcher.default_mode} search)")
    fp = store.run_info()["stages"][EVALUATE]["fingerprint"]
    store.commit(path, RESULTS_PAGE, EVALUATE, "results-page", fp)
    path.unlink()
    return store.display(RESULTS_PAGE)
