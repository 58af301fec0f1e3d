"""The extract stage's model, in the precision the store holds its features to.

`--precision auto` on a store whose extract stage has begun keeps the store's precision
(float32 where run.json records none); on a new store it picks by measurement on the
store's own images (`models.converted.choose_precision`). A run whose model computes in
another precision than the store's finished features stops, unless
`--accept-mixed-precision` (`storage.frozen.check_precision`), as with library versions.
The precision is recorded in run.json (with what INT8 was calibrated on, so that the
query side and later runs load the same model) and in every feature shard.
"""
from __future__ import annotations

import dataclasses
import logging

from ..formats.features import FORMAT_VERSION
from ..formats.images import skip_ids
from ..formats.layout import EXTRACT
from ..inputs.imaging import MODEL_INPUT_VERSION
from ..models.loading import make_embedder
from ..models.precision import store_sampler
from ..models.registry import Embedder
from ..storage.frozen import check_precision, record_precision
from ..storage.store import Store

logger = logging.getLogger(__name__)

# Recorded in the shards but left out of the fingerprint: they change features only
# within float16 rounding (a CPU runtime: within cosine 0.9999), and a resume on another
# runtime must stay possible. The precision (and what goes with it) is held fixed apart.
NOT_FINGERPRINTED = ("backend", "mixed_precision", "xla", "runtime", "precision", "fidelity",
                     "calibration", "auto")


def fingerprinted(cfg, embedder: Embedder) -> dict:
    """The settings that change the features (and so the fingerprint)."""
    settings = {k: v for k, v in embedder.info.items() if k not in NOT_FINGERPRINTED}
    settings.update(crop="centre", features="float16-l2", format=FORMAT_VERSION,
                    model_input=MODEL_INPUT_VERSION, spec=dataclasses.asdict(cfg.spec()))
    return settings


def stored_precision(store: Store) -> tuple[str | None, dict | None]:
    """(the precision of the store's features, float32 where the record names none, or
    None before the extract stage; the INT8 calibration it recorded, if any)."""
    frozen = store.run_info()["stages"].get(EXTRACT)
    if frozen is None:
        return None, None
    return frozen.get("precision", "f32"), frozen.get("calibration")


def recorded(embedder: Embedder) -> dict:
    """What loading the embedder's precision again needs, beyond its name."""
    info = embedder.info
    return {"calibration": info["calibration"]} if "calibration" in info else {}


def load_model(store: Store, cfg, pending: bool, started: bool) -> Embedder:
    """The model for the extract stage of `store` with settings `cfg` (`pending`: work
    is left; `started`: some shard is finished), in the precision asked for or, with
    auto, the store's; refused where it would mix precisions unaccepted."""
    stored, calibration = stored_precision(store)
    precision = cfg.precision
    if precision == "auto" and started and stored is not None:
        precision = stored
        logger.info("precision auto: %s, the precision of the store's features", precision)
    if not started or precision != stored:
        calibration = None  # INT8 resumed: the model calibrated for the store, not another
    embedder = make_embedder(cfg.spec(), cfg.mixed_precision, cfg.xla, cfg.runtime,
                             precision, store_sampler(store, calibration, skip_ids(store)),
                             cfg.batch_size or 32, calibration)
    embedder.info.setdefault("precision", "f32")  # Keras, TFLite: float32
    if started:
        check_precision(store, EXTRACT, embedder.info["precision"], pending,
                        cfg.accept_mixed_precision, recorded(embedder))
    return embedder


def record(store: Store, embedder: Embedder) -> None:
    """Record the precision of a stage that has no finished shard yet."""
    record_precision(store, EXTRACT, embedder.info["precision"], recorded(embedder))
