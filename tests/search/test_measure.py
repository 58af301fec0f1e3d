"""Measuring a searcher: parameter grids, tuning, the query sample."""
import numpy as np
import pytest

from workflow.search.measure import sample_query_ids, sweep_grid, to_time, tune


@pytest.mark.parametrize("points, target, want", [
    ([{"recall@10": 0.9, "p50_ms": 1, "qps": 10}, {"recall@10": 0.97, "p50_ms": 3, "qps": 5},
      {"recall@10": 0.99, "p50_ms": 2, "qps": 6}], 0.95, (2, True)),
    ([{"recall@10": 0.9, "p50_ms": 1, "qps": 10}, {"recall@10": 0.93, "p50_ms": 3, "qps": 5}],
     0.95, (1, False)),
    ([{"recall@10": 0.96, "p50_ms": 1, "qps": 10}, {"recall@10": 0.99, "p50_ms": 1, "qps": 20}],
     0.95, (1, True)),
])
def test_tune_picks_the_cheapest_setting_reaching_the_target(points, target, want):
    assert tune(points, target) == want


def test_sweep_grids_fit_the_index():
    assert [p.nprobe for p in sweep_grid("ivfpq", 8, 600)] == [1, 2, 4, 8]
    assert {p.rerank for p in sweep_grid("ivfpq+rerank", 4096, 120)} == {50, 100, 120}
    assert len(sweep_grid("exact", 1, 10)) == 1
    assert all(p.annoy <= 30 for p in sweep_grid("hierarchical", 4, 30))


def test_query_sample_is_seeded_and_skips_items_without_features():
    xb = np.ones((50, 4), np.float16)
    xb[::3] = 0
    a, b = sample_query_ids(xb, 20, 1), sample_query_ids(xb, 20, 1)
    assert np.array_equal(a, b) and len(a) == 20 and not (a % 3 == 0).any()
    assert len(sample_query_ids(xb, 1000, 0)) == 33


def test_only_the_fastest_settings_that_reach_the_target_are_timed():
    points = [{"recall@10": r, "qps": q, "p50_ms": None} for r, q in
              [(0.90, 900), (0.96, 500), (0.97, 700), (0.99, 100), (0.98, 300), (0.995, 50)]]
    assert to_time(points, 0.95) == [1, 2, 4]  # 700, 500 and 300 queries/s
    assert to_time(points, 0.999) == [5]  # none reaches it: the best recall
    points[2]["p50_ms"], points[4]["p50_ms"] = 0.8, 0.5
    assert tune(points, 0.95) == (4, True)  # untimed settings are not candidates
    assert tune(points, 0.999) == (4, False)
