"""Classification scores in plain numpy: accuracy, macro-F1, per-class F1, confusion matrix.

Macro-F1 averages over *every* class ``0..num_classes-1`` (a class that never occurs and is
never predicted scores 0), as ``sklearn.metrics.f1_score(average="macro",
labels=range(n), zero_division=0)`` does and as the competition scored submissions.
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np


def confusion_matrix(y_true: Any, y_pred: Any, num_classes: int) -> np.ndarray:
    """``num_classes x num_classes`` counts; rows are the true class, columns the prediction."""
    true, pred = _check_labels(y_true, y_pred, num_classes)
    flat = np.bincount(true * num_classes + pred, minlength=num_classes * num_classes)
    return flat.reshape(num_classes, num_classes)


def f1_from_confusion(matrix: np.ndarray) -> np.ndarray:
    """Per-class F1 from a confusion matrix; 0 where precision and recall are both undefined."""
    matrix = np.asarray(matrix, dtype=np.float64)
    true_pos = np.diag(matrix)
    predicted = matrix.sum(axis=0)
    actual = matrix.sum(axis=1)
    # F1 = 2TP / (2TP + FP + FN) = 2TP / (predicted + actual); the denominator is 0 only when
    # the class neither occurs nor is predicted, which scores 0 (zero_division=0).
    denominator = predicted + actual
    return np.divide(2 * true_pos, denominator, out=np.zeros_like(true_pos), where=denominator > 0)


def classification_metrics(
    y_true: Any,
    y_pred: Any,
    num_classes: int,
    class_names: Sequence[str] | None = None,
) -> dict[str, Any]:
    """Scores of predictions against true labels, as plain JSON-ready Python values.

    Returns ``{"accuracy", "macro_f1", "per_class_f1", "confusion_matrix", "class_names",
    "support", "count"}``; ``support`` is the number of true samples of each class.
    """
    if class_names is None:
        class_names = [str(c) for c in range(num_classes)]
    if len(class_names) != num_classes:
        raise ValueError(f"got {len(class_names)} class names for {num_classes} classes")
    matrix = confusion_matrix(y_true, y_pred, num_classes)
    per_class = f1_from_confusion(matrix)
    total = int(matrix.sum())
    accuracy = float(np.trace(matrix) / total) if total else 0.0
    return {
        "accuracy": accuracy,
        "macro_f1": float(per_class.mean()),
        "per_class_f1": [float(v) for v in per_class],
        "confusion_matrix": matrix.tolist(),
        "class_names": list(class_names),
        "support": [int(v) for v in matrix.sum(axis=1)],
        "count": total,
    }


def _check_labels(y_true: Any, y_pred: Any, num_classes: int) -> tuple[np.ndarray, np.ndarray]:
    if num_classes < 1:
        raise ValueError(f"num_classes must be >= 1, got {num_classes}")
    true = _as_labels(y_true, "y_true")
    pred = _as_labels(y_pred, "y_pred")
    if true.shape != pred.shape:
        raise ValueError(f"y_true has {true.size} labels but y_pred has {pred.size}")
    for name, values in (("y_true", true), ("y_pred", pred)):
        if values.size and (values.min() < 0 or values.max() >= num_classes):
            bad = values[(values < 0) | (values >= num_classes)]
            raise ValueError(
                f"{name} holds labels outside 0..{num_classes - 1}: {sorted(set(bad.tolist()))[:5]}"
            )
    return true, pred


def _as_labels(values: Any, name: str) -> np.ndarray:
    if hasattr(values, "detach"):  # torch tensors, without importing torch here
        values = values.detach().cpu().numpy()
    array = np.asarray(values).reshape(-1)
    if array.size == 0:
        return array.astype(np.int64)
    if not np.issubdtype(array.dtype, np.integer):
        if not np.issubdtype(array.dtype, np.floating) or not np.all(array == np.round(array)):
            raise ValueError(f"{name} must hold integer class ids, got dtype {array.dtype}")
    return array.astype(np.int64)
