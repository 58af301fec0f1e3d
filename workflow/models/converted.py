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
byte-identical features); `tflite` and `openvino` ask for one. OpenVINO is held to
float32 (it would pick bfloat16 on CPUs that have it, which moved features to cosine
0.99995 in a try).
"""
from __future__ import annotations

import contextlib
import hashlib
import io
import logging
import os
import threading
from pathlib import Path

import numpy as np

from ..errors import ConfigError
from ..utils import Timeit, cpu_threads, user_cache_dir
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
    """A Keras application or .keras model through TFLite/XNNPACK or OpenVINO."""

    def __init__(self, keras_embedder, runtime: str):
        self.keras = keras_embedder
        self.runtime = runtime
        self.input_size = keras_embedder.input_size
        self.preprocessing = keras_embedder.preprocessing
        self.spec = keras_embedder.spec
        with Timeit(f"loading the model into {runtime}", logging.DEBUG):
            path = converted_file(keras_embedder)
            self._infer = _openvino(path, self.input_size) if runtime == "openvino" \
                else _tflite(path)
        self._lock = threading.Lock()
        self.dim = keras_embedder.dim
        self.info = {**keras_embedder.info, "runtime": runtime}
        self._check()

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


def _openvino(path: Path, size: int):
    import openvino as ov
    core = ov.Core()
    model = core.read_model(str(path))  # the TFLite frontend; ov.convert_model is 4x slower
    model.reshape([-1, size, size, 3])
    compiled = core.compile_model(model, "CPU", {
        "INFERENCE_NUM_THREADS": cpu_threads(), "PERFORMANCE_HINT": "LATENCY",
        "INFERENCE_PRECISION_HINT": "f32"})
    request = compiled.create_infer_request()

    def infer(x: np.ndarray) -> np.ndarray:
        return np.array(request.infer({0: x})[0], np.float32)
    return infer


def _remove_orphans(path: Path) -> None:
    """Delete what conversions killed midway left (their process is gone)."""
    for tmp in path.parent.glob(".*.tmp"):
        try:
            os.kill(int(tmp.name.split(".")[-3]), 0)
        except (ValueError, ProcessLookupError):
            tmp.unlink(missing_ok=True)
        except PermissionError:  # alive, another user's
            pass


@contextlib.contextmanager
def _quieter(*names: str):
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
