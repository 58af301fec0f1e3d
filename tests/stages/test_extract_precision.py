"""The extract stage in a reduced precision: recorded in run.json and every feature shard,
never mixed in a store unless accepted, `auto` keeping a store's precision, and the query
side embedding in the store's precision (INT8: the model calibrated for the store)."""
from __future__ import annotations

import json
import logging
import shutil

import numpy as np
import pytest

from workflow.errors import ConfigError
from workflow.formats.features import read_feature_shard
from workflow.models import converted, precision
from workflow.search.query import QueryEmbedder
from workflow.stages.extract import ExtractConfig, run
from workflow.stages.preprocess import PreprocessConfig
from workflow.stages.preprocess import run as preprocess
from workflow.storage.frozen import PrecisionMismatch
from workflow.storage.store import Store

from conftest import tiny_keras_model, write_corpus

BF16 = pytest.mark.skipif(not converted.openvino_installed() or not precision.bf16_supported(),
                          reason="no OpenVINO or no bfloat16 on this CPU")
NNCF = pytest.mark.skipif(not precision.nncf_installed(), reason="nncf is not installed")


def _preprocessed(tmp_path, n=14, shard_size=6):
    src = tmp_path / "src"
    write_corpus(src, n, size=(120, 90))
    store = tmp_path / "store"
    preprocess(PreprocessConfig(store=str(store), sources=(str(src),), workers=1,
                                shard_size=shard_size, progress=False,
                                scratch=str(tmp_path / "s")))
    return store


@pytest.fixture
def store(tmp_path, monkeypatch):
    monkeypatch.setattr(precision, "MIN_HELD_OUT", 4)  # a test store has a few images
    return _preprocessed(tmp_path, n=14, shard_size=6)


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    return tiny_keras_model(tmp_path_factory.mktemp("model") / "tiny.keras")


def _cfg(store, model, **kw):
    return ExtractConfig(store=str(store), model=model, input_size=32, preprocessing="unit",
                         batch_size=4, workers=1, progress=False, runtime="openvino", **kw)


def _precisions(store) -> list[str]:
    out = []
    for p in sorted((store / "features").glob("*.h5")):
        out.append(json.loads(read_feature_shard(str(p))[2]["model_info"])["precision"])
    return out


def _forget_last_shard(store) -> None:
    """As if the run was killed before its last shard was committed."""
    last = sorted((store / "features").glob("*.h5"))[-1]
    (store / "_done" / "extract" / f"{last.stem}.json").unlink()
    last.unlink()


def _record(store) -> dict:
    return Store(store).run_info()["stages"]["extract"]


@BF16
def test_the_precision_is_recorded_and_a_store_never_mixes_them_unaccepted(store, model):
    assert run(_cfg(store, model, precision="bf16")).complete
    assert _precisions(store) == ["bf16"] * 3
    assert _record(store)["precision"] == "bf16"
    _forget_last_shard(store)
    with pytest.raises(PrecisionMismatch, match=r"(?s)computed in bf16; this run computes in "
                       r"f32.*--precision bf16 \(or auto.*--accept-mixed-precision") as e:
        run(_cfg(store, model, precision="f32"))
    assert str(store) in str(e.value)
    assert run(_cfg(store, model)).complete  # auto: the store's precision
    assert _precisions(store) == ["bf16"] * 3
    _forget_last_shard(store)
    assert run(_cfg(store, model, precision="f32", accept_mixed_precision=True)).complete
    assert _precisions(store) == ["bf16", "bf16", "f32"]
    record = _record(store)
    assert record["precision"] == "f32"
    assert [(a["from"], a["to"]) for a in record["precision_accepted"]] == [("bf16", "f32")]
    # complete: another precision passes over it without complaint
    assert run(_cfg(store, model, precision="bf16")).complete


@BF16
def test_auto_on_a_new_store_measures_and_queries_use_the_stores_precision(store, model,
                                                                          monkeypatch, caplog):
    monkeypatch.setattr(converted, "nncf_installed", lambda: False)
    monkeypatch.setattr(converted, "_rate", lambda e, b: {"f32": 100, "bf16": 180}[e.precision])
    assert run(_cfg(store, model)).complete
    assert _precisions(store) == ["bf16"] * 3 and _record(store)["precision"] == "bf16"
    info = json.loads(read_feature_shard(str(sorted((store / "features").glob("*.h5"))[0])
                                         )[2]["model_info"])
    assert info["auto"].startswith("precision auto: bf16, 1.80x float32's rate")
    assert info["fidelity"]["passed"]
    with monkeypatch.context() as m:
        m.setattr(converted, "check_fidelity", lambda *a: pytest.fail("checked again"))
        q = QueryEmbedder(Store(store))
    assert q.embedder.info["precision"] == "bf16"  # the store's extract checked it
    ids, feats, _ = read_feature_shard(str(sorted((store / "features").glob("*.h5"))[0]))
    jpeg = next((store.parent / "src").rglob("*.jpg"))  # some image of the corpus
    assert q.embed([str(jpeg)]).shape == (1, feats.shape[1])
    # a machine without bfloat16: queries in float32, with a warning
    real = converted._openvino

    def no_bf16(path, size, precision="f32"):
        if precision == "bf16":
            raise ConfigError("--precision bf16: this CPU has no bfloat16 instructions")
        return real(path, size, precision)
    monkeypatch.setattr(converted, "_openvino", no_bf16)
    with caplog.at_level(logging.WARNING, logger="workflow.search.query"):
        assert QueryEmbedder(Store(store)).embedder.info["precision"] == "f32"
    assert "are in bf16, which this machine cannot compute" in caplog.text


@NNCF
@pytest.mark.skipif(not converted.openvino_installed(), reason="openvino is not installed")
def test_an_int8_store_is_calibrated_on_its_images_and_queried_with_that_model(
        store, model, monkeypatch, tmp_path):
    monkeypatch.setattr(precision, "MIN_OVERLAP", 0.0)  # a random tiny model
    monkeypatch.setattr(precision, "MIN_MEAN_COSINE", 0.0)
    assert run(_cfg(store, model, precision="int8")).complete
    record = _record(store)
    assert record["precision"] == "int8" and _precisions(store) == ["int8"] * 3
    calibration = record["calibration"]
    assert calibration["size"] == len(calibration["ids"]) > 0
    assert calibration["corpus"] == Store(store).run_info()["stages"]["preprocess"][
        "fingerprint"]
    import nncf
    monkeypatch.setattr(nncf, "quantize", lambda *a, **k: pytest.fail("calibrated again"))
    with monkeypatch.context() as m:
        m.setattr(converted, "check_fidelity", lambda *a: pytest.fail("checked again"))
        q = QueryEmbedder(Store(store))
    assert q.embedder.info["precision"] == "int8"
    assert q.embedder.info["calibration"] == calibration
    # the stored features are the query side's features of the same images
    _forget_last_shard(store)
    shutil.rmtree(tmp_path / "s", ignore_errors=True)
    assert run(_cfg(store, model)).complete  # resumed (auto: int8, the same model)
    assert _precisions(store) == ["int8"] * 3
    _forget_last_shard(store)
    assert run(_cfg(store, model, precision="int8")).complete  # asked for: the same model
    assert _record(store)["calibration"] == calibration
    assert np.isfinite(q.embed([str(next((store.parent / "src").rglob("*.jpg")))])).all()
