"""Pipeline step ``export-model``: the three task checkpoints -> one ONNX model folder."""

from kfp import dsl
from kfp.dsl import Input, Model, Output

from components.image import IMAGE


@dsl.component(base_image=IMAGE, install_kfp_package=False)
def export_model(
    mask_model: Input[Model],
    gender_model: Input[Model],
    age_model: Input[Model],
    model: Output[Model],
    tta: bool = True,
):
    """Export the ensemble as the folder ``maskpipe serve`` runs.

    Wraps ``maskpipe.export.export_model`` (``maskpipe export``): ``model.onnx`` (uint8
    photos in; normalisation, flip TTA and the 18-class combination inside), the three
    checkpoints, and ``model.json`` with the sha256 of every file.

    Args:
        mask_model: Checkpoint folder of the mask model.
        gender_model: Checkpoint folder of the gender model.
        age_model: Checkpoint folder of the age model.
        model: Output model folder; its URI is what the ``deploy`` step serves.
        tta: Put horizontal-flip test-time augmentation inside the graph.
    """
    from pathlib import Path

    from maskpipe.export import export_model as export
    from maskpipe.model_card import read_model_dir

    out = export(
        {"mask": Path(mask_model.path), "gender": Path(gender_model.path), "age": Path(age_model.path)},
        Path(model.path),
        tta=tta,
    )
    card = read_model_dir(out)
    height, width = card.input_size
    model.metadata.update(
        {"format": "onnx", "framework": "maskpipe", "input_size": f"{height}x{width}", "tta": card.tta,
         "onnx_sha256": card.data["files"]["model.onnx"]}
    )  # fmt: skip
    print(f"exported {out}: input {height}x{width}, flip TTA {'on' if card.tta else 'off'}")
