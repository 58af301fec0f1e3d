"""Index files: the re-rank store's writer."""
import numpy as np
import pytest


@pytest.mark.parametrize("ids, runs", [([3, 4, 5, 9, 10, 12], [(0, 3), (3, 5), (5, 6)]),
                                       ([7], [(0, 1)]), ([], [])])
def test_runs_of_consecutive_ids(ids, runs):
    from workflow.formats.index import runs as _runs
    assert _runs(np.array(ids, dtype=np.int64)) == runs


def test_the_rerank_store_holds_every_feature_at_its_id_and_zeros_elsewhere(tmp_path):
    from workflow.formats.index import write_rerank_store
    rng = np.random.default_rng(0)
    shards = [(np.array([0, 1, 2, 5]), rng.normal(size=(4, 8)).astype(np.float16)),
              (np.array([7, 8]), rng.normal(size=(2, 8)).astype(np.float16))]
    write_rerank_store(tmp_path / "rerank.npy", 10, 8, iter(shards))
    x = np.load(tmp_path / "rerank.npy", mmap_mode="r")
    assert x.shape == (10, 8) and x.dtype == np.float16
    want = np.zeros((10, 8), np.float16)
    for ids, f in shards:
        want[ids] = f
    assert np.array_equal(x, want)
