"""What a training run produced (:class:`TrainResult`), and the result a saved state reports."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from maskpipe.config import Config


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


def finished_result(
    state: dict[str, Any], config: Config, task: str, out_dir: Path
) -> TrainResult:
    """The result ``state`` (a saved state, or a run's summary) reports, as of a finished run."""
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
