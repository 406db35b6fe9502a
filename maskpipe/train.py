"""Train one task model (mask, gender or age) into a checkpoint folder, resumably.

``train_task`` reads the index, builds the task's labels, data loaders and model, and runs the
epochs. After every completed epoch it writes ``state/last.pt`` (model, optimizer, scheduler,
RNG, best score, history) atomically, and the best weights through
:func:`maskpipe.checkpoint.save_checkpoint`; with ``resume_uri`` the folder is mirrored to
object storage. Running it again with the same folder continues after the last completed
epoch; a finished run is a no-op that reports its result again.
"""

from __future__ import annotations

import logging
import math
import random
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from maskpipe.atomic import write_json, write_text
from maskpipe.config import Config, flatten, validate
from maskpipe.errors import CheckpointError, MaskpipeError
from maskpipe.labels import NUM_CLASSES, TASK_CLASS_NAMES, check_task

log = logging.getLogger(__name__)

STATE_FORMAT = 1
STATE_FILE = Path("state") / "last.pt"
HISTORY_FILE = "history.json"
METRICS_FILE = "metrics.json"
MISTAKES_FILE = "mistakes.json"
# The confidently wrong images kept per chosen epoch, and the training images a run without
# validation people reviews for them (a sample: the review runs at every new best epoch).
MISTAKES_KEPT = 24
REVIEW_SAMPLE = 512
CONFIG_FILE = "config.yaml"

# Config keys that may change between a run and its resumption; everything else must match.
RESUMABLE_CHANGES = (
    "preset",
    "train.epochs",
    "train.early_stopping_patience",
    "train.device",
    "data.num_workers",
    "data.cache_gb",
    "infer.batch_size",
    "infer.tta",
    "infer.num_workers",
)


@dataclass
class TrainResult:
    """What a training run produced; ``summary()`` is the line the CLI prints."""

    task: str
    checkpoint_dir: Path
    metrics: dict[str, Any]
    best_epoch: int
    epochs_done: int
    epochs_planned: int
    resumed_from: int = 0
    already_finished: bool = False
    stopped_early: bool = False
    seconds: float = 0.0
    history: list[dict[str, Any]] = field(default_factory=list)

    def summary(self) -> str:
        split = self.metrics.get("split", "val")
        status = "already finished" if self.already_finished else f"{self.seconds:.0f} s"
        resumed = f", resumed after epoch {self.resumed_from}" if self.resumed_from else ""
        early = ", stopped early" if self.stopped_early else ""
        return (
            f"{self.task}: epochs {self.epochs_done}/{self.epochs_planned}{resumed}{early}; best "
            f"epoch {self.best_epoch}: {split} accuracy {self.metrics.get('accuracy', 0):.4f}, "
            f"macro-F1 {self.metrics.get('macro_f1', 0):.4f} ({status}) -> {self.checkpoint_dir}"
        )


class TrainingError(MaskpipeError):
    """The data or the saved state do not allow this training run."""


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
    _remove_stale_temp_files(out_dir)
    state = _load_resume_state(out_dir, resume_uri)
    if state is not None:
        _check_compatible(state, config, task, out_dir)
        if _finished(state, config):
            return _finished_result(state, config, task, out_dir)

    threads = torch.get_num_threads()
    try:
        run = _Run(config, task, index_path, out_dir, cache_dir)
        resumed_from = run.restore(state) if state is not None else 0
        if resumed_from:
            log.info("%s: resuming %s after epoch %d", task, out_dir, resumed_from)
        write_text(out_dir / CONFIG_FILE, config.to_yaml())
        run.fit(resumed_from, resume_uri)
        run.close()
    finally:
        torch.set_num_threads(threads)
    result = _finished_result(run.summary_state(), config, task, out_dir)
    result.already_finished = False
    result.resumed_from = resumed_from
    result.seconds = time.monotonic() - started
    return result


# ---------------------------------------------------------------------------------------------
# resume state


def _remove_stale_temp_files(out_dir: Path) -> None:
    # A process killed while writing leaves maskpipe.atomic's temporary files behind; one
    # training owns its folder, so any found at start are leftovers.
    if not out_dir.is_dir():
        return
    stale = [p for p in out_dir.rglob(".*.tmp") if p.is_file()]
    for path in stale:
        path.unlink(missing_ok=True)
    if stale:
        log.info("removed %d unfinished temporary file(s) from %s", len(stale), out_dir)


def _load_resume_state(out_dir: Path, resume_uri: str | None) -> dict[str, Any] | None:
    from maskpipe.checkpoint import load_state

    path = out_dir / STATE_FILE
    if not path.is_file() and resume_uri:
        from maskpipe.storage import sync_down

        if sync_down(resume_uri, out_dir):
            log.info("restored %s from %s", out_dir, resume_uri)
    if not path.is_file():
        return None
    state = load_state(path)
    if state.get("format") != STATE_FORMAT:
        raise CheckpointError(
            f"resume state {path} has format {state.get('format')!r}, expected {STATE_FORMAT}; "
            "delete the state/ folder to start afresh"
        )
    return state


def _check_compatible(state: dict[str, Any], config: Config, task: str, out_dir: Path) -> None:
    if state.get("task") != task:
        raise CheckpointError(
            f"{out_dir / STATE_FILE} belongs to task {state.get('task')!r}, not {task!r}; use "
            f"another --out folder for {task}"
        )
    saved, current = dict(flatten(state["config"])), dict(flatten(config.to_dict()))
    changed = [
        f"{key}: {saved.get(key)!r} -> {current.get(key)!r}"
        for key in sorted(set(saved) | set(current))
        if key not in RESUMABLE_CHANGES and saved.get(key) != current.get(key)
    ]
    if changed:
        raise CheckpointError(
            f"{out_dir} holds a run with another config ({'; '.join(changed)}); resuming it "
            f"would mix two trainings. Use the original settings, another --out folder, or "
            f"delete {out_dir / 'state'} to start afresh"
        )


def _finished(state: dict[str, Any], config: Config) -> bool:
    return bool(state.get("stopped_early")) or int(state["epoch"]) >= config.train.epochs


def _finished_result(
    state: dict[str, Any], config: Config, task: str, out_dir: Path
) -> TrainResult:
    return TrainResult(
        task=task,
        checkpoint_dir=out_dir,
        metrics=dict(state.get("best_metrics") or {}),
        best_epoch=int(state.get("best_epoch", 0)),
        epochs_done=int(state["epoch"]),
        epochs_planned=config.train.epochs,
        already_finished=True,
        stopped_early=bool(state.get("stopped_early")),
        history=list(state.get("history", [])),
    )


def _rng_state(generator: torch.Generator) -> dict[str, Any]:
    np_state = np.random.get_state()
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "numpy": [np_state[0], torch.from_numpy(np_state[1].astype(np.int64)), *map(int, np_state[2:4]), float(np_state[4])],
        "python": random.getstate(),
        "loader": generator.get_state(),
    }


def _set_rng_state(rng: dict[str, Any], generator: torch.Generator) -> None:
    torch.set_rng_state(rng["torch"])
    if rng.get("cuda") and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(rng["cuda"])
    name, keys, pos, has_gauss, gauss = rng["numpy"]
    np.random.set_state((name, keys.numpy().astype(np.uint32), pos, has_gauss, gauss))
    version, internal, gauss_next = rng["python"]
    random.setstate((version, tuple(internal), gauss_next))
    generator.set_state(rng["loader"])


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


# ---------------------------------------------------------------------------------------------
# one run


class _Run:
    """The model, data and optimisation state of one task's training."""

    def __init__(
        self, config: Config, task: str, index_path: str | Path, out_dir: Path, cache_dir
    ) -> None:
        from maskpipe.models import create_model

        self.config, self.task, self.out_dir = config, task, out_dir
        self.num_classes = NUM_CLASSES[task]
        self.device = resolve_device(config.train.device)
        seed_everything(config.train.seed)
        self.generator = torch.Generator().manual_seed(config.train.seed)
        # The model first: missing pretrained weights fail in seconds, before the image cache.
        self.model = create_model(
            config.model.arch,
            self.num_classes,
            pretrained=config.model.pretrained,
            weights=config.model.weights,
            drop_rate=config.model.drop_rate,
        )
        self.data = build_task_data(config, task, index_path, self.device, self.generator, cache_dir)
        if self.device.type == "cpu":
            _share_cpus(self.data.workers)
        self.channels_last = self.device.type == "cuda" and config.train.channels_last
        if self.channels_last and config.train.optimizer == "adamp":
            # The adamp package's projection does view() on channels-last gradients and fails.
            log.warning("train.optimizer=adamp cannot run channels-last; using NCHW on %s", self.device)
            self.channels_last = False
        self.model.to(self.device, memory_format=self._memory_format())
        if self.device.type == "cuda":
            torch.backends.cudnn.benchmark = True
        self.amp = self.device.type == "cuda" and config.train.amp
        from maskpipe.data.transforms import BatchNormalizer

        self.normalizer = BatchNormalizer(
            config.data.mean, config.data.std, channels_last=self.channels_last,
            noise="noise" in config.data.augs,
        )  # fmt: skip
        self.optimizer = make_optimizer(self.model, config)
        self.steps_per_epoch = math.ceil(len(self.data.train_loader) / config.train.grad_accum)
        self.scheduler = make_scheduler(self.optimizer, config, self.steps_per_epoch)
        self.epoch = 0
        self.best_score = -math.inf
        self.best_epoch = 0
        self.best_metrics: dict[str, Any] = {}
        self.bad_epochs = 0
        self.stopped_early = False
        self.history: list[dict[str, Any]] = []

    def _memory_format(self) -> torch.memory_format:
        return torch.channels_last if self.channels_last else torch.contiguous_format

    # -- state ----------------------------------------------------------------------------

    def state_dict(self) -> dict[str, Any]:
        from maskpipe.checkpoint import cpu_state_dict

        return {
            "format": STATE_FORMAT,
            "task": self.task,
            "config": self.config.to_dict(),
            "epoch": self.epoch,
            "model": cpu_state_dict(self.model),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "steps_per_epoch": self.steps_per_epoch,
            "rng": _rng_state(self.generator),
            "best_score": self.best_score,
            "best_epoch": self.best_epoch,
            "best_metrics": self.best_metrics,
            "bad_epochs": self.bad_epochs,
            "stopped_early": self.stopped_early,
            "history": self.history,
        }

    def summary_state(self) -> dict[str, Any]:
        """The parts of the state a result reports (no tensors)."""
        return {
            "epoch": self.epoch,
            "best_epoch": self.best_epoch,
            "best_metrics": self.best_metrics,
            "stopped_early": self.stopped_early,
            "history": self.history,
        }

    def restore(self, state: dict[str, Any]) -> int:
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.epoch = int(state["epoch"])
        saved_epochs = int(state["config"]["train"]["epochs"])
        if saved_epochs == self.config.train.epochs and state["steps_per_epoch"] == self.steps_per_epoch:
            self.scheduler.load_state_dict(state["scheduler"])
        else:
            # A longer (or shorter) run: the schedule is rebuilt for the new length and moved
            # to where the completed epochs left it.
            log.info("train.epochs %d -> %d: schedule rebuilt for the new length", saved_epochs, self.config.train.epochs)
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", UserWarning)
                for _ in range(self.epoch * self.steps_per_epoch):
                    self.scheduler.step()
        _set_rng_state(state["rng"], self.generator)
        self.best_score = float(state["best_score"])
        self.best_epoch = int(state["best_epoch"])
        self.best_metrics = dict(state["best_metrics"])
        self.bad_epochs = int(state["bad_epochs"])
        self.history = list(state["history"])
        return self.epoch

    def save(self, resume_uri: str | None) -> None:
        from maskpipe.checkpoint import save_state

        write_json(self.out_dir / HISTORY_FILE, self.history)
        save_state(self.out_dir / STATE_FILE, self.state_dict())
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
            if self.data.val_loader is not None:
                val_metrics, val_probs = self.evaluate(self.data.val_loader)
            self.epoch = epoch
            improved = self._record(epoch, train_metrics, val_metrics, time.monotonic() - began, lr_steps)
            if improved:
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
        self.model.train()
        self.optimizer.zero_grad(set_to_none=True)
        losses, preds, targets, lr_steps = [], [], [], []
        batches = progress(loader, desc=f"{self.task} epoch {epoch}/{total}", unit="batch", leave=False)
        for step, (images, labels) in enumerate(batches, start=1):
            images, labels = self._to_device(images, labels)
            with self._autocast():
                logits = self.model(images)
                loss = F.cross_entropy(logits.float(), labels, label_smoothing=self.config.train.label_smoothing)
            (loss / accum).backward()
            if step % accum == 0 or step == len(loader):
                lr_steps.append(self.optimizer.param_groups[0]["lr"])
                self.optimizer.step()
                self.optimizer.zero_grad(set_to_none=True)
                self.scheduler.step()
            losses.append(loss.item() * len(labels))
            preds.append(logits.argmax(1).cpu())
            targets.append(labels.cpu())
        return self._metrics(torch.cat(targets), torch.cat(preds), sum(losses), "train"), lr_steps

    @torch.no_grad()
    def evaluate(self, loader) -> tuple[dict[str, Any], np.ndarray]:
        """Metrics of ``loader``'s images (in order) and their softmax probabilities."""
        self.model.eval()
        losses, probs, targets = [], [], []
        for images, labels in loader:
            images, labels = self._to_device(images, labels)
            with self._autocast():
                logits = self.model(images).float()
            losses.append(F.cross_entropy(logits, labels, reduction="sum").item())
            probs.append(logits.softmax(1).cpu())
            targets.append(labels.cpu())
        all_probs = torch.cat(probs)
        metrics = self._metrics(torch.cat(targets), all_probs.argmax(1), sum(losses), "val")
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
            self.out_dir, self.model, task=self.task, config=self.config, epoch=epoch, metrics=summary
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


def _share_cpus(loader_workers: int) -> None:
    # Compute threads plus loader workers must not exceed the CPUs: oversubscribed OpenMP
    # threads spin against each other and a step gets several times slower, not faster.
    from maskpipe.data.images import default_workers

    threads = max(1, default_workers() - loader_workers)
    if threads < torch.get_num_threads():
        log.debug("using %d compute threads beside %d loader workers", threads, loader_workers)
        torch.set_num_threads(threads)


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise TrainingError("train.device=cuda but no CUDA device is visible; use auto or cpu")
    return torch.device(name)


def make_optimizer(model: torch.nn.Module, config: Config) -> torch.optim.Optimizer:
    t = config.train
    params = model.parameters()
    if t.optimizer == "adamp":
        from adamp import AdamP

        return AdamP(params, lr=t.lr, betas=(0.9, 0.999), weight_decay=t.weight_decay)
    if t.optimizer == "timm_adamp":
        from timm.optim import AdamP as TimmAdamP

        return TimmAdamP(params, lr=t.lr, betas=(0.9, 0.999), weight_decay=t.weight_decay)
    if t.optimizer == "adamw":
        return torch.optim.AdamW(params, lr=t.lr, weight_decay=t.weight_decay)
    if t.optimizer == "sgd":
        return torch.optim.SGD(params, lr=t.lr, momentum=0.9, nesterov=True, weight_decay=t.weight_decay)
    raise ValueError(f"unknown optimizer {t.optimizer!r}")


def make_scheduler(
    optimizer: torch.optim.Optimizer, config: Config, steps_per_epoch: int
) -> torch.optim.lr_scheduler.LRScheduler:
    """Every schedule steps once per optimizer step (so grad accumulation is accounted for)."""
    from torch.optim import lr_scheduler

    t = config.train
    total = max(1, t.epochs * steps_per_epoch)
    warmup = min(total - 1, int(round(t.warmup_epochs * steps_per_epoch)))
    if t.scheduler == "step":
        # StepLR of the original, stepped per epoch there; the same curve in optimizer steps.
        return lr_scheduler.StepLR(optimizer, step_size=t.step_size * steps_per_epoch, gamma=t.gamma)
    if t.scheduler == "onecycle":
        up_steps = warmup if warmup else 0.3 * total
        if up_steps <= 1:
            # OneCycleLR divides by (pct_start * total - 1): zero (ZeroDivisionError) or a
            # one-step ramp. A run this short gets the nearest well-defined curve instead.
            log.info("onecycle needs more than %d optimizer steps to warm up; using cosine", total)
            return lr_scheduler.LambdaLR(optimizer, _CosineWithWarmup(warmup, total))
        return lr_scheduler.OneCycleLR(optimizer, max_lr=t.lr, total_steps=total, pct_start=up_steps / total)
    if t.scheduler == "cosine":
        return lr_scheduler.LambdaLR(optimizer, _CosineWithWarmup(warmup, total))
    if t.scheduler == "constant":
        return lr_scheduler.LambdaLR(optimizer, _CosineWithWarmup(warmup, 0))
    raise ValueError(f"unknown scheduler {t.scheduler!r}")


class _CosineWithWarmup:
    """Linear warmup over ``warmup`` steps, then cosine to zero at ``total`` (0: constant)."""

    def __init__(self, warmup: int, total: int) -> None:
        self.warmup, self.total = warmup, total

    def __call__(self, step: int) -> float:
        if step < self.warmup:
            return (step + 1) / (self.warmup + 1)
        if self.total <= 0:
            return 1.0
        progress = min(1.0, (step - self.warmup) / max(1, self.total - self.warmup))
        return 0.5 * (1.0 + math.cos(math.pi * progress))


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
) -> TaskData:
    """Index rows -> labels -> image sources -> datasets -> loaders, for one task."""
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
    from maskpipe.data.samplers import make_sampler
    from maskpipe.data import transforms
    from maskpipe.storage import localize

    d, t = config.data, config.train
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
    train_transform.set_random_seed(t.seed)
    workers = default_num_workers(d.num_workers)
    train_set = ImageDataset(train_source, labels[train_rows], train_transform)
    sampler = make_sampler(labels[train_rows], NUM_CLASSES[task], t.sampler.get(task, "shuffle"), generator)
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
        val_loader = eval_loader(val_rows)
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
