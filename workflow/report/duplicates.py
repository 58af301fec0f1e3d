"""The near-duplicate review pages and the nearest-neighbour histogram.

`duplicates/report.html` is the first page: what was found, at which threshold and why
that one, the histogram of every image's nearest-neighbour similarity (to choose another
threshold), and the largest groups; `duplicates/report/page-NNNN.html` hold the next
groups, `GROUPS_PER_PAGE` to a page, largest first, each page linked to its neighbours.
Each group is a row of small thumbnails (embedded, so that a page opens anywhere)
with each image's key and similarity to the representative, which is marked as kept.
Only the first `max_groups` groups get pages; the rest are in groups.csv and
groups.json (a page that says so ends the report).
"""
from __future__ import annotations

import base64
import html
import io

import cv2
import numpy as np

GROUPS_PER_PAGE = 100
THUMB = 112  # px, the longer side of a thumbnail


def page_name(page: int) -> str:
    """Page 1 is report.html; page p > 1 is report/page-000p.html."""
    return "report.html" if page == 1 else f"report/page-{page:04d}.html"


def n_pages(n_groups: int, max_groups: int) -> int:
    return max(1, -(-min(n_groups, max_groups) // GROUPS_PER_PAGE))


def thumbnail(jpeg: bytes | None) -> bytes | None:
    """A small JPEG of a stored image (deterministic)."""
    if not jpeg:
        return None
    img = cv2.imdecode(np.frombuffer(jpeg, np.uint8), cv2.IMREAD_COLOR)
    if img is None:
        return None
    h, w = img.shape[:2]
    s = THUMB / max(h, w)
    if s < 1:
        img = cv2.resize(img, (max(1, round(w * s)), max(1, round(h * s))),
                         interpolation=cv2.INTER_AREA)
    ok, buf = cv2.imencode(".jpg", img, [cv2.IMWRITE_JPEG_QUALITY, 80])
    return buf.tobytes() if ok else None


def nearest_histogram_png(nearest: np.ndarray, threshold: float) -> bytes:
    """Histogram of each image's nearest-neighbour similarity, the threshold marked."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(7, 3.2), dpi=100)
    lo = float(min(np.min(nearest), threshold - 0.05)) if len(nearest) else 0.0
    ax.hist(nearest, bins=np.linspace(max(-1.0, lo), 1.0, 101), color="#4a7")
    ax.axvline(threshold, color="#c33", linestyle="--", label=f"threshold {threshold:g}")
    ax.set_yscale("log")
    ax.set_xlabel("similarity of each image to its nearest other image")
    ax.set_ylabel("images")
    ax.legend(loc="upper left")
    fig.tight_layout()
    out = io.BytesIO()
    fig.savefig(out, format="png", metadata={"Software": None})
    plt.close(fig)
    return out.getvalue()


def _img(jpeg: bytes | None, alt: str) -> str:
    if not jpeg:
        return f'<div class="missing">{html.escape(alt)}</div>'
    return (f'<img src="data:image/jpeg;base64,{base64.b64encode(jpeg).decode("ascii")}" '
            f'alt="{html.escape(alt)}" loading="lazy">')


def _group_row(number: int, g: dict, thumbs: dict[int, bytes]) -> str:
    cells = []
    for i, key, s in zip(g["ids"], g["keys"], g["scores"]):
        kept = i == g["representative"]
        label = (f"<b>kept</b> ({html.escape(g['reason'])})" if kept
                 else f"similarity {s:.3f}")
        cells.append(f'<figure class="{"kept" if kept else ""}">{_img(thumbs.get(i), key)}'
                     f"<figcaption>{label}<br>id {i}<br>{html.escape(key)}</figcaption></figure>")
    return (f'<section><h3>group {number} &middot; {len(g["ids"])} images</h3>'
            f'<div class="row">{"".join(cells)}</div></section>')


def _nav(page: int, pages: int, prefix: str) -> str:
    def link(p: int, text: str) -> str:
        return f'<a href="{prefix}{page_name(p)}">{text}</a>'
    parts = [link(1, "first")] if page > 1 else []
    if page > 1:
        parts.append(link(page - 1, "&larr; previous"))
    parts.append(f"page {page} of {pages}")
    if page < pages:
        parts += [link(page + 1, "next &rarr;"), link(pages, "last")]
    return '<nav>' + " &middot; ".join(parts) + "</nav>"


def page_html(page: int, pages: int, groups: list[dict], first: int,
              thumbs: dict[int, bytes], summary: str = "", left_out: int = 0) -> str:
    """One page: `groups` are groups number first, first+1, ... (0-based)."""
    prefix = "" if page == 1 else "../"
    rows = "".join(_group_row(first + j + 1, g, thumbs) for j, g in enumerate(groups))
    if not groups:
        rows = "<p>No near-duplicates at this threshold.</p>"
    tail = (f"<p>{left_out:,} more groups are not shown here; they are in groups.csv and "
            "groups.json.</p>") if left_out and page == pages else ""
    nav = _nav(page, pages, prefix)
    return f"""<!DOCTYPE html>
<html><head><meta charset="utf-8"><meta name="viewport" content="width=device-width">
<title>near-duplicates, page {page}</title>
<style>
body {{ font-family: sans-serif; margin: 1em; }}
nav {{ margin: 0.6em 0; }}
section {{ border-bottom: 1px solid #ccc; padding-bottom: 6px; margin-bottom: 10px; }}
h3 {{ font-size: 14px; margin: 4px 0; }}
.row {{ display: flex; flex-wrap: wrap; gap: 6px; }}
figure {{ margin: 0; width: {THUMB + 8}px; font-size: 11px; word-break: break-all; }}
figure img, .missing {{ width: {THUMB}px; height: {THUMB}px; object-fit: contain;
                        background: #eee; }}
.kept img {{ outline: 3px solid #2a6; }}
table {{ border-collapse: collapse; font-size: 13px; }}
td, th {{ border: 1px solid #ccc; padding: 2px 6px; text-align: right; }}
.warning {{ border: 2px solid #c60; background: #fff4e5; padding: 6px 10px; }}
</style></head><body>
<h2>Near-duplicate groups</h2>
{summary}
{nav}
{rows}
{tail}
{nav}
</body></html>
"""


def summary_html(settings: dict, n_groups: int, grouped: int, calibration: dict | None,
                 histogram: bytes) -> str:
    """What the first page says above the groups."""
    src = {"given": "given with --threshold", "measured": "measured on this store",
           "fallback": "the fixed default (the store's model could not be loaded)"}
    out = []
    if settings.get("review_only"):
        out.append('<p class="warning"><strong>For review only.</strong> '
                   f"{html.escape(settings['review_only'])}.</p>")
    out += [f"<p>{n_groups:,} groups holding {grouped:,} images; threshold "
           f"{settings['threshold']:g} ({src.get(settings.get('threshold_from'), '')}), "
           f"each member within {settings['slack']:g} below it of its representative.</p>"]
    kinds = (calibration or {}).get("by_kind") or {}
    if kinds:
        rows = "".join(f"<tr><th>{html.escape(k)}</th><td>{v['median']:.3f}</td>"
                       f"<td>{v['reached_by_90%']:.3f}</td></tr>" for k, v in kinds.items())
        out.append("<p>Similarity of edited copies of a sample of this store's images to "
                   f"their originals (unrelated pairs: 5% at {calibration['unrelated_p95']:.3f}"
                   " or closer):</p><table><tr><th>edit</th><th>median</th>"
                   f"<th>reached by 90%</th></tr>{rows}</table>")
    if calibration and "hard_negatives" in calibration:
        h, m = calibration["hard_negatives"], calibration["margin"]
        out.append(f"<p>The closest neighbours that are not copies (of {h['images']:,} "
                   f"sampled images): median {h['median']:.3f}, 1% at {h['p99']:.3f} or "
                   f"closer. The edits allow {calibration['edits_allow']:g}; the threshold "
                   f"lies {m['to_negatives_p99']:+.3f} from the negatives and "
                   f"{m['to_edits']:+.3f} from the edits.</p>")
    out.append('<p><img alt="nearest-neighbour similarity" src="data:image/png;base64,'
               f'{base64.b64encode(histogram).decode("ascii")}"><br>Another threshold: '
               "<code>python scripts/08_duplicates.py --store STORE --threshold T</code> "
               "(regroups without searching again).</p>")
    return "\n".join(out)
