"""The torch device a setting names: ``auto`` (CUDA when visible, else the CPU), ``cpu`` or ``cuda``."""

from __future__ import annotations

import torch

from maskpipe.errors import MaskpipeError, TrainingError


def resolve_device(device: str | torch.device, setting: str = "--device") -> torch.device:
    """``auto`` -> CUDA when available, else CPU; asking for CUDA without one is an error.

    Args:
        device: ``auto``, ``cpu``, ``cuda`` or ``cuda:N`` (or a ``torch.device``).
        setting: the flag or config key the value came from, named in the error.
    """
    name = str(device)
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise MaskpipeError(
            f"{setting} {name!r} was requested but torch sees no CUDA GPU "
            f"(torch {torch.__version__}); set {setting} to cpu or auto"
        )
    if not (name == "cpu" or name.startswith("cuda")):
        raise MaskpipeError(f"unknown {setting} {name!r}; use auto, cpu or cuda")
    return torch.device(name)


def training_device(setting: str) -> torch.device:
    """The device ``train.device`` names (:func:`resolve_device`), or a :class:`TrainingError`."""
    try:
        return resolve_device(setting, "train.device")
    except MaskpipeError as exc:
        raise TrainingError(str(exc)) from None
