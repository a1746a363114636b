"""Metrics against hand-computed values; absent classes never give NaN."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from trainable.train.metrics import classification_metrics, confusion


def test_hand_computed():
    y_true = [0, 0, 1, 1, 2]
    y_pred = [0, 1, 1, 1, 0]
    m = classification_metrics(y_true, y_pred, tail_classes=[1, 2, 4], num_classes=5)
    assert m["acc"] == pytest.approx(60.0)
    assert m["per_class_acc"] == pytest.approx({0: 50.0, 1: 100.0, 2: 0.0})
    assert m["tail_acc"] == pytest.approx(50.0)  # classes 1 and 2; 4 has no sample
    # F1: class 0 P=1/2 R=1/2 -> 0.5; class 1 P=2/3 R=1 -> 0.8; class 2 -> 0
    assert m["macro_f1"] == pytest.approx((0.5 + 0.8 + 0.0) / 3)
    assert m["covered_classes"].tolist() == [0, 1, 2]


def test_absent_classes_give_no_nan():
    y_true = np.array([0, 0, 1])
    y_pred = np.array([3, 0, 60])  # predictions of classes absent from y_true
    m = classification_metrics(y_true, y_pred, tail_classes=np.array([50, 60]))
    assert m["tail_acc"] == 0.0  # no tail class has a sample
    values = [m["acc"], m["tail_acc"], m["macro_f1"], *m["per_class_acc"].values()]
    assert all(math.isfinite(v) for v in values)
    assert m["macro_f1"] == pytest.approx((2 / 3 + 0.0) / 2)  # class 0: P=1 R=1/2; class 1: 0


def test_empty_split_and_tensors():
    m = classification_metrics(np.array([], dtype=int), np.array([], dtype=int), tail_classes=[0])
    assert (m["acc"], m["tail_acc"], m["macro_f1"]) == (0.0, 0.0, 0.0)
    m = classification_metrics(torch.tensor([1, 2]), torch.tensor([1, 1]), tail_classes=torch.tensor([2]))
    assert m["acc"] == 50.0 and m["tail_acc"] == 0.0


def test_labels_out_of_range():
    with pytest.raises(ValueError):
        classification_metrics([0, 61], [0, 0], tail_classes=[0])


def test_confusion():
    matrix = confusion([0, 0, 1, 2], [0, 1, 1, 0], num_classes=4)
    assert matrix.shape == (4, 4)
    assert matrix.tolist() == [[1, 1, 0, 0], [0, 1, 0, 0], [1, 0, 0, 0], [0, 0, 0, 0]]
