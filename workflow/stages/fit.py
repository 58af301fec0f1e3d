"""How well a trained index fits the vectors added since it was trained (`03_train.py`
on a corpus that grew): PQ reconstruction error and inverted-list balance of a sample of
the new vectors against a sample of those it was trained for, and whether `--retrain` is
worth it. Faiss's advice is to keep a trained index while the data does not drift; these
figures say whether it drifted. Written to `trained/fit.json` once per corpus version."""
from __future__ import annotations

import json
import logging

import faiss
import numpy as np

from ..formats.features import draw_sample
from ..formats.index import load_trained
from ..formats.layout import TRAIN, TRAINED
from ..formats.plan import corpus_version
from ..storage.marker import Marker
from .base import StageRun

logger = logging.getLogger(__name__)

FIT_FILE = f"{TRAINED}/fit.json"
SAMPLE = 5000          # vectors per side
SAMPLE_SHARDS = 4      # shards read per side (a sample of 200 shards would read them all)
WORSE_ERROR = 1.2      # new vectors' error over the trained ones' that calls for --retrain
WORSE_BALANCE = 1.5    # the same for the list imbalance factor
GROWTH = 4.0           # nlist was chosen for the trained n (about 4 sqrt N)


def _split(markers: dict[str, Marker], trained: Marker) -> tuple[list[str], list[str]]:
    """(shards the index was trained for, shards added since)."""
    units = list(markers)
    k = trained.extra.get("shards")
    if k is None:  # recorded since updates exist; before, the trained n says it
        n, total, k = trained.extra["plan"]["n"], 0, 0
        while k < len(units) and total < n:
            total += markers[units[k]].extra["n"]
            k += 1
    return units[:k], units[k:]


def _spread(units: list[str]) -> list[str]:
    if len(units) <= SAMPLE_SHARDS:
        return units
    return [units[i] for i in np.linspace(0, len(units) - 1, SAMPLE_SHARDS).round().astype(int)]


def _sample(run: StageRun, markers: dict, units: list[str]) -> np.ndarray:
    return draw_sample(run.store, {u: markers[u] for u in _spread(units)}, SAMPLE, seed=0)


def measure(index: faiss.Index, x: np.ndarray) -> dict:
    """Mean squared PQ reconstruction error and the list imbalance factor of x."""
    x = np.ascontiguousarray(x, np.float32)
    err = float(((index.sa_decode(index.sa_encode(x)) - x) ** 2).sum(1).mean())
    ivf = faiss.extract_index_ivf(index)
    xt = index.apply_chain(len(x), x) if isinstance(index, faiss.IndexPreTransform) else x
    _, lists = ivf.quantizer.search(xt, 1)
    counts = np.bincount(lists.ravel(), minlength=ivf.nlist).astype(np.float64)
    imbalance = float(ivf.nlist * (counts ** 2).sum() / counts.sum() ** 2)
    return {"error": round(err, 6), "imbalance": round(imbalance, 4)}


def check_fit(run: StageRun, markers: dict[str, Marker], trained: Marker) -> dict | None:
    """The fit report for the current corpus (computed once per corpus version), or None
    when nothing was added since training."""
    old, new = _split(markers, trained)
    if not new or not old:
        return None
    version = corpus_version(run.store)
    done = run.store.marker(TRAIN, "fit")
    if done is not None and done.extra.get("version") == version:
        return run.store.read_json(FIT_FILE)
    index = load_trained(run.store)[0]
    a, b = measure(index, _sample(run, markers, old)), measure(index, _sample(run, markers, new))
    n_trained = trained.extra["plan"]["n"]
    n_now = sum(m.extra["n"] for m in markers.values())
    reasons = []
    if b["error"] > WORSE_ERROR * a["error"]:
        reasons.append(f"the new vectors' PQ error is {b['error'] / a['error']:.2f}x the "
                       "trained ones'")
    if b["imbalance"] > WORSE_BALANCE * a["imbalance"]:
        reasons.append(f"the new vectors crowd into fewer lists (imbalance "
                       f"{b['imbalance']:.2f} vs {a['imbalance']:.2f})")
    if n_now > GROWTH * n_trained:
        reasons.append(f"the corpus grew {n_now / n_trained:.1f}x since training")
    summary = (f"fit of the trained index to the {n_now - n_trained:,} vectors added since "
               f"training: PQ error {b['error']:.4f} (trained vectors {a['error']:.4f}), "
               f"list imbalance {b['imbalance']:.2f} ({a['imbalance']:.2f}). " +
               ("Retraining is worth it: " + "; ".join(reasons) +
                ". Run scripts/03_train.py --retrain, then add, prefilter and evaluate."
                if reasons else "It still fits: no need to retrain."))
    fit = {"version": version, "trained_n": n_trained, "n": n_now, "trained": a, "new": b,
           "retrain": bool(reasons), "summary": summary}
    local = run.work / "fit.json"
    local.write_text(json.dumps(fit, indent=1) + "\n")
    run.store.commit(local, FIT_FILE, TRAIN, "fit", run.frozen_fingerprint(TRAIN),
                     {"version": version, "retrain": bool(reasons)})
    local.unlink()
    logger.info("%s", summary)
    return fit
