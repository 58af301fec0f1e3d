"""The evaluation report as people read it: the tuned table, Markdown, the recall vs
queries/s plot, and the search defaults derived from it."""
from __future__ import annotations

import io

from ..search.modes import K_MEASURED

PRECISION_AT = (1, 10)


def tuned_table(report: dict) -> str:
    """The Markdown table of each mode at its tuned setting."""
    rows = ["| mode | parameters | recall@1 | recall@10 | tie-aware recall@10 | recall@100 "
            "| p50 ms | p95 ms | p99 ms | queries/s |",
            "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for mode, t in report["tuned"].items():
        params = ", ".join(f"{k}={v}" for k, v in t["params"].items()) or "-"
        flag = "" if t["target_met"] else " (target not reached)"
        rows.append(f"| {mode} | {params}{flag} | {t['recall@1']:.3f} | {t['recall@10']:.3f} | "
                    f"{t['tie_recall@10']:.3f} | {_num(t['recall@100'], 3)} | "
                    f"{_num(t['p50_ms'], 2)} | {_num(t['p95_ms'], 2)} | {_num(t['p99_ms'], 2)} "
                    f"| {t['qps']:,.0f} |")
    notes = [f"- {mode}: recall and queries/s on the first {t['queries']:,} of the "
             f"{report['queries']:,} queries (a pass over all of them costs minutes at this "
             "size; exact search is the ground truth by definition)"
             for mode, t in report["tuned"].items()
             if t.get("queries", report["queries"]) < report["queries"]]
    notes += [f"- {mode}: {t['not_timed']}" for mode, t in report["tuned"].items()
              if t.get("not_timed")]
    if notes:
        rows += ["", *notes]
    return "\n".join(rows)


def report_markdown(report: dict) -> str:
    lines = [f"# Search evaluation, {report['date']}", "",
             f"- store: {report['store']}", f"- machine: {report['machine']}",
             f"- corpus: {report['n']:,} vectors of dimension {report['d']}, index "
             f"{report['index']}",
             f"- queries: {report['queries']:,} ({report['query_source']}); own id left out "
             "of every result list",
             f"- recall@k against exact search; tie-aware recall@10 counts a result whose "
             f"exact score is within {report['tie_epsilon']} of the 10th exact score",
             f"- latency: single queries (k={K_MEASURED}), one at a time; queries/s: batches "
             f"(k={K_MEASURED})", "",
             f"## Each mode at its tuned setting (cheapest with recall@10 >= "
             f"{report['target_recall']})", "", tuned_table(report), ""]
    c = report.get("cache")
    if c:
        lines += [f"A repeated {c['mode']} query is served from the query cache in "
                  f"{c['p50_ms']:.3f} ms (p50 over {c['repeats']} repeats).", ""]
    p = report.get("precision")
    if p:
        lines += _precision_markdown(p)
    text = report.get("text")
    if text:
        lines += _text_markdown(report, text)
    lines += _sweeps_markdown(report["sweeps"], "")
    if text:
        lines += _sweeps_markdown(text["sweeps"], " (queries in words)")
    if any(pt["p50_ms"] is None for points in report["sweeps"].values() for pt in points):
        lines += ["Latency and recall@100 are measured at the settings that decide the "
                  "tuning: the 3 with the most queries/s in batches that reach the target "
                  "(`--full-sweep` measures every one).", ""]
    return "\n".join(lines)


def _text_markdown(report: dict, text: dict) -> list[str]:
    """The queries in words: tuned for them, and beside the image queries."""
    lines = [f"## Queries in words ({text['queries']:,}: {text['query_source']})", "",
             "Tuned on their own (the search defaults for queries in words):", "",
             tuned_table(text), "",
             "Beside the image queries: recall@10 of the queries in words at the settings "
             "tuned on the image queries, and at their own.", "",
             "| mode | image-tuned setting | image queries | words at it | words' own setting "
             "| words at it |", "|---|---|---:|---:|---|---:|"]
    for mode, t in text["tuned"].items():
        img = report["tuned"].get(mode)
        at = text["at_image_settings"].get(mode)
        if img is None or at is None:
            continue
        lines.append(f"| {mode} | {_params(img)} | {img['recall@10']:.3f} | "
                     f"{at['recall@10']:.3f} | {_params(t)} | {t['recall@10']:.3f} |")
    lines.append("")
    if text.get("precision"):
        lines += _precision_markdown(text["precision"], " of the queries in words")
    return lines


def _params(point: dict) -> str:
    return ", ".join(f"{k}={v}" for k, v in point["params"].items()) or "-"


def _sweeps_markdown(sweeps: dict, title: str) -> list[str]:
    lines = [f"## Sweeps{title}", ""]
    for mode, points in sweeps.items():
        lines += [f"### {mode}", "", "| parameters | recall@1 | recall@10 | tie-aware@10 | "
                  "recall@100 | p50 ms | p99 ms | queries/s |",
                  "|---|---:|---:|---:|---:|---:|---:|---:|"]
        for pt in points:
            params = ", ".join(f"{k}={v}" for k, v in pt["params"].items()) or "-"
            lines.append(f"| {params} | {pt['recall@1']:.3f} | {pt['recall@10']:.3f} | "
                         f"{pt['tie_recall@10']:.3f} | {_num(pt['recall@100'], 3)} | "
                         f"{_num(pt['p50_ms'], 2)} | {_num(pt['p99_ms'], 2)} | "
                         f"{pt['qps']:,.0f} |")
        lines.append("")
    return lines


def _num(value, digits: int) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def _precision_markdown(p: dict, of: str = "") -> list[str]:
    names = list(p["by_mode"])
    lines = [f"## Precision@k by class{of} (same folder = relevant)", "",
             "| | " + " | ".join(names) + " |", "|---|" + "---:|" * len(names)]
    for k in PRECISION_AT:
        lines.append(f"| mean P@{k} | " + " | ".join(
            f"{p['by_mode'][n][f'P@{k}']['mean']:.3f}" for n in names) + " |")
    for c in p["classes"]:
        lines.append(f"| {c} P@10 | " + " | ".join(
            f"{p['by_mode'][n]['P@10']['by_class'][c]:.3f}" for n in names) + " |")
    return lines + [""]


def recall_qps_plot(report: dict) -> bytes:
    """PNG: recall@10 against queries/s, one line per mode."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(7, 4.5), dpi=110)
    colours = {}
    for mode, points in report["sweeps"].items():
        pts = sorted(points, key=lambda p: p["qps"])
        line, = ax.plot([p["qps"] for p in pts], [p["recall@10"] for p in pts], "o-", ms=3,
                        label=mode)
        colours[mode] = line.get_color()
    for mode, points in (report.get("text") or {}).get("sweeps", {}).items():
        pts = sorted(points, key=lambda p: p["qps"])
        ax.plot([p["qps"] for p in pts], [p["recall@10"] for p in pts], "s--", ms=3,
                color=colours.get(mode), label=f"{mode} (words)")
    ax.axhline(report["target_recall"], color="grey", ls="--", lw=0.8)
    ax.set_xscale("log")
    ax.set_xlabel("queries/s (batches, log scale)")
    ax.set_ylabel("recall@10 vs exact search")
    ax.set_title(f"{report['n']:,} vectors, {report['queries']:,} queries")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    buf = io.BytesIO()
    fig.tight_layout()
    fig.savefig(buf, format="png")
    plt.close(fig)
    return buf.getvalue()


def search_defaults(report: dict) -> dict:
    """Each mode's tuned parameters, and the default mode: the cheapest (lowest
    single-query p50) of the modes that reach the target recall (a mode not timed was
    out of the running), `exact` included (on
    a small corpus a full scan is both perfect and fastest), the one with the best
    recall@10 among those within 5% of the cheapest; where none reaches the target, the
    one that comes closest. Under "text", the same for the queries in words, where they
    were measured."""
    out = _defaults(report["tuned"])
    out.update({"target_recall": report["target_recall"], "tuned_on": report["date"]})
    if report.get("text"):
        out["text"] = _defaults(report["text"]["tuned"])
    return out


def _defaults(tuned: dict) -> dict:
    out = {m: t["params"] for m, t in tuned.items()}
    met = [m for m, t in tuned.items() if t["target_met"] and t["p50_ms"] is not None]
    if met:  # the cheapest; of those within 5% of it (noise), the most exact
        fastest = min(tuned[m]["p50_ms"] for m in met)
        best = max((m for m in met if tuned[m]["p50_ms"] <= 1.05 * fastest),
                   key=lambda m: (tuned[m]["recall@10"], -tuned[m]["p50_ms"]))
    else:
        best = max(tuned, key=lambda m: (tuned[m]["recall@10"], -list(tuned).index(m)))
    out["default_mode"] = best
    return out
