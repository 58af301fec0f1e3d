import numpy as np
import pytest

from workflow.formats.layout import shard_name
from workflow.formats.plan import (
    Plan,
    extend_plan,
    join,
    make_plan,
    shard_bounds,
    source_prefixes,
    unique_key,
)
from workflow.inputs.sources import Entry, Source


@pytest.mark.parametrize("n, size, expected", [
    (0, 10, [0]),
    (1, 10, [0, 1]),
    (10, 10, [0, 10]),
    (11, 10, [0, 5, 11]),
    (25, 10, [0, 8, 16, 25]),
    (2_000_000, 10_000, None),
])
def test_shard_bounds(n, size, expected):
    b = shard_bounds(n, size)
    if expected is not None:
        assert b.tolist() == expected
    sizes = np.diff(b)
    assert b[0] == 0 and b[-1] == n
    if n:
        assert sizes.max() <= size and sizes.max() - sizes.min() <= 1


def test_shard_names_are_zero_padded():
    assert shard_name(42) == "shard-00042"


def test_prefixes_only_for_several_sources_and_unique():
    a, b, c = Source("folder", "/x/photos"), Source("tar", "/y/part.tar"), \
        Source("folder", "/z/photos")
    assert source_prefixes([a]) == [""]
    assert source_prefixes([a, b, c]) == ["photos/", "part.tar/", "photos~2/"]


def test_make_plan_ids_keys_and_round_trip(tmp_path):
    srcs = [Source("folder", "/x/photos"), Source("tar", "/y/a.tar")]
    listings = [[Entry("a.jpg", "a.jpg"), Entry("b/c.jpg", "b/c.jpg")],
                [Entry("m1.jpg", "m1.jpg", 512, 100), Entry("é.jpg", "é.jpg", 1536, 7)]]
    plan = make_plan(srcs, listings, shard_size=3)
    assert plan.n == 4 and plan.n_shards == 2
    items = plan.shard_items(0) + plan.shard_items(1)
    assert [it.id for it in items] == [0, 1, 2, 3]
    assert [it.key for it in items] == ["photos/a.jpg", "photos/b/c.jpg", "a.tar/m1.jpg",
                                        "a.tar/é.jpg"]
    assert items[3].offset == 1536 and items[3].source == 1
    plan.save(str(tmp_path / "plan.h5"))
    again = Plan.load(str(tmp_path / "plan.h5"))
    assert again.sources == srcs
    assert again.shard_items(1) == plan.shard_items(1)


def test_a_taken_key_gets_a_suffix_before_its_extension():
    taken = {"more/x.jpg", "more/x~2.jpg", "a.b/c"}
    assert unique_key("more/x.jpg", taken) == "more/x~3.jpg"
    assert unique_key("a.b/c", taken) == "a.b/c~2"
    assert unique_key("new.jpg", taken) == "new.jpg" and "new.jpg" in taken


def test_names_whose_undecodable_bytes_show_alike_get_distinct_keys():
    names = ["a\udcfe.jpg", "a\udcff.jpg"]  # two file names, shown alike as "a\ufffd.jpg"
    plan = make_plan([Source("folder", "/x/p")], [[Entry(n, n) for n in names]], 10)
    assert plan.keys == ["a\ufffd.jpg", "a\ufffd~2.jpg"] and plan.locators == names


hypothesis = pytest.importorskip("hypothesis")
st = hypothesis.strategies
# few names, so that sources, folders and files meet: a source named like another's
# folder, a file named like a suffixed key, names whose bad bytes show alike
NAMES = ["more", "b", "x~2", "a\udcfe", "a\udcff"]
SOURCES = [Source("folder", f"/{parent}/{name}") for parent in ("p", "q") for name in NAMES]


@st.composite
def listing(draw):
    folders = draw(st.lists(st.sampled_from(NAMES), max_size=2))
    files = draw(st.lists(st.tuples(st.sampled_from(folders + [""]), st.sampled_from(NAMES)),
                          max_size=6, unique=True))
    rel = sorted({f"{d}/{f}.jpg" if d else f"{f}.jpg" for d, f in files})
    return [Entry(r, r) for r in rel]


def _where(plan):
    """(source url, locator) of each planned item, by id."""
    return [(plan.sources[s].url, loc) for s, loc in zip(plan.source_idx, plan.locators)]


@hypothesis.settings(max_examples=200, deadline=None)
@hypothesis.given(steps=st.lists(
    st.lists(st.tuples(st.sampled_from(range(len(SOURCES))), listing()),
             min_size=1, max_size=4, unique_by=lambda t: t[0]), min_size=1, max_size=5))
def test_ids_and_keys_over_any_sequence_of_updates(steps):
    """Whatever each update lists, and from which sources: every item has one id and one
    key, both unique and never changed by a later update; each (source, file) is planned
    once; the ids of planned files no longer listed are reported missing."""
    plan = None
    for step in steps:
        sources, listings = [SOURCES[i] for i, _ in step], [entries for _, entries in step]
        if plan is None:
            plan = join([make_plan(sources, listings, shard_size=3)])
            missing = []
        else:
            before = (list(plan.keys), _where(plan))
            seg, missing = extend_plan(plan, sources, listings, shard_size=3)
            plan = join([plan, seg]) if seg is not None else plan
        assert len(set(plan.keys)) == plan.n == len(plan.locators)
        where = _where(plan)
        if step is not steps[0]:  # what was planned before keeps its id and key
            assert (plan.keys[:len(before[0])], where[:len(before[1])]) == before
        assert len(set(where)) == plan.n
        listed = {(s.url, e.locator) for s, es in zip(sources, listings) for e in es}
        assert listed <= set(where)
        assert missing == sorted(j for j, (url, loc) in enumerate(where) if (url, loc) not in
                                 listed and url in {s.url for s in sources})
        assert plan.bounds[0] == 0 and plan.bounds[-1] == plan.n
