"""All-vs-all retrieval quality of a set of labelled features (pure numpy, no I/O).

Each image is a query against all the others (itself excluded), ranked by cosine
similarity; an image with the same label is relevant.
"""
from __future__ import annotations

import numpy as np


def l2_normalize(x: np.ndarray) -> np.ndarray:
    """Rows of x [n, d] scaled to unit length; zero rows stay zero. float32."""
    x = np.asarray(x, np.float32)
    assert x.ndim == 2, x.shape
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    return x / np.maximum(norms, np.finfo(np.float32).tiny)


def _check(feats: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    feats = np.asarray(feats)
    labels = np.asarray(labels)
    assert feats.ndim == 2 and labels.shape == (feats.shape[0],), (feats.shape, labels.shape)
    assert feats.shape[0] >= 2, "need at least two items"
    assert np.isfinite(feats).all(), "features must be finite"
    return l2_normalize(feats), labels


def _blocks(n: int, budget: int = 1 << 24):
    b = max(1, budget // n)
    for i in range(0, n, b):
        yield i, min(n, i + b)


def _similarities(x: np.ndarray, i0: int, i1: int) -> np.ndarray:
    """Cosine similarities of queries i0:i1 to all items, self set to -inf. [b, n] float64"""
    s = (x[i0:i1] @ x.T).astype(np.float64)
    s[np.arange(i1 - i0), np.arange(i0, i1)] = -np.inf
    return s


def average_precisions(feats: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """Per-query average precision [n]; NaN for a query whose label no other item has."""
    x, labels = _check(feats, labels)
    n = len(x)
    ap = np.full(n, np.nan)
    for i0, i1 in _blocks(n):
        s = _similarities(x, i0, i1)
        order = np.argsort(-s, axis=1, kind="stable")[:, :-1]  # self (-inf) sorts last
        assert (order != np.arange(i0, i1)[:, None]).all()
        rel = labels[order] == labels[i0:i1, None]                       # [b, n-1]
        hits = np.cumsum(rel, axis=1)
        ranks = np.arange(1, n)
        nrel = hits[:, -1]
        with np.errstate(invalid="ignore", divide="ignore"):
            ap[i0:i1] = np.where(nrel > 0, (rel * hits / ranks).sum(axis=1) / nrel, np.nan)
    return ap


def retrieval_map(feats: np.ndarray, labels: np.ndarray) -> float:
    """Mean average precision over the queries that have at least one relevant item."""
    ap = average_precisions(feats, labels)
    assert not np.isnan(ap).all(), "no query has a relevant item (every label is unique)"
    return float(np.nanmean(ap))


def precision_at_1(feats: np.ndarray, labels: np.ndarray) -> float:
    """Fraction of queries whose nearest other item has the same label (all queries)."""
    x, labels = _check(feats, labels)
    n = len(x)
    correct = 0
    for i0, i1 in _blocks(n):
        nn = np.argmax(_similarities(x, i0, i1), axis=1)
        correct += int((labels[nn] == labels[i0:i1]).sum())
    return correct / n
