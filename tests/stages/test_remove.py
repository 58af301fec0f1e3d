"""`python -m workflow remove`: removed ids never come back in any mode, in evaluation or
as thumbnails; `--restore`; clear errors; a kill never loses the list."""
import subprocess
import sys
import time

import numpy as np
import pytest

from workflow.errors import ConfigError
from workflow.formats.removed import commit_removed, load_removed, removal_markers
from workflow.search.modes import MODES
from workflow.stages.remove import Selection, remove
from workflow.storage.store import Store

from conftest import ROOT, indexed_store, kill_during, leftovers


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    return indexed_store(tmp_path_factory.mktemp("rm"), n=400, d=32, shard_size=100)


def test_removed_ids_never_come_back_in_any_mode(store):
    from workflow.search import Searcher
    s = Searcher(str(store), cache_size=64)
    s.removal_check_seconds = 0
    before = {m: s.search(list(range(0, 400, 7)), k=10, mode=m) for m in MODES}
    gone = sorted({r.ids[1] for r in before["exact"]} | {5, 6})
    remove(Store(store), Selection(ids=tuple(gone)))
    for mode in MODES:
        for r in s.search(list(range(0, 400, 7)) + gone, k=10, mode=mode):
            assert not set(r.ids) & set(gone), (mode, r.query)
            assert len(r.ids) == 10
    assert s.thumbnails(gone) == {}
    remove(Store(store), Selection(ids=tuple(gone)), restore=True)
    again = s.search(list(range(0, 400, 7)), k=10, mode="exact")
    assert [r.ids for r in again] == [r.ids for r in before["exact"]]


def test_errors_name_the_unknown_id_key_and_line(store, tmp_path):
    with pytest.raises(ConfigError, match="id 400 is not in the corpus"):
        remove(Store(store), Selection(ids=(400,)))
    with pytest.raises(ConfigError, match="no image has the key 'nope.jpg'"):
        remove(Store(store), Selection(keys=("nope.jpg",)))
    f = tmp_path / "ids.txt"
    f.write_text("# takedowns\n1\nclass0/img0002.jpg\n\n12x\n")
    with pytest.raises(ConfigError, match=r"ids.txt:5: '12x' is neither"):
        remove(Store(store), Selection(from_file=str(f)))
    assert load_removed(Store(store))[1].tolist() == []  # nothing was removed
    f.write_text("3\nclass1/img0001.jpg\n")  # class0's 200 images come first
    assert remove(Store(store), Selection(from_file=str(f))).changed == 2
    assert load_removed(Store(store))[1].tolist() == [3, 200]
    remove(Store(store), Selection(ids=(3, 200)), restore=True)


def test_the_cli_removes_and_restores(store):
    cmd = [sys.executable, "-m", "workflow", "remove", "--store", str(store)]
    r = subprocess.run(cmd + ["--id", "7", "8"], cwd=ROOT, capture_output=True, text=True)
    assert r.returncode == 0 and "removed 2 images; 2 removed in all" in r.stdout, r.stderr
    r = subprocess.run(cmd + ["--id", "7", "--restore"], cwd=ROOT, capture_output=True,
                       text=True)
    assert r.returncode == 0 and "restored 1 images; 1 removed in all" in r.stdout
    r = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
    assert r.returncode == 2 and "name the images" in r.stderr
    remove(Store(store), Selection(ids=(8,)), restore=True)


def test_a_kill_between_the_new_list_and_the_old_ones_removal_keeps_the_new(tmp_path):
    s = Store(tmp_path / "store")
    commit_removed(s, np.array([3]), 1, {"count": 1})
    # the state a kill leaves after version 2 is committed, before version 1 is deleted
    import workflow.formats.removed as removed
    keep = removed.prune_removed
    removed.prune_removed = lambda store: None
    try:
        commit_removed(s, np.array([3, 4]), 2, {"count": 2})
    finally:
        removed.prune_removed = keep
    assert len(removal_markers(s)) == 2
    assert load_removed(s)[1].tolist() == [3, 4]
    removed.prune_removed(s)
    assert [m.unit for m in removal_markers(s)] == ["ids-000002"]
    assert sorted(p.name for p in (tmp_path / "store" / "removed").iterdir()) == \
        ["ids-000002.npy"]


def test_a_removal_killed_at_any_moment_is_all_or_nothing(store, tmp_path):
    """Real SIGKILLs during `remove` runs: each run's list is in force whole or not at
    all, and a re-run ends as an uninterrupted one, with nothing left over."""
    cmd = [sys.executable, "-m", "workflow", "remove", "--store", str(store),
           "--scratch", str(tmp_path / "s"), "--id", "11", "12", "13"]
    t = time.monotonic()
    subprocess.run(cmd + ["--restore"], cwd=ROOT, check=True, capture_output=True)
    took = time.monotonic() - t
    for seed in range(3):
        kill_during(cmd, took, seed, times=3)
        assert load_removed(Store(store))[1].tolist() == [11, 12, 13]
        assert len(removal_markers(Store(store))) == 1
        assert not leftovers(store)
        subprocess.run(cmd + ["--restore"], cwd=ROOT, check=True, capture_output=True)
        assert load_removed(Store(store))[1].tolist() == []


def test_a_removal_file_loses_no_key_and_refuses_ambiguous_ones(tmp_path):
    from workflow.formats.duplicates import remove_list
    from workflow.stages.remove import read_removal_file
    by_key = {"#copy.jpg": [4], " spaced.jpg": [5], "a.jpg": [1], "more/x.jpg": [2, 7],
              "b\tc.jpg": [3]}
    f = tmp_path / "list.txt"
    # the duplicates stage's list: id<TAB>key, whatever the key holds
    groups = [{"ids": [1, 4, 5, 3], "keys": ["a.jpg", "#copy.jpg", " spaced.jpg", "b\tc.jpg"],
               "representative": 1}]
    f.write_bytes(remove_list(groups))
    assert f.read_text().startswith("# ")
    assert read_removal_file(str(f), by_key, 10) == [4, 5, 3]
    # keys as they are, comments and blank lines around them
    f.write_text("# takedowns\n#copy.jpg\n spaced.jpg\n\n   # note\n6\n")
    assert read_removal_file(str(f), by_key, 10) == [4, 5, 6]
    f.write_text("more/x.jpg\n")
    with pytest.raises(ConfigError, match=r"list.txt:1: the key 'more/x.jpg' names 2 images "
                                          r"\(ids 2, 7\): give the id instead"):
        read_removal_file(str(f), by_key, 10)
    f.write_text("1\ta.jpg\n4\ta.jpg\n")  # an id whose key is another image's
    with pytest.raises(ConfigError, match=r"list.txt:2: id 4 is not the image with the key "
                                          r"'a.jpg'"):
        read_removal_file(str(f), by_key, 10)


def test_an_ambiguous_key_is_refused_with_its_ids(store, monkeypatch):
    from workflow.stages import remove as remove_module
    real = remove_module._keys

    def colliding(s):
        out = real(s)
        out["class0/img0002.jpg"] = out["class0/img0002.jpg"] + [300]
        return out
    monkeypatch.setattr(remove_module, "_keys", colliding)
    with pytest.raises(ConfigError, match=r"names 2 images \(ids 1, 300\)"):
        remove(Store(store), Selection(keys=("class0/img0002.jpg",)))
    assert load_removed(Store(store))[1].tolist() == []


def test_a_selection_of_no_image_says_so():
    from workflow.stages.remove import RemoveResult
    assert "the selection names no image" in RemoveResult(0, 3, 1, False, 0).summary()
    assert "the 2 images given are removed already" in RemoveResult(0, 3, 1, False,
                                                                   2).summary()


hypothesis = pytest.importorskip("hypothesis")
st = hypothesis.strategies


@hypothesis.settings(max_examples=25, deadline=None,
                     suppress_health_check=[hypothesis.HealthCheck.function_scoped_fixture])
@hypothesis.given(steps=st.lists(st.tuples(st.sets(st.integers(0, 399), min_size=1,
                                                   max_size=8), st.booleans()),
                                 min_size=1, max_size=6))
def test_any_sequence_of_removals_and_restores_keeps_the_list_they_describe(store, steps):
    s = Store(store)
    expected = set(load_removed(s)[1].tolist())
    for ids, restore in steps:
        res = remove(s, Selection(ids=tuple(sorted(ids))), restore=restore)
        before = set(expected)
        expected = expected - ids if restore else expected | ids
        assert res.changed == len(before ^ expected) and res.total == len(expected)
        version, now = load_removed(s)
        assert set(now.tolist()) == expected and list(now) == sorted(now)
        assert len(removal_markers(s)) == 1  # one version of the list, the newest
    remove(s, Selection(ids=tuple(range(400))), restore=True)
    assert load_removed(s)[1].tolist() == [] and not leftovers(store)
