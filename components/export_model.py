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

    Wraps ``maskpipe.export.export_model`` (``maskpipe export``): ``model.onnx`` (uint8
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
    from pathlib import Path

    from maskpipe.errors import MaskpipeError
    from maskpipe.export import export_model as export
    from maskpipe.model_card import read_model_dir

    if precision not in ("fp32", "int8"):
        raise MaskpipeError(f"precision must be fp32 or int8, got {precision!r}")
    photos, source = [], None
    if precision == "int8":
        from maskpipe.quantize import calibration_images_from_index

        if index is None:
            raise MaskpipeError("precision int8 calibrates on the index's training photos: pass index")
        # The photos first: a wrong index fails before the export's ~20 s.
        photos, source = calibration_images_from_index(Path(index.path) / "index.parquet")
    out = export(
        {"mask": Path(mask_model.path), "gender": Path(gender_model.path), "age": Path(age_model.path)},
        Path(model.path),
        tta=tta,
        quantize=None if precision == "fp32" else precision,
        calibration_paths=photos,
        calibration_source=source,
    )
    card = read_model_dir(out)
    height, width = card.input_size
    model.metadata.update(
        {"format": "onnx", "framework": "maskpipe", "input_size": f"{height}x{width}", "tta": card.tta,
         "onnx_sha256": card.data["files"][card.data["onnx_file"]], "precision": card.precision}
    )  # fmt: skip
    if precision == "int8":
        agreement = card.data["quantization"]["agreement"]["class"]
        model.metadata["int8_agreement_with_fp32"] = agreement
        print(f"int8 graph: the 18-class answer agrees with fp32 on {agreement:.1%} of held-out photos")
    print(f"exported {out}: input {height}x{width}, flip TTA {'on' if card.tta else 'off'}, {card.precision}")
