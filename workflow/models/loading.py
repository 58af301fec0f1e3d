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
    to (`converted`). The image-text models (`HUB_MODELS`) run on Keras."""
    if spec.model.lower().endswith(".tflite"):
        return load_embedder(spec)
    if spec.model in HUB_MODELS and runtime not in ("auto", "keras"):
        raise ConfigError(f"--runtime {runtime}: {spec.model} runs on Keras only (--runtime "
                          "auto or keras)")
    from .converted import ConvertedEmbedder, choose_runtime
    from .keras import KerasEmbedder, gpu_available
    mixed = mixed_precision == "on" or (mixed_precision == "auto" and gpu_available())
    keras_embedder = KerasEmbedder(spec, mixed_precision=mixed, xla=xla)
    chosen = choose_runtime(runtime, keras_embedder)
    if chosen == "keras":
        return keras_embedder
    try:
        return ConvertedEmbedder(keras_embedder, chosen)
    except ConfigError as e:
        if runtime != "auto":
            raise
        logger.warning("%s; running Keras instead", e)
        return keras_embedder
