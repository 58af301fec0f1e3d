"""Keras models through the CPU runtimes (TFLite/XNNPACK, OpenVINO): the same features as
Keras on real photos, the choice of runtime, the cached conversion, and the extract stage
recording the runtime in its shards."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import h5py
import numpy as np
import pytest

from workflow.errors import ConfigError
from workflow.inputs.imaging import model_input
from workflow.models import converted
from workflow.models.loading import make_embedder
from workflow.models.registry import ModelSpec

from conftest import ROOT, SHARED_ASSETS

SPEC = ModelSpec("efficientnet-b0", "none")  # ImageNet weights need the internet
OPENVINO = pytest.mark.skipif(not converted.openvino_installed(),
                              reason="openvino is not installed")


@pytest.fixture(scope="module")
def keras_embedder():
    return make_embedder(SPEC, "off", runtime="keras")


@pytest.fixture(scope="module")
def photos():
    """Real photos as model input: 24 flowers12 photos and the larger photos."""
    images = SHARED_ASSETS / "images"
    if not images.is_dir():
        pytest.skip(f"test assets not found at {SHARED_ASSETS} (only in the development tree)")
    files = sorted(images.glob("flowers12/train/*/*.jpg"))[::20] + sorted(
        p for p in (images / "photos").iterdir() if p.suffix.lower() in (".jpg", ".bmp"))
    return np.stack([model_input(f.read_bytes(), 224) for f in files])


def _cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return np.sum(a * b, axis=1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))


@pytest.mark.parametrize("runtime", ["tflite", pytest.param("openvino", marks=OPENVINO)])
def test_features_match_keras_on_real_photos(keras_embedder, photos, runtime):
    fast = converted.ConvertedEmbedder(keras_embedder, runtime)
    assert fast.info == {**keras_embedder.info, "runtime": runtime, "precision": "f32"}
    assert fast.dim == keras_embedder.dim and fast.input_size == 224
    want = keras_embedder(photos)
    got = np.concatenate([fast(photos[:13]), fast(photos[13:])])  # two batch sizes
    assert got.shape == want.shape and got.dtype == np.float32
    assert _cosines(got, want).min() >= 0.9999
    assert np.array_equal(fast(photos[:5]), fast(photos[:5]))  # deterministic
    assert fast(photos[:0]).shape == (0, keras_embedder.dim)


def test_auto_chooses_a_cpu_runtime_and_keras_stays_available(keras_embedder):
    want = "openvino" if converted.openvino_installed() else "tflite"
    assert converted.choose_runtime("auto", keras_embedder) == want
    assert converted.choose_runtime("keras", keras_embedder) == "keras"
    with pytest.raises(ConfigError, match="--runtime onnx"):
        converted.choose_runtime("onnx", keras_embedder)
    mixed = type("Mixed", (), {"info": {**keras_embedder.info, "mixed_precision": True},
                               "on_gpu": False, "convertible": True})()
    assert converted.choose_runtime("auto", mixed) == "keras"  # float16 compute: Keras's
    gpu = type("Gpu", (), {"info": keras_embedder.info, "on_gpu": True, "convertible": True})()
    assert converted.choose_runtime("auto", gpu) == "keras"


def test_a_conversion_is_cached_whole_and_an_orphan_is_removed(keras_embedder, tmp_path):
    first = converted.converted_file(keras_embedder)  # converted by an earlier test, or now
    mtime = first.stat().st_mtime_ns
    assert first.parent == converted.cache_dir() and first.stat().st_size > 1_000_000
    assert converted.converted_file(keras_embedder) == first  # cached: not converted again
    assert first.stat().st_mtime_ns == mtime
    assert not list(first.parent.glob(f".{first.name}.*.tmp"))  # no temporary left
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True, check=True).stdout.strip()
    orphan = tmp_path / f".efficientnet-b0-x.tflite.{dead}.1.tmp"  # a killed conversion's
    alive = tmp_path / f".efficientnet-b0-x.tflite.{os.getpid()}.1.tmp"  # one under way
    orphan.write_bytes(b"half")
    alive.write_bytes(b"half")
    converted._remove_orphans(tmp_path / "efficientnet-b0-x.tflite")
    assert not orphan.exists() and alive.exists()


def test_a_conversion_that_does_not_match_keras_is_refused(keras_embedder, monkeypatch):
    monkeypatch.setattr(converted.ConvertedEmbedder, "__call__",
                        lambda self, batch: np.ones((len(batch), self.dim), np.float32))
    with pytest.raises(ConfigError, match="use --runtime keras"):
        converted.ConvertedEmbedder(keras_embedder, "tflite")


def test_extract_records_the_runtime_and_resumes_on_another(tmp_path):
    corpus = tmp_path / "corpus"
    subprocess.run([sys.executable, "scripts/make_demo_corpus.py", str(corpus), "--n", "40"],
                   cwd=ROOT, check=True, capture_output=True)
    store = tmp_path / "store"

    def run(stage, *extra):
        return subprocess.run([sys.executable, "-m", "workflow", stage, "--store", str(store),
                               "--no-progress", *extra], cwd=ROOT, check=True,
                              capture_output=True, text=True,
                              env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "0"})
    run("preprocess", "--source", str(corpus), "--shard-size", "20")
    out = run("extract", "--weights", "none", "--runtime", "tflite")
    assert "Created TensorFlow Lite XNNPACK delegate" not in out.stderr  # silenced
    shards = sorted((store / "features").glob("*.h5"))
    assert len(shards) >= 2
    # as if killed before the last shard was committed, then resumed with Keras
    (store / "_done" / "extract" / f"{shards[-1].stem}.json").unlink()
    shards[-1].unlink()
    run("extract", "--weights", "none", "--runtime", "keras")
    runtimes = []
    for p in shards:
        with h5py.File(p, "r") as f:
            runtimes.append(json.loads(f.attrs["model_info"]).get("runtime", "keras"))
    assert runtimes == ["tflite"] * (len(shards) - 1) + ["keras"]


def test_the_cpu_runtime_threads_are_the_process_cpus_unless_set(monkeypatch):
    from workflow.utils import cpu_threads
    monkeypatch.delenv("WORKFLOW_CPU_THREADS", raising=False)
    assert cpu_threads() == len(os.sched_getaffinity(0))
    monkeypatch.setenv("WORKFLOW_CPU_THREADS", "1")
    assert cpu_threads() == 1
    monkeypatch.setenv("WORKFLOW_CPU_THREADS", "none")  # not a count: ignored
    assert cpu_threads() == len(os.sched_getaffinity(0))
