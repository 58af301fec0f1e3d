"""Loading an embedder for a `ModelSpec`: a TFLite file, or a Keras model (an
application or the user's own), with float16 compute where it pays."""
from __future__ import annotations

import logging

from ..errors import ConfigError
from .registry import HUB_MODELS, POOLING, Embedder, ModelSpec

logger = logging.getLogger(__name__)


def load_embedder(spec: ModelSpec) -> Embedder:
    """The embedder for `spec`; raises WorkflowError with remedies when it cannot load."""
    if spec.pooling not in POOLING:
        raise ConfigError(f"--pooling must be one of {POOLING}")
    if spec.model.lower().endswith(".tflite"):
        from .tflite import TFLiteEmbedder
        return TFLiteEmbedder(spec)
    from .keras import KerasEmbedder
    return KerasEmbedder(spec)


def make_embedder(spec: ModelSpec, mixed_precision: str = "auto", xla: bool = False,
                  runtime: str = "auto") -> Embedder:
    """The embedder for `spec`, with float16 compute where asked ("on") or, with "auto",
    for a Keras model on a GPU; a Keras model runs on the CPU runtime `runtime` resolves
    to (`converted`). The image-text models (`HUB_MODELS`) convert their image tower
    only, and `auto` keeps those of `keras.HUB_KERAS_ONLY` on Keras."""
    if spec.model.lower().endswith(".tflite"):
        return load_embedder(spec)
    from .converted import ConvertedEmbedder, choose_runtime
    from .keras import HUB_KERAS_ONLY, ConvertedHubEmbedder, KerasEmbedder, gpu_available
    mixed = mixed_precision == "on" or (mixed_precision == "auto" and gpu_available())
    keras_embedder = KerasEmbedder(spec, mixed_precision=mixed, xla=xla)
    chosen = choose_runtime(runtime, keras_embedder)
    if chosen == "keras":
        if runtime == "auto" and spec.model in HUB_KERAS_ONLY and not keras_embedder.on_gpu:
            logger.info("%s: the image tower runs on Keras, not a CPU runtime (%s)",
                        spec.model, HUB_KERAS_ONLY[spec.model])
        return keras_embedder
    try:
        cls = ConvertedHubEmbedder if spec.model in HUB_MODELS else ConvertedEmbedder
        return cls(keras_embedder, chosen)
    except ConfigError as e:
        if runtime != "auto":
            raise
        logger.warning("%s; running Keras instead", e)
        return keras_embedder
