import pytest

from workflow.index.estimate import (
    choose_annoy_trees,
    choose_nlist,
    choose_opq,
    choose_pq_bits,
    choose_pq_m,
    choose_train_size,
    estimate_index_bytes,
    plan_index,
    pq_candidates,
)

GiB = 1 << 30


@pytest.mark.parametrize("n, nlist", [
    (10, 1), (406, 8), (1_000, 16), (10_000, 256), (100_000, 1024), (1_000_000, 4096),
    (2_000_000, 4096), (10_000_000, 16384), (100_000_000, 32768), (10**10, 262144)])
def test_choose_nlist(n, nlist):
    assert choose_nlist(n) == nlist
    assert nlist == 1 or nlist * 39 <= n


@pytest.mark.parametrize("d, cands", [
    (1280, [4, 8, 16, 32, 64, 128]), (1024, [4, 8, 16, 32, 64, 128]),
    (512, [4, 8, 16, 32, 64, 128]), (96, [4, 8, 16, 24, 32, 48]), (7, [])])
def test_pq_candidates_divide_d(d, cands):
    assert pq_candidates(d) == cands


@pytest.mark.parametrize("n, d, budget, m", [
    (2_000_000, 1280, 8 * GiB, 64), (2_000_000, 1280, 256 << 20, 32),
    (2_000_000, 1280, 64 << 20, 4), (100_000_000, 1280, 8 * GiB, 32),
    (1_000, 96, GiB, 48)])
def test_choose_pq_m_fits_half_the_budget(n, d, budget, m):
    got = choose_pq_m(n, d, budget, choose_nlist(n))
    assert got == m
    if m > 4:
        assert estimate_index_bytes(n, d, choose_nlist(n), m) <= budget // 2


@pytest.mark.parametrize("n, nlist, size", [
    (406, 8, 406), (10_000, 256, 10_000), (100_000, 1024, 50_000),
    (2_000_000, 4096, 159_744), (10_000_000, 16384, 638_976)])
def test_choose_train_size(n, nlist, size):
    assert choose_train_size(n, nlist) == size


@pytest.mark.parametrize("train, bits", [(406, 3), (1_000, 4), (9_983, 7), (9_984, 8),
                                         (10**6, 8)])
def test_choose_pq_bits(train, bits):
    assert choose_pq_bits(train) == bits


@pytest.mark.parametrize("n, train, d, max_s, opq", [
    (2_000_000, 159_744, 1280, 60, False),   # ~1,400 s of OPQ training: not worth it
    (50_000, 50_000, 256, 60, False),        # ~440 s
    (50_000, 50_000, 256, 600, True),        # worth it for a user who allows 10 minutes
    (5_000, 5_000, 256, 600, False)])        # too small for PQ error to matter
def test_choose_opq_weighs_its_cost(n, train, d, max_s, opq):
    assert choose_opq(n, train, d, max_s) == opq


def test_plan_index_at_the_design_point_and_overrides():
    p = plan_index(2_000_000, 1280, 8 * GiB)
    assert p.factory == "IVF4096,PQ64" and p.train_size == 159_744
    assert p.pca_dim == 64 and p.pq_m == 64 and p.pq_bits == 8
    assert p.memory_bytes < GiB and p.train_seconds < 300
    assert "IVF4096,PQ64" in p.describe() and "PQ 64 x 8 bits/vector" in p.describe()
    big = plan_index(10_000_000, 1280, 8 * GiB)
    assert big.hnsw_quantizer and big.factory == "IVF16384_HNSW32,PQ64"
    assert plan_index(2_000_000, 1280, 8 * GiB, pq_m=32).factory == "IVF4096,PQ32"
    assert plan_index(2_000_000, 64, 8 * GiB).factory == "IVF4096,PQ32"  # too few dims
    tiny = plan_index(406, 1280, 8 * GiB)
    assert tiny.factory == "IVF8,PQ64x3"
    assert plan_index(24, 1280, 8 * GiB).pca_dim == 24  # no more than training vectors
    mine = plan_index(2_000_000, 1280, 8 * GiB, nlist=1024, pq_m=32, opq=True,
                      train_size=10_000, pca_dim=32)
    assert mine.factory == "OPQ32,IVF1024,PQ32" and mine.train_size == 10_000
    assert mine.pca_dim == 32


@pytest.mark.parametrize("n, trees", [(10, 8), (300, 16), (10_000, 27), (100_000, 33),
                                      (2_000_000, 42), (10**9, 50)])
def test_choose_annoy_trees(n, trees):
    assert choose_annoy_trees(n) == trees
