"""Score a submission (``ImageID,ans``) against a truth CSV with the competition's metric.

The competition ranked by macro-F1 over the 18 classes; accuracy, the per-task scores (each
class decoded with :func:`maskpipe.labels.decode_class`), per-class F1 and the confusion matrix
say where the errors are.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from maskpipe.atomic import write_json
from maskpipe.errors import DataLayoutError
from maskpipe.labels import CLASS_NAMES, NUM_COMBINED_CLASSES, TASK_CLASS_NAMES, TASKS
from maskpipe.metrics import classification_metrics

REQUIRED_COLUMNS = ("ImageID", "ans")
_FEW = 5


def evaluate_files(
    submission_csv: str | Path, truth_csv: str | Path, json_path: str | Path | None = None
) -> dict[str, Any]:
    """Scores of ``submission_csv`` against ``truth_csv`` (both ``ImageID,ans``).

    Raises:
        DataLayoutError: a file is missing or unreadable, lacks a column, repeats an ImageID,
            holds a class outside 0..17, or the two files list different ImageIDs.
    """
    submission = read_answers(submission_csv, "submission")
    truth = read_answers(truth_csv, "truth")
    _check_same_ids(submission, truth, Path(submission_csv), Path(truth_csv))
    merged = truth.merge(submission, on="ImageID", suffixes=("_truth", "_pred"), validate="1:1")
    scores = score_classes(merged["ans_truth"].to_numpy(), merged["ans_pred"].to_numpy())
    scores["submission"] = str(submission_csv)
    scores["truth"] = str(truth_csv)
    if json_path is not None:
        write_json(json_path, scores)
    return scores


def score_classes(y_true: np.ndarray, y_pred: np.ndarray) -> dict[str, Any]:
    """18-class scores plus, under ``tasks``, the scores of each decoded task label."""
    y_true = np.asarray(y_true, dtype=np.int64)
    y_pred = np.asarray(y_pred, dtype=np.int64)
    scores = classification_metrics(y_true, y_pred, NUM_COMBINED_CLASSES, list(CLASS_NAMES))
    scores["tasks"] = {}
    for position, task in enumerate(TASKS):
        names = list(TASK_CLASS_NAMES[task])
        scores["tasks"][task] = classification_metrics(
            _task_labels(y_true, position), _task_labels(y_pred, position), len(names), names
        )
    return scores


def _task_labels(classes: np.ndarray, position: int) -> np.ndarray:
    # decode_class, on whole arrays: class = mask * 6 + gender * 3 + age.
    return (classes // 6, (classes // 3) % 2, classes % 3)[position]


def read_answers(path: str | Path, what: str) -> pd.DataFrame:
    """``ImageID`` (str) and ``ans`` (int 0..17) of a CSV, checked."""
    path = Path(path)
    if path.is_dir():
        raise DataLayoutError(f"{what} file {path} is a folder; pass the CSV file (ImageID,ans) itself")
    if not path.is_file():
        raise DataLayoutError(f"{what} file {path} does not exist")
    try:
        frame = pd.read_csv(path, dtype={"ImageID": str}, keep_default_na=False)
    except (OSError, UnicodeDecodeError, pd.errors.ParserError, pd.errors.EmptyDataError) as exc:
        raise DataLayoutError(f"{what} file {path} is not a readable CSV: {exc}") from None
    missing = [c for c in REQUIRED_COLUMNS if c not in frame.columns]
    if missing:
        raise DataLayoutError(
            f"{what} file {path} lacks column(s) {', '.join(missing)}; it has "
            f"{', '.join(map(str, frame.columns)) or 'none'} (expected header: ImageID,ans)"
        )
    frame = frame[list(REQUIRED_COLUMNS)].copy()
    frame["ImageID"] = frame["ImageID"].str.strip()
    frame["ans"] = _classes(frame, path, what)
    dups = frame.loc[frame["ImageID"].duplicated(), "ImageID"].unique().tolist()
    if dups:
        raise DataLayoutError(
            f"{what} file {path} lists {len(dups)} ImageID(s) more than once: {_few(dups)}"
        )
    return frame


def _classes(frame: pd.DataFrame, path: Path, what: str) -> np.ndarray:
    values = pd.to_numeric(frame["ans"].astype(str).str.strip(), errors="coerce")
    integral = values.notna() & (values == values.round())
    in_range = integral & (values >= 0) & (values < NUM_COMBINED_CLASSES)
    if not in_range.all():
        bad = frame.loc[~in_range]
        examples = [f"{i}={a!r}" for i, a in zip(bad["ImageID"], bad["ans"])]
        raise DataLayoutError(
            f"{what} file {path}: {len(bad)} row(s) have 'ans' outside the classes "
            f"0..{NUM_COMBINED_CLASSES - 1}: {_few(examples)}"
        )
    return values.to_numpy().astype(np.int64)


def _check_same_ids(submission: pd.DataFrame, truth: pd.DataFrame, sub_path: Path, truth_path: Path) -> None:
    sub_ids, truth_ids = set(submission["ImageID"]), set(truth["ImageID"])
    only_sub = sorted(sub_ids - truth_ids)
    only_truth = sorted(truth_ids - sub_ids)
    problems = []
    if only_truth:
        problems.append(f"{len(only_truth)} ImageID(s) of {truth_path} missing from the submission: {_few(only_truth)}")
    if only_sub:
        problems.append(f"{len(only_sub)} ImageID(s) of {sub_path} not in the truth file: {_few(only_sub)}")
    if problems:
        raise DataLayoutError(
            "; ".join(problems) + "; score a submission made for the same eval set (every row of "
            "eval/info.csv)"
        )


def _few(items: list[Any]) -> str:
    shown = ", ".join(str(i) for i in items[:_FEW])
    return shown + (f" (and {len(items) - _FEW} more)" if len(items) > _FEW else "")


# ---------------------------------------------------------------------------------------------
# the readable report


def format_scores(scores: dict[str, Any], detail: bool = True) -> str:
    """Summary and per-task scores, then (``detail``) per-class F1 and the confusion matrix,
    as plain text."""
    lines = [
        f"images: {scores['count']}",
        f"18 classes: macro-F1 {scores['macro_f1']:.4f} (competition metric), "
        f"accuracy {scores['accuracy']:.4f}",
        "",
        f"{'task':<8}{'accuracy':>10}{'macro-F1':>10}",
    ]
    for task, task_scores in scores["tasks"].items():
        lines.append(f"{task:<8}{task_scores['accuracy']:>10.4f}{task_scores['macro_f1']:>10.4f}")
    if not detail:
        return "\n".join(lines)
    lines += ["", f"{'class':>5}  {'name':<24}{'support':>8}{'F1':>8}"]
    for c, (name, support, f1) in enumerate(
        zip(scores["class_names"], scores["support"], scores["per_class_f1"])
    ):
        lines.append(f"{c:>5}  {name:<24}{support:>8}{f1:>8.3f}")
    lines += ["", "confusion matrix (rows: true class, columns: predicted class)"]
    matrix = scores["confusion_matrix"]
    width = max(3, len(str(max((max(row) for row in matrix), default=0))) + 1)
    lines.append(" " * 5 + "".join(f"{c:>{width}}" for c in range(len(matrix))))
    for c, row in enumerate(matrix):
        lines.append(f"{c:>5}" + "".join(f"{v:>{width}}" for v in row))
    return "\n".join(lines)
