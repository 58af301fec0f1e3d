"""Keras 3 models on any backend (TensorFlow by default; JAX or PyTorch where TF is absent).

Only `select_backend`, `gpu_available` and the `_compile` functions know about backends.
"""
from __future__ import annotations

import hashlib
import importlib.util
import logging
import os

import numpy as np

from ..errors import ConfigError, WorkflowError
from .converted import ConvertedEmbedder
from .quiet import import_tensorflow
from .registry import (
    HUB_MODELS,
    KERAS_APPS,
    Embedder,
    ModelSpec,
    OfflineWeightsError,
    apply_preprocessing,
    global_pool,
    sha256_of_path,
)

logger = logging.getLogger(__name__)


def select_backend() -> str:
    """The Keras backend: $KERAS_BACKEND, else the first installed of TF, JAX, PyTorch.
    TensorFlow is imported here, quietly (`quiet`), before Keras imports it."""
    backend = os.environ.get("KERAS_BACKEND")
    if not backend:
        backend = next((name for name in ("tensorflow", "jax", "torch")
                        if importlib.util.find_spec(name) is not None), None)
        if backend is None:
            raise WorkflowError("Keras needs a backend: pip install tensorflow (or jax, or "
                                "torch)")
        os.environ["KERAS_BACKEND"] = backend
    if backend == "tensorflow":
        import_tensorflow()
    return backend


def gpu_available() -> bool:
    backend = select_backend()
    if backend == "tensorflow":
        return bool(import_tensorflow().config.list_physical_devices("GPU"))
    if backend == "jax":
        import jax
        return any(d.platform == "gpu" for d in jax.devices())
    if backend == "torch":
        import torch
        return torch.cuda.is_available()
    return False


def _compile(model, xla: bool, preprocessing: str):
    """uint8 batch -> model output (a backend array, possibly still being computed).

    TensorFlow: preprocessing in NumPy, then the model, XLA-compiled where asked. JAX:
    preprocessing and model in one jitted function of the uint8 batch, so only uint8
    pixels cross to the device and calls return before the device has finished; batch
    sizes are padded up (to the largest batch yet) so that few shapes are compiled. PyTorch:
    preprocessing on the device, the model eagerly without autograd."""
    backend = select_backend()
    if xla and backend != "tensorflow":
        logger.warning("--xla applies to the TensorFlow backend only; ignored")
    if backend == "jax":
        return _compile_jax(model, preprocessing)
    if backend == "torch":
        import torch

        def infer_torch(x):
            with torch.no_grad():
                t = torch.from_numpy(x)
                if torch.cuda.is_available():
                    t = t.pin_memory().to("cuda", non_blocking=True)
                return model(_preprocess_ops(t, preprocessing), training=False)
        return infer_torch

    def infer(x):
        return model(apply_preprocessing(x, preprocessing), training=False)
    if not xla:
        return infer
    tf = import_tensorflow()
    jitted = tf.function(lambda x: model(x, training=False), jit_compile=True)
    return lambda x: jitted(apply_preprocessing(x, preprocessing))


def _preprocess_ops(x, mode: str):
    """`apply_preprocessing` in keras.ops, on whatever device x lives."""
    import keras
    return apply_preprocessing(x, mode, keras.ops)


def _compile_jax(model, preprocessing: str):
    import jax
    trainable = [v.value for v in model.trainable_variables]
    frozen = [v.value for v in model.non_trainable_variables]

    @jax.jit
    def run(trainable, frozen, x):
        y, _ = model.stateless_call(trainable, frozen, _preprocess_ops(x, preprocessing),
                                    training=False)
        return y

    largest = [0]

    def infer(x):
        n = len(x)  # padded to the largest batch yet, else a power of two: few compiles
        padded = max(largest[0], 1 << max(0, (n - 1).bit_length()))
        largest[0] = max(largest[0], padded)
        if padded != n:
            x = np.concatenate([x, np.zeros((padded - n, *x.shape[1:]), x.dtype)])
        y = run(trainable, frozen, jax.device_put(x))  # returns while copying
        return jax.tree_util.tree_map(lambda a: a[:n], y) if padded != n else y
    return infer


def _to_numpy(y) -> np.ndarray:
    import keras
    if isinstance(y, dict):
        y = next(iter(y.values()))
    return np.asarray(keras.ops.convert_to_numpy(y), dtype=np.float32)


def weights_digest(model) -> str:
    import keras
    h = hashlib.sha256()
    for w in model.weights:
        h.update(np.ascontiguousarray(keras.ops.convert_to_numpy(w.value)))
    return h.hexdigest()[:16]


OFFLINE_HELP = (
    "the ImageNet weights of {name} could not be downloaded ({error}). Remedies: run once "
    "where the internet is reachable (Keras caches the file in ~/.keras/models/) or copy "
    "the file there; or pass --weights PATH to a local weights file (the 'notop' .h5 of "
    "this model); or, for tests only, --weights none (random weights: retrieval quality "
    "will be meaningless).")


class KerasEmbedder(Embedder):
    """A Keras application (without its classifier) or a user's Keras/SavedModel model."""

    def __init__(self, spec: ModelSpec, mixed_precision: bool = False, xla: bool = False):
        backend = select_backend()
        self.on_gpu = gpu_available()
        import keras
        keras.mixed_precision.set_global_policy("mixed_float16" if mixed_precision
                                                else "float32")
        keras.utils.set_random_seed(spec.seed)
        self.spec = spec
        self.hub = None  # the image-text model (`HubModel`) of a HUB_MODELS name
        if spec.model in KERAS_APPS:
            self.model, native, default_prep = self._build_app(keras, spec)
        elif spec.model in HUB_MODELS:
            self.hub = HubModel(keras, spec)
            self.model, native, default_prep = self.hub.image_model, self.hub.size, "raw"
            self._keras_model = True
        else:
            self.model, native, default_prep = self._load_file(keras, spec)
        # a Keras model, not a SavedModel layer; an image tower where it pays (`HUB_KERAS_ONLY`)
        self.convertible = self._keras_model and (self.hub is None
                                                  or spec.model not in HUB_KERAS_ONLY)
        self.preprocessing = spec.preprocessing or default_prep
        self._run = _compile(self.model, xla, self.preprocessing)
        self.input_size = spec.input_size or native
        if not self.input_size:
            raise ConfigError(f"{spec.model} does not fix its input size: pass --input-size")
        self.dim = self(np.zeros((1, self.input_size, self.input_size, 3), np.uint8)).shape[1]
        self.info = {"model": os.path.basename(spec.model.rstrip("/")), "kind": "keras",
                     "backend": backend, "weights": self._weights_kind(),
                     "weights_sha256": self._digest(), "input_size":
                     self.input_size, "pooling": spec.pooling, "preprocessing":
                     self.preprocessing, "mixed_precision": mixed_precision, "xla": xla}
        if self.hub is not None:
            self.info.update(preset=self.hub.preset, text_tower=True)

    @property
    def has_text_tower(self) -> bool:
        return self.hub is not None

    def embed_text(self, texts: list[str]) -> np.ndarray:
        """Texts -> float32 [n, dim] embeddings of the text tower, in the space of the
        image embeddings (not yet normalised); an image-text model only."""
        if self.hub is None:
            raise ConfigError(f"{self.spec.model} has no text tower")
        return self.hub.embed_text(texts)

    def _weights_kind(self) -> str:
        if self.hub is not None:
            return self.hub.weights
        return self.spec.weights if self.spec.model in KERAS_APPS else "file"

    def _digest(self) -> str:
        if self.hub is not None:  # both towers: text queries must match the corpus too
            return weights_digest(self.hub.backbone)
        if self.spec.model in KERAS_APPS or self._keras_model:
            return weights_digest(self.model)
        return sha256_of_path(self.spec.model)

    def _build_app(self, keras, spec: ModelSpec):
        cls_name, native, prep = KERAS_APPS[spec.model]
        size = spec.input_size or native
        weights = spec.weights
        if weights.lower() == "none":
            logger.warning("MODEL WEIGHTS ARE RANDOM (--weights none): features are fine for "
                           "testing the workflow, but retrieval quality will be meaningless")
            weights = None
        elif weights != "imagenet" and not os.path.isfile(weights):
            raise ConfigError(f"--weights {weights}: no such file (use imagenet, none or a "
                              "path to a weights file)")
        cls = getattr(keras.applications, cls_name)
        kwargs = dict(include_top=False, weights=weights, pooling=spec.pooling,
                      input_shape=(size, size, 3))
        try:
            model = cls(**kwargs)
        except Exception as e:  # noqa: BLE001 - Keras raises a bare Exception offline
            if weights == "imagenet" and ("fetch" in str(e).lower() or "url" in str(e).lower()
                                          or isinstance(e, OSError)):
                raise OfflineWeightsError(OFFLINE_HELP.format(name=cls_name, error=e)) from e
            raise
        self._keras_model = True
        return model, native, prep

    def _load_file(self, keras, spec: ModelSpec):
        path = spec.model
        if not os.path.exists(path):
            raise ConfigError(f"--model {path}: not a known model name "
                              f"({', '.join([*KERAS_APPS, *HUB_MODELS])}) nor an existing "
                              "file")
        if os.path.isdir(path):
            if select_backend() != "tensorflow":
                raise ConfigError("a SavedModel folder needs the TensorFlow backend")
            self._keras_model = False
            layer = keras.layers.TFSMLayer(path, call_endpoint="serving_default")
            shape = None
        else:
            self._keras_model = True
            layer = keras.models.load_model(path, compile=False)
            shape = layer.input_shape[1] if hasattr(layer, "input_shape") else None
        return layer, shape, "raw"

    def __call__(self, batch: np.ndarray) -> np.ndarray:
        return self.launch(batch)()

    def warm_up(self, batch_size: int) -> None:
        """On JAX, and on a GPU, the first batch of a new size compiles the model (seconds
        on a GPU, longer than many batches): do it now, with a batch of zeros."""
        if self.on_gpu or select_backend() == "jax":
            self(np.zeros((batch_size, self.input_size, self.input_size, 3), np.uint8))

    def launch(self, batch: np.ndarray):
        assert batch.ndim == 4 and batch.dtype == np.uint8
        y = self._run(batch)
        return lambda: global_pool(_to_numpy(y), self.spec.pooling).astype(np.float32)


# ------------------------------------------------------------------ image-text models

HUB_OFFLINE_HELP = (
    "the KerasHub preset {preset} of {name} could not be downloaded ({error}). Remedies: run "
    "once where the internet is reachable (KerasHub caches the preset under "
    "~/.cache/kagglehub/, or $KAGGLEHUB_CACHE) or copy that cache here; or pass --weights "
    "PATH to a local preset folder (the downloaded preset, or one written by "
    "save_to_preset); or, for tests only, --weights none (random weights: retrieval quality "
    "will be meaningless; it still reads the preset's small configuration and tokenizer "
    "files, so they too must have been downloaded once).")
# The image towers that `--runtime auto` keeps on Keras on a CPU, and why; the others
# are converted for the CPU runtime as the CNNs are (BENCHMARKS.md, "Extract: the
# image-text models on the CPU runtime", measured with bench/bench_clip.py).
HUB_KERAS_ONLY: dict[str, str] = {}
HUB_CLASSES = {"clip": ("CLIPBackbone", "CLIPPreprocessor"),
               "siglip": ("SigLIPBackbone", "SigLIPPreprocessor")}


def _looks_offline(e: Exception) -> bool:
    text = str(e).lower()
    return isinstance(e, OSError) or any(w in text for w in (
        "connect", "resolve", "download", "url", "fetch", "network", "timed out"))


class HubModel:
    """An image-text model from KerasHub (`HUB_MODELS`): `image_model`, the image tower
    with its projection (uint8-range RGB [n, S, S, 3] -> [n, d], the input scaling of the
    preset inside), and `embed_text`, the text tower into the same space.

    The model name fixes the architecture family; `--weights` where the weights come
    from: imagenet (the KerasHub preset, downloaded once and cached), none (the preset's
    architecture, random weights) or a local preset folder."""

    def __init__(self, keras, spec: ModelSpec):
        try:
            import keras_hub
        except ImportError as e:
            raise WorkflowError(f"{spec.model} needs KerasHub: pip install keras-hub") from e
        self.name = spec.model
        self.preset, family = HUB_MODELS[spec.model]
        if spec.preprocessing:
            raise ConfigError(f"--preprocessing: {spec.model} scales its input as its preset "
                              "says; leave the option out")
        source, load_weights, self.weights = self._source(spec)
        backbone_cls, preprocessor_cls = (getattr(keras_hub.models, n)
                                          for n in HUB_CLASSES[family])
        try:
            self.backbone = backbone_cls.from_preset(source, load_weights=load_weights)
            self.preprocessor = preprocessor_cls.from_preset(source)
        except Exception as e:  # noqa: BLE001 - KerasHub and kagglehub raise many kinds
            if self.weights == "folder":
                raise ConfigError(f"--weights {source}: not a KerasHub preset folder of a "
                                  f"{family} model ({type(e).__name__}: {e})") from e
            if _looks_offline(e):
                raise OfflineWeightsError(HUB_OFFLINE_HELP.format(
                    preset=source, name=spec.model, error=e)) from e
            raise
        self.size = int(self.backbone.vision_encoder.image_shape[0])
        if spec.input_size and spec.input_size != self.size:
            raise ConfigError(f"--input-size {spec.input_size}: {spec.model} takes "
                              f"{self.size} px images (its preset's size); leave it out")
        converter = self.preprocessor.image_converter
        self.preprocessor.image_converter = None  # texts only from here on
        self._text_tower = self.backbone.get_text_embeddings
        if select_backend() == "tensorflow":  # traced once: a query 3x faster than eager
            tf = import_tensorflow()
            context = int(self.preprocessor.sequence_length)
            self._text_tower = tf.function(self.backbone.get_text_embeddings, input_signature=[
                tf.TensorSpec([None, context], tf.int32)])
        scale = [1.0] * 3 if converter.scale is None else converter.scale
        offset = [0.0] * 3 if converter.offset is None else converter.offset
        images = keras.Input((self.size, self.size, 3), name="images")
        scaled = keras.layers.Rescaling(scale, offset, name="preset_scaling")(images)
        self.image_model = keras.Model(images, self.backbone.get_vision_embeddings(scaled),
                                       name=f"{spec.model}-image")

    def _source(self, spec: ModelSpec) -> tuple[str, bool, str]:
        """(what from_preset reads, whether it loads weights, what info records)."""
        w = spec.weights
        if w.lower() in ("imagenet", "preset"):
            return self.preset, True, "preset"
        if w.lower() == "none":
            logger.warning("MODEL WEIGHTS ARE RANDOM (--weights none): features are fine for "
                           "testing the workflow, but retrieval quality will be meaningless")
            return self.preset, False, "none"
        if "://" in w:  # kaggle://... or hf://... : a preset handle
            return w, True, w
        if os.path.isdir(w):
            return w, True, "folder"
        raise ConfigError(f"--weights {w}: no such folder ({spec.model} takes imagenet for "
                          f"the KerasHub preset {self.preset}, none, or a local preset "
                          "folder)")

    def embed_text(self, texts: list[str]) -> np.ndarray:
        """Texts -> float32 [n, d] text-tower embeddings (not yet normalised). A text
        longer than the tower's context (77 tokens for CLIP, 64 for SigLIP, with the
        start and end tokens) is cut there, as KerasHub does, with a warning."""
        import keras
        token_ids = self._token_ids(list(texts))
        y = self._text_tower(keras.ops.convert_to_tensor(token_ids))
        return np.asarray(keras.ops.convert_to_numpy(y), dtype=np.float32)

    def _token_ids(self, texts: list[str]) -> np.ndarray:
        """int32 [n, context] token ids as the preset's preprocessor packs them; packed
        once at a length that holds every text whole (a token spans at least one byte of
        UTF-8, or is a word's leading space), so that what a cut drops can be counted."""
        context = int(self.preprocessor.sequence_length)
        room = max([context, *(2 * len(t.encode()) + 8 for t in texts)])
        packed = self.preprocessor({"prompts": texts, "images": None},
                                   sequence_length=room)
        lengths = np.asarray(packed["padding_mask"]).sum(axis=1)
        if np.all(lengths <= context):  # the common case: as packed at the context
            return np.asarray(packed["token_ids"], np.int32)[:, :context]
        start, end = bool(self.preprocessor.add_start_token), bool(
            self.preprocessor.add_end_token)
        specials = " and ".join(w for w, on in (("start", start), ("end", end)) if on)
        for text, n in zip(texts, lengths.tolist()):
            if n > context:
                shown = text if len(text) <= 60 else text[:57] + "..."
                logger.warning(
                    "the text %r is %d tokens long; the text tower of %s reads %d (its "
                    "context of %d tokens%s): the last %d were dropped", shown,
                    n - start - end, self.name, context - start - end, context,
                    f", less its {specials} token{'s' * (start and end)}" if specials
                    else "", n - context)
        packed = self.preprocessor({"prompts": texts, "images": None})  # KerasHub's cut
        return np.asarray(packed["token_ids"], np.int32)


class ConvertedHubEmbedder(ConvertedEmbedder):
    """The image tower of an image-text model on a CPU runtime; texts still go through
    the text tower on Keras (a query at a time: not worth a conversion)."""

    has_text_tower = True

    def embed_text(self, texts: list[str]) -> np.ndarray:
        return self.keras.embed_text(texts)
