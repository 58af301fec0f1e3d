import subprocess
import sys
import time

import faiss
import numpy as np
import pytest

from workflow.errors import ConfigError, WorkflowError
from workflow.formats.features import allocate, draw_sample, feature_markers
from workflow.formats.index import load_trained
from workflow.index.estimate import plan_index
from workflow.stages.train import TrainConfig, run
from workflow.storage.store import Store

from conftest import ROOT, feature_store, kill_during, leftovers, structured_vectors


@pytest.mark.parametrize("sizes, total, expected", [
    ([100, 100, 100], 30, [10, 10, 10]), ([100, 100, 101], 301, [100, 100, 101]),
    ([50, 30, 20], 10, [5, 3, 2]), ([7, 7, 7], 10, [4, 3, 3]), ([5, 0, 5], 100, [5, 0, 5])])
def test_allocate_is_proportional_and_exact(sizes, total, expected):
    got = allocate(sizes, total)
    assert got == expected and sum(got) == min(total, sum(sizes))


def test_sample_is_seeded_streamed_and_drawn_from_every_shard(tmp_path):
    store = Store(feature_store(tmp_path))
    markers = feature_markers(store)
    a = draw_sample(store, markers, 90, seed=1)
    b = draw_sample(store, markers, 90, seed=1)
    c = draw_sample(store, markers, 90, seed=2)
    assert a.shape == (90, 32) and a.dtype == np.float32
    assert np.array_equal(a, b) and not np.array_equal(a, c)
    x = structured_vectors(300, 32).astype(np.float16).astype(np.float32)
    rows = [int(np.flatnonzero((x == v).all(axis=1))[0]) for v in a]
    assert len(set(rows)) == 90 and {r // 100 for r in rows} == {0, 1, 2}


def test_train_writes_a_trained_index_and_pca_and_is_not_redone(tmp_path, caplog):
    store_path = feature_store(tmp_path)
    caplog.set_level("INFO")
    res = run(TrainConfig(store=str(store_path), progress=False))
    assert res.complete and res.n == 300 and res.d == 32
    assert any("IVF" in r.message and "trained on" in r.message for r in caplog.records)
    index, pca = load_trained(Store(store_path))
    assert index.is_trained and index.ntotal == 0
    assert index.metric_type == faiss.METRIC_INNER_PRODUCT
    assert pca.d_in == 32 and pca.d_out == 32
    first = (store_path / "trained" / "index.faiss").read_bytes()
    again = run(TrainConfig(store=str(store_path), progress=False))
    assert again.seconds < res.seconds
    assert (store_path / "trained" / "index.faiss").read_bytes() == first


def test_index_factory_override_and_errors(tmp_path):
    store_path = feature_store(tmp_path)
    with pytest.raises(ConfigError, match="not a valid Faiss index"):
        run(TrainConfig(store=str(store_path), index_factory="IVFxx,PQ", progress=False))
    Store(store_path).forget_stage("train")
    res = run(TrainConfig(store=str(store_path), index_factory="IVF4,Flat", pca_dim=8,
                          progress=False))
    index, pca = load_trained(Store(store_path))
    assert res.factory == "IVF4,Flat" and faiss.extract_index_ivf(index).nlist == 4
    assert pca.d_out == 8
    with pytest.raises(WorkflowError, match="extract stage is not complete"):
        run(TrainConfig(store=str(tmp_path / "empty"), progress=False))


def test_sigkill_during_train_then_rerun_gives_the_same_index(tmp_path):
    store_path = feature_store(tmp_path, n=3000, d=64, shard_size=500)
    ref = tmp_path / "ref"
    import shutil
    shutil.copytree(store_path, ref)

    def cmd(s):
        return [sys.executable, "-m", "workflow", "train", "--store", str(s), "--scratch",
                str(tmp_path / f"scratch-{s.name}"), "--no-progress"]

    t0 = time.monotonic()
    assert subprocess.run(cmd(ref), cwd=ROOT, capture_output=True).returncode == 0
    took = time.monotonic() - t0
    kill_during(cmd(store_path), took, seed=3)
    for name in ("index.faiss", "pca.faiss"):
        assert (store_path / "trained" / name).read_bytes() == (ref / "trained" / name).read_bytes()
    assert leftovers(store_path) == []


def test_a_training_that_does_not_fit_in_max_minutes_is_not_started(tmp_path):
    store_path = feature_store(tmp_path)
    res = run(TrainConfig(store=str(store_path), max_minutes=1e-9, progress=False))
    assert not res.complete and Store(store_path).marker("train", "index") is None
    assert run(TrainConfig(store=str(store_path), progress=False)).complete


def test_fast_scan_is_stored_as_plain_4_bit_pq_and_searched_as_fast_scan(tmp_path):
    """`PQ<m>x4fs`: train, add (15 parts merged) and the store hold the plain 4-bit IVF-PQ
    with the same codes; the searcher runs it as fast-scan, with the same neighbours
    after the exact re-rank as the plain index gives."""
    from workflow.search.modes import SearchParams
    from workflow.search.searcher import Searcher
    from workflow.stages import add
    store_path = feature_store(tmp_path, n=3000, d=64, shard_size=200)
    res = run(TrainConfig(store=str(store_path), index_factory="IVF16,PQ32x4fs", pca_dim=64,
                          progress=False))
    assert res.factory == "IVF16,PQ32x4fs"
    trained = faiss.downcast_index(load_trained(Store(store_path))[0])
    assert isinstance(trained, faiss.IndexIVFPQ) and trained.pq.nbits == 4
    assert add.run(add.AddConfig(store=str(store_path), progress=False)).ntotal == 3000
    stored = faiss.downcast_index(faiss.read_index(str(store_path / "index" / "index.faiss")))
    assert type(stored) is faiss.IndexIVFPQ and stored.ntotal == 3000
    searcher = Searcher(str(store_path), cache_size=0)
    assert isinstance(faiss.downcast_index(searcher.index), faiss.IndexIVFPQFastScan)
    xq = np.asarray(searcher.xb[:50], np.float32)
    params = SearchParams(nprobe=16, rerank=100)
    _, got = searcher.search_vectors(xq, 10, mode="ivfpq+rerank", params=params)
    _, exact = searcher.search_vectors(xq, 10, mode="exact")
    recall = np.mean([len(set(a) & set(b)) / 10 for a, b in zip(got, exact)])
    assert recall >= 0.95, recall


def test_rabitq_on_a_pca_rotation_by_index_factory(tmp_path):
    """12,000 x 512, `--index-factory PCAR448,IVF256,RaBitQ` (the bytes of PQ64; planned
    by default until PQ64 proved as fast on real embeddings): 6 parts merge, and the
    exact re-rank finds the exact neighbours through it. The plan itself gives PQ64."""
    from workflow.search.modes import SearchParams
    from workflow.search.searcher import Searcher
    from workflow.stages import add
    store_path = feature_store(tmp_path, n=12_000, d=512, shard_size=2000)
    assert plan_index(12_000, 512, 8 << 30).factory == "IVF256,PQ64"
    res = run(TrainConfig(store=str(store_path), index_factory="PCAR448,IVF256,RaBitQ",
                          progress=False))
    assert res.factory == "PCAR448,IVF256,RaBitQ"
    assert add.run(add.AddConfig(store=str(store_path), progress=False)).ntotal == 12_000
    searcher = Searcher(str(store_path), cache_size=0)
    ivf = faiss.downcast_index(faiss.extract_index_ivf(searcher.index))
    assert isinstance(ivf, faiss.IndexIVFRaBitQ) and ivf.d == 448
    xq = np.asarray(searcher.xb[:50], np.float32)
    _, got = searcher.search_vectors(xq, 10, mode="ivfpq+rerank",
                                     params=SearchParams(nprobe=16, rerank=200))
    _, exact = searcher.search_vectors(xq, 10, mode="exact")
    recall = np.mean([len(set(a) & set(b)) / 10 for a, b in zip(got, exact)])
    assert recall >= 0.95, recall  # measured 0.992 (PQ64 on the same vectors: 1.0)
