"""Accuracy, macro-F1 over all classes, per-class F1 and the confusion matrix."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from maskpipe.metrics import classification_metrics, confusion_matrix


def _reference_f1(y_true: list[int], y_pred: list[int], num_classes: int) -> list[float]:
    """F1 per class written out from its definition, independent of the module's algebra."""
    scores = []
    for c in range(num_classes):
        tp = sum(t == c and p == c for t, p in zip(y_true, y_pred))
        fp = sum(t != c and p == c for t, p in zip(y_true, y_pred))
        fn = sum(t == c and p != c for t, p in zip(y_true, y_pred))
        precision = tp / (tp + fp) if tp + fp else 0.0
        recall = tp / (tp + fn) if tp + fn else 0.0
        scores.append(2 * precision * recall / (precision + recall) if precision + recall else 0.0)
    return scores


def test_confusion_matrix_rows_are_true_classes_and_columns_predictions():
    matrix = confusion_matrix([0, 0, 1, 2, 2, 2], [0, 1, 1, 2, 0, 2], 3)
    assert matrix.tolist() == [[1, 1, 0], [0, 1, 0], [1, 0, 2]]


def test_scores_of_a_hand_checked_example():
    y_true = [0, 0, 1, 2, 2, 2]
    y_pred = [0, 1, 1, 2, 0, 2]
    scores = classification_metrics(y_true, y_pred, 3, ["a", "b", "c"])
    # class 0: tp1 fp1 fn1 -> 0.5; class 1: tp1 fp1 fn0 -> 2/3; class 2: tp2 fp0 fn1 -> 0.8
    assert scores["per_class_f1"] == pytest.approx([0.5, 2 / 3, 0.8])
    assert scores["macro_f1"] == pytest.approx((0.5 + 2 / 3 + 0.8) / 3)
    assert scores["accuracy"] == pytest.approx(4 / 6)
    assert scores["support"] == [2, 1, 3]
    assert scores["class_names"] == ["a", "b", "c"]
    assert scores["count"] == 6


def test_macro_f1_averages_over_every_class_including_absent_ones():
    # Classes 2..4 neither occur nor are predicted: they count as 0 in the average, as
    # sklearn's f1_score(average="macro", labels=range(5), zero_division=0) does.
    scores = classification_metrics([0, 1, 0, 1], [0, 1, 0, 1], 5)
    assert scores["per_class_f1"] == [1.0, 1.0, 0.0, 0.0, 0.0]
    assert scores["macro_f1"] == pytest.approx(2 / 5)
    assert scores["accuracy"] == 1.0


def test_per_class_f1_matches_the_definition_on_random_labels():
    rng = np.random.default_rng(0)
    y_true = rng.integers(0, 18, 500).tolist()
    y_pred = [t if rng.random() < 0.6 else int(rng.integers(0, 18)) for t in y_true]
    scores = classification_metrics(y_true, y_pred, 18)
    assert scores["per_class_f1"] == pytest.approx(_reference_f1(y_true, y_pred, 18))
    assert np.sum(scores["confusion_matrix"]) == 500


def test_accepts_tensors_and_integer_valued_floats():
    scores = classification_metrics(torch.tensor([0, 1, 2]), np.array([0.0, 1.0, 1.0]), 3)
    assert scores["accuracy"] == pytest.approx(2 / 3)


def test_scores_are_plain_json_types():
    import json

    json.dumps(classification_metrics(np.array([0, 1]), np.array([1, 1]), 2))


@pytest.mark.parametrize(
    "y_true, y_pred, message",
    [
        ([0, 3], [0, 1], "y_true holds labels outside 0..2"),
        ([0, 1], [0, -1], "y_pred holds labels outside 0..2"),
        ([0, 1, 2], [0, 1], "3 labels but y_pred has 2"),
        ([0.5], [0], "integer class ids"),
    ],
)
def test_rejects_bad_labels_with_a_clear_message(y_true, y_pred, message):
    with pytest.raises(ValueError, match=message):
        classification_metrics(y_true, y_pred, 3)


def test_empty_input_scores_zero_without_dividing_by_zero():
    scores = classification_metrics([], [], 3)
    assert scores["accuracy"] == 0.0 and scores["macro_f1"] == 0.0


def test_class_names_must_match_the_class_count():
    with pytest.raises(ValueError, match="2 class names for 3 classes"):
        classification_metrics([0], [0], 3, ["a", "b"])
