"""The data of one task's training: index rows -> labels -> image sources -> datasets, sampler and loaders.

:func:`build_task_data` also picks the images whose predictions the run reviews at every new
best epoch (the validation images, or a fixed sample of the training images), and
:func:`confident_mistakes` turns those predictions into ``mistakes.json``.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from maskpipe.config import Config
from maskpipe.distributed import World, shard
from maskpipe.errors import TrainingError
from maskpipe.labels import NUM_CLASSES

log = logging.getLogger(__name__)

# The confidently wrong images kept per chosen epoch, and the training images a run without
# validation people reviews for them (a sample: the review runs at every new best epoch).
MISTAKES_KEPT = 24
REVIEW_SAMPLE = 512


@dataclass
class Review:
    """The images whose predictions are kept for the report: the validation images, or a
    sample of the training images; ``rows`` are their index rows, in ``loader`` order."""

    split: str
    loader: Any
    rows: np.ndarray
    labels: np.ndarray
    paths: list[str]
    data_root: str


@dataclass
class TaskData:
    """The loaders of one task's training, their sizes, and the images it reviews."""

    train_loader: Any
    val_loader: Any | None
    train_size: int
    val_size: int
    workers: int
    review: Review


def confident_mistakes(
    probs: np.ndarray, review: Review, epoch: int, class_names: list[str], kept: int = MISTAKES_KEPT
) -> dict[str, Any]:
    """The ``kept`` wrong predictions of highest probability, as JSON-ready values."""
    predicted = probs.argmax(axis=1)
    confidence = probs[np.arange(len(probs)), predicted]
    wrong = np.flatnonzero(predicted != review.labels)
    worst = wrong[np.argsort(-confidence[wrong], kind="stable")][:kept]
    return {
        "epoch": epoch,
        "split": review.split,
        "data_root": review.data_root,
        "class_names": class_names,
        "images_checked": int(len(probs)),
        "wrong": int(len(wrong)),
        "mistakes": [
            {
                "path": review.paths[int(review.rows[i])],
                "true": int(review.labels[i]),
                "predicted": int(predicted[i]),
                "probability": float(confidence[i]),
                "true_probability": float(probs[i, review.labels[i]]),
            }
            for i in worst
        ],
    }


def build_task_data(
    config: Config,
    task: str,
    index_path: str | Path,
    device: torch.device,
    generator: torch.Generator,
    cache_dir: str | Path | None,
    *,
    world: World | None = None,
) -> TaskData:
    """Index rows -> labels -> image sources -> datasets -> loaders, for one task; in a
    ``world`` of several processes, this rank's share of the training draw and of the
    validation images (rows ``rank, rank + W, ...``; the review keeps all of them)."""
    from maskpipe.data.cache import DiskImages, decoded_images
    from maskpipe.data.datasets import (
        ImageDataset,
        Subset,
        default_num_workers,
        make_loader,
        official_labels,
        train_labels,
    )
    from maskpipe.data.index import read_index
    from maskpipe.data.samplers import ShardedDraw, make_sampler
    from maskpipe.data import transforms
    from maskpipe.storage import localize

    d, t = config.data, config.train
    world = world or World()
    frame, data_root = read_index(index_path)
    frame = frame.reset_index(drop=True)
    train_rows = np.flatnonzero((frame["split"] == "train").to_numpy()) if d.use_val_split else np.arange(len(frame))
    val_rows = np.flatnonzero((frame["split"] == "val").to_numpy()) if d.use_val_split else np.array([], dtype=np.int64)
    if len(train_rows) == 0:
        raise TrainingError(f"index {index_path} has no training rows (split == 'train')")
    if d.use_val_split and len(val_rows) == 0 and t.select_by == "val_f1":
        raise TrainingError(
            f"index {index_path} has no validation rows (split == 'val') but train.select_by="
            "val_f1 needs them; rebuild the index with --val-fraction > 0, or set "
            "train.select_by=last"
        )
    if d.use_val_split and len(val_rows) == 0:
        log.info("%s: the index holds no validation people; every person trains", task)
    paths = localize(data_root, frame["path"].tolist(), cache_dir=Path(cache_dir) if cache_dir else None)
    labels = train_labels(frame, task, d.age_old_min)
    eval_labels = official_labels(frame, task)

    if d.augment == "fast":
        source = decoded_images(
            paths, d.crop_size, d.input_size, budget_gb=d.cache_gb,
            cache_dir=Path(cache_dir) / "decoded" if cache_dir else None,
        )
        train_transform = transforms.fast_train_transform(d.input_size, d.mean, d.std, d.augs)
        train_source = Subset(source, train_rows)
    else:
        source = DiskImages(paths, d.crop_size, d.input_size)
        train_transform = transforms.original_train_transform(
            d.crop_size, d.input_size, d.mean, d.std, d.augs
        )
        train_source = Subset(DiskImages(paths), train_rows)
    train_transform.set_random_seed(t.seed + world.rank)
    workers = default_num_workers(d.num_workers, share=world.local_size)
    train_set = ImageDataset(train_source, labels[train_rows], train_transform)
    kind = t.sampler.get(task, "shuffle")
    if world.distributed:
        sampler = ShardedDraw(
            labels[train_rows], NUM_CLASSES[task], kind, rank=world.rank, world_size=world.size, seed=t.seed
        )  # fmt: skip
    else:
        sampler = make_sampler(labels[train_rows], NUM_CLASSES[task], kind, generator)
    train_loader = make_loader(
        train_set, batch_size=t.batch_size, train=True, num_workers=workers, device=device,
        generator=generator, sampler=sampler,
    )
    def eval_loader(rows: np.ndarray, loader_generator: torch.Generator | None = None):
        rows_set = ImageDataset(Subset(source, rows), eval_labels[rows])
        return make_loader(
            rows_set, batch_size=max(t.batch_size, 64), train=False, num_workers=workers, device=device,
            generator=loader_generator,
        )  # fmt: skip

    val_loader = None
    if len(val_rows):
        val_loader = eval_loader(shard(val_rows, world))
        review = Review("val", val_loader, val_rows, eval_labels[val_rows], frame["path"].tolist(), data_root)
    else:
        # Its own generators: reviewing must not move the random streams training draws from.
        sample = np.sort(np.random.default_rng(t.seed).permutation(train_rows)[:REVIEW_SAMPLE])
        review_loader = eval_loader(sample, torch.Generator().manual_seed(t.seed))
        review = Review("train", review_loader, sample, eval_labels[sample], frame["path"].tolist(), data_root)
    counts = np.bincount(labels[train_rows], minlength=NUM_CLASSES[task]).tolist()
    log.info(
        "%s: %d training images (classes %s), %d validation images, %d loader workers, %s path",
        task, len(train_rows), counts, len(val_rows), workers, d.augment,
    )
    return TaskData(train_loader, val_loader, len(train_rows), len(val_rows), workers, review)
