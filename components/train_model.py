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

    Wraps ``maskpipe.steps.train.train_step``. 0 or ``""`` keep the preset's; ``overrides`` win.

    Args:
        task: ``mask``, ``gender`` or ``age``.
        index: Folder written by ``index-data`` (``index.parquet`` is read).
        model: Output checkpoint folder (``model.safetensors``, ``checkpoint.json``, ...).
        metrics: Scalar validation metrics of the chosen epoch.
        confusion_matrix: Validation confusion matrix of this task's classes.
        html_report: Visual report, as ``maskpipe train`` writes it.
        preset: Config preset: ``default``, ``original`` or ``smoke``.
        epochs: Training epochs (``train.epochs``); 0 keeps the preset's.
        batch_size: Batch size (``train.batch_size``); 0 keeps the preset's.
        learning_rate: Peak learning rate (``train.lr``); 0 keeps the preset's.
        architecture: Any timm architecture (``model.arch``); ``""`` keeps the preset's.
        image_size: Model input ``HEIGHTxWIDTH`` (``data.input_size``), e.g. ``448x336``.
        seed: Training seed (``train.seed``).
        overrides: Extra ``key=value`` config overrides, e.g. ``["train.optimizer=adamw"]``.
        resume_bucket: ``bucket[/prefix]`` mirroring the resume state per epoch; ``""``: none.
        run_id: Pipeline run id, which keys the mirror (``runs/<run_id>/<task>/``).
    """
    from maskpipe.steps.train import train_overrides, train_step

    settings = train_overrides(epochs, batch_size, learning_rate, architecture, image_size, seed, overrides)
    out = train_step(
        task, index.path, model.path, html_report.path, preset=preset, overrides=settings,
        resume_bucket=resume_bucket, run_id=run_id,
    )  # fmt: skip
    out.log_to(metrics, confusion_matrix)
    model.metadata.update(out.metadata)
