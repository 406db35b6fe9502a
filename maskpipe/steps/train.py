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
    from maskpipe.train import train_task

    config = load_config(preset, list(overrides))
    resume_uri = resume_uri_of(resume_bucket, run_id, task)
    checkpoint_dir = Path(checkpoint_dir)
    result = train_task(config, task, Path(index_dir) / "index.parquet", checkpoint_dir, resume_uri=resume_uri)
    from maskpipe.distributed import is_main

    if not is_main():  # under torchrun rank 0 wrote the checkpoint and reports it
        return StepOutputs()
    print(result.summary())
    return _publish(result, config, preset, checkpoint_dir, html_path)


def trainjob_train_step(
    task: str,
    index_uri: str,
    index_dir: Path,
    model_uri: str,
    checkpoint_dir: Path,
    html_path: Path,
    *,
    settings: dict,
    preset: str = "default",
    overrides: Sequence[str] = (),
    resume_bucket: str = "",
    run_id: str = "",
) -> StepOutputs:
    """``train_step`` with the training in a Kubeflow Trainer TrainJob (``maskpipe.trainjob``):
    the same ``maskpipe train`` on ``settings['num_nodes']`` nodes, whose rank 0 mirrors its
    checkpoint folder to the run's object store (the resume prefix when ``resume_bucket`` is
    set, else beside ``model_uri``); that folder is then published exactly as ``train_step``
    publishes its own. ``index_uri`` / ``model_uri``: the artifacts' URIs, ``index_dir`` /
    ``checkpoint_dir`` their local paths."""
    from maskpipe.config import load_config
    from maskpipe.resume import check_compatible, finished, load_resume_state
    from maskpipe.train_result import finished_result
    from maskpipe.trainjob import (
        TrainJobError, TrainJobRun, TrainJobSettings, checkpoint_uri_of, new_job_name, object_store_uri,
        train_command,
    )  # fmt: skip

    config = load_config(preset, list(overrides))  # a bad override fails here, not in the job
    job_settings = TrainJobSettings.from_dict(settings)
    checkpoint_uri = resume_uri_of(resume_bucket, run_id, task) or checkpoint_uri_of(model_uri)
    index_parquet = object_store_uri(index_uri, "index") + "/index.parquet"
    command = train_command(task, index_parquet, checkpoint_uri, preset, overrides, job_settings.gpus_per_node)
    labels = {"app.kubernetes.io/part-of": "maskpipe", "maskpipe/task": task}
    job = TrainJobRun(job_settings)
    job.run(command, new_job_name(task), labels)

    checkpoint_dir = Path(checkpoint_dir)
    state = load_resume_state(checkpoint_dir, checkpoint_uri)  # downloads the whole folder
    if state is None:
        raise TrainJobError(
            f"the TrainJob completed but left no checkpoint at {checkpoint_uri}: its rank 0 mirrors the "
            "checkpoint folder there after every epoch; check the job's log above for its storage errors"
        )
    check_compatible(state, config, task, checkpoint_dir)
    if not finished(state, config):
        raise TrainJobError(
            f"the TrainJob completed but its checkpoint at {checkpoint_uri} stops after epoch {state['epoch']} "
            f"of {config.train.epochs}; rerun the step (it resumes from there)"
        )
    result = finished_result(state, config, task, checkpoint_dir)
    print(result.summary())
    out = _publish(result, config, preset, checkpoint_dir, html_path)
    out.metadata.update(trainjob=f"{job.namespace}/{job.name}", trainjob_nodes=job_settings.num_nodes)
    return out


def _publish(result, config, preset: str, checkpoint_dir: Path, html_path: Path) -> StepOutputs:
    """The HTML report, the artifact without its resume state, and what the step records."""
    from maskpipe.reports import write_train_report

    task = result.task
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
