"""`maskpipe evaluate`: the competition metric, per-task scores and clear input errors."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from maskpipe.cli import main
from maskpipe.errors import DataLayoutError
from maskpipe.evaluate import evaluate_files, format_scores, score_classes
from maskpipe.labels import decode_class
from maskpipe.metrics import classification_metrics


def _write(path, ids, answers, **extra):
    pd.DataFrame({"ImageID": ids, "ans": answers, **extra}).to_csv(path, index=False)
    return path


@pytest.fixture
def files(tmp_path):
    rng = np.random.default_rng(3)
    ids = [f"{i:04d}.jpg" for i in range(60)]
    truth = rng.integers(0, 18, len(ids))
    pred = np.where(rng.random(len(ids)) < 0.7, truth, rng.integers(0, 18, len(ids)))
    truth_csv = _write(tmp_path / "truth.csv", ids, truth, mask=truth // 6)
    # the submission in another row order: rows are matched by ImageID, not position
    order = rng.permutation(len(ids))
    sub_csv = _write(tmp_path / "sub.csv", [ids[i] for i in order], pred[order])
    return sub_csv, truth_csv, truth, pred


def test_scores_match_the_metrics_of_the_aligned_labels(files):
    sub_csv, truth_csv, truth, pred = files
    scores = evaluate_files(sub_csv, truth_csv)
    expected = classification_metrics(truth, pred, 18)
    assert scores["macro_f1"] == pytest.approx(expected["macro_f1"])
    assert scores["accuracy"] == pytest.approx(expected["accuracy"])
    assert scores["confusion_matrix"] == expected["confusion_matrix"]
    assert scores["count"] == 60


def test_task_scores_decode_each_class_like_decode_class(files):
    sub_csv, truth_csv, truth, pred = files
    scores = evaluate_files(sub_csv, truth_csv)
    for position, task in enumerate(("mask", "gender", "age")):
        task_true = [decode_class(c)[position] for c in truth]
        task_pred = [decode_class(c)[position] for c in pred]
        expected = classification_metrics(task_true, task_pred, 2 if task == "gender" else 3)
        assert scores["tasks"][task]["accuracy"] == pytest.approx(expected["accuracy"]), task
        assert scores["tasks"][task]["macro_f1"] == pytest.approx(expected["macro_f1"]), task


def test_perfect_submission_scores_one_on_present_classes():
    classes = np.arange(18)
    scores = score_classes(classes, classes)
    assert scores["accuracy"] == 1.0 and scores["macro_f1"] == 1.0
    assert all(t["accuracy"] == 1.0 for t in scores["tasks"].values())


def test_json_output_and_cli_table(files, tmp_path, capsys):
    sub_csv, truth_csv, _, _ = files
    json_path = tmp_path / "scores.json"
    assert main(["evaluate", str(sub_csv), str(truth_csv), "--json", str(json_path)]) == 0
    saved = json.loads(json_path.read_text())
    out = capsys.readouterr().out
    assert f"macro-F1 {saved['macro_f1']:.4f}" in out
    assert "confusion matrix" in out and "wear/female/30-59" in out
    assert out == format_scores(saved) + "\n"


def test_ids_in_only_one_file_are_named(tmp_path):
    truth = _write(tmp_path / "truth.csv", ["a.jpg", "b.jpg", "c.jpg"], [0, 1, 2])
    sub = _write(tmp_path / "sub.csv", ["a.jpg", "b.jpg", "x.jpg"], [0, 1, 2])
    with pytest.raises(DataLayoutError) as info:
        evaluate_files(sub, truth)
    message = str(info.value)
    assert "c.jpg" in message and "missing from the submission" in message
    assert "x.jpg" in message and "not in the truth file" in message


def test_many_missing_ids_are_summarised_not_all_listed(tmp_path):
    ids = [f"{i}.jpg" for i in range(30)]
    truth = _write(tmp_path / "truth.csv", ids, [0] * 30)
    sub = _write(tmp_path / "sub.csv", ids[:2], [0, 0])
    with pytest.raises(DataLayoutError, match=r"28 ImageID\(s\).*and 23 more"):
        evaluate_files(sub, truth)


def test_missing_column_is_named(tmp_path):
    truth = _write(tmp_path / "truth.csv", ["a.jpg"], [0])
    sub = tmp_path / "sub.csv"
    pd.DataFrame({"ImageID": ["a.jpg"], "class": [0]}).to_csv(sub, index=False)
    with pytest.raises(DataLayoutError, match=r"sub.csv lacks column\(s\) ans.*ImageID, class"):
        evaluate_files(sub, truth)


@pytest.mark.parametrize("bad", [18, -1, "x", 2.5, ""])
def test_class_out_of_range_is_named(tmp_path, bad):
    truth = _write(tmp_path / "truth.csv", ["a.jpg", "b.jpg"], [0, 1])
    sub = _write(tmp_path / "sub.csv", ["a.jpg", "b.jpg"], [0, bad])
    with pytest.raises(DataLayoutError, match=r"1 row\(s\) have 'ans' outside the classes 0..17: b.jpg"):
        evaluate_files(sub, truth)


def test_duplicated_image_id_is_an_error(tmp_path):
    truth = _write(tmp_path / "truth.csv", ["a.jpg", "b.jpg"], [0, 1])
    sub = _write(tmp_path / "sub.csv", ["a.jpg", "a.jpg", "b.jpg"], [0, 0, 1])
    with pytest.raises(DataLayoutError, match="more than once: a.jpg"):
        evaluate_files(sub, truth)


def test_cli_reports_a_missing_file_with_exit_code_2(tmp_path, capsys):
    truth = _write(tmp_path / "truth.csv", ["a.jpg"], [0])
    assert main(["evaluate", str(tmp_path / "nope.csv"), str(truth)]) == 2
    assert "nope.csv does not exist" in capsys.readouterr().err
