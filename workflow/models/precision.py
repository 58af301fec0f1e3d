"""Reduced precision for the CPU runtime (OpenVINO): what a precision must pass, and
what INT8 is calibrated on.

`check_fidelity` compares a reduced precision's features with float32's on held-out
images of the store: the mean cosine of each image's feature to its float32 one, and the
share of each image's 10 nearest neighbours among the held-out images that float32 finds
too; a precision passes at MIN_MEAN_COSINE and MIN_OVERLAP. `int8_file` quantizes the
converted model with NNCF's post-training quantization on a seeded sample of the store's
own images (`store_sample`) and caches it beside the converted model, with a JSON
recording what it was calibrated on, written whole or not at all.

The thresholds. Top-10 overlap 0.95: on average one in 20 of the images' 10 nearest
neighbours is swapped (half a neighbour per image), and the swapped ones are near-ties
(features moved by a mean cosine >= 0.999, an angle under 2.6 degrees). Storing float32
features in float16, as every feature shard does, already gives 0.991-0.997 on real
photos (`bench/bench_precision.py`): 0.3-0.9% swapped, where the check allows 5%.
Mean cosine 0.999: ten times looser than the float32 conversion's check against Keras
(0.9999, which stays as it was), far above what a broken quantization gives (cosine 0
for EfficientNet-B0 with its elementwise products quantized); the reduced precisions
measured 0.9995-0.99999. Both are measured on at least MIN_HELD_OUT images: among
fewer, each image's 10 nearest are most of the others, and the overlap says little.
Random-weight models (all that could be measured here) give pessimistic overlaps: their
features of different photos are nearly parallel, so small changes reorder them more.
"""
from __future__ import annotations

import contextlib
import hashlib
import io
import json
import logging
import os
import shutil
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import ConfigError
from ..utils import Timeit, retry_io
from .quiet import native_stderr_filtered
from .registry import apply_preprocessing

logger = logging.getLogger(__name__)

PRECISIONS = ("auto", "f32", "bf16", "int8")
REDUCED = ("bf16", "int8")
# The fidelity check of a reduced precision against float32, on held-out images of the
# store (README.md, "Reduced precision", has the reasoning): the mean cosine of each
# image's feature to its float32 feature, and the share of each image's 10 nearest
# neighbours among the held-out images that float32 finds too.
MIN_MEAN_COSINE = 0.999
MIN_OVERLAP = 0.95
NEIGHBOURS = 10
CALIBRATION = 300  # images NNCF calibrates INT8 on
HELD_OUT = 300  # images the fidelity check runs on (none of them calibrated on)
MIN_HELD_OUT = 100  # fewer held-out images than this say too little to judge a precision by
SAMPLE_SEED = 0
# Left in float by INT8: elementwise products (EfficientNet's swish activations and
# squeeze-excitation gates). Quantized, they zeroed EfficientNet-B0's features (cosine 0
# to float32 on real photos, random weights); left in float, cosine 0.9995.
FLOAT_OPS = ("Multiply",)
MIN_SPEEDUP = 1.05  # auto keeps float32 unless a reduced precision is this much faster


def bf16_supported() -> bool:
    """Whether OpenVINO computes bfloat16 natively on this CPU (AVX512_BF16 or AMX)."""
    import openvino as ov
    return "BF16" in ov.Core().get_property("CPU", "OPTIMIZATION_CAPABILITIES")


def nncf_installed() -> bool:
    try:
        import nncf  # noqa: F401
    except ImportError:
        return False
    return True


@dataclass
class ImageSample:
    """Model input (uint8 [n, S, S, 3]) drawn from a store: `calibration` for INT8,
    `held_out` for the fidelity check (no image in both), and `key`, what identifies the
    draw (the store's corpus, a digest of the ids, seed and sizes)."""
    calibration: np.ndarray
    held_out: np.ndarray
    key: dict


Sampler = Callable[[int], "ImageSample | None"]  # input size -> sample, drawn when needed
KEY = ("corpus", "ids_sha256", "seed", "size", "ids")  # what identifies a calibration sample


def remove_orphans(path: Path) -> None:
    """Delete what conversions and calibrations killed midway left (their process is
    gone): `.NAME.PID.THREAD.tmp` files and `.NAME.PID.THREAD.tmpdir` folders."""
    for tmp in [*path.parent.glob(".*.tmp"), *path.parent.glob(".*.tmpdir")]:
        try:
            os.kill(int(tmp.name.split(".")[-3]), 0)
        except (ValueError, ProcessLookupError):
            if tmp.is_dir():
                shutil.rmtree(tmp, ignore_errors=True)
            else:
                tmp.unlink(missing_ok=True)
        except PermissionError:  # alive, another user's
            pass


def batched(embedder, images: np.ndarray, bs: int = 32) -> np.ndarray:
    """Features of `images`, `bs` at a time."""
    return np.concatenate([embedder(images[i:i + bs]) for i in range(0, len(images), bs)])


def check_fidelity(ref: np.ndarray, got: np.ndarray, k: int = NEIGHBOURS) -> dict:
    """How close features `got` are to the float32 features `ref` of the same images:
    the mean cosine, and the mean share of each image's `k` nearest neighbours among
    the others (by cosine) that are also its float32 neighbours. `passed` against
    MIN_MEAN_COSINE and MIN_OVERLAP; `why`, a phrase naming what failed (or the figures)."""
    a = ref / np.maximum(np.linalg.norm(ref, axis=1, keepdims=True), 1e-30)
    b = got / np.maximum(np.linalg.norm(got, axis=1, keepdims=True), 1e-30)
    cosine = float(np.mean(np.sum(a * b, axis=1)))
    k = min(k, len(a) - 1)

    def neighbours(x):
        sim = x.astype(np.float64) @ x.T.astype(np.float64)
        np.fill_diagonal(sim, -np.inf)
        return np.argpartition(-sim, k - 1, axis=1)[:, :k]
    na, nb = neighbours(a), neighbours(b)
    overlap = float(np.mean([len(set(x) & set(y)) / k for x, y in zip(na.tolist(),
                                                                       nb.tolist())]))
    fails = ([f"mean cosine {cosine:.5f} < {MIN_MEAN_COSINE}"] if cosine < MIN_MEAN_COSINE
             else []) + ([f"top-{k} overlap {overlap:.3f} < {MIN_OVERLAP}"]
                         if overlap < MIN_OVERLAP else [])
    why = "; ".join(fails) or f"mean cosine {cosine:.5f}, top-{k} overlap {overlap:.3f}"
    return {"cosine": round(cosine, 6), "overlap": round(overlap, 4), "k": k,
            "images": len(a), "passed": not fails, "why": why}


def calibration_only(sampler: Sampler) -> Sampler:
    """`sampler`'s draws without their held-out images: an INT8 model missing from this
    machine's cache is calibrated on the same images as the store's, and the fidelity
    check, which the store's extract ran, is not run again (the query side)."""
    def sample(size: int):
        s = draw(sampler, size)
        return None if s is None else ImageSample(s.calibration, s.held_out[:0], s.key)
    return sample


def draw(sample, input_size: int) -> ImageSample | None:
    """The sample itself, where `sample` is a function drawing one."""
    return sample(input_size) if callable(sample) else sample


def int8_file(embedder, tflite: Path, sample, calibration: dict | None = None
              ) -> tuple[Path, dict]:
    """The INT8 model (OpenVINO IR) of the converted model `tflite`, calibrated by NNCF on
    the sample's calibration images: cached beside it under a key of what it was
    calibrated on, with a JSON recording that (written last: a model without its JSON
    is not used), written whole or not at all. Returns (the .xml, the record)."""
    import openvino as ov
    try:
        import nncf
    except ImportError as e:
        raise ConfigError("--precision int8 needs NNCF, which is not installed: pip install "
                          "nncf (or use --precision f32, bf16 or auto)") from e

    def cached(key: dict):
        record = {"model": embedder.info["model"], "converted": tflite.name,
                  **{k: key[k] for k in KEY}, "float_ops": list(FLOAT_OPS),
                  "nncf": nncf.__version__,
                  "openvino": ov.__version__}
        stem = hashlib.sha256(json.dumps(record, sort_keys=True).encode()).hexdigest()[:16]
        xml = tflite.with_name(f"{tflite.stem}-int8-{stem}.xml")
        done = xml.with_suffix(".json").exists() and xml.with_suffix(".bin").exists()
        return record, xml, done
    if calibration is not None:
        record, xml, done = cached(calibration)
        if done and xml.exists():
            return xml, json.loads(xml.with_suffix(".json").read_text())
    sample = draw(sample, embedder.input_size)
    if sample is None or not len(sample.calibration):
        raise ConfigError("--precision int8 needs calibration images from the store (the "
                          "extract stage draws them); none were given")
    record, xml, done = cached(sample.key)
    if done and xml.exists():
        return xml, json.loads(xml.with_suffix(".json").read_text())
    remove_orphans(xml)
    s = embedder.input_size
    model = ov.Core().read_model(str(tflite))
    model.reshape([1, s, s, 3])
    x = np.ascontiguousarray(apply_preprocessing(sample.calibration,
                                                 embedder.preprocessing), np.float32)
    t = time.monotonic()
    nncf.set_log_level(logging.DEBUG if logger.isEnabledFor(logging.DEBUG) else logging.ERROR)
    printed = io.StringIO()  # NNCF's progress bars
    with native_stderr_filtered(show_all=logger.isEnabledFor(logging.DEBUG)), \
            contextlib.redirect_stdout(printed), contextlib.redirect_stderr(printed):
        quantized = nncf.quantize(model, nncf.Dataset([x[i:i + 1] for i in range(len(x))]),
                                  subset_size=len(x), fast_bias_correction=True,
                                  ignored_scope=nncf.IgnoredScope(types=list(FLOAT_OPS),
                                                                validate=False))
    record["seconds"] = round(time.monotonic() - t, 1)
    record["created"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    _save_whole(quantized, xml, record)
    logger.info("calibrated %s in INT8 on %d images of the store (%.0f s): %s",
                embedder.info["model"], len(x), record["seconds"], xml)
    return xml, record


def _save_whole(model, xml: Path, record: dict) -> None:
    """Save an OpenVINO model at `xml` (and .bin) with its record (.json, last: a model
    without its record is not read), whole or not at all."""
    import openvino as ov
    tmp = xml.with_name(f".{xml.stem}.{os.getpid()}.{threading.get_ident()}.tmpdir")
    tmp.mkdir()
    try:
        ov.save_model(model, str(tmp / "model.xml"), compress_to_fp16=False)
        (tmp / "model.json").write_text(json.dumps(record, indent=1, sort_keys=True) + "\n")
        os.replace(tmp / "model.bin", xml.with_suffix(".bin"))
        os.replace(tmp / "model.xml", xml)
        os.replace(tmp / "model.json", xml.with_suffix(".json"))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


@contextlib.contextmanager
def quieter(*names: str):
    """The named Python loggers at WARNING for the block ("Assets written to ...")."""
    loggers = [logging.getLogger(n) for n in names]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(max(lg.getEffectiveLevel(), logging.WARNING))
    try:
        yield
    finally:
        for lg, level in zip(loggers, levels):
            lg.setLevel(level)


def store_sample(store, input_size: int, skip=(), ids: list[int] | None = None,
                 seed: int = SAMPLE_SEED, calibration: int = CALIBRATION,
                 held_out: int = HELD_OUT, max_shards: int = 16) -> ImageSample | None:
    """A seeded sample of the store's preprocessed images as model input: `calibration`
    images to calibrate INT8 on and `held_out` others for the fidelity check (split in
    that proportion where the store has fewer), from at most `max_shards` image shards
    (seeded). With `ids` (those a calibration recorded): those images, in that order, as
    the calibration images. None where the store has no image."""
    from ..formats.images import read_outcomes, read_stored_jpegs
    from ..formats.layout import PREPROCESS, is_shard
    from ..inputs.imaging import Status, model_input
    markers = {u: m for u, m in store.markers(PREPROCESS).items() if is_shard(u)}
    units = sorted(markers)
    rng = np.random.default_rng(seed)
    if ids is None and len(units) > max_shards:
        units = sorted(rng.choice(units, max_shards, replace=False).tolist())
    pool = []  # (id, shard, row)
    for u in units:
        rel = markers[u].path
        sid, status, _, _ = retry_io(lambda rel=rel: read_outcomes(store, rel), f"read {rel}")
        ok = (status == Status.OK) & ~np.isin(sid, list(skip))
        pool += [(int(sid[r]), u, int(r)) for r in np.flatnonzero(ok)]
    if ids is not None:
        where = {x[0]: x for x in pool}
        chosen, n_cal = [where[i] for i in ids if i in where], len(ids)
    else:
        n = min(len(pool), calibration + held_out)
        chosen = [pool[i] for i in rng.choice(len(pool), n, replace=False)] if n else []
        n_cal = n * calibration // max(calibration + held_out, 1)
    if not chosen:
        return None
    images = {}
    for u in sorted({x[1] for x in chosen}):
        rows = [x for x in chosen if x[1] == u]
        rel, offsets = markers[u].path, [x[2] for x in rows]
        jpegs = retry_io(lambda rel=rel, offsets=offsets: read_stored_jpegs(store, rel, offsets),
                         f"read {rel}")
        for x, jpeg in zip(rows, jpegs):
            images[x[0]] = model_input(jpeg, input_size)
    x = np.stack([images[c[0]] for c in chosen])
    cal_ids = [c[0] for c in chosen[:n_cal]]
    key = {"corpus": store.run_info()["stages"][PREPROCESS]["fingerprint"],
           "ids_sha256": hashlib.sha256(np.asarray(cal_ids, np.int64).tobytes()
                                        ).hexdigest()[:16],
           "seed": seed, "size": len(cal_ids), "ids": cal_ids}
    return ImageSample(x[:n_cal], x[n_cal:], key)


def store_sampler(store, calibration: dict | None = None, skip=()):
    """A function drawing (once per input size) the store's sample of images: with a
    recorded `calibration`, the images it was calibrated on."""
    drawn: dict = {}

    def sample(size: int):
        if size not in drawn:
            with Timeit("drawing images of the store to calibrate and check on",
                        logging.INFO):
                drawn[size] = store_sample(store, size, skip, ids=(
                    calibration or {}).get("ids"))
        return drawn[size]
    return sample
