"""Reduced precision on the CPU runtime (OpenVINO): the fidelity check against float32,
bf16 and INT8 (NNCF, calibrated on the store's images and cached) on a tiny model, and
`auto` picking the fastest precision that passes, with one line saying why."""
from __future__ import annotations

import json
import logging
import sys

import numpy as np
import pytest

from workflow.errors import ConfigError
from workflow.models import converted, precision
from workflow.models.loading import make_embedder
from workflow.models.registry import ModelSpec

from conftest import tiny_keras_model

OPENVINO = pytest.mark.skipif(not converted.openvino_installed(),
                              reason="openvino is not installed")
BF16 = pytest.mark.skipif(not converted.openvino_installed() or not precision.bf16_supported(),
                          reason="no OpenVINO or no bfloat16 on this CPU")
NNCF = pytest.mark.skipif(not precision.nncf_installed(), reason="nncf is not installed")


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    path = tiny_keras_model(tmp_path_factory.mktemp("tiny") / "tiny.keras")
    return make_embedder(ModelSpec(path, "imagenet", 32, "avg", "unit"), "off",
                         runtime="keras")


def sample_of(n_cal=24, n_held=24, seed=1):
    """Smooth images (noise blurred by upsampling), a calibration and a held-out set."""
    rng = np.random.default_rng(seed)
    small = rng.integers(0, 256, (n_cal + n_held, 4, 4, 3)).astype(np.uint8)
    x = np.repeat(np.repeat(small, 8, axis=1), 8, axis=2)
    ids = list(range(n_cal))
    return precision.ImageSample(x[:n_cal], x[n_cal:], {
        "corpus": "test", "ids_sha256": str(seed), "seed": seed, "size": n_cal, "ids": ids})


def test_the_fidelity_check_measures_cosine_and_neighbours():
    rng = np.random.default_rng(0)
    ref = rng.normal(size=(200, 16)).astype(np.float32)
    same = precision.check_fidelity(ref, ref * 2)  # scale does not matter
    assert same["cosine"] == pytest.approx(1) and same["overlap"] == 1 and same["passed"]
    assert same["k"] == 10 and same["images"] == 200
    noisy = precision.check_fidelity(ref, ref + rng.normal(scale=0.3, size=ref.shape))
    assert not noisy["passed"] and 0 < noisy["overlap"] < precision.MIN_OVERLAP
    assert "top-10 overlap" in noisy["why"] and "mean cosine" in noisy["why"]
    assert precision.check_fidelity(ref[:5], ref[:5])["k"] == 4  # fewer images than 11


@BF16
def test_bf16_runs_checked_against_float32(tiny, monkeypatch):
    monkeypatch.setattr(precision, "MIN_HELD_OUT", 10)
    e = converted.ConvertedEmbedder(tiny, "openvino", "bf16", sample_of())
    assert e.info["precision"] == "bf16" and e.info["runtime"] == "openvino"
    assert e.info["fidelity"]["images"] == 24 and e.info["fidelity"]["cosine"] > 0.99
    x = sample_of().held_out
    assert e(x).shape == (24, tiny.dim) and e(x).dtype == np.float32
    monkeypatch.setattr(precision, "MIN_MEAN_COSINE", 1.01)  # nothing passes this
    with pytest.raises(ConfigError, match=r"bf16: mean cosine .* use --precision f32"):
        converted.ConvertedEmbedder(tiny, "openvino", "bf16", sample_of())


def test_a_reduced_precision_needs_openvino(tiny):
    with pytest.raises(ConfigError, match="needs the OpenVINO runtime"):
        converted.ConvertedEmbedder(tiny, "tflite", "bf16")
    with pytest.raises(ConfigError, match="--precision fp8: one of auto, f32, bf16, int8"):
        make_embedder(tiny.spec, "off", runtime="keras", precision="fp8")
    with pytest.raises(ConfigError, match="runs on OpenVINO on a CPU"):
        make_embedder(tiny.spec, "off", runtime="keras", precision="int8")


@OPENVINO
def test_int8_without_nncf_names_the_remedy(tiny, monkeypatch):
    monkeypatch.setitem(sys.modules, "nncf", None)  # as if not installed
    with pytest.raises(ConfigError, match="pip install nncf"):
        converted.ConvertedEmbedder(tiny, "openvino", "int8", sample_of())


@OPENVINO
@NNCF
def test_int8_is_calibrated_on_the_sample_and_cached_with_what_it_was(tiny, monkeypatch):
    monkeypatch.setattr(precision, "MIN_HELD_OUT", 10)
    monkeypatch.setattr(precision, "MIN_OVERLAP", 0.0)  # a random tiny model: judged below
    sample = sample_of(seed=7)
    e = converted.ConvertedEmbedder(tiny, "openvino", "int8", sample)
    record = e.info["calibration"]
    assert record["ids"] == sample.key["ids"] and record["size"] == 24
    assert record["corpus"] == "test" and record["nncf"] and record["openvino"]
    [meta] = [p for p in converted.cache_dir().glob("*-int8-*.json")
              if json.loads(p.read_text()) == record]
    xml = meta.with_suffix(".xml")
    assert xml.exists() and xml.name.startswith(converted.converted_file(tiny).stem)
    assert xml.with_suffix(".bin").stat().st_size > 0
    assert not list(converted.cache_dir().glob(".*.tmpdir"))  # nothing half-written left
    assert e.info["fidelity"]["cosine"] > 0.9  # int8 of a random model: close, not exact
    # loaded again by its record (the query side): the cached model, no images drawn
    import nncf
    monkeypatch.setattr(nncf, "quantize", lambda *a, **k: pytest.fail("calibrated again"))
    again = converted.ConvertedEmbedder(tiny, "openvino", "int8", None, calibration=record)
    assert again.info["calibration"] == record
    assert np.array_equal(again(sample.held_out), e(sample.held_out))


class _Rates:
    """Images/s per precision, in place of timing (which is noisy on a shared machine)."""
    def __init__(self, **rates):
        self.rates = rates

    def __call__(self, embedder, batch):
        return self.rates[embedder.precision]


@BF16
@NNCF
def test_auto_picks_the_fastest_that_passes_and_says_why_not_the_others(tiny, monkeypatch,
                                                                        caplog):
    monkeypatch.setattr(precision, "MIN_HELD_OUT", 10)
    monkeypatch.setattr(converted, "_rate", _Rates(f32=100, bf16=170, int8=200))
    # int8 fails the check here (bf16 passes it: its cosine is above 0.99999 here)
    monkeypatch.setattr(precision, "MIN_MEAN_COSINE", 0.99999)
    monkeypatch.setattr(precision, "MIN_OVERLAP", 0.0)
    with caplog.at_level(logging.INFO, logger="workflow.models.converted"):
        e = converted.choose_precision(tiny, "openvino", sample_of(seed=7))
    lines = [r.getMessage() for r in caplog.records if "precision auto" in r.getMessage()]
    assert e.precision == "bf16" and len(lines) == 1
    assert lines[0].startswith("precision auto: bf16, 1.70x float32's rate")
    assert "int8 not used: mean cosine" in lines[0] and e.info["auto"] == lines[0]
    # both pass: the faster (int8); a reduced one barely faster than float32: float32
    monkeypatch.setattr(precision, "MIN_MEAN_COSINE", 0.0)
    assert converted.choose_precision(tiny, "openvino", sample_of(seed=7)).precision == "int8"
    monkeypatch.setattr(converted, "_rate", _Rates(f32=100, bf16=103, int8=90))
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="workflow.models.converted"):
        assert converted.choose_precision(tiny, "openvino", sample_of(seed=7)).precision \
            == "f32"
    assert "bf16 not used: 1.03x float32's rate" in caplog.text


@OPENVINO
def test_auto_falls_back_to_float32_with_the_reason(tiny, monkeypatch, caplog):
    monkeypatch.setattr(converted, "bf16_supported", lambda: False)
    monkeypatch.setattr(converted, "nncf_installed", lambda: False)
    monkeypatch.setattr(precision, "MIN_HELD_OUT", 10)
    with caplog.at_level(logging.INFO, logger="workflow.models.converted"):
        e = converted.choose_precision(tiny, "openvino", sample_of())
        assert e.precision == "f32"
        assert converted.choose_precision(tiny, "openvino", sample_of(4, 4)).precision == "f32"
        assert converted.choose_precision(tiny, "tflite", sample_of()).precision == "f32"
    lines = [r.getMessage() for r in caplog.records if "precision auto" in r.getMessage()]
    assert lines[0] == ("precision auto: f32; bf16 not used: this CPU has no bfloat16 "
                        "instructions; int8 not used: NNCF is not installed (pip install nncf)")
    assert "4 held-out images" in lines[1] and "fewer than the 10" in lines[1]
    assert "this is tflite" in lines[2]
