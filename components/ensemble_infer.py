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

    Wraps ``maskpipe.steps.infer.infer_step``: the eval images, then the validation people.
    Given ``exported_model`` it runs that folder (the served model), else the checkpoints.

    Args:
        index: Folder written by ``index-data`` (``index.parquet``, ``index.eval.parquet``).
        mask_model: Checkpoint folder of the mask model.
        gender_model: Checkpoint folder of the gender model.
        age_model: Checkpoint folder of the age model.
        exported_model: The folder ``export-model`` wrote; absent with ``export=false``.
        submission: ``submission.csv`` (``ImageID,ans``, one row per ``info.csv`` row).
        metrics: 18-class accuracy and macro-F1 on the validation people.
        confusion_matrix: 18-class confusion matrix on the validation people.
        report: Markdown summary: predicted class counts and validation scores.
        html_report: Visual report, as ``maskpipe infer`` writes it.
        preset: Config preset whose ``infer`` section gives batch size and workers.
        overrides: Extra ``key=value`` config overrides (``infer.*`` keys apply here).
        tta: Average each image's and its flip's predictions (an exported graph lacking it: error).
        backend: ``auto`` (ONNX Runtime where no CUDA device is visible), ``onnx`` or ``torch``.
    """
    from maskpipe.steps.infer import infer_step

    checkpoints = {"mask": mask_model.path, "gender": gender_model.path, "age": age_model.path}
    models = exported_model.path if exported_model is not None else checkpoints
    submitted, scored = infer_step(
        index.path, models, submission.path, report.path, html_report.path, preset=preset,
        overrides=overrides, tta=tta, backend=backend,
    )  # fmt: skip
    submission.metadata.update(submitted.metadata)
    if scored is not None:
        scored.log_to(metrics, confusion_matrix)
