"""Retrieval metrics of search results against exact search and class labels (numpy)."""
from __future__ import annotations

import numpy as np


def recall_at(I: np.ndarray, gt: np.ndarray, k: int) -> float:
    """Mean over queries of |top k ∩ exact top k| / (exact results among the top k)."""
    hits, total = 0, 0
    for a, b in zip(I[:, :k], gt[:, :k]):
        b = b[b >= 0]
        hits += len(np.intersect1d(a[a >= 0], b))
        total += len(b)
    return hits / total if total else 1.0


def tie_aware_recall(I: np.ndarray, xq: np.ndarray, xb: np.ndarray, gt_D: np.ndarray,
                     k: int = 10, eps: float = 1e-4) -> float:
    """recall@k where a result counts if its exact score is within eps of the k-th exact
    score: a duplicate of an exact neighbour is as good as the neighbour."""
    out = []
    for i in range(len(I)):
        ids = I[i, :k][I[i, :k] >= 0]
        kth = gt_D[i, :k][np.isfinite(gt_D[i, :k])]
        if len(kth) == 0:
            continue
        s = np.asarray(xb[np.sort(ids)], np.float32) @ xq[i] if len(ids) else np.zeros(0)
        out.append(min(1.0, float((s >= kth[-1] - eps).sum()) / len(kth)))
    return float(np.mean(out)) if out else 1.0


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
