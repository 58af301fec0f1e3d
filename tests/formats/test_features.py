"""Feature shards: the writer, the readers, and the check that extract is complete."""
import numpy as np
import pytest

from workflow.errors import WorkflowError
from workflow.formats.features import (
    feature_count,
    feature_markers,
    fetch_features,
    fetch_rows,
    read_feature_shard,
    write_feature_shard,
)
from workflow.storage.store import Store

from conftest import feature_store


def test_a_feature_shard_round_trips_with_its_attributes(tmp_path):
    ids = np.array([3, 4, 9], np.int64)
    x = np.random.default_rng(0).normal(size=(3, 5)).astype(np.float16)
    write_feature_shard(str(tmp_path / "f.h5"), ids, x, "fp1", {"model": "m"})
    got_ids, got, attrs = read_feature_shard(str(tmp_path / "f.h5"))
    assert np.array_equal(got_ids, ids) and np.array_equal(got, x)
    assert attrs["fingerprint"] == "fp1" and attrs["dim"] == 5 and attrs["format_version"] == 1
    with pytest.raises(AssertionError):
        write_feature_shard(str(tmp_path / "g.h5"), ids, x.astype(np.float32), "fp", {})


def test_readers_of_committed_shards_and_the_completeness_check(tmp_path):
    store = Store(feature_store(tmp_path, n=30, d=8, shard_size=10))
    markers = feature_markers(store)
    assert list(markers) == ["shard-00000", "shard-00001", "shard-00002"]
    assert feature_count(markers) == (30, 8)
    ids, x = fetch_features(store, markers["shard-00001"], tmp_path / "w")
    assert ids.tolist() == list(range(10, 20)) and x.shape == (10, 8)
    assert np.array_equal(fetch_rows(store, markers["shard-00001"], np.array([1, 4]),
                                     tmp_path / "w"), x[[1, 4]])
    assert not list((tmp_path / "w").iterdir())  # local copies are removed
    store.remove_marker("extract", "shard-00002")
    with pytest.raises(WorkflowError, match=r"extract stage is not complete .* \(2/3 shards\)"):
        feature_markers(store)
