"""Per-task datasets and data loaders: labels from the index, images from a source.

A source is anything indexable that yields uint8 HxWx3 arrays: a filled decode-once cache
(:class:`~maskpipe.data.cache.CachedImages`) or disk reads
(:class:`~maskpipe.data.cache.DiskImages`). A sample is ``(image, label)`` where the image is
either a uint8 HxWx3 tensor (normalised later, batched, on the training device) or, on the
``original`` path, the float CHW tensor the original albumentations list produced.
"""

from __future__ import annotations

import logging
from typing import Any, Callable, Sequence

import numpy as np
import pandas as pd
import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from maskpipe.data.images import default_workers
from maskpipe.labels import age_label, check_task

log = logging.getLogger(__name__)

# Index column holding each task's official label.
LABEL_COLUMNS: dict[str, str] = {"mask": "mask_label", "gender": "gender_label", "age": "age_label"}


def train_labels(frame: pd.DataFrame, task: str, age_old_min: int) -> np.ndarray:
    """Training targets: the official labels, except age, re-binned with ``age_old_min``."""
    check_task(task)
    if task == "age":
        return np.array([age_label(a, age_old_min) for a in frame["age"]], dtype=np.int64)
    return frame[LABEL_COLUMNS[task]].to_numpy(dtype=np.int64)


def official_labels(frame: pd.DataFrame, task: str) -> np.ndarray:
    """Evaluation targets: always the competition's bins."""
    return frame[LABEL_COLUMNS[check_task(task)]].to_numpy(dtype=np.int64)


class ImageDataset(Dataset):
    """``(image, label)`` pairs; ``transform`` is an albumentations pipeline or None."""

    def __init__(
        self,
        source: Sequence[np.ndarray],
        labels: np.ndarray,
        transform: Callable[..., dict[str, Any]] | None = None,
    ) -> None:
        if len(source) != len(labels):
            raise ValueError(f"{len(source)} images but {len(labels)} labels")
        self.source = source
        self.labels = np.asarray(labels, dtype=np.int64)
        self.transform = transform

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        image = self.source[i]
        if self.transform is not None:
            image = self.transform(image=image)["image"]
        if image.dtype == np.uint8:
            tensor = torch.from_numpy(np.ascontiguousarray(image))
        else:  # normalised float HWC from the original list
            tensor = torch.from_numpy(np.ascontiguousarray(image.transpose(2, 0, 1), dtype=np.float32))
        return tensor, int(self.labels[i])

    def reseed(self, seed: int) -> None:
        """Seed the augmentation pipeline (albumentations keeps its own RNG, not numpy's)."""
        if self.transform is not None and hasattr(self.transform, "set_random_seed"):
            self.transform.set_random_seed(seed % 2**32)


class Subset(Dataset):
    """Rows ``indices`` of a source, for a split of a shared cache."""

    def __init__(self, source: Sequence[np.ndarray], indices: Sequence[int]) -> None:
        self.source = source
        self.indices = np.asarray(indices, dtype=np.int64)

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, i: int) -> np.ndarray:
        return self.source[int(self.indices[i])]


def default_num_workers(requested: int | None = None, share: int = 1) -> int:
    """``requested`` if given, else one fewer than this process's part of the CPUs (the CPUs it
    may use, split among the ``share`` training processes of the node; max 8)."""
    if requested is not None:
        return requested
    return max(0, min(8, default_workers() // share - 1))


def share_cpus(loader_workers: int, processes: int = 1) -> None:
    """Lower torch's compute threads so that they and ``loader_workers`` fit this process's
    part of the CPUs (shared by the node's ``processes`` training processes)."""
    # Oversubscribed OpenMP threads spin against each other and a step gets several times
    # slower, not faster.
    threads = max(1, default_workers() // processes - loader_workers)
    if threads < torch.get_num_threads():
        log.debug("using %d compute threads beside %d loader workers", threads, loader_workers)
        torch.set_num_threads(threads)


def _seed_worker(worker_id: int) -> None:
    info = torch.utils.data.get_worker_info()
    # torch gives each worker base_seed + worker_id, drawn from the loader's generator, so
    # the augmentations are reproducible and differ between workers.
    dataset = info.dataset
    if hasattr(dataset, "reseed"):
        dataset.reseed(info.seed)


def make_loader(
    dataset: ImageDataset,
    *,
    batch_size: int,
    train: bool,
    num_workers: int,
    device: torch.device,
    generator: torch.Generator | None = None,
    sampler: Sampler[int] | None = None,
) -> DataLoader:
    """A DataLoader with sensible worker settings: pinned memory only on CUDA, persistent
    workers when there are any, a seeded generator for shuffling and worker seeds."""
    shuffle = train and sampler is None
    return DataLoader(
        dataset,
        batch_size=batch_size,
        shuffle=shuffle,
        sampler=sampler,
        num_workers=num_workers,
        pin_memory=device.type == "cuda",
        persistent_workers=num_workers > 0,
        # A last batch of one sample breaks BatchNorm in training mode.
        drop_last=train and len(sampler if sampler is not None else dataset) > batch_size,
        generator=generator,
        worker_init_fn=_seed_worker if num_workers > 0 else None,
        prefetch_factor=4 if num_workers > 0 else None,
    )
