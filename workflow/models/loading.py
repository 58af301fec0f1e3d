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
                  runtime: str = "auto", precision: str = "f32", sample=None,
                  batch_size: int = 32, calibration: dict | None = None) -> Embedder:
    """The embedder for `spec`, with float16 compute where asked ("on") or, with "auto",
    for a Keras model on a GPU; a Keras model runs on the CPU runtime `runtime` resolves
    to (`converted`), in `precision` (f32, bf16, int8, or auto: the fastest that passes
    the fidelity check on `sample`'s held-out images, timed at `batch_size`; `sample`, an
    `ImageSample` or a function drawing one, also calibrates INT8; `calibration`: the
    INT8 calibration a store recorded, looked up in the cache first). The image-text models
    (`HUB_MODELS`) convert their image tower only, in float32, and `auto` keeps those of
    `keras.HUB_KERAS_ONLY` on Keras."""
    from .precision import PRECISIONS, REDUCED
    if precision not in PRECISIONS:
        raise ConfigError(f"--precision {precision}: one of {', '.join(PRECISIONS)}")
    if spec.model.lower().endswith(".tflite"):
        if precision in REDUCED:
            raise ConfigError(f"--precision {precision}: a .tflite model runs as it is "
                              "(--precision auto or f32)")
        return load_embedder(spec)
    if spec.model in HUB_MODELS and precision in REDUCED:
        raise ConfigError(f"--precision {precision}: the image tower of {spec.model} runs in "
                          "float32 (--precision auto or f32)")
    from .converted import ConvertedEmbedder, choose_precision, choose_runtime
    from .keras import HUB_KERAS_ONLY, ConvertedHubEmbedder, KerasEmbedder, gpu_available
    mixed = mixed_precision == "on" or (mixed_precision == "auto" and gpu_available())
    keras_embedder = KerasEmbedder(spec, mixed_precision=mixed, xla=xla)
    chosen = choose_runtime(runtime, keras_embedder)
    if chosen == "keras":
        if runtime == "auto" and spec.model in HUB_KERAS_ONLY and not keras_embedder.on_gpu:
            logger.info("%s: the image tower runs on Keras, not a CPU runtime (%s)",
                        spec.model, HUB_KERAS_ONLY[spec.model])
        if precision in REDUCED:
            raise ConfigError(f"--precision {precision} runs on OpenVINO on a CPU; here "
                              f"{spec.model} runs on Keras (--precision auto or f32)")
        return keras_embedder
    try:
        if spec.model in HUB_MODELS:
            return ConvertedHubEmbedder(keras_embedder, chosen)
        if precision == "auto":
            return choose_precision(keras_embedder, chosen, sample, batch_size)
        return ConvertedEmbedder(keras_embedder, chosen, precision, sample,
                                 calibration=calibration)
    except ConfigError as e:
        if runtime != "auto" or precision in REDUCED:
            raise
        logger.warning("%s; running Keras instead", e)
        return keras_embedder
