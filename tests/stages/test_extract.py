import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from workflow.errors import FingerprintMismatch, WorkflowError
from workflow.formats.features import read_feature_shard
from workflow.formats.images import read_image_shard
from workflow.models.registry import ModelSpec
from workflow.search.query import QueryEmbedder
from workflow.stages.extract import ExtractConfig, run
from workflow.stages.preprocess import PreprocessConfig
from workflow.stages.preprocess import run as preprocess
from workflow.storage.store import Store

from conftest import ROOT, jpeg_bytes, kill_repeatedly, leftovers, write_corpus

SMALL = dict(weights="none", input_size=64, batch_size=4, workers=1, progress=False)


def _preprocessed(tmp_path, n=14, shard_size=6, **kw) -> Path:
    src = tmp_path / "src"
    write_corpus(src, n, size=(120, 90))
    (src / "class0" / "broken.jpg").write_bytes(b"not an image")
    store = tmp_path / "store"
    preprocess(PreprocessConfig(store=str(store), sources=(str(src),), workers=1,
                                shard_size=shard_size, progress=False,
                                scratch=str(tmp_path / "s"), **kw))
    return store


def _features(store: Path) -> dict[str, tuple]:
    return {p.name: read_feature_shard(str(p)) for p in sorted((store / "features").glob("*.h5"))}


def test_feature_shards_hold_normalised_float16_of_the_ok_images(tmp_path):
    store = _preprocessed(tmp_path)
    res = run(ExtractConfig(store=str(store), scratch=str(tmp_path / "s"), **SMALL))
    assert res.complete and res.n_shards == 3 and res.n_features == 14 and res.dim == 1280
    all_ids = []
    for name, (ids, feats, attrs) in _features(store).items():
        img = read_image_shard(str(store / "images" / name), with_jpeg=False)
        assert ids.tolist() == img["ids"][img["status"] == 0].tolist()
        assert feats.dtype == np.float16 and feats.shape == (len(ids), 1280)
        assert np.allclose(np.linalg.norm(feats.astype(np.float32), axis=1), 1, atol=2e-3)
        assert attrs["model"] == "efficientnet-b0" and attrs["dim"] == 1280
        assert attrs["fingerprint"] == Store(store).run_info()["stages"]["extract"]["fingerprint"]
        all_ids += ids.tolist()
    assert len(all_ids) == 14 and len(set(all_ids)) == 14
    again = run(ExtractConfig(store=str(store), scratch=str(tmp_path / "s"), **SMALL))
    assert again.complete and again.timings["infer"] == 0


def _shared_blocks() -> set[str]:
    return set(os.listdir("/dev/shm")) if os.path.isdir("/dev/shm") else set()


@pytest.mark.parametrize("executor,n,shard_size,extra", [
    ("thread", 14, 6, {}),
    ("process", 14, 6, {}),
    # Processes decode into a ring of shared batches: batches of two decoding jobs
    # (32 + 8 images), a short last batch, and slots reused across batches and shards.
    ("process", 130, 90, {"batch_size": 40, "workers": 3}),
    # The fewest shared batches that can work: decoding pauses whenever both are out.
    ("process-2-slots", 130, 90, {"batch_size": 40, "workers": 3}),
    # Too little room in /dev/shm: decoded pixels come back through pipes.
    ("process-no-shm", 40, 30, {"batch_size": 8, "workers": 2}),
])
def test_executors_give_identical_features(tmp_path, monkeypatch, caplog, executor, n,
                                           shard_size, extra):
    import workflow.execution.decoding as ex
    if executor == "process-2-slots":
        monkeypatch.setattr(ex.DecodePipeline, "shared_slots", lambda self: 2)
    if executor == "process-no-shm":
        monkeypatch.setattr(ex, "shared_memory_free", lambda: 100 << 10)
        monkeypatch.setattr(ex, "SharedBatches", None)  # must not be used
    executor = executor.split("-")[0]
    store = _preprocessed(tmp_path, n=n, shard_size=shard_size)
    before = _shared_blocks()
    run(ExtractConfig(store=str(store), scratch=str(tmp_path / "s"), executor=executor,
                      **{**SMALL, **extra}))
    assert _shared_blocks() <= before  # shared batches are unlinked when the stage ends
    if ex.SharedBatches is None:
        assert "/dev/shm has 0.1 MB free" in caplog.text and "--shm-size" in caplog.text
    ref = _features(store)
    assert sum(len(ids) for ids, _, _ in ref.values()) == n
    Store(store).remove("features")
    Store(store).remove("_done/extract")
    run(ExtractConfig(store=str(store), scratch=str(tmp_path / "s"),
                      **{**SMALL, "workers": 2, "batch_size": extra.get("batch_size", 4)},
                      executor="local"))
    for name, (ids, feats, _) in _features(store).items():
        assert np.array_equal(ids, ref[name][0]) and np.array_equal(feats, ref[name][1])


def test_blocks_of_killed_runs_are_removed_and_live_ones_kept(tmp_path, monkeypatch):
    import workflow.execution.shared_batches as ex
    monkeypatch.setattr(ex, "SHARED_DIR", str(tmp_path))
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    names = [f"{ex.SHARED_PREFIX}{dead.pid}-00ff", f"{ex.SHARED_PREFIX}{os.getpid()}-00ff",
             f"{ex.SHARED_PREFIX}junk", "psm_other"]
    for n in names:
        (tmp_path / n).write_bytes(b"x")
    assert ex.remove_orphaned_blocks() == [names[0]]
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(names[1:])


def test_decoding_runs_in_processes_with_a_gpu_and_in_threads_without():
    from types import SimpleNamespace

    from workflow.stages.extract import resolve_executor
    cfg = ExtractConfig(store="s")
    assert cfg.executor == "auto"
    assert resolve_executor(cfg, SimpleNamespace(on_gpu=True)).executor == "process"
    assert resolve_executor(cfg, SimpleNamespace(on_gpu=False)).executor == "thread"
    explicit = ExtractConfig(store="s", executor="thread")
    assert resolve_executor(explicit, SimpleNamespace(on_gpu=True)).executor == "thread"


def test_other_model_settings_are_refused_and_duplicates_dropped(tmp_path):
    store = _preprocessed(tmp_path, drop_duplicates=True)
    run(ExtractConfig(store=str(store), scratch=str(tmp_path / "s"), **SMALL))
    with pytest.raises(FingerprintMismatch, match="pooling"):
        run(ExtractConfig(store=str(store), scratch=str(tmp_path / "s"),
                          **{**SMALL, "pooling": "max"}))


def test_duplicates_are_left_out_when_asked(tmp_path):
    src = tmp_path / "src"
    write_corpus(src, 4)
    (src / "copy.jpg").write_bytes((src / "class0" / "img0000.jpg").read_bytes())
    store = tmp_path / "store"
    preprocess(PreprocessConfig(store=str(store), sources=(str(src),), workers=1,
                                progress=False, drop_duplicates=True))
    res = run(ExtractConfig(store=str(store), **SMALL))
    assert res.n_features == 4


def test_extract_needs_a_finished_preprocess(tmp_path):
    with pytest.raises(WorkflowError, match="01_preprocess"):
        run(ExtractConfig(store=str(tmp_path / "empty"), **SMALL))


def test_a_corpus_image_as_query_returns_its_stored_feature(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    for i in range(3):
        (src / f"q{i}.jpg").write_bytes(jpeg_bytes(640, 480, seed=i))
    store = tmp_path / "store"
    preprocess(PreprocessConfig(store=str(store), sources=(str(src),), workers=1,
                                progress=False))
    run(ExtractConfig(store=str(store), **SMALL))
    ids, feats, _ = _features(store)["shard-00000.h5"]
    q = QueryEmbedder(Store(store)).embed([src / "q1.jpg", (src / "q2.jpg").read_bytes()])
    cos = (q * feats[1:3].astype(np.float32)).sum(axis=1)
    assert (cos >= 0.999).all(), cos
    with pytest.raises(WorkflowError, match="not_image"):
        QueryEmbedder(Store(store)).embed([b"hello"])


def test_offline_imagenet_names_the_remedies(monkeypatch):
    import keras

    def no_network(*a, **kw):
        raise Exception("URL fetch failure on https://example/weights.h5: None -- "
                        "[Errno -2] Name or service not known")
    monkeypatch.setattr(keras.utils, "get_file", no_network)
    monkeypatch.setattr("keras.src.utils.file_utils.get_file", no_network, raising=False)
    monkeypatch.setattr("keras.src.applications.efficientnet.file_utils.get_file", no_network,
                        raising=False)
    from workflow.models.keras import KerasEmbedder
    from workflow.models.registry import OfflineWeightsError
    with pytest.raises(OfflineWeightsError, match="--weights PATH.*--weights none"):
        KerasEmbedder(ModelSpec(input_size=64))


def _extract_done(store: Path) -> int:
    d = store / "_done" / "extract"
    return len(list(d.glob("shard-*.json"))) if d.is_dir() else 0


@pytest.mark.slow
@pytest.mark.parametrize("executor", ["auto", "process"])
def test_sigkill_during_extract_then_resume_gives_bitwise_identical_features(tmp_path,
                                                                             executor):
    """Killed with its whole process group; with decoding processes, also that no
    shared-memory block outlives the runs (the tracker that would unlink it dies too)."""
    from workflow.execution.shared_batches import SHARED_DIR, SHARED_PREFIX
    store = _preprocessed(tmp_path, n=120, shard_size=4)  # many shards: the CPU runtime
    args = ["--weights", "none", "--input-size", "64", "--batch-size", "4", "--workers", "1",
            "--no-progress"]                                # computes each in milliseconds

    def cmd(s, executor="auto"):
        return [sys.executable, "-m", "workflow", "extract", "--store", str(s), "--scratch",
                str(tmp_path / f"scratch-{s.name}"), *args, "--executor", executor]

    def blocks():
        return {n for n in os.listdir(SHARED_DIR) if n.startswith(SHARED_PREFIX)} \
            if os.path.isdir(SHARED_DIR) else set()
    ref = tmp_path / "ref"
    import shutil
    shutil.copytree(store, ref)
    assert subprocess.run(cmd(ref), cwd=ROOT, capture_output=True).returncode == 0
    before = blocks()
    kills = kill_repeatedly(cmd(store, executor), lambda: _extract_done(store), seed=7,
                            delay=0.15)
    assert kills >= 2
    assert blocks() <= before
    got, want = _features(store), _features(ref)
    assert set(got) == set(want) and len(got) == 31
    for name in want:
        assert np.array_equal(got[name][0], want[name][0])
        assert np.array_equal(got[name][1], want[name][1])
    assert leftovers(store) == []


@pytest.mark.slow
@pytest.mark.parametrize("model, tensor, ref_map", [
    ("mobilenet_v1_1.0_224_quant_embedding_extractor.tflite", None, 0.682),
    ("mobilenet_v2_1.0_224_quant.tflite", "MobilenetV2/Logits/AvgPool", 0.652)])
def test_tflite_models_through_the_stages_reproduce_flowers12_quality(
        tmp_path, shared_assets, model, tensor, ref_map):
    from retrieval_metrics import retrieval_map
    store = tmp_path / "store"
    preprocess(PreprocessConfig(store=str(store), progress=False, shard_size=500,
                                sources=(str(shared_assets / "images" / "flowers12"),)))
    res = run(ExtractConfig(store=str(store), model=str(shared_assets / "models" / model),
                            embedding_tensor=tensor, progress=False))
    assert res.complete and res.n_features == 960
    ids, feats = [], []
    for _, (i, f, _) in _features(store).items():
        ids += i.tolist()
        feats.append(f)
    names = {}
    for name in ("shard-00000.h5", "shard-00001.h5"):
        s = read_image_shard(str(store / "images" / name), with_jpeg=False)
        names.update(zip(s["ids"].tolist(), s["keys"]))
    labels = np.array([names[i].split("/")[1] for i in ids])
    got = retrieval_map(np.concatenate(feats).astype(np.float32), labels)
    assert abs(got - ref_map) <= 0.02, got


@pytest.mark.parametrize("backend,suffix", [("tensorflow", ".keras"), ("tensorflow", ".h5"),
                                            ("torch", ".keras"), ("jax", ".keras")])
def test_a_saved_keras_model_gives_the_same_features_in_a_new_process(tmp_path, backend,
                                                                      suffix):
    """A user's .keras or .h5 model, run by the command line in a new process: with
    TensorFlow (what CI has), and on PyTorch and JAX (what the lent GPU machines have,
    without TensorFlow) where they are installed."""
    import importlib.util
    if importlib.util.find_spec(backend) is None:
        pytest.skip(f"{backend} is not installed (pip install {backend} to run this test)")
    import keras
    model = keras.applications.EfficientNetB0(include_top=False, weights=None, pooling="avg",
                                              input_shape=(64, 64, 3))
    path = tmp_path / f"b0{suffix}"
    model.save(path)
    store = _preprocessed(tmp_path, n=6)
    other = tmp_path / "other"
    import shutil
    shutil.copytree(store, other)
    run(ExtractConfig(store=str(store), model=str(path), **{**SMALL, "weights": "imagenet"}))
    env = {**os.environ, "KERAS_BACKEND": backend}
    r = subprocess.run([sys.executable, "-m", "workflow", "extract", "--store", str(other),
                        "--model", str(path), "--batch-size", "4", "--workers", "1",
                        "--no-progress"], cwd=ROOT, env=env, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr[-2000:]
    got, want = _features(other), _features(store)
    assert set(got) == set(want)
    for name in want:
        assert np.array_equal(got[name][0], want[name][0])
        assert np.abs(got[name][1].astype(np.float32) - want[name][1]).max() < 2e-3
        assert json.loads(got[name][2]["model_info"])["backend"] == backend


def test_xla_compiled_model_gives_the_same_features():
    from workflow.models.keras import KerasEmbedder
    x = np.random.default_rng(0).integers(0, 255, (3, 64, 64, 3), dtype=np.uint8)
    plain = KerasEmbedder(ModelSpec(weights="none", input_size=64))
    xla = KerasEmbedder(ModelSpec(weights="none", input_size=64), xla=True)
    assert xla.info["xla"] and not plain.info["xla"]
    assert np.abs(plain(x) - xla(x)).max() < 1e-4


@pytest.mark.parametrize("name, prep", [("resnet50", "caffe"), ("mobilenetv3-small", "raw"),
                                        ("efficientnetv2-b0", "raw")])
def test_other_keras_applications_build_and_embed(name, prep):
    from workflow.models.keras import KerasEmbedder
    e = KerasEmbedder(ModelSpec(name, "none", input_size=64))
    x = np.random.default_rng(1).integers(0, 255, (2, 64, 64, 3), dtype=np.uint8)
    y = e(x)
    assert y.shape == (2, e.dim) and e.info["preprocessing"] == prep and np.isfinite(y).all()


def test_a_savedmodel_folder_can_be_the_model(tmp_path):
    import keras

    from workflow.models.keras import KerasEmbedder
    inp = keras.Input((32, 32, 3))
    out = keras.layers.GlobalAveragePooling2D()(keras.layers.Conv2D(8, 3)(inp))
    model = keras.Model(inp, out)
    model.export(str(tmp_path / "saved"), verbose=False)
    e = KerasEmbedder(ModelSpec(str(tmp_path / "saved"), input_size=32))
    x = np.random.default_rng(2).integers(0, 255, (3, 32, 32, 3), dtype=np.uint8)
    want = keras.ops.convert_to_numpy(model(x.astype(np.float32)))
    assert e.dim == 8 and np.allclose(e(x), want, atol=1e-4)
    with pytest.raises(Exception, match="--input-size"):
        KerasEmbedder(ModelSpec(str(tmp_path / "saved")))


def test_weights_from_a_local_file(tmp_path):
    import keras

    from workflow.models.keras import KerasEmbedder
    keras.utils.set_random_seed(5)
    src = keras.applications.EfficientNetB0(include_top=False, weights=None, pooling="avg",
                                            input_shape=(64, 64, 3))
    path = tmp_path / "b0_notop.weights.h5"
    src.save_weights(path)
    e = KerasEmbedder(ModelSpec(weights=str(path), input_size=64))
    x = np.random.default_rng(3).integers(0, 255, (2, 64, 64, 3), dtype=np.uint8)
    want = keras.ops.convert_to_numpy(src(x.astype(np.float32), training=False))
    assert np.allclose(e(x), want, atol=1e-5)
    assert e.info["weights"] == str(path)
    with pytest.raises(Exception, match="no such file"):
        KerasEmbedder(ModelSpec(weights=str(tmp_path / "missing.h5"), input_size=64))


def test_a_damaged_image_shard_is_detected_removed_and_recomputed(tmp_path):
    from workflow.errors import CorruptFile
    store = _preprocessed(tmp_path)
    shard = store / "images" / "shard-00001.h5"
    good = shard.read_bytes()
    data = bytearray(good)
    data[len(data) // 2] ^= 0xFF  # one flipped byte, same size
    shard.write_bytes(bytes(data))
    with pytest.raises(CorruptFile, match=r"shard-00001.h5 no longer matches the checksum.*"
                                          r"run the preprocess stage again"):
        run(ExtractConfig(store=str(store), **SMALL))
    assert not shard.exists() and Store(store).marker("preprocess", "shard-00001") is None
    again = preprocess(PreprocessConfig(store=str(store), workers=1, shard_size=6,
                                        progress=False))
    assert again.complete and shard.read_bytes() == good
    assert run(ExtractConfig(store=str(store), **SMALL)).complete
