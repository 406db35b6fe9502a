"""CPU-sized settings shared by the component and pipeline tests: whole tiny photos, no image
cache, single-process loading, so a step runs in seconds on 2 cores."""

from __future__ import annotations

from pathlib import Path


TINY_OVERRIDES = [
    "data.crop_size=null",
    "data.input_size=32x24",
    "data.cache_gb=0",
    "data.num_workers=0",
    "infer.num_workers=0",
    "train.batch_size=8",
]


def tiny_pipeline_arguments(data_root: str | Path, **changes) -> dict:
    """Every run parameter (``pipeline_dag.RunParameters``) for a one-epoch smoke run on
    ``data_root``; ``changes`` win (an unknown name is a TypeError)."""
    from pipeline_dag import RunParameters

    tiny = {
        "data_root": str(data_root),
        "preset": "smoke",
        "epochs": 1,
        "val_fraction": 0.34,
        "tta": False,
        "overrides": list(TINY_OVERRIDES),
        # The export step is tested on its own (tests/test_export.py); tiny runs skip its ~20 s.
        "export": False,
    }
    return RunParameters(**{**tiny, **changes}).arguments()


def write_task_checkpoints(
    folder: Path, overrides=(), arch: str = "resnet10t", preset: str = "smoke", calibrate: bool = True
) -> dict[str, Path]:
    """One untrained checkpoint per task under ``folder`` (``preset`` + ``overrides``), with
    BatchNorm statistics measured on noise (``calibrate``): fresh statistics make every image
    the same class, and tests comparing answers need varied ones."""
    import torch

    from maskpipe.checkpoint import save_checkpoint
    from maskpipe.config import load_config
    from maskpipe.labels import NUM_CLASSES, TASKS
    from maskpipe.models import create_model, recalibrate_batchnorm

    config = load_config(preset, [f"model.arch={arch}", "model.pretrained=false", *overrides])
    out = {}
    for seed, task in enumerate(TASKS):
        torch.manual_seed(seed)
        model = create_model(arch, NUM_CLASSES[task], pretrained=False)
        if calibrate:
            recalibrate_batchnorm(model, torch.rand(16, 3, *config.data.input_size) * 4 - 2)
        save_checkpoint(Path(folder) / task, model, task=task, config=config, epoch=0, metrics={})
        out[task] = Path(folder) / task
    return out
