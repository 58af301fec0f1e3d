"""`01_preprocess.py --update`: new images as new shards, ids and keys that never change,
missing and dropped sources, and library versions that change between runtimes."""
import h5py
import numpy as np
import pytest

from workflow.errors import FingerprintMismatch, SourceError
from workflow.formats.missing import load_missing
from workflow.formats.plan import corpus_version, load_plan, planned_count
from workflow.formats.removed import load_removed
from workflow.stages import planning
from workflow.stages.preprocess import PreprocessConfig, run
from workflow.stages.remove import Selection, remove
from workflow.storage.frozen import VersionMismatch
from workflow.storage.store import Store

from conftest import jpeg_bytes, write_corpus


def _cfg(store, sources, tmp_path, **kw):
    return PreprocessConfig(store=str(store), sources=tuple(str(s) for s in sources),
                            scratch=str(tmp_path / "scratch"), progress=False, workers=1,
                            shard_size=4, **kw)


def _shards(store):
    return {p.name: p.read_bytes() for p in (store / "images").glob("shard-*.h5")}


@pytest.fixture
def built(tmp_path):
    write_corpus(tmp_path / "a", 10, size=(32, 24))
    store = tmp_path / "store"
    assert run(_cfg(store, [tmp_path / "a"], tmp_path)).complete
    return store


def test_an_update_appends_shards_and_keeps_every_id_and_key(tmp_path, built):
    before = _shards(built)
    keys_before = load_plan(Store(built), tmp_path / "p.h5").keys
    (tmp_path / "a" / "class0" / "img0100.jpg").write_bytes(jpeg_bytes(32, 24, seed=100))
    write_corpus(tmp_path / "b", 5, seed=3, size=(32, 24))
    with pytest.raises(FingerprintMismatch, match="--update"):
        run(_cfg(built, [tmp_path / "a", tmp_path / "b"], tmp_path))
    res = run(_cfg(built, [tmp_path / "a", tmp_path / "b"], tmp_path, update=True))
    assert res.complete and res.n_images == 16 and res.n_shards == 3 + 2
    after = _shards(built)
    assert all(after[k] == v for k, v in before.items())  # no old shard rewritten
    plan = load_plan(Store(built), tmp_path / "p.h5")
    assert plan.keys[:10] == keys_before  # the first source's keys stay unprefixed
    assert plan.keys[10:] == ["class0/img0100.jpg"] + [f"b/class{i % 2}/img{i:04d}.jpg"
                                                       for i in (0, 2, 4, 1, 3)]
    with h5py.File(built / "images" / "shard-00003.h5") as f:
        assert f["ids"][:].tolist() == list(range(10, 13))
    assert corpus_version(Store(built)) == 2 and planned_count(Store(built)) == 16
    # the same update again finds nothing new, and a plain resume lists nothing
    again = run(_cfg(built, [tmp_path / "a", tmp_path / "b"], tmp_path, update=True))
    assert again.n_images == 16 and corpus_version(Store(built)) == 2
    assert run(_cfg(built, [], tmp_path)).n_images == 16


def test_a_new_source_whose_name_is_taken_gets_another_prefix(tmp_path, built):
    (tmp_path / "x").mkdir()
    write_corpus(tmp_path / "x" / "class0", 2, seed=4, size=(32, 24))  # x/class0/class0/...
    res = run(_cfg(built, [tmp_path / "a", tmp_path / "x" / "class0"], tmp_path, update=True))
    plan = load_plan(Store(built), tmp_path / "p.h5")
    # keys of the first source start with "class0/": the new source is "class0~2/"
    assert res.n_images == 12 and all(k.startswith("class0~2/") for k in plan.keys[10:])


def test_keys_stay_unique_when_the_first_source_grows_a_folder_named_like_a_prefix(
        tmp_path, built):
    """The unprefixed first source later gains `more/x.jpg`, the key an update gave to
    the source `more`'s x.jpg: the newcomer gets `more/x~2.jpg`, and `remove --key
    more/x.jpg` removes the one it names."""
    a, more = tmp_path / "a", tmp_path / "more"
    more.mkdir()
    (more / "x.jpg").write_bytes(jpeg_bytes(32, 24, seed=200))
    assert run(_cfg(built, [a, more], tmp_path, update=True)).complete
    (a / "more").mkdir()
    (a / "more" / "x.jpg").write_bytes(jpeg_bytes(32, 24, seed=201))
    (a / "more" / "x~2.jpg").write_bytes(jpeg_bytes(32, 24, seed=202))
    assert run(_cfg(built, [a, more], tmp_path, update=True)).complete
    plan = load_plan(Store(built), tmp_path / "p.h5")
    assert len(set(plan.keys)) == plan.n == 13
    assert plan.keys[10:] == ["more/x.jpg", "more/x~2.jpg", "more/x~2~2.jpg"]
    assert [plan.locators[i] for i in (10, 11, 12)] == ["x.jpg", "more/x.jpg", "more/x~2.jpg"]
    assert remove(Store(built), Selection(keys=("more/x.jpg",))).selected == 1
    assert load_removed(Store(built))[1].tolist() == [10]


def test_gone_files_are_recorded_and_a_dropped_source_is_refused(tmp_path, built):
    write_corpus(tmp_path / "b", 3, seed=3, size=(32, 24))
    run(_cfg(built, [tmp_path / "a", tmp_path / "b"], tmp_path, update=True))
    (tmp_path / "a" / "class1" / "img0003.jpg").unlink()
    run(_cfg(built, [tmp_path / "a", tmp_path / "b"], tmp_path, update=True))
    assert load_missing(Store(built))["keys"] == ["class1/img0003.jpg"]
    with pytest.raises(SourceError, match="remove --store .* --source"):
        run(_cfg(built, [tmp_path / "a"], tmp_path, update=True))
    import shutil
    shutil.rmtree(tmp_path / "b")
    with pytest.raises(SourceError, match="--missing"):
        run(_cfg(built, [tmp_path / "a"], tmp_path, update=True))
    assert sorted(load_missing(Store(built))["ids"]) == [6, 10, 11, 12]  # 6: class1/img0003
    remove(Store(built), Selection(missing=True))
    res = run(_cfg(built, [tmp_path / "a"], tmp_path, update=True))
    assert res.complete and corpus_version(Store(built)) == 3  # the new source list


def test_a_complete_stage_passes_over_a_new_library_version(tmp_path, built, monkeypatch,
                                                            caplog):
    monkeypatch.setattr(planning, "versions", lambda: {"opencv": "99.0.0"})
    caplog.set_level("INFO")
    assert run(_cfg(built, [], tmp_path)).complete
    assert "complete, passed over (this runtime has opencv" in caplog.text
    (tmp_path / "a" / "class0" / "img0200.jpg").write_bytes(jpeg_bytes(32, 24, seed=200))
    with pytest.raises(VersionMismatch, match="--accept-new-versions"):
        run(_cfg(built, [tmp_path / "a"], tmp_path, update=True))
    assert corpus_version(Store(built)) == 1  # refused before anything was written
    res = run(_cfg(built, [tmp_path / "a"], tmp_path, update=True, accept_new_versions=True))
    assert res.complete and res.n_images == 11
    frozen = Store(built).run_info()["stages"]["preprocess"]
    assert frozen["versions"] == {"opencv": "99.0.0"}
    assert frozen["accepted"][0]["to"] == {"opencv": "99.0.0"}
    assert "opencv" not in frozen["settings"]


def test_a_store_frozen_with_the_version_among_its_settings_still_resumes(tmp_path, built):
    """Stores made before versions had their own place in run.json."""
    store = Store(built)
    info = store.run_info()
    rec = info["stages"]["preprocess"]
    rec["settings"]["opencv"] = rec.pop("versions")["opencv"]
    store.write_json("run.json", info)
    assert run(_cfg(built, [], tmp_path)).complete
    np.testing.assert_equal(planned_count(store), 10)
