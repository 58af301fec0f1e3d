"""Feature models: Keras applications, image-text models from KerasHub (CLIP, SigLIP), a
user's Keras/SavedModel file, or a TFLite file.

`loading.load_embedder(spec)` returns an `Embedder`: a callable from a batch of uint8 RGB images
[n, S, S, 3] to float32 features [n, d] (not yet normalised). Everything that depends on
the Keras backend stays in `keras`.
"""
from __future__ import annotations

import abc
import hashlib
import logging
import os
from dataclasses import dataclass

import numpy as np

from ..errors import ConfigError, WorkflowError

logger = logging.getLogger(__name__)

# name -> (keras.applications class, native input size, input preprocessing)
KERAS_APPS = {
    **{f"efficientnet-b{i}": (f"EfficientNetB{i}", s, "raw")
       for i, s in enumerate((224, 240, 260, 300, 380, 456, 528, 600))},
    **{f"efficientnetv2-b{i}": (f"EfficientNetV2B{i}", s, "raw")
       for i, s in enumerate((224, 240, 260, 300))},
    "efficientnetv2-s": ("EfficientNetV2S", 384, "raw"),
    "resnet50": ("ResNet50", 224, "caffe"),
    "mobilenetv3-small": ("MobileNetV3Small", 224, "raw"),
    "mobilenetv3-large": ("MobileNetV3Large", 224, "raw"),
}
# name -> (KerasHub preset, family): image-text models. The image tower embeds the corpus,
# the text tower (`KerasEmbedder.embed_text`) embeds queries in words into the same space.
HUB_MODELS = {
    "clip-vit-b32": ("clip_vit_base_patch32", "clip"),
    "clip-vit-b16": ("clip_vit_base_patch16", "clip"),
    "siglip-base-224": ("siglip_base_patch16_224", "siglip"),
}
PREPROCESSING = ("raw", "unit", "tf", "caffe", "torch")
POOLING = ("avg", "max")


@dataclass(frozen=True)
class ModelSpec:
    """What to load. `model` is a KERAS_APPS or HUB_MODELS name or a path (.keras, .h5,
    SavedModel folder, .tflite); `weights` is imagenet (for HUB_MODELS: the KerasHub
    preset), none, or a path to a weights file (for HUB_MODELS: a local preset folder)."""
    model: str = "efficientnet-b0"
    weights: str = "imagenet"
    input_size: int | None = None
    pooling: str = "avg"
    preprocessing: str | None = None
    embedding_tensor: str | None = None
    seed: int = 0


def apply_preprocessing(x, mode: str, ops=None):
    """uint8 RGB [n, h, w, 3] -> float32 model input for the given convention. In NumPy,
    or with `ops=keras.ops` on a backend tensor (so it runs on the tensor's device)."""
    if ops is None:
        cast, flip, const = (lambda a: a.astype(np.float32)), np.flip, \
            (lambda v: np.array(v, np.float32))
    else:
        cast, flip, const = (lambda a: ops.cast(a, "float32")), ops.flip, \
            ops.convert_to_tensor
    x = cast(x)
    if mode == "raw":
        return x
    if mode == "unit":
        return x / 255.0
    if mode == "tf":
        return x / 127.5 - 1.0
    if mode == "caffe":
        return flip(x, axis=-1) - const([103.939, 116.779, 123.68])
    if mode == "torch":
        return (x / 255.0 - const([0.485, 0.456, 0.406])) / const([0.229, 0.224, 0.225])
    raise ConfigError(f"unknown preprocessing {mode!r}; choose one of {PREPROCESSING}")


def global_pool(y: np.ndarray, pooling: str) -> np.ndarray:
    """[n, ...] outputs -> [n, d]: spatial maps [n, h, w, c] are pooled, the rest flattened."""
    if y.ndim == 4 and (y.shape[1] > 1 or y.shape[2] > 1):
        return y.max(axis=(1, 2)) if pooling == "max" else y.mean(axis=(1, 2))
    return y.reshape(len(y), -1)


class Embedder(abc.ABC):
    """Base: `info` (name, weights hash, input size, pooling, preprocessing) goes into the
    stage fingerprint and the feature shards."""
    input_size: int
    dim: int
    info: dict
    batch_size_limit: int | None = None  # largest batch the model takes; None: any
    on_gpu: bool = False

    @abc.abstractmethod
    def __call__(self, batch: np.ndarray) -> np.ndarray:
        """uint8 RGB [n, S, S, 3] -> float32 features [n, dim]."""

    def launch(self, batch: np.ndarray):
        """Start on a batch; returns a function that waits for its features. Embedders on
        an accelerator return before the device has finished, so that the next batch
        can be handed over while this one is computed."""
        y = self(batch)
        return lambda: y

    def warm_up(self, batch_size: int) -> None:  # noqa: B027 - a hook, empty by default
        """Prepare for batches of `batch_size` (compile, allocate) before the first one is
        timed. Nothing to do for most embedders."""


def sha256_of_path(path: str) -> str:
    h = hashlib.sha256()
    files = [path] if os.path.isfile(path) else sorted(
        os.path.join(d, f) for d, _, fs in os.walk(path) for f in fs)
    for p in files:
        h.update(os.path.relpath(p, path).encode() if p != path else b"")
        with open(p, "rb") as f:
            while chunk := f.read(1 << 20):
                h.update(chunk)
    return h.hexdigest()[:16]


def l2_normalize(x: np.ndarray) -> np.ndarray:
    """Rows scaled to unit length (all-zero rows stay zero)."""
    n = np.linalg.norm(x, axis=1, keepdims=True)
    return x / np.maximum(n, 1e-12)


class OfflineWeightsError(WorkflowError):
    pass
