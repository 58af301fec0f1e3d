"""Near-duplicate grouping on hand-made graphs: links, components, no chains, the
representative and its reason, and independence from the input order."""
import numpy as np
import pytest

from workflow.index.grouping import components, group, links, representative_order


def _graph(pairs: dict[int, list[tuple[int, float]]], k: int = 3):
    ids = np.array(sorted(pairs), np.int64)
    nbrs = np.full((len(ids), k), -1, np.int64)
    sims = np.full((len(ids), k), -1.0, np.float32)
    for row, i in enumerate(ids):
        for col, (j, s) in enumerate(pairs[int(i)]):
            nbrs[row, col], sims[row, col] = j, s
    return ids, nbrs, sims


def test_links_are_undirected_pairs_above_the_threshold_once():
    ids, nbrs, sims = _graph({0: [(1, 0.95), (2, 0.5)], 1: [(0, 0.95)], 2: [(3, 0.91)],
                              3: [(3, 1.0)]})
    a, b, s = links(ids, nbrs, sims, 0.9)
    assert list(zip(a.tolist(), b.tolist())) == [(0, 1), (2, 3)]  # self links never
    assert s.tolist() == pytest.approx([0.95, 0.91])
    a, b, s = links(ids, nbrs, sims, 0.9, drop=np.array([3]))
    assert list(zip(a.tolist(), b.tolist())) == [(0, 1)]


def test_components_with_their_own_links():
    a, b = np.array([0, 5, 1, 7]), np.array([1, 6, 2, 9])
    got = [(c.tolist(), list(zip(x.tolist(), y.tolist()))) for c, x, y in components(a, b)]
    assert got == [([0, 1, 2], [(0, 1), (1, 2)]), ([5, 6], [(5, 6)]), ([7, 9], [(7, 9)])]
    assert components(np.zeros(0, np.int64), np.zeros(0, np.int64)) == []


def _angles(step_degrees: float, n: int) -> np.ndarray:
    t = np.radians(step_degrees) * np.arange(n)
    return np.stack([np.cos(t), np.sin(t)], 1).astype(np.float32)


def test_a_chain_of_small_steps_does_not_become_one_group():
    x = _angles(10, 12)  # neighbours 0.985 apart, the ends far apart
    a, b = np.arange(11), np.arange(1, 12)
    groups = group(a, b, pick=lambda ids: int(ids.min()), vectors=lambda ids: x[ids],
                   threshold=0.97, slack=0.02)
    # floor 0.95 is 18 degrees: one step either side of a centre; what is left between
    # two groups stays alone
    assert sorted(sorted(m.tolist()) for _, m, _, _ in groups) == [[0, 1, 2], [4, 5, 6],
                                                                   [8, 9, 10]]
    for rep, members, scores, centre in groups:
        assert members[0] == rep and scores[0] == 1.0 and centre in members
        assert (x[members] @ x[centre] >= 0.95).all()
        assert np.allclose(scores, x[members] @ x[rep])


def test_edits_of_one_original_stay_together_whichever_is_kept():
    x = _angles(12, 3)[[1, 0, 2]]  # id 0: the original (12 degrees); 1, 2: edits (0, 24)
    a, b = np.array([0, 0]), np.array([1, 2])  # each edit links to the original only
    groups = group(a, b, pick=lambda ids: int(ids.max()), vectors=lambda ids: x[ids],
                   threshold=0.97, slack=0.02)
    assert len(groups) == 1
    rep, members, scores, centre = groups[0]
    assert (rep, centre, sorted(members.tolist())) == (2, 0, [0, 1, 2])
    assert scores.tolist() == pytest.approx([1.0, float(np.cos(np.radians(12))),
                                             float(np.cos(np.radians(24)))])


def test_groups_do_not_depend_on_the_order_of_the_input():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(40, 8)).astype(np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    a, b = rng.integers(0, 40, 60), rng.integers(0, 40, 60)
    keep = a != b
    a, b = np.minimum(a, b)[keep], np.maximum(a, b)[keep]

    def run(order):
        return group(a[order], b[order], pick=lambda ids: int(ids.max()),
                     vectors=lambda ids: x[ids], threshold=0.5, slack=0.4)
    first = run(np.arange(len(a)))
    again = run(rng.permutation(len(a)))
    assert [(r, m.tolist(), s.tolist(), c) for r, m, s, c in first] == \
        [(r, m.tolist(), s.tolist(), c) for r, m, s, c in again]
    assert [len(m) for _, m, _, _ in first] == sorted((len(m) for _, m, _, _ in first),
                                                       reverse=True)
    assert len(first) > 1


@pytest.mark.parametrize("pixels, sizes, rep, why", [
    ([100, 400, 300], [9, 5, 7], 11, "the largest resolution"),
    ([400, 400, 100], [5, 7, 9], 11, "the largest file of the largest resolution"),
    ([400, 400, 400], [7, 7, 7], 10, "the lowest id of the same resolution and file size"),
])
def test_the_representative_and_why(pixels, sizes, rep, why):
    got = representative_order(np.array(pixels), np.array(sizes), np.array([10, 11, 12]))
    assert got == (rep, why)


hypothesis = pytest.importorskip("hypothesis")
st = hypothesis.strategies


@hypothesis.settings(max_examples=150, deadline=None)
@hypothesis.given(data=st.data(), n=st.integers(2, 30), d=st.integers(2, 6),
                  threshold=st.floats(0.3, 0.99), slack=st.floats(0.0, 0.3))
def test_groups_are_disjoint_close_to_their_centre_and_independent_of_order(
        data, n, d, threshold, slack):
    seed = data.draw(st.integers(0, 2**32 - 1), label="seed")
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, d)).astype(np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    pairs = data.draw(st.lists(st.tuples(st.integers(0, n - 1), st.integers(0, n - 1))
                               .filter(lambda p: p[0] != p[1]), max_size=3 * n), label="pairs")
    a = np.array([min(p) for p in pairs], np.int64)
    b = np.array([max(p) for p in pairs], np.int64)

    def run(a, b):
        return [(r, m.tolist(), s.tolist(), c) for r, m, s, c in group(
            a, b, pick=lambda ids: int(ids.max()), vectors=lambda ids: x[ids],
            threshold=threshold, slack=slack)]
    first = run(a, b)
    order = rng.permutation(len(a))
    assert run(b[order], a[order]) == first  # shuffled, and each link the other way round
    seen: set[int] = set()
    comp = {int(i): k for k, (ids, _, _) in enumerate(components(a, b)) for i in ids}
    for rep, members, scores, centre in first:
        assert len(members) >= 2 and members[0] == rep and centre in members
        assert not seen & set(members)  # disjoint
        seen |= set(members)
        assert len({comp[i] for i in members}) == 1  # within one linked component
        assert (x[members] @ x[centre] >= threshold - slack - 1e-5).all()  # no chains
        assert np.allclose(scores, x[members] @ x[rep], atol=1e-5)
