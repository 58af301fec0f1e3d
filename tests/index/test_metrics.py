"""Retrieval metrics, by hand."""
import numpy as np
import pytest

from workflow.index.metrics import (
    class_label,
    labelled,
    precision_by_class,
    recall_at,
    tie_aware_recall,
)


def test_recall_at_k_by_hand():
    gt = np.array([[1, 2, 3], [4, 5, -1]])
    I = np.array([[2, 9, 1], [5, 4, 7]])
    assert recall_at(I, gt, 1) == 0.0
    assert recall_at(I, gt, 2) == pytest.approx(3 / 4)
    assert recall_at(I, gt, 3) == pytest.approx(4 / 5)  # the 2nd query has 2 exact results


def test_tie_aware_recall_counts_duplicates_of_exact_neighbours():
    xb = np.eye(4, dtype=np.float16)
    xb[3] = xb[1]  # 3 duplicates 1
    xq = np.array([[0.0, 1.0, 0.0, 0.0]], np.float32)
    gt_D = np.array([[1.0]], np.float32)  # the exact top 1 is id 1
    assert tie_aware_recall(np.array([[3]]), xq, xb, gt_D, k=1) == 1.0
    assert recall_at(np.array([[3]]), np.array([[1]]), 1) == 0.0
    assert tie_aware_recall(np.array([[0]]), xq, xb, gt_D, k=1) == 0.0


def test_precision_by_class_and_labels():
    labels = ["a", "a", "b", "b", "b"]
    I = np.array([[1, 2], [0, 4], [3, 4]])
    mean, per = precision_by_class(I, ["a", "a", "b"], labels, 2)
    assert per == {"a": pytest.approx(0.5), "b": 1.0} and mean == pytest.approx(2 / 3)
    assert class_label("train/daisy/x.jpg") == "daisy" and class_label("x.jpg") == ""
    assert labelled(["a", "a", "b", "b"]) and not labelled(["a", "b"])
    assert not labelled(["a", "a", ""])
