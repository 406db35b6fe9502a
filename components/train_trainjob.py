"""Pipeline step ``train-<task>`` in Kubeflow Trainer mode: the training runs in a TrainJob."""

from typing import List

from kfp import dsl
from kfp.dsl import HTML, ClassificationMetrics, Dataset, Input, Metrics, Model, Output

from components.image import IMAGE


@dsl.component(base_image=IMAGE, install_kfp_package=False)
def train_trainjob(
    task: str,
    index: Input[Dataset],
    model: Output[Model],
    metrics: Output[Metrics],
    confusion_matrix: Output[ClassificationMetrics],
    html_report: Output[HTML],
    trainjob: dict,
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
    """Train one task model in a Kubeflow Trainer TrainJob (``trainjob_train_step``) and publish it.

    Args:
        task: ``mask``, ``gender`` or ``age``.
        index: Folder written by ``index-data``; the TrainJob's nodes read it from the store.
        model: Output checkpoint folder, downloaded from what the TrainJob's rank 0 wrote.
        metrics: Scalar validation metrics of the chosen epoch.
        confusion_matrix: Validation confusion matrix of this task's classes.
        html_report: Visual report, as ``maskpipe train`` writes it.
        trainjob: The TrainJob's shape (``maskpipe.trainjob.TrainJobSettings``), compiled in.
        preset: Config preset: ``default``, ``original`` or ``smoke``.
        epochs: Training epochs; 0 keeps the preset's.
        batch_size: Batch size per process; 0 keeps the preset's.
        learning_rate: Peak learning rate; 0 keeps the preset's.
        architecture: Any timm architecture; ``""`` keeps the preset's.
        image_size: Model input ``HEIGHTxWIDTH``.
        seed: Training seed.
        overrides: Extra ``key=value`` config overrides.
        resume_bucket: ``bucket[/prefix]`` for the checkpoint mirror; ``""``: beside the outputs.
        run_id: Pipeline run id, which keys the mirror (``runs/<run_id>/<task>/``).
    """
    from maskpipe.steps.train import train_overrides, trainjob_train_step

    settings = train_overrides(epochs, batch_size, learning_rate, architecture, image_size, seed, overrides)
    out = trainjob_train_step(
        task, index.uri, index.path, model.uri, model.path, html_report.path, settings=trainjob,
        preset=preset, overrides=settings, resume_bucket=resume_bucket, run_id=run_id,
    )  # fmt: skip
    out.log_to(metrics, confusion_matrix)
    model.metadata.update(out.metadata)
