"""train, add and prefilter after the collection grew: the trained index kept and its fit
reported, the merged index and re-rank store extended to the bytes of a full build, an
Annoy segment over the new shards (and a rebuild that folds it in)."""
import glob

import faiss
import h5py
import numpy as np
import pytest

from workflow.formats.index import load_trained, write_rerank_store
from workflow.formats.prefilter import load_prefilter
from workflow.stages import add, prefilter, train
from workflow.storage.mounts import ENV
from workflow.storage.store import Store

from conftest import grow_feature_store, indexed_store, structured_vectors


@pytest.fixture(scope="module", params=["auto", "always"])
def grown(tmp_path_factory, request):
    """A store that grew; its large files read in place (auto, on a local disk) or
    staged in as a store on a network mount would have them (always)."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv(ENV, request.param)
        tmp = tmp_path_factory.mktemp("grown")
        store = indexed_store(tmp, n=600, d=32, shard_size=100)
        before = {p: open(p, "rb").read() for p in glob.glob(f"{store}/index/parts/*.faiss")}
        grow_feature_store(tmp, n=600, new=150, d=32, shard_size=100)
        yield store, before


def test_train_keeps_its_index_and_reports_its_fit(grown):
    store, _ = grown
    trained = (store / "trained" / "index.faiss").read_bytes()
    res = train.run(train.TrainConfig(store=str(store), progress=False))
    assert (store / "trained" / "index.faiss").read_bytes() == trained
    assert res.fit["trained_n"] == 600 and res.fit["n"] == 750 and res.fit["version"] == 2
    assert not res.fit["retrain"], res.fit["summary"]  # the same distribution: it fits
    assert "It still fits" in res.summary()
    assert (store / "trained" / "fit.json").exists()


def test_add_extends_the_index_and_the_rerank_store_to_a_full_builds_bytes(grown):
    store, before = grown
    res = add.run(add.AddConfig(store=str(store), progress=False))
    assert res.complete and res.ntotal == 750 and res.parts_done == 8
    for p, data in before.items():  # old parts untouched
        assert open(p, "rb").read() == data
    trained, _ = load_trained(Store(store))
    full = faiss.clone_index(trained)
    for p in sorted(glob.glob(f"{store}/index/parts/*.faiss")):
        full.merge_from(faiss.read_index(p), 0)
    faiss.write_index(full, str(store.parent / "full.faiss"))
    assert (store.parent / "full.faiss").read_bytes() == \
        (store / "index" / "index.faiss").read_bytes()

    def shards():
        for p in sorted(glob.glob(f"{store}/features/*.h5")):
            with h5py.File(p) as f:
                yield f["ids"][:], f["features"][:]
    write_rerank_store(store.parent / "full.npy", 750, 32, shards())
    assert (store.parent / "full.npy").read_bytes() == \
        (store / "index" / "rerank.npy").read_bytes()


def test_prefilter_adds_a_segment_and_a_rebuild_folds_it(grown):
    store, _ = grown
    res = prefilter.run(prefilter.PrefilterConfig(store=str(store), progress=False))
    assert res.complete and res.n == 750
    assert (store / "prefilter" / "annoy-00006.ann").exists()
    _, pca = load_trained(Store(store))
    x = np.concatenate([structured_vectors(600, 32), structured_vectors(750, 32)[600:]])
    x = pca.apply(x.astype(np.float16).astype(np.float32))  # as the stores hold them
    ann = load_prefilter(Store(store))
    assert [n for _, n in ann.segments] == [600, 150]
    assert ann.max_results(100) == 80 + 20 and ann.max_results(10) == 20
    for i in (600, 650, 749, 0, 300):  # new and old vectors find themselves
        assert i in ann.get_nns_by_vector(x[i].tolist(), 10, search_k=2000)
    base = (store / "prefilter" / "annoy.ann").read_bytes()
    res = prefilter.run(prefilter.PrefilterConfig(store=str(store), progress=False,
                                                  rebuild=True))
    assert res.complete and (store / "prefilter" / "annoy.ann").read_bytes() != base
    assert not (store / "prefilter" / "annoy-00006.ann").exists()
    assert [n for _, n in load_prefilter(Store(store)).segments] == [750]
    assert sorted(p.name for p in (store / "_done" / "prefilter").iterdir()) == ["annoy.json"]


def test_retrain_starts_the_index_over_once(grown, tmp_path):
    import shutil
    store = tmp_path / "store"
    shutil.copytree(grown[0], store)
    res = train.run(train.TrainConfig(store=str(store), progress=False, retrain=True))
    assert res.complete and res.n == 750 and res.fit is None
    info = Store(store).run_info()["stages"]
    assert "add" not in info and "prefilter" not in info and not (store / "index").exists()
    assert Store(store).marker("train", "index").extra["plan"]["n"] == 750
    trained = (store / "trained" / "index.faiss").read_bytes()
    train.run(train.TrainConfig(store=str(store), progress=False, retrain=True))
    assert (store / "trained" / "index.faiss").read_bytes() == trained  # not redone


def test_retrain_keeps_its_own_lease_through_a_training_longer_than_the_heartbeat(
        grown, tmp_path, monkeypatch):
    import json
    import shutil

    from workflow.storage import lease
    store = tmp_path / "store"
    shutil.copytree(grown[0], store)
    # a duplicates stage built on the old index, as after a whole job
    (store / "_done" / "duplicates").mkdir(parents=True)
    (store / "_done" / "duplicates" / "groups.json").write_text(json.dumps({"path": "x"}))
    monkeypatch.setattr(lease, "HEARTBEAT_SECONDS", 0.005)  # training outlives it here
    res = train.run(train.TrainConfig(store=str(store), progress=False, retrain=True))
    assert res.complete and res.n == 750
    assert not (store / "_done" / "duplicates").exists()  # built on the old index: reset
    assert not list((store / "_leases").glob("*")), "the lease was released, nothing left"
