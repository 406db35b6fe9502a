"""One task's training run on this process: the model (in DistributedDataParallel under torchrun), its optimisation, and the epoch loop.

:class:`TrainingRun` builds the model, the task's data (:mod:`maskpipe.task_data`) and the
optimizer and schedule (:mod:`maskpipe.optim`), then :meth:`TrainingRun.fit` trains, scores
the validation images and records every epoch (:mod:`maskpipe.epoch_records`), and saves the
resume state (:mod:`maskpipe.resume`) after each. Under ``torchrun`` each rank trains on its
share of the epoch's global draw and scores its share of the validation images; the scores
are gathered so every rank decides alike, and only rank 0 writes files.
"""

from __future__ import annotations

import contextlib
import logging
import math
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from maskpipe.config import Config
from maskpipe.device import training_device
from maskpipe.distributed import World, all_gather, broadcast_buffers, gather_strided, local_leader_first
from maskpipe.epoch_records import EpochRecords, epoch_line, epoch_metrics
from maskpipe.labels import NUM_CLASSES
from maskpipe.optim import effective_batch, make_optimizer, make_scheduler, scaled_lr
from maskpipe.resume import STATE_FILE, rng_state, run_state, seed_everything
from maskpipe.task_data import build_task_data

# The log lines of a run are maskpipe.train's, as they were before the run had a module of its own.
log = logging.getLogger("maskpipe.train")


class TrainingRun:
    """The model, data and optimisation state of one task's training (one rank's, under torchrun)."""

    def __init__(
        self, config: Config, task: str, index_path: str | Path, out_dir: Path, cache_dir,
        *, world: World | None = None, device: torch.device | None = None,
    ) -> None:  # fmt: skip
        from maskpipe.models import create_model

        self.config, self.task, self.out_dir = config, task, out_dir
        self.world = world or World()
        self.num_classes = NUM_CLASSES[task]
        self.device = device if device is not None else training_device(config.train.device)
        # Each rank its own augmentation and dropout streams; rank 0 (and one process) the seed's.
        seed = config.train.seed + self.world.rank
        seed_everything(seed)
        self.generator = torch.Generator().manual_seed(seed)
        # The model first: missing pretrained weights fail in seconds, before the image cache.
        self.model = create_model(
            config.model.arch,
            self.num_classes,
            pretrained=config.model.pretrained,
            weights=config.model.weights,
            drop_rate=config.model.drop_rate,
        )
        # Local rank 0 fills the node's image cache (and downloads); the others then open it.
        self.data = local_leader_first(
            self.world,
            lambda: build_task_data(config, task, index_path, self.device, self.generator, cache_dir, world=self.world),
        )
        if self.device.type == "cpu":
            from maskpipe.data.datasets import share_cpus

            share_cpus(self.data.workers, self.world.local_size)
        self.channels_last = self.device.type == "cuda" and config.train.channels_last
        if self.channels_last and config.train.optimizer == "adamp":
            # The adamp package's projection does view() on channels-last gradients and fails.
            log.warning("train.optimizer=adamp cannot run channels-last; using NCHW on %s", self.device)
            self.channels_last = False
        if self.world.distributed and config.train.sync_batchnorm:
            if self.device.type == "cuda":
                self.model = torch.nn.SyncBatchNorm.convert_sync_batchnorm(self.model)
            else:
                log.warning("train.sync_batchnorm needs GPUs (DDP runs SyncBatchNorm on CUDA only); each rank keeps its own BatchNorm statistics on the CPU")
        self.model.to(self.device, memory_format=self._memory_format())
        # What trains: DDP over the model in a world of several processes, else the model itself.
        # Evaluation and saving use self.model (same parameters, no collectives, plain names).
        self.trainer = self.model
        if self.world.distributed:
            from torch.nn.parallel import DistributedDataParallel

            ids = [self.device.index] if self.device.type == "cuda" else None
            self.trainer = DistributedDataParallel(self.model, device_ids=ids)
        if self.device.type == "cuda":
            torch.backends.cudnn.benchmark = True
        self.amp = self.device.type == "cuda" and config.train.amp
        from maskpipe.data.transforms import BatchNormalizer

        self.normalizer = BatchNormalizer(
            config.data.mean, config.data.std, channels_last=self.channels_last,
            noise="noise" in config.data.augs,
        )  # fmt: skip
        self.lr = scaled_lr(config, self.world.size)
        self.effective_batch = effective_batch(config, self.world.size)
        if self.world.distributed:
            log.info("%s: %s", task, self._resolved_text())
        self.optimizer = make_optimizer(self.model, config, lr=self.lr)
        self.steps_per_epoch = math.ceil(len(self.data.train_loader) / config.train.grad_accum)
        self.scheduler = make_scheduler(self.optimizer, config, self.steps_per_epoch, lr=self.lr)
        self.epoch = 0
        self.records = EpochRecords(task, config)

    def _memory_format(self) -> torch.memory_format:
        return torch.channels_last if self.channels_last else torch.contiguous_format

    def _resolved_text(self) -> str:
        t = self.config.train
        return (
            f"{self.world.size} processes: effective batch {self.effective_batch} (train.batch_size "
            f"{t.batch_size} x {self.world.size} ranks x train.grad_accum {t.grad_accum}), lr "
            f"{self.lr:.4g} (train.lr {t.lr:.4g}, train.lr_scaling {t.lr_scaling})"
        )

    def resolved_note(self) -> str:
        """What the world size made of the config, as YAML comments for ``config.yaml`` (empty
        for one process: its config is what ran)."""
        if not self.world.distributed:
            return ""
        return f"# resolved for this run: {self._resolved_text()}\n"

    # -- state ----------------------------------------------------------------------------

    def summary_state(self) -> dict[str, Any]:
        """The parts of the state a result reports (no tensors)."""
        return self.records.summary(self.epoch)

    def save(self, resume_uri: str | None) -> None:
        from maskpipe.checkpoint import save_state

        # Every rank's random streams, so a resumed rank continues its own (a collective).
        rank_rngs = all_gather(rng_state(self.generator)) if self.world.distributed else None
        if not self.world.is_main:
            return
        self.records.save_history(self.out_dir)
        state = run_state(self)
        if rank_rngs is not None:
            state["rank_rng"] = rank_rngs
        save_state(self.out_dir / STATE_FILE, state)
        if resume_uri:
            from maskpipe.storage import sync_up

            sync_up(self.out_dir, resume_uri)

    # -- loop -----------------------------------------------------------------------------

    def fit(self, start_epoch: int, resume_uri: str | None) -> None:
        total = self.config.train.epochs
        for epoch in range(start_epoch + 1, total + 1):
            began = time.monotonic()
            train_metrics, lr_steps = self.train_one_epoch(epoch, total)
            val_metrics, val_probs = (None, None)
            if self.world.distributed:
                # BatchNorm statistics are each rank's after its last batch; score (and save)
                # rank 0's model on every rank.
                broadcast_buffers(self.model)
            if self.data.val_loader is not None:
                val_metrics, val_probs = self.evaluate(self.data.val_loader, sharded=True)
            self.epoch = epoch
            lr = self.optimizer.param_groups[0]["lr"]
            row = self.records.record(epoch, train_metrics, val_metrics, time.monotonic() - began, lr_steps, lr)
            log.info(epoch_line(self.task, epoch, total, row))
            if row["best"] and self.world.is_main:
                self.records.save_best(self.out_dir, self.model, epoch, train_metrics, val_metrics, self.resolved_note())
                self._save_mistakes(epoch, val_probs)
            stopping = self.records.stops_early(epoch)
            if stopping:
                patience = self.config.train.early_stopping_patience
                log.info("%s: no improvement for %d epochs, stopping early", self.task, patience)
            self.save(resume_uri)
            if stopping:
                break

    def train_one_epoch(self, epoch: int, total: int) -> tuple[dict[str, Any], list[float]]:
        """One pass over the training data; returns its metrics and the learning rate of
        each optimizer step."""
        from maskpipe.progress import progress

        accum = self.config.train.grad_accum
        loader = self.data.train_loader
        if hasattr(loader.sampler, "set_epoch"):
            loader.sampler.set_epoch(epoch)  # the epoch's global draw (several processes)
        self.model.train()
        self.optimizer.zero_grad(set_to_none=True)
        losses, preds, targets, lr_steps = [], [], [], []
        batches = progress(loader, desc=f"{self.task} epoch {epoch}/{total}", unit="batch", leave=False)
        for step, (images, labels) in enumerate(batches, start=1):
            images, labels = self._to_device(images, labels)
            stepping = step % accum == 0 or step == len(loader)
            with self._gradient_sync(stepping):
                with self._autocast():
                    logits = self.trainer(images)
                    loss = F.cross_entropy(logits.float(), labels, label_smoothing=self.config.train.label_smoothing)
                (loss / accum).backward()
            if stepping:
                lr_steps.append(self.optimizer.param_groups[0]["lr"])
                self.optimizer.step()
                self.optimizer.zero_grad(set_to_none=True)
                self.scheduler.step()
            losses.append(loss.item() * len(labels))
            preds.append(logits.argmax(1).cpu())
            targets.append(labels.cpu())
        targets_all, preds_all, loss_sum = torch.cat(targets), torch.cat(preds), sum(losses)
        if self.world.distributed:
            # Every rank's images count, and every rank sees the same figures.
            shares = all_gather((targets_all, preds_all, loss_sum))
            targets_all = torch.cat([share[0] for share in shares])
            preds_all = torch.cat([share[1] for share in shares])
            loss_sum = sum(share[2] for share in shares)
        return epoch_metrics(self.task, targets_all, preds_all, loss_sum, "train"), lr_steps

    def _gradient_sync(self, stepping: bool):
        # DDP averages gradients on every backward; the accumulation steps before an
        # optimizer step need not.
        if self.world.distributed and not stepping:
            return self.trainer.no_sync()
        return contextlib.nullcontext()

    @torch.no_grad()
    def evaluate(self, loader, sharded: bool = False) -> tuple[dict[str, Any], np.ndarray]:
        """Metrics of ``loader``'s images (in order) and their softmax probabilities;
        ``sharded``: the loader holds this rank's share (rank r: images r, r + W, ...) and the
        result is every rank's, gathered back into order."""
        self.model.eval()
        losses, probs, targets = [], [], []
        for images, labels in loader:
            images, labels = self._to_device(images, labels)
            with self._autocast():
                logits = self.model(images).float()
            losses.append(F.cross_entropy(logits, labels, reduction="sum").item())
            probs.append(logits.softmax(1).cpu())
            targets.append(labels.cpu())
        if not probs:  # a rank whose share of a tiny validation set is empty
            probs, targets = [torch.empty(0, self.num_classes)], [torch.empty(0, dtype=torch.int64)]
        all_probs, all_targets, loss_sum = torch.cat(probs), torch.cat(targets), sum(losses)
        if sharded and self.world.distributed:
            shares = all_gather((all_probs, all_targets, loss_sum))
            all_probs = gather_strided([share[0] for share in shares])
            all_targets = gather_strided([share[1] for share in shares])
            loss_sum = sum(share[2] for share in shares)
        metrics = epoch_metrics(self.task, all_targets, all_probs.argmax(1), loss_sum, "val")
        return metrics, all_probs.numpy()

    def _to_device(self, images: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        non_blocking = self.device.type == "cuda"
        images = images.to(self.device, non_blocking=non_blocking)
        if images.dtype == torch.uint8:
            # The fast path's per-image list leaves the noise to the normalised batch (train
            # batches only: evaluate() puts the model in eval mode). The normaliser reuses its
            # CPU buffer: the previous batch is done with once its backward has run.
            images = self.normalizer(images, train=self.model.training)
        elif self.channels_last:
            images = images.contiguous(memory_format=torch.channels_last)
        return images, labels.to(self.device, non_blocking=non_blocking)

    def _autocast(self):
        return torch.autocast(device_type=self.device.type, dtype=torch.bfloat16, enabled=self.amp)

    # -- bookkeeping ----------------------------------------------------------------------

    def _save_mistakes(self, epoch: int, val_probs: np.ndarray | None) -> None:
        """Write the images the chosen epoch's model gets most confidently wrong: validation
        images when there are any, else a fixed sample of training images (unaugmented)."""
        review = self.data.review
        probs = val_probs if review.split == "val" else self.evaluate(review.loader)[1]
        self.records.save_mistakes(self.out_dir, epoch, probs, review)

    def close(self) -> None:
        # Persistent workers hold processes; end them now rather than at interpreter exit.
        self.data = None  # type: ignore[assignment]
