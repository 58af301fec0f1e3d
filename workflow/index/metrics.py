"""Retrieval metrics of search results against exact search and class labels (numpy)."""
from __future__ import annotations

import numpy as np

ROWS = 1024  # queries scored at a time


def recall_at(I: np.ndarray, gt: np.ndarray, k: int) -> float:
    """Mean over queries of |top k ∩ exact top k| / (exact results among the top k)."""
    hits, total = 0, 0
    for lo in range(0, len(I), ROWS):
        a, b = I[lo:lo + ROWS, :k], gt[lo:lo + ROWS, :k]
        found = (a[:, :, None] == b[:, None, :]).any(axis=1) & (b >= 0)
        hits += int(found.sum())
        total += int((b >= 0).sum())
    return hits / total if total else 1.0


def tie_aware_recall(I: np.ndarray, xq: np.ndarray, xb: np.ndarray, gt_D: np.ndarray,
                     k: int = 10, eps: float = 1e-4) -> float:
    """recall@k where a result counts if its exact score is within eps of the k-th exact
    score: a duplicate of an exact neighbour is as good as the neighbour."""
    out = []
    for lo in range(0, len(I), ROWS):
        ids, q = I[lo:lo + ROWS, :k], xq[lo:lo + ROWS]
        gd = gt_D[lo:lo + ROWS, :k]
        n_exact = np.isfinite(gd).sum(axis=1)
        kth = np.where(n_exact > 0, gd[np.arange(len(gd)), np.maximum(n_exact - 1, 0)], 0)
        union = np.unique(ids[ids >= 0])  # each row read once, in order
        rows = np.asarray(xb[union], np.float32)
        s = np.einsum("qkd,qd->qk", rows[np.searchsorted(union, np.maximum(ids, 0))], q) \
            if len(union) else np.zeros(ids.shape, np.float32)
        close = ((s >= kth[:, None] - eps) & (ids >= 0)).sum(axis=1)
        got = n_exact > 0
        out.append(np.minimum(1.0, close[got] / n_exact[got]))
    out = np.concatenate(out) if out else np.zeros(0)
    return float(out.mean()) if len(out) else 1.0


def precision_by_class(I: np.ndarray, query_labels: list[str], labels: list[str], k: int):
    """(mean precision@k over queries, {class: mean precision@k})."""
    per: dict[str, list[float]] = {}
    for row, ql in zip(I[:, :k], query_labels):
        got = [labels[i] == ql for i in row if i >= 0]
        per.setdefault(ql, []).append(sum(got) / k)
    allp = [p for v in per.values() for p in v]
    return float(np.mean(allp)), {c: float(np.mean(v)) for c, v in sorted(per.items())}


def class_label(key: str) -> str:
    """The class of an image in a folder-per-class corpus: its folder's name."""
    parts = key.replace("\\", "/").split("/")
    return parts[-2] if len(parts) > 1 else ""


def labelled(labels: list[str]) -> bool:
    """Folder-per-class: every item in a folder, at least two classes, and classes that
    hold more than one item on average."""
    classes = set(labels)
    return "" not in classes and 2 <= len(classes) <= len(labels) / 2
