"""TFLiteEmbedder on the two shipped quantized models (and tiny synthetic ones), and the
retrieval metrics on hand-computed cases."""
from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pytest

from workflow.errors import ConfigError
from workflow.inputs.imaging import model_input
from workflow.models.registry import ModelSpec, apply_preprocessing

from conftest import SHARED_ASSETS
from retrieval_metrics import l2_normalize, precision_at_1, retrieval_map

ASSETS = SHARED_ASSETS
FLOWERS = ASSETS / "images" / "flowers12"

# file, embedding tensor, dim, and the reference quality from shared/assets/README.md
# (flowers12, all-vs-all cosine retrieval): (mAP, P@1)
MODELS = {
    "v1": ("mobilenet_v1_1.0_224_quant_embedding_extractor.tflite", None, 1024, 0.682, 0.968),
    "v2": ("mobilenet_v2_1.0_224_quant.tflite", "MobilenetV2/Logits/AvgPool", 1280,
           0.652, 0.955),
}


def _spec(key: str, **kw) -> ModelSpec:
    fname, tensor, *_ = MODELS[key]
    return ModelSpec(model=str(ASSETS / "models" / fname), embedding_tensor=tensor, **kw)


@pytest.fixture(scope="module")
def assets() -> Path:
    if not ASSETS.is_dir():
        pytest.skip(f"test assets not found at {ASSETS} (only in the development tree)")
    return ASSETS


@pytest.fixture(scope="module")
def embedders(assets):
    from workflow.models.tflite import TFLiteEmbedder
    return {key: TFLiteEmbedder(_spec(key)) for key in MODELS}


@pytest.fixture(scope="module")
def flowers(assets):
    """All 960 flowers12 images as model input [n, 224, 224, 3] and their labels."""
    files = sorted(FLOWERS.glob("*/*/*.jpg"))
    assert len(files) == 960
    x = np.stack([model_input(f.read_bytes(), 224) for f in files])
    return x, np.array([f.parent.name for f in files])


# ---------------------------------------------------------------- shipped models

@pytest.mark.parametrize("key", list(MODELS))
def test_shipped_models_load(embedders, key):
    from workflow.models.tflite import interpreter_class
    fname, tensor, dim, *_ = MODELS[key]
    e = embedders[key]
    assert e.input_size == 224 and e.dim == dim and e.batch_size_limit is None
    assert e.info == {"model": fname, "kind": "tflite", "weights_sha256": e.info["weights_sha256"],
                      "input_size": 224, "pooling": "avg", "preprocessing": "uint8",
                      "embedding_tensor": tensor}
    assert e.info["weights_sha256"] == {"v1": "f409ef4f73fcbb96", "v2": "7aad0c74c5e3c06e"}[key]
    assert e.interpreter_source == interpreter_class()[1]


def test_batch_equals_one_at_a_time(embedders, flowers):
    x = flowers[0][:3]
    for e in embedders.values():
        y = e(x)
        assert y.shape == (3, e.dim) and y.dtype == np.float32
        assert np.array_equal(y, np.concatenate([e(x[i:i + 1]) for i in range(3)]))
        assert (y >= 0).all() and y.max() > 0       # dequantised ReLU6 features
        assert e(x[:0]).shape == (0, e.dim)


def test_v1_output_dequantised_with_its_own_params(embedders, flowers):
    """The v1 output is 1x1x1x1024 uint8 with scale 0.0235: values are multiples of it."""
    e = embedders["v1"]
    scale, zero = e.interpreter.get_output_details()[0]["quantization"]
    y = e(flowers[0][:1])[0]
    q = y / scale + zero
    assert np.allclose(q, np.round(q), atol=1e-3) and q.max() <= 255 and y.max() <= 6.01


def test_bad_tensor_name_lists_close_names(assets):
    from workflow.models.tflite import TFLiteEmbedder
    with pytest.raises(ConfigError) as exc:
        TFLiteEmbedder(ModelSpec(model=_spec("v2").model,
                                 embedding_tensor="MobilenetV2/Logits/AvgPol"))
    assert "'MobilenetV2/Logits/AvgPool'" in str(exc.value)
    with pytest.raises(ConfigError, match="close names"):
        TFLiteEmbedder(ModelSpec(model=_spec("v1").model, embedding_tensor="zzz"))


def test_missing_file_and_wrong_input_size(assets, tmp_path):
    from workflow.models.tflite import TFLiteEmbedder
    missing = tmp_path / "nope.tflite"
    with pytest.raises(ConfigError, match="nope.tflite"):
        TFLiteEmbedder(ModelSpec(model=str(missing)))
    junk = tmp_path / "junk.tflite"
    junk.write_bytes(b"not a flatbuffer" * 10)
    with pytest.raises(ConfigError, match="junk.tflite"):
        TFLiteEmbedder(ModelSpec(model=str(junk)))
    with pytest.raises(ConfigError, match="224"):
        TFLiteEmbedder(_spec("v1", input_size=256))


@pytest.mark.slow  # 20-30 s for both on 2 cores (960 images x 2 models)
@pytest.mark.parametrize("key", list(MODELS))
def test_flowers12_reference_quality(embedders, flowers, key):
    """Reproduces the README's figures: model_input on these 224x224 images is the whole
    image unchanged, so it equals the README's bilinear resize of the whole image."""
    *_, ref_map, ref_p1 = MODELS[key]
    x, labels = flowers
    e = embedders[key]
    feats = l2_normalize(np.concatenate([e(x[i:i + 64]) for i in range(0, len(x), 64)]))
    m, p1 = retrieval_map(feats, labels), precision_at_1(feats, labels)
    assert abs(m - ref_map) <= 0.02, (m, ref_map)
    assert abs(p1 - ref_p1) <= 0.02, (p1, ref_p1)


# ---------------------------------------------------------------- synthetic models

@pytest.fixture(scope="module")
def synthetic(tmp_path_factory):
    """A float model with a dynamic batch and its int8 (fully quantized) twin:
    relu(conv3x3(x)) on 16x16 inputs in [-1, 1], 6 channels."""
    tf = pytest.importorskip("tensorflow")
    rng = np.random.default_rng(0)
    w = tf.constant(rng.normal(size=(3, 3, 3, 6)).astype(np.float32) * 0.3)

    @tf.function(input_signature=[tf.TensorSpec([None, 16, 16, 3], tf.float32)])
    def f(x):
        return tf.nn.relu(tf.nn.conv2d(x, w, 1, "SAME"))

    def rep():
        for _ in range(32):
            yield [rng.uniform(-1, 1, (1, 16, 16, 3)).astype(np.float32)]

    out = tmp_path_factory.mktemp("tflite")
    paths = {}
    for kind in ("float", "int8"):
        conv = tf.lite.TFLiteConverter.from_concrete_functions([f.get_concrete_function()], f)
        if kind == "int8":
            conv.optimizations = [tf.lite.Optimize.DEFAULT]
            conv.representative_dataset = rep
            conv.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
            conv.inference_input_type = conv.inference_output_type = tf.int8
        paths[kind] = out / f"{kind}.tflite"
        with warnings.catch_warnings():  # "Statistics for quantized inputs were expected"
            warnings.simplefilter("ignore")
            paths[kind].write_bytes(conv.convert())
    return paths, lambda x: f(tf.constant(x)).numpy()


def test_float_model_dynamic_batch_and_preprocessing(synthetic):
    from workflow.models.tflite import TFLiteEmbedder
    paths, f = synthetic
    x = np.random.default_rng(1).integers(0, 256, (5, 16, 16, 3), dtype=np.uint8)
    for pooling, pool in (("avg", np.mean), ("max", np.max)):
        e = TFLiteEmbedder(ModelSpec(model=str(paths["float"]), preprocessing="tf",
                                     pooling=pooling))
        assert e.input_size == 16 and e.dim == 6 and e.info["preprocessing"] == "tf"
        want = pool(f(apply_preprocessing(x, "tf")), axis=(1, 2))
        for n in (5, 2, 5):  # the batch dimension is resized as needed
            assert np.allclose(e(x[:n]), want[:n], atol=1e-4)
    with pytest.raises(ConfigError, match="preprocessing"):
        TFLiteEmbedder(ModelSpec(model=str(paths["float"]), preprocessing="bogus"))


def test_int8_model_matches_float_model(synthetic):
    """int8 input: pixels - 128 with the input's (scale, zero_point) ~ the float model fed
    x / 127.5 - 1; the int8 output is dequantised with its own parameters."""
    from workflow.models.tflite import TFLiteEmbedder
    paths, _ = synthetic
    x = np.random.default_rng(2).integers(0, 256, (4, 16, 16, 3), dtype=np.uint8)
    e8 = TFLiteEmbedder(ModelSpec(model=str(paths["int8"])))
    ef = TFLiteEmbedder(ModelSpec(model=str(paths["float"]), preprocessing="tf"))
    assert e8.info["preprocessing"] == "uint8"
    y8, yf = e8(x), ef(x)
    scale = e8.interpreter.get_output_details()[0]["quantization"][0]
    assert np.abs(y8 - yf).max() < 4 * scale, (np.abs(y8 - yf).max(), scale)


# ---------------------------------------------------------------- metrics

def _on_circle(degrees, radii=None):
    a = np.deg2rad(np.asarray(degrees, float))
    r = np.ones_like(a) if radii is None else np.asarray(radii, float)
    return np.stack([r * np.cos(a), r * np.sin(a)], axis=1)


def test_metrics_two_classes_by_hand():
    # points at 0, 10, 25, 90 degrees (lengths vary: cosine ignores them), classes a a b b.
    # query 0:  10(a) 25 90        -> AP 1,   top-1 right
    # query 10: 0(a) 25 90         -> AP 1,   right
    # query 25: 10 0 90(b)         -> AP 1/3, wrong
    # query 90: 25(b) 10 0         -> AP 1,   right
    x = _on_circle([0, 10, 25, 90], radii=[1, 3, 0.5, 7])
    labels = np.array(["a", "a", "b", "b"])
    assert retrieval_map(x, labels) == pytest.approx((1 + 1 + 1 / 3 + 1) / 4)
    assert precision_at_1(x, labels) == pytest.approx(3 / 4)


def test_metrics_several_relevant_and_a_query_without_any():
    # classes 0 0 1 0 at 0, 10, 25, 90 degrees
    # query 0:  10(r) 25 90(r)    -> AP (1 + 2/3) / 2
    # query 10: 0(r) 25 90(r)     -> AP (1 + 2/3) / 2
    # query 25: no other item of class 1: left out of the mAP, top-1 wrong
    # query 90: 25 10(r) 0(r)     -> AP (1/2 + 2/3) / 2,  top-1 wrong
    x = _on_circle([0, 10, 25, 90])
    labels = np.array([0, 0, 1, 0])
    assert retrieval_map(x, labels) == pytest.approx((5 / 6 + 5 / 6 + 7 / 12) / 3)
    assert precision_at_1(x, labels) == pytest.approx(2 / 4)


def test_l2_normalize():
    x = l2_normalize(np.array([[3.0, 4.0], [0.0, 0.0]]))
    assert x.dtype == np.float32 and np.allclose(x, [[0.6, 0.8], [0, 0]])
