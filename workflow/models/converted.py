"""A Keras model run by an optimised CPU runtime, where no GPU is present.

Keras on a CPU runs the model op by op through TensorFlow. The same model converted to
TFLite and run by its XNNPACK kernels, or compiled by OpenVINO, computes the same
features (cosine >= 0.9999 to Keras's, checked at every load) several times faster on
two cores (BENCHMARKS.md, "Extract: the CPU runtimes"). The conversion (seconds) is done
once per model and weights and cached under `~/.cache/image-index-workflow/converted/`
(or `$XDG_CACHE_HOME/...`), shared by every store and by the query side, and written
whole or not at all: a killed conversion leaves nothing a later load would read.

Runtimes (`--runtime`): `auto` (the default) is `openvino` where the `openvino` package is
installed, else `tflite`, for a Keras model on the TensorFlow backend without a GPU,
mixed precision or XLA; `keras` everywhere else. `keras` keeps today's path (and its
byte-identical features); `tflite` and `openvino` ask for one.

Precisions (`--precision`, OpenVINO only): `f32` holds OpenVINO to float32 (it would pick
bfloat16 on CPUs that have it); `bf16` computes in bfloat16 (CPUs with AVX512_BF16 or
AMX); `int8` runs a model quantized by NNCF's post-training quantization, calibrated on a
seeded sample of the store's own images and cached beside the converted model with a
JSON saying what it was calibrated on. A reduced precision is used only where it passes
the fidelity check against float32 on held-out images of the store (`check_fidelity`):
mean cosine >= MIN_MEAN_COSINE and top-10 neighbours shared >= MIN_OVERLAP. `auto` picks,
per CPU and model, the fastest precision that passes (`choose_precision`), and says in
one line what it picked and why the others were not.
"""
from __future__ import annotations

import contextlib
import hashlib
import io
import logging
import os
import threading
import time
from pathlib import Path

import numpy as np

from ..errors import ConfigError
from ..utils import Timeit, cpu_threads, user_cache_dir
from . import precision as prec
from .precision import (
    MIN_SPEEDUP,
    PRECISIONS,
    REDUCED,
    ImageSample,
    Sampler,
    batched,
    bf16_supported,
    check_fidelity,
    draw,
    int8_file,
    nncf_installed,
)
from .precision import quieter as _quieter
from .precision import remove_orphans as _remove_orphans
from .quiet import import_tensorflow, native_stderr_filtered
from .registry import Embedder, apply_preprocessing, global_pool

logger = logging.getLogger(__name__)

RUNTIMES = ("auto", "keras", "tflite", "openvino")
MIN_COSINE = 0.9999  # a converted model further than this from Keras's features is not used
PROBE = 2  # images in the load-time check


def cache_dir() -> Path:
    return user_cache_dir() / "converted"


def openvino_installed() -> bool:
    try:
        import openvino  # noqa: F401
    except ImportError:
        return False
    return True


def choose_runtime(requested: str, keras_embedder) -> str:
    """The runtime `requested` resolves to for this Keras embedder (see the module doc)."""
    if requested not in RUNTIMES:
        raise ConfigError(f"--runtime {requested}: one of {', '.join(RUNTIMES)}")
    if requested != "auto":
        return requested
    info = keras_embedder.info
    if (info["backend"] != "tensorflow" or keras_embedder.on_gpu or info["mixed_precision"]
            or info["xla"] or not keras_embedder.convertible):
        return "keras"
    return "openvino" if openvino_installed() else "tflite"


def converted_file(keras_embedder) -> Path:
    """The cached TFLite file for this model, weights, size and pooling: converted now
    if it is not there yet."""
    tf = import_tensorflow()
    info = keras_embedder.info
    key = hashlib.sha256(repr((info["model"], info["weights_sha256"], info["input_size"],
                               info["pooling"], tf.__version__)).encode()).hexdigest()[:16]
    path = cache_dir() / f"{info['model']}-{key}.tflite"
    if path.exists():
        return path
    path.parent.mkdir(parents=True, exist_ok=True)
    _remove_orphans(path)
    printed = io.StringIO()  # the converter prints the exported signature
    with native_stderr_filtered(show_all=logger.isEnabledFor(logging.DEBUG)), \
            contextlib.redirect_stdout(printed), _quieter("tensorflow", "absl"):
        try:
            data = tf.lite.TFLiteConverter.from_keras_model(keras_embedder.model).convert()
        except Exception as e:  # noqa: BLE001 - the converter raises many kinds
            raise ConfigError(f"{info['model']}: the model could not be converted for a "
                              f"CPU runtime ({type(e).__name__}: {str(e)[:300]}); use "
                              "--runtime keras") from e
    logger.debug("converter output: %s", printed.getvalue()[-2000:])
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{threading.get_ident()}.tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)  # whole or not at all, and safe against a concurrent writer
    logger.info("converted %s for the CPU runtime (%.1f MB): %s", info["model"],
                len(data) / 1e6, path)
    return path


class ConvertedEmbedder(Embedder):
    """A Keras application or .keras model through TFLite/XNNPACK or OpenVINO, in float32
    or (OpenVINO) a reduced `precision`. `sample` (an `ImageSample`, or a function
    drawing one) gives INT8 its calibration images where no calibrated model is cached,
    and the fidelity check its held-out images; without held-out images the reduced
    precision is loaded unchecked (the query side: the store's extract checked it).
    `reference`: an already loaded float32 embedder of the same model to check against
    (else one is loaded for the check, and checked against Keras itself);
    `calibration`: the INT8 calibration a store recorded (its model is looked up first)."""

    def __init__(self, keras_embedder, runtime: str, precision: str = "f32",
                 sample: ImageSample | Sampler | None = None,
                 reference: ConvertedEmbedder | None = None,
                 calibration: dict | None = None):
        if precision not in PRECISIONS[1:]:
            raise ConfigError(f"--precision {precision}: one of {', '.join(PRECISIONS)}")
        if precision != "f32" and runtime != "openvino":
            raise ConfigError(f"--precision {precision} needs the OpenVINO runtime "
                              f"(--runtime openvino), not {runtime}")
        self.keras = keras_embedder
        self.runtime, self.precision = runtime, precision
        self.input_size = keras_embedder.input_size
        self.preprocessing = keras_embedder.preprocessing
        self.spec = keras_embedder.spec
        self._lock = threading.Lock()
        self.dim = keras_embedder.dim
        self.info = {**keras_embedder.info, "runtime": runtime, "precision": precision}
        self._held: tuple[int, np.ndarray] | None = None  # float32 features of held-out images
        self._reference = reference
        with Timeit(f"loading the model into {runtime} ({precision})", logging.DEBUG):
            path = converted_file(keras_embedder)
            if runtime != "openvino":
                self._infer = _tflite(path)
            elif precision == "int8":
                xml, record = int8_file(self, path, sample, calibration)
                self.info["calibration"] = record
                self._infer = _openvino(xml, self.input_size, "f32")
            else:
                self._infer = _openvino(path, self.input_size, precision)
        if precision == "f32":
            self._check()
        else:
            self._check_fidelity(sample)

    def _check(self) -> None:
        """Refuse a conversion whose features are not Keras's (on seeded noise images)."""
        s = self.input_size
        x = np.random.default_rng(0).integers(0, 256, (PROBE, s, s, 3), dtype=np.uint8)
        a, b = self.keras(x), self(x)
        cos = np.sum(a * b, axis=1) / np.maximum(
            np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1), 1e-30)
        if not np.all(cos >= MIN_COSINE):
            raise ConfigError(f"{self.info['model']} through {self.runtime}: features at "
                              f"cosine {float(cos.min()):.6f} to Keras's (at least "
                              f"{MIN_COSINE} is required); use --runtime keras")

    def float32_features(self, images: np.ndarray) -> np.ndarray:
        """This model's float32 features of `images` (the last held-out set is kept)."""
        if self._held is None or self._held[0] != id(images):
            self._held = (id(images), batched(self, images))
        return self._held[1]

    def _check_fidelity(self, sample) -> None:
        """Refuse a reduced precision whose features stray from float32's on the held-out
        images (`check_fidelity`); skipped where there are none."""
        sample = draw(sample, self.input_size)
        if sample is None or not len(sample.held_out):
            logger.debug("%s in %s: no held-out images, fidelity not checked",
                         self.info["model"], self.precision)
            return
        if len(sample.held_out) < prec.MIN_HELD_OUT:
            logger.warning("%s in %s: not checked against float32 (the store has %d held-out "
                           "images, fewer than the %d the check needs)", self.info["model"],
                           self.precision, len(sample.held_out), prec.MIN_HELD_OUT)
            return
        reference = self._reference or ConvertedEmbedder(self.keras, self.runtime)
        self._reference = None  # not kept: the check is done once, at load
        ref = reference.float32_features(sample.held_out)
        figures = check_fidelity(ref, batched(self, sample.held_out))
        self.info["fidelity"] = figures
        if not figures["passed"]:
            raise ConfigError(f"{self.info['model']} in {self.precision}: {figures['why']} "
                              f"against float32 on {len(sample.held_out)} held-out images of "
                              "the store; use --precision f32 (or auto)")

    def __call__(self, batch: np.ndarray) -> np.ndarray:
        s = self.input_size
        assert batch.ndim == 4 and batch.shape[1:] == (s, s, 3) and batch.dtype == np.uint8, \
            (batch.shape, batch.dtype)
        if not len(batch):
            return np.zeros((0, self.dim), np.float32)
        x = np.ascontiguousarray(apply_preprocessing(batch, self.preprocessing), np.float32)
        with self._lock:
            y = self._infer(x)
        return global_pool(y, self.spec.pooling).astype(np.float32)


def _tflite(path: Path):
    from .tflite import make_interpreter
    it, _ = make_interpreter(str(path))
    inp, out = it.get_input_details()[0], it.get_output_details()[0]
    shape = [0]

    def infer(x: np.ndarray) -> np.ndarray:
        if shape[0] != len(x):
            it.resize_tensor_input(inp["index"], list(x.shape), strict=False)
            it.allocate_tensors()
            shape[0] = len(x)
        it.set_tensor(inp["index"], x)
        it.invoke()
        return it.get_tensor(out["index"]).copy()
    return infer


def _openvino(path: Path, size: int, precision: str = "f32"):
    """`path`: the converted .tflite (read by the TFLite frontend; ov.convert_model is 4x
    slower) or an INT8 model's .xml. `precision`: what OpenVINO computes in where the
    model does not say (f32 or bf16; an INT8 model's quantized layers are INT8)."""
    import openvino as ov
    core = ov.Core()
    model = core.read_model(str(path))
    model.reshape([-1, size, size, 3])
    if precision == "bf16" and "BF16" not in core.get_property("CPU",
                                                               "OPTIMIZATION_CAPABILITIES"):
        raise ConfigError("--precision bf16: this CPU has no bfloat16 instructions "
                          "(AVX512_BF16 or AMX); use --precision f32 or auto")
    compiled = core.compile_model(model, "CPU", {
        "INFERENCE_NUM_THREADS": cpu_threads(), "PERFORMANCE_HINT": "LATENCY",
        "INFERENCE_PRECISION_HINT": precision})
    request = compiled.create_infer_request()

    def infer(x: np.ndarray) -> np.ndarray:
        return np.array(request.infer({0: x})[0], np.float32)
    return infer


def _rate(embedder, batch: np.ndarray) -> float:
    t = time.perf_counter()
    embedder(batch)
    return len(batch) / (time.perf_counter() - t)


def choose_precision(keras_embedder, runtime: str, sample: ImageSample | Sampler | None,
                     batch_size: int = 32, repeats: int = 3) -> ConvertedEmbedder:
    """`--precision auto`: the fastest of float32 and the reduced precisions this CPU and
    installation have that pass the fidelity check on the sample's held-out images,
    timed side by side on batches of `batch_size` held-out images (interleaved,
    `repeats` times, best of each). A reduced precision must be MIN_SPEEDUP faster than
    float32 to be picked. Logs one line: what was picked, and why each other was not."""
    f32 = ConvertedEmbedder(keras_embedder, runtime)
    if runtime != "openvino":
        logger.info("precision auto: f32 (reduced precisions run on OpenVINO; this is %s)",
                    runtime)
        return f32
    sample = draw(sample, f32.input_size)
    held = 0 if sample is None else len(sample.held_out)
    if held < prec.MIN_HELD_OUT:
        logger.info("precision auto: f32 (%d held-out images of the store to check a reduced "
                    "precision against float32 on, fewer than the %d the check needs)", held,
                    prec.MIN_HELD_OUT)
        return f32
    why: dict[str, str] = {}
    candidates = {"f32": f32}
    for precision in REDUCED:
        if precision == "bf16" and not bf16_supported():
            why[precision] = "this CPU has no bfloat16 instructions"
            continue
        if precision == "int8" and not nncf_installed():
            why[precision] = "NNCF is not installed (pip install nncf)"
            continue
        try:
            candidates[precision] = ConvertedEmbedder(keras_embedder, runtime, precision,
                                                      sample, reference=f32)
        except ConfigError as e:
            why[precision] = str(e).split(": ", 1)[-1].split(" against float32")[0]
    rates = dict.fromkeys(candidates, 0.0)
    batch = sample.held_out[:batch_size]
    if len(candidates) > 1:
        for e in candidates.values():
            e(batch)  # warm up at this batch size
        for _ in range(repeats):
            for p, e in candidates.items():
                rates[p] = max(rates[p], _rate(e, batch))
    best = max(candidates, key=lambda p: rates[p] / (1 if p == "f32" else MIN_SPEEDUP))
    for p in candidates:
        if p not in (best, "f32"):
            why[p] = f"{rates[p] / rates['f32']:.2f}x float32's rate"
    chosen = candidates[best]
    figures = chosen.info.get("fidelity")
    head = f"precision auto: {best}" + (
        f", {rates[best] / rates['f32']:.2f}x float32's rate ({figures['why']})"
        if best != "f32" else "")
    others = "; ".join(f"{p} not used: {w}" for p, w in why.items())
    line = head + (f"; {others}" if others else "")
    logger.info("%s", line)
    chosen.info["auto"] = line
    return chosen


