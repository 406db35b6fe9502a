"""The ``train-<task>`` step: the named parameters as config overrides, one task trained, its
HTML report, metrics and model metadata."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import List, Sequence

from maskpipe.errors import MaskpipeError
from maskpipe.steps import StepOutputs


def train_overrides(
    epochs: int = 0, batch_size: int = 0, learning_rate: float = 0.0, architecture: str = "",
    image_size: str = "", seed: int = 42, overrides: Sequence[str] = (),
) -> List[str]:  # fmt: skip
    """The config overrides the named parameters stand for (0 or ``""``: the preset's), then
    ``overrides``, which come last and so win."""
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
    return settings + list(overrides)


def resume_uri_of(resume_bucket: str, run_id: str, task: str):
    """``s3://<bucket>/runs/<run_id>/<task>/`` of the resume mirror, or None without a bucket."""
    if not resume_bucket:
        return None
    if not run_id:
        raise MaskpipeError(
            "resume_bucket is set but run_id is empty; pass the pipeline's job id "
            "(dsl.PIPELINE_JOB_ID_PLACEHOLDER) or leave resume_bucket empty"
        )
    return f"s3://{resume_bucket.strip('/')}/runs/{run_id}/{task}/"


def train_step(
    task: str,
    index_dir: Path,
    checkpoint_dir: Path,
    html_path: Path,
    *,
    preset: str = "default",
    overrides: Sequence[str] = (),
    resume_bucket: str = "",
    run_id: str = "",
) -> StepOutputs:
    """Train ``task`` on ``index_dir``/index.parquet into ``checkpoint_dir`` (without the resume
    state, which only the mirror keeps), write the HTML report; ``overrides`` as
    ``train_overrides`` builds them. Returns the model's metadata, metrics and confusion matrix."""
    from maskpipe.config import load_config
    from maskpipe.reports import write_train_report
    from maskpipe.train import train_task

    config = load_config(preset, list(overrides))
    resume_uri = resume_uri_of(resume_bucket, run_id, task)
    checkpoint_dir = Path(checkpoint_dir)
    result = train_task(config, task, Path(index_dir) / "index.parquet", checkpoint_dir, resume_uri=resume_uri)
    from maskpipe.distributed import is_main

    if not is_main():  # under torchrun rank 0 wrote the checkpoint and reports it
        return StepOutputs()
    print(result.summary())
    write_train_report(checkpoint_dir, html_path)
    # The resume state (optimizer and all) is only for restarting this step; the mirror keeps
    # it when enabled, so the artifact carries only what inference and people need.
    shutil.rmtree(checkpoint_dir / "state", ignore_errors=True)

    meta = json.loads((checkpoint_dir / "checkpoint.json").read_text())
    scores = result.metrics  # the chosen epoch's classification_metrics on `split`
    split = scores.get("split", "val")
    out = StepOutputs()
    for name in ("accuracy", "macro_f1", "loss"):
        out.metrics[f"{split}_{name}"] = float(scores[name])
    for name, value in (scores.get("train") or {}).items():
        out.metrics[f"train_{name}"] = float(value)
    for name, value in zip(scores["class_names"], scores["per_class_f1"]):
        out.metrics[f"{split}_f1_{name}"] = float(value)
    out.metrics["best_epoch"] = float(result.best_epoch)
    out.metrics["epochs_done"] = float(result.epochs_done)
    out.confusion = (
        [str(n) for n in scores["class_names"]],
        [[int(v) for v in row] for row in scores["confusion_matrix"]],
    )
    out.metadata = {
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
    if split == "val":
        out.metadata["best_val_f1"] = float(scores["macro_f1"])
    if result.resumed_from:
        out.metadata["resumed_after_epoch"] = result.resumed_from
    return out
