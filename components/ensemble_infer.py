"""Pipeline step ``ensemble-infer``: the exported model (or the three task models) ->
submission.csv and validation scores."""

from typing import List, Optional

from kfp import dsl
from kfp.dsl import HTML, ClassificationMetrics, Dataset, Input, Markdown, Metrics, Model, Output

from components.image import IMAGE


@dsl.component(base_image=IMAGE, install_kfp_package=False)
def ensemble_infer(
    index: Input[Dataset],
    mask_model: Input[Model],
    gender_model: Input[Model],
    age_model: Input[Model],
    submission: Output[Dataset],
    metrics: Output[Metrics],
    confusion_matrix: Output[ClassificationMetrics],
    report: Output[Markdown],
    html_report: Output[HTML],
    exported_model: Optional[Input[Model]] = None,
    preset: str = "default",
    overrides: List[str] = [],
    tta: bool = False,
    backend: str = "auto",
):
    """Combine the mask, gender and age models into the 18-class submission.

    Opens the models with ``maskpipe.runtime.open_backend``, then wraps
    ``maskpipe.ensemble.predict_submission`` for the eval images and
    ``predict_rows_probs`` + ``maskpipe.metrics.classification_metrics`` for the validation
    people (the index's ``split == "val"`` rows), whose labels are known. Given
    ``exported_model`` (what ``export-model`` wrote), it runs that folder, so the scores are
    those of the model that is served; otherwise the three checkpoints. On a cluster the
    pipeline runs the first on a CPU node that sees no GPU, where ``auto`` is ONNX Runtime on
    the exported graph (fp32 or int8, what ``deploy`` serves), and the second on a GPU node.

    Args:
        index: Folder written by ``index-data`` (``index.parquet``, ``index.eval.parquet``).
        mask_model: Checkpoint folder of the mask model.
        gender_model: Checkpoint folder of the gender model.
        age_model: Checkpoint folder of the age model.
        exported_model: The folder ``export-model`` wrote (``model.onnx``, ``model.json``, the
            three checkpoints); absent when the pipeline runs with ``export=false``.
        submission: ``submission.csv`` (``ImageID,ans``, one row per ``info.csv`` row).
        metrics: 18-class accuracy and macro-F1 on the validation people.
        confusion_matrix: 18-class confusion matrix on the validation people.
        report: Markdown summary: predicted class counts and validation scores.
        html_report: Visual report (``maskpipe.reports.write_infer_report``, as ``maskpipe
            infer`` writes it): predicted class distribution, 18-class confusion heatmap and
            per-class F1 where the truth is known (validation people; ``eval_truth.csv`` in a
            local data root), a gallery of sample predictions.
        preset: Config preset whose ``infer`` section gives batch size and workers.
        overrides: Extra ``key=value`` config overrides (``infer.*`` keys apply here).
        tta: Average the predictions of each image and its horizontal flip (an exported
            model has TTA inside its graph or not; asking for TTA it lacks is an error).
        backend: ``auto``: the exported graph under ONNX Runtime where no CUDA device is
            visible (the pipeline's CPU node), its checkpoints under torch where one is (a
            local run on a GPU machine); without an exported model, torch. Or ``onnx``/``torch``.
    """
    from pathlib import Path

    from maskpipe.atomic import write_text
    from maskpipe.config import load_config
    from maskpipe.data.index import eval_index_path, read_eval_index, read_index
    from maskpipe.ensemble import classes_from_probs, predict_rows_probs, predict_submission
    from maskpipe.errors import DataLayoutError
    from maskpipe.labels import CLASS_NAMES, NUM_COMBINED_CLASSES
    from maskpipe.metrics import classification_metrics
    from maskpipe.runtime import open_backend

    infer = load_config(preset, list(overrides)).infer
    checkpoints = {
        "mask": Path(mask_model.path),
        "gender": Path(gender_model.path),
        "age": Path(age_model.path),
    }
    index_path = Path(index.path) / "index.parquet"
    options = {"batch_size": infer.batch_size, "num_workers": infer.num_workers}
    # The model first: a wrong or altered folder fails before any image is read.
    source = exported_model.path if exported_model is not None else checkpoints
    models = open_backend(source, backend, tta=tta)
    tta = models.tta
    ran = f"exported model, {models.name} backend" if models.card is not None else "three checkpoints, torch backend"
    print(f"running the {ran}")

    if not eval_index_path(index_path).exists():
        raise DataLayoutError(
            f"{eval_index_path(index_path)} does not exist: the data root has no eval/ folder "
            "(eval/info.csv and eval/images/), so there is nothing to predict; add it and rerun"
        )
    eval_frame, data_root = read_eval_index(eval_index_path(index_path))
    result = predict_submission(models, eval_frame, submission.path, data_root=data_root, **options)
    print(result.summary())
    predicted = result.submission["ans"].value_counts()
    submission.metadata.update(
        {"format": "csv", "filename": "submission.csv", "rows": len(result.submission), "tta": tta,
         "model": ran}
    )

    frame, data_root = read_index(index_path)
    val = frame[frame["split"] == "val"]
    scores = None
    if len(val):
        val_probs = predict_rows_probs(models, val, data_root, **options)
        y_pred = classes_from_probs(val_probs)
        scores = classification_metrics(
            val["class"].to_numpy(), y_pred, NUM_COMBINED_CLASSES, list(CLASS_NAMES)
        )
        metrics.log_metric("val_accuracy", float(scores["accuracy"]))
        metrics.log_metric("val_macro_f1", float(scores["macro_f1"]))
        metrics.log_metric("val_images", float(len(val)))
        confusion_matrix.log_confusion_matrix(
            list(CLASS_NAMES), [[int(v) for v in row] for row in scores["confusion_matrix"]]
        )

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
    write_text(report.path, "\n".join(lines) + "\n")

    from maskpipe.reports import PredictionSet, write_infer_report
    from maskpipe.reports.infer_report import find_eval_truth, submission_set

    truth = find_eval_truth(result.data_root)
    facts = [("model", ran), ("TTA", "on" if tta else "off")] + ([("truth", str(truth))] if truth else [])
    sets = [submission_set(result, truth)]
    if scores is not None:
        sets.append(
            PredictionSet(
                "validation people", data_root, val["path"].tolist(), val["profile"].tolist(),
                val_probs, val["class"].to_numpy(),
            )  # fmt: skip
        )
    write_infer_report(sets, html_report.path, facts=facts)
