"""The ``export-model`` step: three task checkpoints -> the ONNX model folder, fp32 or int8."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Dict, Mapping, Optional

from maskpipe.errors import MaskpipeError


def export_step(
    checkpoints: Mapping[str, Path],
    out_dir: Path,
    index_dir: Optional[Path] = None,
    *,
    tta: bool = True,
    precision: str = "fp32",
) -> Dict[str, Any]:
    """Export ``checkpoints`` (task -> folder) into ``out_dir``; int8 calibrates on training photos
    of ``index_dir``'s index. Returns the model artifact's metadata."""
    from maskpipe.export import export_model
    from maskpipe.model_card import read_model_dir

    if precision not in ("fp32", "int8"):
        raise MaskpipeError(f"precision must be fp32 or int8, got {precision!r}")
    photos, source = [], None
    if precision == "int8":
        from maskpipe.quantize import calibration_images_from_index

        if index_dir is None:
            raise MaskpipeError("precision int8 calibrates on the index's training photos: pass index")
        # The photos first: a wrong index fails before the export's ~20 s.
        photos, source = calibration_images_from_index(Path(index_dir) / "index.parquet")
    out = export_model(
        {task: Path(folder) for task, folder in checkpoints.items()},
        Path(out_dir),
        tta=tta,
        quantize=None if precision == "fp32" else precision,
        calibration_paths=photos,
        calibration_source=source,
    )
    card = read_model_dir(out)
    height, width = card.input_size
    metadata = {
        "format": "onnx", "framework": "maskpipe", "input_size": f"{height}x{width}", "tta": card.tta,
        "onnx_sha256": card.data["files"][card.data["onnx_file"]], "precision": card.precision,
    }  # fmt: skip
    if precision == "int8":
        agreement = card.data["quantization"]["agreement"]["class"]
        metadata["int8_agreement_with_fp32"] = agreement
        print(f"int8 graph: the 18-class answer agrees with fp32 on {agreement:.1%} of held-out photos")
    print(f"exported {out}: input {height}x{width}, flip TTA {'on' if card.tta else 'off'}, {card.precision}")
    return metadata
