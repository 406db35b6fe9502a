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
    """Pipeline arguments for a one-epoch smoke run on ``data_root``; ``changes`` win."""
    arguments = {
        "data_root": str(data_root),
        "preset": "smoke",
        "epochs": 1,
        "batch_size": 0,
        "learning_rate": 0.0,
        "architecture": "",
        "image_size": "",
        "val_fraction": 0.34,
        "seed": 42,
        "tta": False,
        "overrides": list(TINY_OVERRIDES),
        "resume_bucket": "",
    }
    arguments.update(changes)
    return arguments
