import numpy as np
import pytest

from workflow.formats.layout import shard_name
from workflow.formats.plan import Plan, make_plan, shard_bounds, source_prefixes
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
