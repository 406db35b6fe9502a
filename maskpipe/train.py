"""Train one task model (mask, gender or age) into a checkpoint folder, resumably: the entry point and the epoch loop.

``train_task`` reads the index, builds the task's labels, data loaders and model
(:mod:`maskpipe.task_data`, :mod:`maskpipe.optim`), and runs the epochs. After every completed
epoch it writes ``state/last.pt`` (:mod:`maskpipe.resume`: model, optimizer, scheduler, RNG,
best score, history) atomically, and the best weights through
:func:`maskpipe.checkpoint.save_checkpoint`; with ``resume_uri`` the folder is mirrored to
object storage. Running it again with the same folder continues after the last completed
epoch; a finished run is a no-op that reports its result again.

Under ``torchrun`` every process runs ``train_task`` with the same arguments
(:mod:`maskpipe.distributed`): the model is wrapped in DistributedDataParallel, each rank
trains on its share of the epoch's global draw and scores its share of the validation images,
the scores are gathered so every rank decides alike, and only rank 0 writes files.
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

from maskpipe.atomic import write_json, write_text
from maskpipe.config import Config, validate
from maskpipe.device import resolve_device
from maskpipe.distributed import (
    World,
    all_gather,
    collective_failure,
    device_of,
    gather_strided,
    is_collective_failure,
    local_leader_first,
    session,
    world_from_env,
)
from maskpipe.errors import MaskpipeError, TrainingError
from maskpipe.labels import NUM_CLASSES, TASK_CLASS_NAMES, check_task
from maskpipe.optim import effective_batch, make_optimizer, make_scheduler, scaled_lr
from maskpipe.resume import (
    RESUMABLE_CHANGES,
    STATE_FILE,
    STATE_FORMAT,
    check_compatible,
    finished,
    load_resume_state,
    remove_stale_temp_files,
    restore_run,
    rng_state,
    run_state,
    seed_everything,
)
from maskpipe.task_data import MISTAKES_KEPT, REVIEW_SAMPLE, Review, TaskData, build_task_data, confident_mistakes
from maskpipe.train_result import TrainResult, finished_result

# Names other modules and tests import from here; they live in the modules above.
__all__ = [
    "MISTAKES_KEPT", "RESUMABLE_CHANGES", "REVIEW_SAMPLE", "STATE_FILE", "STATE_FORMAT", "Review",
    "TaskData", "TrainResult", "TrainingError", "build_task_data", "confident_mistakes",
    "make_optimizer", "make_scheduler", "resolve_device", "seed_everything", "train_task",
]  # fmt: skip
_remove_stale_temp_files = remove_stale_temp_files  # the name tests/reliability use

log = logging.getLogger(__name__)

HISTORY_FILE = "history.json"
METRICS_FILE = "metrics.json"
MISTAKES_FILE = "mistakes.json"
CONFIG_FILE = "config.yaml"


# ---------------------------------------------------------------------------------------------
# entry point


def train_task(
    config: Config,
    task: str,
    index_path: str | Path,
    out_dir: str | Path,
    *,
    resume_uri: str | None = None,
    cache_dir: str | Path | None = None,
) -> TrainResult:
    """Train ``task`` on the index's rows and write the checkpoint folder ``out_dir``.

    Args:
        config: the resolved config (``maskpipe.config.load_config``).
        task: ``mask``, ``gender`` or ``age``.
        index_path: ``index.parquet`` written by ``maskpipe index``.
        out_dir: checkpoint folder; resumed when it holds ``state/last.pt``.
        resume_uri: ``s3://bucket/runs/<run>/<task>/`` (or a folder) that mirrors ``out_dir``
            after every epoch and seeds it when the local state is missing.
        cache_dir: local cache for s3:// images and the decoded-image cache.
    """
    try:
        check_task(task)
    except ValueError as exc:
        raise TrainingError(str(exc)) from None
    validate(config)
    out_dir = Path(out_dir)
    started = time.monotonic()
    world = world_from_env()
    device = device_of(world, _device(config.train.device))
    with session(device) as world:
        try:
            return _train(config, task, index_path, out_dir, resume_uri, cache_dir, world, device, started)
        except Exception as exc:
            if world.distributed and is_collective_failure(exc):
                raise TrainingError(collective_failure(world, exc)) from None
            raise


def _train(
    config: Config, task: str, index_path: str | Path, out_dir: Path, resume_uri: str | None,
    cache_dir: str | Path | None, world: World, device: torch.device, started: float,
) -> TrainResult:  # fmt: skip
    def read_state() -> dict[str, Any] | None:
        if world.local_rank == 0:  # the node's other ranks wait: nobody writes yet
            remove_stale_temp_files(out_dir)
        return load_resume_state(out_dir, resume_uri)

    state = local_leader_first(world, read_state)
    _check_same_state(world, state, out_dir)
    if state is not None:
        check_compatible(state, config, task, out_dir)
        if finished(state, config):
            return finished_result(state, config, task, out_dir)

    threads = torch.get_num_threads()
    try:
        run = _Run(config, task, index_path, out_dir, cache_dir, world=world, device=device)
        resumed_from = restore_run(run, state) if state is not None else 0
        if resumed_from:
            log.info("%s: resuming %s after epoch %d", task, out_dir, resumed_from)
        if world.is_main:
            write_text(out_dir / CONFIG_FILE, config.to_yaml() + run.resolved_note())
        run.fit(resumed_from, resume_uri)
        run.close()
    finally:
        torch.set_num_threads(threads)
    result = finished_result(run.summary_state(), config, task, out_dir)
    result.already_finished = False
    result.resumed_from = resumed_from
    result.seconds = time.monotonic() - started
    return result


# ---------------------------------------------------------------------------------------------
# one run


def _check_same_state(world: World, state: dict[str, Any] | None, out_dir: Path) -> None:
    """Every rank must continue from the same epoch (rank 0's disk may not be another node's)."""
    if not world.distributed:
        return
    epochs = all_gather(None if state is None else int(state["epoch"]))
    if len(set(epochs)) > 1:
        found = ", ".join(f"rank {r}: {'none' if e is None else f'epoch {e}'}" for r, e in enumerate(epochs))
        raise TrainingError(
            f"the ranks found different resume states in {out_dir} ({found}); give every node the "
            "same --out folder (shared storage) or the same --resume-uri"
        )


class _Run:
    """The model, data and optimisation state of one task's training (one rank's, under torchrun)."""

    def __init__(
        self, config: Config, task: str, index_path: str | Path, out_dir: Path, cache_dir,
        *, world: World | None = None, device: torch.device | None = None,
    ) -> None:  # fmt: skip
        from maskpipe.models import create_model

        self.config, self.task, self.out_dir = config, task, out_dir
        self.world = world or World()
        self.num_classes = NUM_CLASSES[task]
        self.device = device if device is not None else _device(config.train.device)
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
            _share_cpus(self.data.workers, self.world.local_size)
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
        self.best_score = -math.inf
        self.best_epoch = 0
        self.best_metrics: dict[str, Any] = {}
        self.bad_epochs = 0
        self.stopped_early = False
        self.history: list[dict[str, Any]] = []

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
        return {
            "epoch": self.epoch,
            "best_epoch": self.best_epoch,
            "best_metrics": self.best_metrics,
            "stopped_early": self.stopped_early,
            "history": self.history,
        }

    def save(self, resume_uri: str | None) -> None:
        from maskpipe.checkpoint import save_state

        # Every rank's random streams, so a resumed rank continues its own (a collective).
        rank_rngs = all_gather(rng_state(self.generator)) if self.world.distributed else None
        if not self.world.is_main:
            return
        write_json(self.out_dir / HISTORY_FILE, self.history)
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
                _broadcast_buffers(self.model)
            if self.data.val_loader is not None:
                val_metrics, val_probs = self.evaluate(self.data.val_loader, sharded=True)
            self.epoch = epoch
            improved = self._record(epoch, train_metrics, val_metrics, time.monotonic() - began, lr_steps)
            if improved and self.world.is_main:
                self._save_best(epoch, train_metrics, val_metrics)
                self._save_mistakes(epoch, val_probs)
            patience = self.config.train.early_stopping_patience
            if patience and self.bad_epochs >= patience and epoch < total:
                self.stopped_early = True
                log.info("%s: no improvement for %d epochs, stopping early", self.task, patience)
            self.save(resume_uri)
            if self.stopped_early:
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
        return self._metrics(targets_all, preds_all, loss_sum, "train"), lr_steps

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
        metrics = self._metrics(all_targets, all_probs.argmax(1), loss_sum, "val")
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

    def _metrics(self, targets: torch.Tensor, preds: torch.Tensor, loss_sum: float, split: str) -> dict[str, Any]:
        from maskpipe.metrics import classification_metrics

        metrics = classification_metrics(
            targets.numpy(), preds.numpy(), self.num_classes, list(TASK_CLASS_NAMES[self.task])
        )
        metrics["loss"] = loss_sum / max(1, len(targets))
        metrics["split"] = split
        return metrics

    # -- bookkeeping ----------------------------------------------------------------------

    def _record(
        self, epoch: int, train: dict[str, Any], val: dict[str, Any] | None, seconds: float,
        lr_steps: list[float],
    ) -> bool:
        lr = self.optimizer.param_groups[0]["lr"]
        score = self._selection_score(epoch, train, val)
        improved = score > self.best_score
        if improved:
            self.best_score, self.best_epoch, self.bad_epochs = score, epoch, 0
        else:
            self.bad_epochs += 1
        row = {
            "epoch": epoch,
            "train_loss": train["loss"],
            "train_accuracy": train["accuracy"],
            "train_macro_f1": train["macro_f1"],
            "val_loss": val["loss"] if val else None,
            "val_accuracy": val["accuracy"] if val else None,
            "val_macro_f1": val["macro_f1"] if val else None,
            "lr": lr,
            "seconds": round(seconds, 2),
            "best": improved,
            "lr_steps": lr_steps,
        }
        self.history.append(row)
        log.info(_epoch_line(self.task, epoch, self.config.train.epochs, row))
        return improved

    def _selection_score(self, epoch: int, train: dict[str, Any], val: dict[str, Any] | None) -> float:
        select_by = self.config.train.select_by
        if select_by == "last":
            return float(epoch)
        if select_by == "train_acc":
            return float(train["accuracy"])
        assert val is not None  # validate(): val_f1 needs the val split
        return float(val["macro_f1"])

    def _save_best(self, epoch: int, train: dict[str, Any], val: dict[str, Any] | None) -> None:
        from maskpipe.checkpoint import save_checkpoint

        chosen = dict(val if val is not None else train)
        chosen.update(task=self.task, epoch=epoch, selected_by=self.config.train.select_by)
        if val is not None:
            chosen["train"] = {k: train[k] for k in ("loss", "accuracy", "macro_f1")}
        self.best_metrics = chosen
        summary = {k: chosen[k] for k in ("split", "accuracy", "macro_f1", "loss")}
        save_checkpoint(
            self.out_dir, self.model, task=self.task, config=self.config, epoch=epoch, metrics=summary,
            config_note=self.resolved_note(),
        )
        write_json(self.out_dir / METRICS_FILE, chosen)

    def _save_mistakes(self, epoch: int, val_probs: np.ndarray | None) -> None:
        """Write the images the chosen epoch's model gets most confidently wrong: validation
        images when there are any, else a fixed sample of training images (unaugmented)."""
        review = self.data.review
        probs = val_probs if review.split == "val" else self.evaluate(review.loader)[1]
        write_json(
            self.out_dir / MISTAKES_FILE,
            confident_mistakes(probs, review, epoch, list(TASK_CLASS_NAMES[self.task])),
        )

    def close(self) -> None:
        # Persistent workers hold processes; end them now rather than at interpreter exit.
        self.data = None  # type: ignore[assignment]


def _epoch_line(task: str, epoch: int, total: int, row: dict[str, Any]) -> str:
    text = (
        f"{task} epoch {epoch}/{total}: train loss {row['train_loss']:.4f} "
        f"acc {row['train_accuracy']:.4f} f1 {row['train_macro_f1']:.4f}"
    )
    if row["val_loss"] is not None:
        text += (
            f" | val loss {row['val_loss']:.4f} acc {row['val_accuracy']:.4f} "
            f"f1 {row['val_macro_f1']:.4f}"
        )
    text += f" | lr {row['lr']:.2e} | {row['seconds']:.1f} s"
    return text + (" *" if row["best"] else "")


# ---------------------------------------------------------------------------------------------
# building blocks


def _share_cpus(loader_workers: int, processes: int = 1) -> None:
    # Compute threads plus loader workers must not exceed the CPUs (shared by the node's
    # `processes` ranks): oversubscribed OpenMP threads spin against each other and a step
    # gets several times slower, not faster.
    from maskpipe.data.images import default_workers

    threads = max(1, default_workers() // processes - loader_workers)
    if threads < torch.get_num_threads():
        log.debug("using %d compute threads beside %d loader workers", threads, loader_workers)
        torch.set_num_threads(threads)


def _broadcast_buffers(model: torch.nn.Module) -> None:
    import torch.distributed as dist

    for buffer in model.buffers():
        dist.broadcast(buffer, src=0)


def _device(setting: str) -> torch.device:
    try:
        return resolve_device(setting, "train.device")
    except MaskpipeError as exc:
        raise TrainingError(str(exc)) from None
