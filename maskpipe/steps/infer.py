"""The ``ensemble-infer`` step: the submission for the eval images, 18-class scores on the
validation people, the Markdown summary; and the HTML inference report, which ``maskpipe infer``
writes through the same ``write_inference_report``."""

from __future__ import annotations

from pathlib import Path
from typing import Mapping, Optional, Sequence, Tuple, Union

from maskpipe.atomic import write_text
from maskpipe.errors import DataLayoutError
from maskpipe.labels import CLASS_NAMES, NUM_COMBINED_CLASSES
from maskpipe.steps import StepOutputs


def write_inference_report(
    result, html_path: Path, facts: Sequence[Tuple[str, str]], *, truth: Optional[Path] = None,
    extra_sets: Sequence = (), cache_dir: Optional[Path] = None,
) -> Path:  # fmt: skip
    """The HTML report of a ``predict_submission`` result: its predictions, scored against
    ``truth`` (else ``eval_truth.csv`` beside the data, when there is one), then ``extra_sets``."""
    from maskpipe.reports import write_infer_report
    from maskpipe.reports.infer_report import find_eval_truth, submission_set

    truth = truth or find_eval_truth(result.data_root)
    facts = list(facts) + ([("truth", str(truth))] if truth is not None else [])
    sets = [submission_set(result, truth), *extra_sets]
    return write_infer_report(sets, html_path, facts=facts, cache_dir=cache_dir)


def infer_step(
    index_dir: Path,
    models: Union[Path, Mapping[str, Path]],
    submission_path: Path,
    report_path: Path,
    html_path: Path,
    *,
    preset: str = "default",
    overrides: Sequence[str] = (),
    tta: bool = False,
    backend: str = "auto",
) -> Tuple[StepOutputs, Optional[StepOutputs]]:
    """Run ``models`` (an exported folder, or task -> checkpoint folder) on the eval images of
    ``index_dir`` into ``submission_path`` and on its validation people; write both reports.
    Returns (the submission's metadata, the validation metrics and confusion or None)."""
    from maskpipe.config import load_config
    from maskpipe.data.index import eval_index_path, read_eval_index, read_index
    from maskpipe.ensemble import classes_from_probs, predict_rows_probs, predict_submission
    from maskpipe.metrics import classification_metrics
    from maskpipe.reports import PredictionSet
    from maskpipe.runtime import open_backend

    infer = load_config(preset, list(overrides)).infer
    index_path = Path(index_dir) / "index.parquet"
    options = {"batch_size": infer.batch_size, "num_workers": infer.num_workers}
    models = Path(models) if isinstance(models, (str, Path)) else {t: Path(f) for t, f in models.items()}
    # The model first: a wrong or altered folder fails before any image is read.
    opened = open_backend(models, backend, tta=tta)
    tta = opened.tta
    ran = f"exported model, {opened.name} backend" if opened.card is not None else "three checkpoints, torch backend"
    print(f"running the {ran}")

    if not eval_index_path(index_path).exists():
        raise DataLayoutError(
            f"{eval_index_path(index_path)} does not exist: the data root has no eval/ folder "
            "(eval/info.csv and eval/images/), so there is nothing to predict; add it and rerun"
        )
    eval_frame, data_root = read_eval_index(eval_index_path(index_path))
    result = predict_submission(opened, eval_frame, submission_path, data_root=data_root, **options)
    print(result.summary())
    submitted = StepOutputs(
        metadata={"format": "csv", "filename": "submission.csv", "rows": len(result.submission), "tta": tta,
                  "model": ran}
    )  # fmt: skip

    frame, data_root = read_index(index_path)
    val = frame[frame["split"] == "val"]
    scores, scored, extra_sets = None, None, []
    if len(val):
        val_probs = predict_rows_probs(opened, val, data_root, **options)
        y_pred = classes_from_probs(val_probs)
        scores = classification_metrics(val["class"].to_numpy(), y_pred, NUM_COMBINED_CLASSES, list(CLASS_NAMES))
        scored = StepOutputs(
            metrics={"val_accuracy": float(scores["accuracy"]), "val_macro_f1": float(scores["macro_f1"]),
                     "val_images": float(len(val))},
            confusion=(list(CLASS_NAMES), [[int(v) for v in row] for row in scores["confusion_matrix"]]),
        )  # fmt: skip
        extra_sets.append(
            PredictionSet(
                "validation people", data_root, val["path"].tolist(), val["profile"].tolist(),
                val_probs, val["class"].to_numpy(),
            )  # fmt: skip
        )

    write_text(report_path, infer_markdown(result, ran, tta, val, scores))
    facts = [("model", ran), ("TTA", "on" if tta else "off")]
    write_inference_report(result, html_path, facts, extra_sets=extra_sets)
    return submitted, scored


def infer_markdown(result, ran: str, tta: bool, val, scores) -> str:
    """The step's Markdown summary: predicted class counts and the validation scores."""
    predicted = result.submission["ans"].value_counts()
    lines = [
        "# Ensemble inference",
        "",
        f"- submission rows: **{len(result.submission)}** (TTA: {'on' if tta else 'off'})",
        f"- model: {ran}",
    ]
    if scores is None:
        lines.append("- validation: no `split == val` people in the index (val_fraction 0)")
    else:
        lines += [
            f"- validation people: {val['profile'].nunique()} ({len(val)} images)",
            f"- validation 18-class accuracy: **{scores['accuracy']:.4f}**",
            f"- validation 18-class macro-F1: **{scores['macro_f1']:.4f}**",
        ]
    lines += ["", "| class | name | predicted (eval) | val F1 |", "|---:|---|---:|---:|"]
    for cls, name in enumerate(CLASS_NAMES):
        f1 = "" if scores is None else f"{scores['per_class_f1'][cls]:.3f}"
        lines.append(f"| {cls} | {name} | {int(predicted.get(cls, 0))} | {f1} |")
    return "\n".join(lines) + "\n"
