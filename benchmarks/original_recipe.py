"""The competition's training code path, re-implemented compactly as the benchmarks' baseline.

What it reproduces (and what the benchmarks measure maskpipe against):

* ``OriginalTrainDataset``: every access decodes the JPEG again (``cv2.imread`` + BGR->RGB,
  the faster of the two decoders the original code used), then runs the original
  albumentations list on the full photo: center crop 448x336, resize to the input size
  (512x384: an upsizing), flip, ShiftScaleRotate, HueSaturationValue,
  RandomBrightnessContrast, Normalize, then CoarseDropout, Cutout and GaussNoise on the
  *normalised float* image. The list is :func:`maskpipe.data.transforms.original_train_transform`,
  the project's single translation of the 1.x list to albumentations 2.x (docs/presets.md), so
  the baseline and maskpipe's ``original`` preset augment identically.
* ``train_one_epoch``: the notebook-style loop: batch to device, forward, backward, optimizer
  step every ``grad_accum`` (2) batches, ``loss.item()`` and ``(preds == labels).sum().item()``
  on every step (each forces a device sync).
* ``make_training``: ``timm`` model, ``AdamP`` from the ``adamp`` package (lr 1e-4,
  weight decay 1e-5), ``StepLR(step_size=5, gamma=0.5)`` stepped once per epoch,
  ``CrossEntropyLoss``, ``WeightedRandomSampler`` with inverse class frequency.

Hyper-parameters come from the ``original`` preset (``maskpipe/configs/original.yaml``).
The end of the module holds small fixtures the benchmark scripts share (synthetic photos,
pinning to one core, the fail-loudly ``main`` wrapper).
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import cv2
import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, WeightedRandomSampler

from maskpipe.config import Config, load_config
from maskpipe.data.transforms import original_train_transform


def original_config(overrides: Sequence[str] = ()) -> Config:
    return load_config("original", list(overrides))


class OriginalTrainDataset(Dataset):
    """Decode at every access, then the original augmentation list -> float CHW tensor."""

    def __init__(self, paths: Sequence[Path], labels: np.ndarray, config: Config) -> None:
        d = config.data
        self.paths = [str(p) for p in paths]
        self.labels = np.asarray(labels, dtype=np.int64)
        self.transform = original_train_transform(d.crop_size, d.input_size, d.mean, d.std)

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        image = cv2.imread(self.paths[i], cv2.IMREAD_COLOR)
        if image is None:
            raise OSError(f"cannot decode {self.paths[i]}")
        image = cv2.cvtColor(image, cv2.COLOR_BGR2RGB)
        image = self.transform(image=image)["image"]  # float32 HWC, normalised
        return torch.from_numpy(image.transpose(2, 0, 1).copy()), int(self.labels[i])


def original_loader(
    dataset: OriginalTrainDataset, batch_size: int, num_workers: int, seed: int = 0
) -> DataLoader:
    """The original's loader: an inverse-frequency ``WeightedRandomSampler`` (mask and age)."""
    counts = np.bincount(dataset.labels).astype(np.float64)
    weights = torch.from_numpy(1.0 / counts[dataset.labels])
    sampler = WeightedRandomSampler(
        weights, len(weights), replacement=True, generator=torch.Generator().manual_seed(seed)
    )
    return DataLoader(
        dataset, batch_size=batch_size, sampler=sampler, num_workers=num_workers, drop_last=True
    )


@dataclass
class OriginalTraining:
    model: torch.nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    criterion: torch.nn.Module
    device: torch.device
    grad_accum: int


def make_training(config: Config, num_classes: int, device: torch.device) -> OriginalTraining:
    import timm
    from adamp import AdamP

    t = config.train
    model = timm.create_model(config.model.arch, pretrained=False, num_classes=num_classes).to(device)
    optimizer = AdamP(model.parameters(), lr=t.lr, betas=(0.9, 0.999), weight_decay=t.weight_decay)
    scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=t.step_size, gamma=t.gamma)
    return OriginalTraining(
        model, optimizer, scheduler, torch.nn.CrossEntropyLoss(), device, t.grad_accum
    )


def train_one_epoch(run: OriginalTraining, loader: DataLoader) -> dict[str, float]:
    """One epoch of the original loop; returns loss, accuracy, images and seconds."""
    run.model.train()
    run.optimizer.zero_grad()
    loss_value, matches, seen = 0.0, 0, 0
    started = time.perf_counter()
    for idx, (inputs, labels) in enumerate(loader):
        inputs, labels = inputs.to(run.device), labels.to(run.device)
        outs = run.model(inputs)
        preds = torch.argmax(outs, dim=-1)
        loss = run.criterion(outs, labels)
        loss.backward()
        if (idx + 1) % run.grad_accum == 0:
            run.optimizer.step()
            run.optimizer.zero_grad()
        loss_value += loss.item()
        matches += (preds == labels).sum().item()
        seen += len(labels)
    run.scheduler.step()
    if run.device.type == "cuda":
        torch.cuda.synchronize()
    seconds = time.perf_counter() - started
    return {
        "loss": loss_value / max(1, len(loader)),
        "accuracy": matches / max(1, seen),
        "images": seen,
        "seconds": seconds,
    }


# ---------------------------------------------------------------------------------------------
# fixtures shared by the benchmark scripts (input.py, train.py, gpu.py)


class BenchmarkError(Exception):
    """The benchmark cannot produce an honest figure (a path fell back, a device is missing)."""


def synthetic_photos(folder: Path, count: int, size: tuple[int, int]) -> list[Path]:
    """``count`` training JPEGs of ``size`` (width, height, as ``--image-size HEIGHTxWIDTH``
    parses to) in the competition layout, written
    by :func:`maskpipe.data.synth.generate` (7 photos a person) under ``folder``."""
    from maskpipe.data.synth import generate

    generate(folder, people=max(1, -(-count // 7)), eval_people=0, seed=0, size=size)
    paths = sorted((folder / "train" / "images").glob("*/*.jpg"))[:count]
    if len(paths) < count:
        raise BenchmarkError(f"asked for {count} synthetic photos, {folder} holds {len(paths)}")
    return paths


def mask_labels(paths: Sequence[Path]) -> np.ndarray:
    """The mask task's label of each photo, from its file stem (``mask3`` -> 0)."""
    from maskpipe.labels import mask_label

    return np.array([mask_label(Path(p).stem) for p in paths], dtype=np.int64)


def pin_to_one_core(cpu: int | None = None) -> int:
    """Run this process, torch and OpenCV on one CPU, so images/s is a per-core figure."""
    allowed = sorted(os.sched_getaffinity(0))
    cpu = allowed[0] if cpu is None else cpu
    if cpu not in allowed:
        raise BenchmarkError(f"CPU {cpu} is not available to this process (allowed: {allowed})")
    os.sched_setaffinity(0, {cpu})
    torch.set_num_threads(1)
    cv2.setNumThreads(1)
    return cpu


def run_in_work_dir(run: Callable[[Path], object], work_dir: Path | None) -> int:
    """Call ``run(folder)`` in ``work_dir`` or a temporary folder; a BenchmarkError or a
    MaskpipeError becomes a one-line message and exit status 1 (never a figure)."""
    from maskpipe.errors import MaskpipeError

    try:
        if work_dir is not None:
            work_dir.mkdir(parents=True, exist_ok=True)
            run(work_dir)
        else:
            with tempfile.TemporaryDirectory(prefix="maskpipe-bench-") as tmp:
                run(Path(tmp))
    except (BenchmarkError, MaskpipeError) as exc:
        print(f"benchmark failed: {exc}", file=sys.stderr)
        return 1
    return 0
