"""The ``ensemble-infer`` report: what the three models predict, and how well where the truth
is known.

The predicted class distribution of the submission always; for every set of images whose
classes are known (the validation people, or an ``eval_truth.csv``) the 18-class confusion
heatmap and the per-class F1; and a gallery of sample predictions, right and wrong, with the
three task labels and their probabilities under each photo.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from maskpipe import labels
from maskpipe.reports.page import Page, bar_chart, card, class_axis, heatmap, spread_sample, write_page

GALLERY_WRONG = 12
GALLERY_RIGHT = 12


@dataclass
class PredictionSet:
    """Predictions for a set of images.

    Args:
        name: what the images are, e.g. ``"eval images"`` or ``"validation people"``.
        data_root: the root ``paths`` are relative to (local folder or ``s3://``).
        paths: image paths relative to ``data_root``.
        names: the caption of each image (its ImageID or profile folder).
        probs: per-task softmax probabilities, ``{task: (N, classes)}``.
        truth: the true 18-class ids, when known.
    """

    name: str
    data_root: str
    paths: Sequence[str]
    names: Sequence[str]
    probs: dict[str, np.ndarray]
    truth: np.ndarray | None = None

    @property
    def predicted(self) -> np.ndarray:
        mask, gender, age = (self.probs[task].argmax(axis=1) for task in labels.TASKS)
        return mask * 6 + gender * 3 + age


EVAL_TRUTH_FILE = "eval_truth.csv"


def submission_set(result: Any, truth_csv: str | os.PathLike[str] | None = None) -> PredictionSet:
    """The eval images of a :class:`maskpipe.ensemble.InferResult`, with their true classes
    from ``truth_csv`` (``ImageID,ans``, e.g. the synthetic data's ``eval_truth.csv``)."""
    ids = result.frame["image_id"].astype(str).tolist()
    truth = None
    if truth_csv is not None:
        from maskpipe.errors import DataLayoutError
        from maskpipe.evaluate import read_answers

        answers = read_answers(truth_csv, "truth").set_index("ImageID")["ans"]
        missing = [i for i in ids if i not in answers.index]
        if missing:
            raise DataLayoutError(
                f"truth file {truth_csv} lacks {len(missing)} of the {len(ids)} eval images "
                f"(e.g. {', '.join(missing[:3])}); pass the truth of this eval set"
            )
        truth = answers.loc[ids].to_numpy()
    return PredictionSet("eval images", result.data_root, result.frame["path"].tolist(), ids, result.probs, truth)


def find_eval_truth(data_root: str) -> Path | None:
    """``<data_root>/eval_truth.csv`` when the root is a local folder that has one."""
    from maskpipe.storage import is_s3

    if is_s3(data_root):
        return None
    path = Path(data_root) / EVAL_TRUTH_FILE
    return path if path.is_file() else None


def write_infer_report(
    sets: Sequence[PredictionSet],
    out_path: str | os.PathLike[str],
    *,
    facts: Sequence[tuple[str, Any]] = (),
    cache_dir: str | os.PathLike[str] | None = None,
) -> Path:
    """Write the HTML report of an inference run. ``sets[0]`` is what the submission holds;
    every set with ``truth`` is scored; the gallery shows the first set with truth (right and
    wrong predictions), else ``sets[0]``."""
    from maskpipe.evaluate import score_classes

    submission = sets[0]
    page = Page("Ensemble inference", f"{len(submission.paths)} {submission.name} from {submission.data_root}")
    scored = [s for s in sets if s.truth is not None]
    page.facts(
        [
            ("images predicted", len(submission.paths)),
            ("classes predicted", f"{len(np.unique(submission.predicted))} of {labels.NUM_COMBINED_CLASSES}"),
            *facts,
            *((f"{s.name}: 18-class macro-F1", score_classes(s.truth, s.predicted)["macro_f1"]) for s in scored),
        ]
    )
    page.heading(f"Predicted classes ({submission.name})")
    page.charts(
        bar_chart(
            class_axis(),
            {"predicted": np.bincount(submission.predicted, minlength=labels.NUM_COMBINED_CLASSES)},
            title="Predicted class distribution", ylabel="images", horizontal=True, width=7.5, height=5.2,
        )  # fmt: skip
    )
    if not scored:
        page.paragraph("No truth known for these images (no validation people, no eval_truth.csv): no scores.")
    for known in scored:
        _scores_section(page, known, score_classes(known.truth, known.predicted))

    shown = scored[0] if scored else submission
    page.heading(f"Sample predictions ({shown.name})")
    _gallery(page, shown, cache_dir)
    return write_page(page, out_path)


def _scores_section(page: Page, known: PredictionSet, scores: dict[str, Any]) -> None:
    page.heading(f"Scores on {known.name} ({scores['count']} images)")
    page.facts(
        [
            ("18-class accuracy", scores["accuracy"]),
            ("18-class macro-F1", scores["macro_f1"]),
            *((f"{task} accuracy / macro-F1", f"{t['accuracy']:.4f} / {t['macro_f1']:.4f}") for task, t in scores["tasks"].items()),
        ]
    )
    page.charts(
        heatmap(scores["confusion_matrix"], class_axis(), title="18 classes: true vs predicted"),
        bar_chart(
            class_axis(), {"F1": scores["per_class_f1"]},
            title="F1 per class", ylabel="F1", horizontal=True, width=5.5, height=5.2, value_format="{:.2f}", value_max=1.08,
        ),  # fmt: skip
    )


def _gallery(page: Page, shown: PredictionSet, cache_dir: str | os.PathLike[str] | None) -> None:
    from maskpipe.storage import localize

    predicted = shown.predicted
    if shown.truth is None:
        picked = list(spread_sample(len(predicted), GALLERY_WRONG + GALLERY_RIGHT))
    else:
        wrong = np.flatnonzero(predicted != shown.truth)
        right = np.flatnonzero(predicted == shown.truth)
        picked = [*wrong[spread_sample(len(wrong), GALLERY_WRONG)], *right[spread_sample(len(right), GALLERY_RIGHT)]]
        page.paragraph(
            f"{len(wrong)} wrong, {len(right)} right; showing {min(len(wrong), GALLERY_WRONG)} wrong "
            f"(red) and {min(len(right), GALLERY_RIGHT)} right (green), drawn at random."
        )
    local = localize(shown.data_root, [shown.paths[i] for i in picked], Path(cache_dir) if cache_dir else None)
    page.gallery([_card(shown, i, path) for i, path in zip(picked, local)])


def _card(shown: PredictionSet, i: int, path: Path) -> str:
    name = str(shown.names[i])
    lines = [name if len(name) <= 18 else name[:16] + "…"]
    for task in labels.TASKS:
        probs = shown.probs[task][i]
        label = int(probs.argmax())
        lines.append(f"{task}: {labels.TASK_CLASS_NAMES[task][label]} ({probs[label]:.2f})")
    status = ""
    if shown.truth is not None:
        right = shown.truth[i] == shown.predicted[i]
        status = "right" if right else "wrong"
        if not right:
            lines.append(f"true: {labels.CLASS_NAMES[int(shown.truth[i])]}")
    return card(path, lines, status=status)
