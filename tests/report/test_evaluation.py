"""The evaluation report as people read it."""
from workflow.report.evaluation import report_markdown, search_defaults, tuned_table
from workflow.search.modes import K_MEASURED


def _report() -> dict:
    point = {"params": {"nprobe": 8}, "qps": 1234.5, "p50_ms": 0.5, "p95_ms": 0.7,
             "p99_ms": 0.9, "recall@1": 0.99, "recall@10": 0.97, "tie_recall@10": 0.98,
             "recall@100": 0.9, "latency_queries": 20}
    return {"date": "2026-11-29 12:00", "store": "s", "machine": "m", "n": 1000, "d": 8,
            "index": "IVF8,PQ4", "queries": 50, "query_source": "sample, seed 0",
            "target_recall": 0.95, "tie_epsilon": 1e-4,
            "tuned": {"ivfpq+rerank": {**point, "target_met": True, "point": 0}},
            "sweeps": {"ivfpq+rerank": [point]}, "precision": None, "cache": None}


def test_the_report_says_how_latency_and_queries_per_second_were_measured():
    text = report_markdown(_report())
    assert K_MEASURED == 10
    assert "single queries (k=10)" in text and "queries/s: batches (k=10)" in text
    assert "k=100" not in text


def test_the_tuned_table_and_the_defaults_come_from_the_tuned_points():
    r = _report()
    assert "| ivfpq+rerank | nprobe=8 | 0.990 | 0.970 | 0.980 | 0.900 | 0.50 |" in tuned_table(r)
    d = search_defaults(r)
    assert d["ivfpq+rerank"] == {"nprobe": 8} and d["default_mode"] == "ivfpq+rerank"
    assert d["target_recall"] == 0.95


def test_the_default_mode_is_the_cheapest_that_reaches_the_target():
    r = _report()
    point = r["tuned"]["ivfpq+rerank"]
    r["tuned"] = {"exact": {**point, "params": {}, "p50_ms": 0.06, "recall@10": 1.0},
                  "ivfpq": {**point, "p50_ms": 0.05, "recall@10": 0.6, "target_met": False},
                  "hierarchical": {**point, "p50_ms": 0.4}}
    assert search_defaults(r)["default_mode"] == "exact"  # perfect and fastest: a small corpus
    r["tuned"]["hierarchical"]["p50_ms"] = 0.058
    assert search_defaults(r)["default_mode"] == "exact"  # as fast, within noise, and exact
    r["tuned"]["exact"]["p50_ms"] = 250.0  # a full scan of a large one
    assert search_defaults(r)["default_mode"] == "hierarchical"
    for t in r["tuned"].values():
        t["target_met"] = False
    assert search_defaults(r)["default_mode"] == "exact"  # none does: the closest
