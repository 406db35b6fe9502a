"""Pipeline step ``train-<task>``: train one task model (mask, gender or age)."""

from typing import List

from kfp import dsl
from kfp.dsl import HTML, ClassificationMetrics, Dataset, Input, Metrics, Model, Output

from components.image import IMAGE


@dsl.component(base_image=IMAGE, install_kfp_package=False)
def train_model(
    task: str,
    index: Input[Dataset],
    model: Output[Model],
    metrics: Output[Metrics],
    confusion_matrix: Output[ClassificationMetrics],
    html_report: Output[HTML],
    preset: str = "default",
    epochs: int = 0,
    batch_size: int = 0,
    learning_rate: float = 0.0,
    architecture: str = "",
    image_size: str = "",
    seed: int = 42,
    overrides: List[str] = [],
    resume_bucket: str = "",
    run_id: str = "",
):
    """Train one task model on the indexed data and keep the best epoch.

    Wraps ``maskpipe.train.train_task``. Values of 0 or ``""`` keep the preset's setting;
    ``overrides`` are applied last, so they win over the named parameters.

    Args:
        task: ``mask``, ``gender`` or ``age``.
        index: Folder written by ``index-data`` (``index.parquet`` is read).
        model: Output checkpoint folder (``model.safetensors``, ``checkpoint.json``,
            ``config.yaml``, ``history.json``, ``metrics.json``, ``mistakes.json``).
        metrics: Scalar validation metrics of the chosen epoch.
        confusion_matrix: Validation confusion matrix of this task's classes.
        html_report: Visual report (``maskpipe.reports.write_train_report``, as ``maskpipe
            train`` writes it): loss, accuracy and macro-F1 per epoch, learning rate per step,
            confusion heatmap, the most confidently wrong images.
        preset: Config preset: ``default``, ``original`` or ``smoke``.
        epochs: Training epochs (``train.epochs``); 0 keeps the preset's.
        batch_size: Batch size (``train.batch_size``); 0 keeps the preset's.
        learning_rate: Peak learning rate (``train.lr``); 0 keeps the preset's.
        architecture: Any timm architecture (``model.arch``); ``""`` keeps the preset's.
        image_size: Model input ``HEIGHTxWIDTH`` (``data.input_size``), e.g. ``448x336``.
        seed: Training seed (``train.seed``).
        overrides: Extra ``key=value`` config overrides, e.g. ``["train.optimizer=adamw"]``.
        resume_bucket: Bucket (optionally ``bucket/prefix``) where the resume state is mirrored
            after every epoch, so a retried pod continues; ``""`` disables the mirror.
        run_id: Pipeline run id, which keys the mirror (``runs/<run_id>/<task>/``).
    """
    import json
    import shutil
    from pathlib import Path

    from maskpipe.config import load_config
    from maskpipe.errors import MaskpipeError
    from maskpipe.train import train_task

    settings = []
    if epochs > 0:
        settings.append(f"train.epochs={epochs}")
    if batch_size > 0:
        settings.append(f"train.batch_size={batch_size}")
    if learning_rate > 0:
        settings.append(f"train.lr={learning_rate}")
    if architecture:
        settings.append(f"model.arch={architecture}")
    if image_size:
        settings.append(f"data.input_size={image_size}")
    settings.append(f"train.seed={seed}")
    config = load_config(preset, settings + list(overrides))

    resume_uri = None
    if resume_bucket:
        if not run_id:
            raise MaskpipeError(
                "resume_bucket is set but run_id is empty; pass the pipeline's job id "
                "(dsl.PIPELINE_JOB_ID_PLACEHOLDER) or leave resume_bucket empty"
            )
        resume_uri = f"s3://{resume_bucket.strip('/')}/runs/{run_id}/{task}/"

    checkpoint_dir = Path(model.path)
    result = train_task(
        config, task, Path(index.path) / "index.parquet", checkpoint_dir, resume_uri=resume_uri
    )
    print(result.summary())
    from maskpipe.reports import write_train_report

    write_train_report(checkpoint_dir, html_report.path)
    # The resume state (optimizer and all) is only for restarting this step; the mirror keeps
    # it when enabled, so the artifact carries only what inference and people need.
    shutil.rmtree(checkpoint_dir / "state", ignore_errors=True)

    meta = json.loads((checkpoint_dir / "checkpoint.json").read_text())
    scores = result.metrics  # the chosen epoch's classification_metrics on `split`
    split = scores.get("split", "val")
    for name in ("accuracy", "macro_f1", "loss"):
        metrics.log_metric(f"{split}_{name}", float(scores[name]))
    for name, value in (scores.get("train") or {}).items():
        metrics.log_metric(f"train_{name}", float(value))
    for name, value in zip(scores["class_names"], scores["per_class_f1"]):
        metrics.log_metric(f"{split}_f1_{name}", float(value))
    metrics.log_metric("best_epoch", float(result.best_epoch))
    metrics.log_metric("epochs_done", float(result.epochs_done))
    confusion_matrix.log_confusion_matrix(
        [str(n) for n in scores["class_names"]],
        [[int(v) for v in row] for row in scores["confusion_matrix"]],
    )

    model.metadata.update(
        {
            "task": task,
            "architecture": meta["arch"],
            "input_size": "x".join(str(v) for v in meta["input_size"]),
            "num_classes": meta["num_classes"],
            "class_names": list(meta["class_names"]),
            "best_epoch": result.best_epoch,
            "epochs": result.epochs_done,
            "epochs_planned": result.epochs_planned,
            "selected_by": config.train.select_by,
            "preset": preset,
            "framework": "pytorch+timm",
        }
    )
    if split == "val":
        model.metadata["best_val_f1"] = float(scores["macro_f1"])
    if result.resumed_from:
        model.metadata["resumed_after_epoch"] = result.resumed_from
