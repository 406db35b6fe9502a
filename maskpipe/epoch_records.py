"""The record of one task's training epochs: their metrics and history rows, the best-epoch choice with early stopping, and the files the chosen epoch writes.

:func:`epoch_metrics` scores an epoch's predictions; :class:`EpochRecords` keeps the history
(``history.json``), decides which epoch is the best so far (``train.select_by``) and when
``train.early_stopping_patience`` ends the run, and writes the chosen epoch's checkpoint,
``metrics.json`` and ``mistakes.json``. The run (:mod:`maskpipe.training_run`) calls it once per
epoch; :mod:`maskpipe.resume` saves and restores its fields with the rest of the run.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from maskpipe.atomic import write_json
from maskpipe.config import Config
from maskpipe.labels import NUM_CLASSES, TASK_CLASS_NAMES
from maskpipe.task_data import Review, confident_mistakes

HISTORY_FILE = "history.json"
METRICS_FILE = "metrics.json"
MISTAKES_FILE = "mistakes.json"


def epoch_metrics(task: str, targets: torch.Tensor, preds: torch.Tensor, loss_sum: float, split: str) -> dict[str, Any]:
    """Accuracy, macro-F1 and the rest of :func:`maskpipe.metrics.classification_metrics`,
    with the mean loss and the split's name."""
    from maskpipe.metrics import classification_metrics

    metrics = classification_metrics(targets.numpy(), preds.numpy(), NUM_CLASSES[task], list(TASK_CLASS_NAMES[task]))
    metrics["loss"] = loss_sum / max(1, len(targets))
    metrics["split"] = split
    return metrics


@dataclass
class EpochRecords:
    """The completed epochs of one task's run and the best of them so far."""

    task: str
    config: Config
    best_score: float = -math.inf
    best_epoch: int = 0
    best_metrics: dict[str, Any] = field(default_factory=dict)
    bad_epochs: int = 0
    stopped_early: bool = False
    history: list[dict[str, Any]] = field(default_factory=list)

    def record(
        self, epoch: int, train: dict[str, Any], val: dict[str, Any] | None, seconds: float,
        lr_steps: list[float], lr: float,
    ) -> dict[str, Any]:  # fmt: skip
        """Add ``epoch``'s history row (returned; ``row["best"]``: a new best epoch)."""
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
        return row

    def _selection_score(self, epoch: int, train: dict[str, Any], val: dict[str, Any] | None) -> float:
        select_by = self.config.train.select_by
        if select_by == "last":
            return float(epoch)
        if select_by == "train_acc":
            return float(train["accuracy"])
        assert val is not None  # validate(): val_f1 needs the val split
        return float(val["macro_f1"])

    def stops_early(self, epoch: int) -> bool:
        """Whether ``train.early_stopping_patience`` epochs without a new best end the run
        after ``epoch`` (never after the last planned one); remembered in ``stopped_early``."""
        patience = self.config.train.early_stopping_patience
        if patience and self.bad_epochs >= patience and epoch < self.config.train.epochs:
            self.stopped_early = True
        return self.stopped_early

    def summary(self, epoch: int) -> dict[str, Any]:
        """The parts of the state a result reports (no tensors), after ``epoch``."""
        return {
            "epoch": epoch,
            "best_epoch": self.best_epoch,
            "best_metrics": self.best_metrics,
            "stopped_early": self.stopped_early,
            "history": self.history,
        }

    # -- the files (rank 0) ------------------------------------------------------------------

    def save_history(self, out_dir: Path) -> None:
        write_json(out_dir / HISTORY_FILE, self.history)

    def save_best(
        self, out_dir: Path, model: torch.nn.Module, epoch: int, train: dict[str, Any],
        val: dict[str, Any] | None, config_note: str = "",
    ) -> None:  # fmt: skip
        """The chosen epoch's checkpoint and ``metrics.json`` (its validation metrics when
        there are validation people, else its training metrics)."""
        from maskpipe.checkpoint import save_checkpoint

        chosen = dict(val if val is not None else train)
        chosen.update(task=self.task, epoch=epoch, selected_by=self.config.train.select_by)
        if val is not None:
            chosen["train"] = {k: train[k] for k in ("loss", "accuracy", "macro_f1")}
        self.best_metrics = chosen
        summary = {k: chosen[k] for k in ("split", "accuracy", "macro_f1", "loss")}
        save_checkpoint(
            out_dir, model, task=self.task, config=self.config, epoch=epoch, metrics=summary,
            config_note=config_note,
        )  # fmt: skip
        write_json(out_dir / METRICS_FILE, chosen)

    def save_mistakes(self, out_dir: Path, epoch: int, probs: np.ndarray, review: Review) -> None:
        """``mistakes.json``: the images of ``review`` the chosen epoch's model (its
        probabilities ``probs``) gets most confidently wrong."""
        write_json(out_dir / MISTAKES_FILE, confident_mistakes(probs, review, epoch, list(TASK_CLASS_NAMES[self.task])))


def epoch_line(task: str, epoch: int, total: int, row: dict[str, Any]) -> str:
    """The one log line of an epoch's history ``row`` (`` *``: a new best epoch)."""
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
