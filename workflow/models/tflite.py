"""A TFLite model file as an `Embedder` (quantized or float, output 0 or a named tensor).

The interpreter is LiteRT's (`ai_edge_litert`) where installed, else `tf.lite.Interpreter`.

Inputs. A uint8 input tensor gets the raw pixels 0..255; an int8 one gets pixels - 128.
That is the TFLite convention: the input's quantization (real = scale * (q - zero_point))
*is* the model's normalisation, e.g. (1/128, 128) means real = pixel / 128 - 1 and
(1/255, 0) means real = pixel / 255, and an int8 model converted from a uint8 one has the
same scale and zero_point - 128. Re-quantising from some float convention instead would
need the real range the model was trained on, which the file does not record. A float
input gets `apply_preprocessing(spec.preprocessing or "raw")`.

Outputs. Output 0, or the tensor named by `spec.embedding_tensor` (read with
`experimental_preserve_all_tensors`), dequantised with that tensor's own
(scale, zero_point), then pooled/flattened with `global_pool`.
"""
from __future__ import annotations

import difflib
import logging
import os
import threading
import warnings

import numpy as np

from ..errors import ConfigError, WorkflowError
from ..utils import cpu_threads
from .quiet import import_tensorflow, native_stderr_filtered
from .registry import (
    PREPROCESSING,
    Embedder,
    ModelSpec,
    apply_preprocessing,
    global_pool,
    sha256_of_path,
)

logger = logging.getLogger(__name__)

INSTALL_HELP = ("a .tflite model needs a TFLite interpreter: pip install ai-edge-litert "
                "(or pip install tensorflow, whose tf.lite.Interpreter also works)")


def interpreter_class():
    """(Interpreter class, "ai_edge_litert" | "tensorflow"); WorkflowError if neither."""
    try:
        from ai_edge_litert.interpreter import Interpreter
        return Interpreter, "ai_edge_litert"
    except ImportError:
        pass
    try:
        return import_tensorflow().lite.Interpreter, "tensorflow"
    except (ImportError, AttributeError) as e:
        raise WorkflowError(INSTALL_HELP) from e


def make_interpreter(path: str, preserve_all_tensors: bool = False):
    cls, source = interpreter_class()
    with warnings.catch_warnings():
        # tf.lite.Interpreter warns that it is deprecated in favour of ai_edge_litert (the
        # wording differs between TF releases); other warnings still show
        warnings.filterwarnings("ignore", category=UserWarning, message=(
            r"(?s).*(tf\.lite\.Interpreter is deprecated|Please use the LiteRT interpreter)"))
        # reading a named intermediate tensor needs preserve_all_tensors, which TF calls
        # "for debugging purposes only"; here it is the documented way to read one
        warnings.filterwarnings("ignore", category=UserWarning,
                                message=r"(?s).*experimental_preserve_all_tensors")
        try:
            with native_stderr_filtered(show_all=logger.isEnabledFor(logging.DEBUG)):
                interp = cls(model_path=path, num_threads=cpu_threads(),
                             experimental_preserve_all_tensors=preserve_all_tensors)
                interp.allocate_tensors()
        except (ValueError, RuntimeError) as e:
            raise ConfigError(f"--model {path}: not a usable TFLite model ({e})"[:500]) from e
    return interp, source


def dequantize(q: np.ndarray, detail: dict) -> np.ndarray:
    """A tensor's values as float32 with its own quantization (per-tensor or per-axis)."""
    params = detail.get("quantization_parameters") or {}
    scales = np.asarray(params.get("scales", ()), np.float32)
    zeros = np.asarray(params.get("zero_points", ()), np.float32)
    if scales.size == 0:
        scale, zero = detail.get("quantization", (0.0, 0))
        scales, zeros = np.float32([scale]), np.float32([zero])
    if q.dtype.kind == "f" or not np.any(scales):
        return q.astype(np.float32)
    if zeros.size != scales.size:
        zeros = np.broadcast_to(zeros if zeros.size else np.float32([0]), scales.shape)
    if scales.size > 1:  # per-axis quantization
        shape = [1] * q.ndim
        shape[params.get("quantized_dimension", 0)] = scales.size
        scales, zeros = scales.reshape(shape), zeros.reshape(shape)
    return (scales * (q.astype(np.float32) - zeros)).astype(np.float32)


def _input_real_range(detail: dict) -> tuple[float, float] | None:
    scale, zero = detail.get("quantization", (0.0, 0))
    if not scale:
        return None
    lo, hi = (0, 255) if detail["dtype"] == np.uint8 else (-128, 127)
    return scale * (lo - zero), scale * (hi - zero)


class TFLiteEmbedder(Embedder):
    """A .tflite model: uint8 RGB [n, S, S, 3] -> float32 [n, d]."""
    batch_size_limit = None

    def __init__(self, spec: ModelSpec):
        self.spec = spec
        path = spec.model
        if not os.path.isfile(path):
            raise ConfigError(f"--model {path}: no such TFLite file")
        self.interpreter, self.interpreter_source = make_interpreter(
            path, preserve_all_tensors=bool(spec.embedding_tensor))
        self._lock = threading.Lock()
        self._input = self.interpreter.get_input_details()[0]
        if len(self.interpreter.get_input_details()) != 1:
            raise ConfigError(f"{path}: the model has several inputs; one image input is "
                              "expected")
        shape = [int(s) for s in self._input["shape"]]
        sig = [int(s) for s in self._input.get("shape_signature", self._input["shape"])]
        if len(shape) != 4 or shape[3] != 3 or shape[1] != shape[2] or shape[1] <= 0:
            raise ConfigError(f"{path}: input shape {shape} is not [batch, S, S, 3] (a square "
                              "RGB image, channels last)")
        self.input_size = shape[1]
        if spec.input_size and spec.input_size != self.input_size:
            raise ConfigError(f"--input-size {spec.input_size}: {os.path.basename(path)} takes "
                              f"{self.input_size}x{self.input_size} images (fixed in the file)")
        self._fixed_batch = None if sig[0] < 0 else max(shape[0], 1)
        self._batch = shape[0]

        dtype = np.dtype(self._input["dtype"])
        if dtype in (np.uint8, np.int8):
            self.preprocessing = "uint8"
            if spec.preprocessing and spec.preprocessing != "raw":
                logger.warning("%s has a quantized (%s) input that takes raw pixels: "
                               "--preprocessing %s is ignored", os.path.basename(path),
                               dtype, spec.preprocessing)
            rng = _input_real_range(self._input)
            if rng is not None:
                logger.debug("%s: pixels 0..255 are read as %.4g..%.4g", path, *rng)
        elif dtype.kind == "f":
            self.preprocessing = spec.preprocessing or "raw"
            if self.preprocessing not in PREPROCESSING:
                raise ConfigError(f"unknown preprocessing {self.preprocessing!r}; choose one "
                                  f"of {PREPROCESSING}")
        else:
            raise ConfigError(f"{path}: input type {dtype} is not supported (uint8, int8 or "
                              "float inputs are)")
        self._input_dtype = dtype

        if spec.embedding_tensor:
            self._output = self._find_tensor(spec.embedding_tensor)
        else:
            self._output = self.interpreter.get_output_details()[0]

        self.dim = int(self(np.zeros((1, self.input_size, self.input_size, 3), np.uint8))
                       .shape[1])
        self.info = {"model": os.path.basename(path), "kind": "tflite",
                     "weights_sha256": sha256_of_path(path), "input_size": self.input_size,
                     "pooling": spec.pooling, "preprocessing": self.preprocessing,
                     "embedding_tensor": spec.embedding_tensor}

    def _find_tensor(self, name: str) -> dict:
        details = self.interpreter.get_tensor_details()
        for d in details:
            if d["name"] == name:
                return d
        names = [d["name"] for d in details]
        close = difflib.get_close_matches(name, names, n=5, cutoff=0.4)
        if not close:  # e.g. a distant typo: show the last (deepest) tensors instead
            close = names[-5:]
        raise ConfigError(f"--embedding-tensor {name!r}: no such tensor in "
                          f"{os.path.basename(self.spec.model)}; close names: "
                          + ", ".join(repr(c) for c in close))

    def _feed(self, batch: np.ndarray) -> np.ndarray:
        if self._input_dtype == np.uint8:
            return batch
        if self._input_dtype == np.int8:
            return (batch.astype(np.int16) - 128).astype(np.int8)
        return apply_preprocessing(batch, self.preprocessing).astype(self._input_dtype)

    def _run(self, x: np.ndarray) -> np.ndarray:
        """One interpreter call on x (its batch matching the input tensor)."""
        it = self.interpreter
        if self._fixed_batch is None and len(x) != self._batch:
            it.resize_tensor_input(self._input["index"], list(x.shape), strict=False)
            it.allocate_tensors()
            self._batch = len(x)
        it.set_tensor(self._input["index"], x)
        it.invoke()
        return dequantize(it.get_tensor(self._output["index"]), self._output)

    def __call__(self, batch: np.ndarray) -> np.ndarray:
        s = self.input_size
        assert batch.ndim == 4 and batch.shape[1:] == (s, s, 3) and batch.dtype == np.uint8, \
            (batch.shape, batch.dtype)
        n = len(batch)
        x = np.ascontiguousarray(self._feed(batch))
        outs = []
        with self._lock:
            if self._fixed_batch is None:
                if n:
                    outs.append(self._run(x))
            else:
                b = self._fixed_batch
                for i in range(0, n, b):
                    chunk = x[i:i + b]
                    k = len(chunk)
                    if k < b:  # pad the last chunk of a fixed batch > 1
                        chunk = np.concatenate([chunk, np.zeros((b - k,) + chunk.shape[1:],
                                                                chunk.dtype)])
                    outs.append(self._run(chunk)[:k])
        if not outs:
            return np.zeros((0, getattr(self, "dim", 0)), np.float32)
        y = np.concatenate(outs) if len(outs) > 1 else outs[0]
        return global_pool(y, self.spec.pooling).astype(np.float32)
