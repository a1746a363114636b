"""Validation metrics of the seed's console line: accuracy, tail-class mean accuracy and
macro-F1 (scikit-learn), plus per-class accuracy and the confusion matrix.

Which classes the averages cover: only the classes present in ``y_true`` (the "covered"
classes). A class with no validation sample has no defined recall, and counting it as 0
(or NaN) would make the numbers depend on how the split was drawn rather than on the
model. Predictions *of* an absent class still count: they are errors for the true class.
"""

from __future__ import annotations

import numpy as np
from sklearn.metrics import confusion_matrix, f1_score, recall_score


def _as_labels(values, num_classes: int, what: str) -> np.ndarray:
    if hasattr(values, "detach"):
        values = values.detach().cpu().numpy()
    array = np.asarray(values, dtype=np.int64).reshape(-1)
    if array.size and (array.min() < 0 or array.max() >= num_classes):
        raise ValueError(f"{what} holds a class outside 0..{num_classes - 1}")
    return array


def classification_metrics(y_true, y_pred, tail_classes, num_classes: int = 61) -> dict:
    """Metrics of predictions ``y_pred`` against labels ``y_true`` (arrays of class ids).

    - ``acc``: % of samples predicted correctly (0.0 for an empty split).
    - ``per_class_acc``: {class id: % recall} for every covered class (present in y_true).
    - ``tail_acc``: mean of per_class_acc over the tail classes that are covered, in %;
      0.0 when no tail class has a validation sample.
    - ``macro_f1``: sklearn f1_score(average="macro", zero_division=0) over the covered
      classes only, in 0..1 (0.0 for an empty split).
    - ``covered_classes``: sorted np.ndarray of the class ids present in y_true.
    No value is NaN.
    """
    y_true = _as_labels(y_true, num_classes, "y_true")
    y_pred = _as_labels(y_pred, num_classes, "y_pred")
    if y_true.shape != y_pred.shape:
        raise ValueError(f"y_true has {y_true.size} labels but y_pred has {y_pred.size}")
    covered = np.unique(y_true)
    if y_true.size == 0:
        return {"acc": 0.0, "tail_acc": 0.0, "macro_f1": 0.0, "per_class_acc": {},
                "covered_classes": covered}
    correct = y_true == y_pred
    recall = recall_score(y_true, y_pred, labels=covered, average=None, zero_division=0)
    per_class = {int(c): 100.0 * float(r) for c, r in zip(covered, recall, strict=True)}
    tails = [int(c) for c in np.asarray(tail_classes).reshape(-1) if int(c) in per_class]
    tail_acc = float(np.mean([per_class[c] for c in tails])) if tails else 0.0
    macro_f1 = float(f1_score(y_true, y_pred, labels=covered, average="macro", zero_division=0))
    return {
        "acc": 100.0 * float(correct.mean()),
        "tail_acc": tail_acc,
        "macro_f1": macro_f1,
        "per_class_acc": per_class,
        "covered_classes": covered,
    }


def confusion(y_true, y_pred, num_classes: int = 61) -> np.ndarray:
    """Counts [num_classes, num_classes], rows = true class, columns = predicted class."""
    y_true = _as_labels(y_true, num_classes, "y_true")
    y_pred = _as_labels(y_pred, num_classes, "y_pred")
    return confusion_matrix(y_true, y_pred, labels=np.arange(num_classes))
