"""Class-balancing sampler: every class is drawn about equally often per epoch.

The original recipe used ``WeightedRandomSampler`` with inverse class frequency, with
replacement, for the mask and age models (the classes are 5:1:1 and roughly 4:4:1), and plain
shuffling for gender. In a world of several processes (``torchrun``) each rank samples its
share of one global draw (:class:`ShardedDraw`), so the balance is one process's.
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


class ShardedDraw(Sampler[int]):
    """One rank's share of an epoch's global draw, for a world of ``world_size`` processes.

    Every rank makes the same draw (a generator seeded with ``seed + epoch``): ``"weighted"``
    is exactly the draw a one-process :class:`WeightedRandomSampler` of ``len(labels)``
    samples makes with that generator, ``"shuffle"`` a permutation. Rank ``r`` takes draw
    positions ``r, r + W, r + 2W, ...``; the draw is padded with its first positions to a
    multiple of ``W``, so every rank yields the same count (DDP needs equal batch counts) and
    no rank sees one position twice. :meth:`set_epoch` moves to the next epoch's draw, so a
    resumed run draws what the uninterrupted one would have.
    """

    def __init__(
        self, labels: np.ndarray, num_classes: int, kind: str, *, rank: int, world_size: int, seed: int
    ) -> None:
        if kind not in ("weighted", "shuffle"):
            raise ValueError(f"unknown sampler {kind!r}; valid: weighted, shuffle")
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} outside a world of {world_size}")
        self.kind, self.rank, self.world_size, self.seed = kind, rank, world_size, seed
        self.size = len(labels)
        self.weights = inverse_frequency_weights(labels, num_classes) if kind == "weighted" else None
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def global_draw(self) -> list[int]:
        """The epoch's whole draw (sample indices), the same on every rank."""
        generator = torch.Generator().manual_seed(self.seed + self.epoch)
        if self.weights is not None:
            return list(WeightedRandomSampler(self.weights, self.size, replacement=True, generator=generator))
        return torch.randperm(self.size, generator=generator).tolist()

    def positions(self) -> list[int]:
        """This rank's positions in :meth:`global_draw` (padding wraps to the first ones)."""
        padded = len(self) * self.world_size
        return [k % self.size for k in range(self.rank, padded, self.world_size)]

    def __len__(self) -> int:
        return -(-self.size // self.world_size)

    def __iter__(self):
        draw = self.global_draw()
        return iter([draw[p] for p in self.positions()])
