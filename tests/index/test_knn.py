"""The numeric kNN core: exact search over blocks, re-ranking, merging, dropping ids."""
import numpy as np
import pytest

from workflow.index.knn import drop_ids, exact_search, merge_topk, rerank

from conftest import brute, structured_vectors


def test_exact_search_over_blocks_equals_brute_force():
    xb = structured_vectors(500, 16, seed=1)
    xq = structured_vectors(7, 16, seed=2)
    blocks = [(np.arange(lo, min(lo + 64, 500)), xb[lo:lo + 64]) for lo in range(0, 500, 64)]
    D, I = exact_search(xq, blocks, 10)
    Dr, Ir = brute(xq, xb, 10)
    assert np.array_equal(I, Ir) and np.allclose(D, Dr, atol=1e-5)


def test_exact_search_pads_when_there_are_fewer_than_k():
    xb = structured_vectors(3, 8)
    D, I = exact_search(xb[:1], [(np.array([5, 6, 7]), xb)], 5)
    assert I[0, 0] == 5 and (I[0, 3:] == -1).all() and np.isneginf(D[0, 3:]).all()


def test_rerank_scores_candidates_exactly_and_breaks_ties_by_id():
    xb = structured_vectors(100, 8).astype(np.float16)
    xb[40] = xb[10]  # a duplicate: same score, the lower id first
    xq = xb[[10, 50]].astype(np.float32)
    cand = np.array([[40, 10, 3, 3, -1, 77], [50, 1, 2, -1, -1, -1]])
    D, I = rerank(xq, cand, xb, 3)
    assert I[0].tolist()[:2] == [10, 40] and D[0, 0] == D[0, 1]
    assert I[1, 0] == 50 and len(set(I[1])) == 3
    s = xb[[3, 77]].astype(np.float32) @ xq[0]
    assert I[0, 2] == [3, 77][int(np.argmax(s))]


def test_drop_ids_removes_the_query_itself():
    D = np.array([[1.0, 0.9, 0.8], [0.7, 0.6, 0.5]], np.float32)
    I = np.array([[4, 2, 9], [1, 3, 8]])
    D2, I2 = drop_ids(D, I, np.array([2, -1]), 2)
    assert I2.tolist() == [[4, 9], [1, 3]] and D2[0].tolist() == pytest.approx([1.0, 0.8])


def test_merge_topk_keeps_the_best_and_orders_ties_by_id():
    D, I = merge_topk(np.array([[0.9, 0.5]]), np.array([[7, 3]]),
                      np.array([[0.9, 0.8]]), np.array([[2, 5]]), 3)
    assert I.tolist() == [[2, 7, 5]] and D[0].tolist() == pytest.approx([0.9, 0.9, 0.8])
