"""Class-balancing sampler: every class is drawn about equally often per epoch.

The original recipe used ``WeightedRandomSampler`` with inverse class frequency, with
replacement, for the mask and age models (the classes are 5:1:1 and roughly 4:4:1), and plain
shuffling for gender.
"""

from __future__ import annotations

import numpy as np
import torch
from torch.utils.data import Sampler, WeightedRandomSampler


def inverse_frequency_weights(labels: np.ndarray, num_classes: int) -> torch.Tensor:
    """Per-sample weight ``1 / count(class of the sample)`` (float64, sums to the class count)."""
    labels = np.asarray(labels, dtype=np.int64)
    if labels.size == 0:
        raise ValueError("cannot balance an empty label set")
    if labels.min() < 0 or labels.max() >= num_classes:
        raise ValueError(f"labels must be in 0..{num_classes - 1}, got {labels.min()}..{labels.max()}")
    counts = np.bincount(labels, minlength=num_classes).astype(np.float64)
    return torch.from_numpy(1.0 / counts[labels])


def make_sampler(
    labels: np.ndarray, num_classes: int, kind: str, generator: torch.Generator
) -> Sampler[int] | None:
    """``"weighted"``: a with-replacement inverse-frequency sampler of ``len(labels)`` draws;
    ``"shuffle"``: None (the DataLoader shuffles with the same generator)."""
    if kind == "shuffle":
        return None
    if kind != "weighted":
        raise ValueError(f"unknown sampler {kind!r}; valid: weighted, shuffle")
    weights = inverse_frequency_weights(labels, num_classes)
    return WeightedRandomSampler(weights, num_samples=len(weights), replacement=True, generator=generator)
