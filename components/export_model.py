"""Pipeline step ``export-model``: the three task checkpoints -> one ONNX model folder."""

from typing import Optional

from kfp import dsl
from kfp.dsl import Dataset, Input, Model, Output

from components.image import IMAGE


@dsl.component(base_image=IMAGE, install_kfp_package=False)
def export_model(
    mask_model: Input[Model],
    gender_model: Input[Model],
    age_model: Input[Model],
    model: Output[Model],
    index: Optional[Input[Dataset]] = None,
    tta: bool = True,
    precision: str = "fp32",
):
    """Export the ensemble as the folder ``maskpipe serve`` runs.

    Wraps ``maskpipe.steps.export.export_step`` (as ``maskpipe export``): ``model.onnx`` (uint8
    photos in; normalisation, flip TTA and the 18-class combination inside), the three
    checkpoints, and ``model.json`` with the sha256 of every file. With ``precision=int8``
    also the int8 graph (``maskpipe export --quantize int8``), calibrated on training photos
    of the index.

    Args:
        mask_model: Checkpoint folder of the mask model.
        gender_model: Checkpoint folder of the gender model.
        age_model: Checkpoint folder of the age model.
        model: Output model folder; its URI is what the ``deploy`` step serves.
        index: Folder written by ``index-data``; int8 calibrates on a seeded sample of its
            training people's photos (never the validation people the ensemble scores).
        tta: Put horizontal-flip test-time augmentation inside the graph.
        precision: ``fp32`` (the graph as exported) or ``int8`` (ONNX Runtime static
            quantization added; the card's ``onnx_file`` names the int8 graph and its
            ``quantization`` block the measured agreement with fp32).
    """
    from maskpipe.steps.export import export_step

    checkpoints = {"mask": mask_model.path, "gender": gender_model.path, "age": age_model.path}
    index_dir = None if index is None else index.path
    model.metadata.update(export_step(checkpoints, model.path, index_dir, tta=tta, precision=precision))
