"""Resume state of one task's training: ``state/last.pt``, its checks, and the random streams it carries.

A run writes the state after every completed epoch (:func:`run_state`); the next run on the same
folder reads it back (:func:`read_resume_state`: every rank of a torchrun launch the same one),
refuses it when the config changed in a way that would mix two trainings
(:func:`check_compatible`), and puts the model, optimizer, scheduler, random streams and epoch
records where the completed epochs left them (:func:`restore_run`).
"""

from __future__ import annotations

import logging
import random
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from maskpipe.config import Config, flatten
from maskpipe.distributed import World, all_gather, local_leader_first
from maskpipe.errors import CheckpointError, TrainingError

if TYPE_CHECKING:
    from maskpipe.training_run import TrainingRun

log = logging.getLogger(__name__)

STATE_FORMAT = 1
STATE_FILE = Path("state") / "last.pt"

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


def remove_stale_temp_files(out_dir: Path) -> None:
    """Delete maskpipe.atomic's temporary files a killed process left in ``out_dir``."""
    # One training owns its folder, so any found at start are leftovers.
    if not out_dir.is_dir():
        return
    stale = [p for p in out_dir.rglob(".*.tmp") if p.is_file()]
    for path in stale:
        path.unlink(missing_ok=True)
    if stale:
        log.info("removed %d unfinished temporary file(s) from %s", len(stale), out_dir)


def read_resume_state(world: World, out_dir: Path, resume_uri: str | None) -> dict[str, Any] | None:
    """The state this run continues from (:func:`load_resume_state`), or None; under torchrun
    the node's local rank 0 reads (and cleans, and downloads) first, and every rank must find
    the same epoch."""

    def read_state() -> dict[str, Any] | None:
        if world.local_rank == 0:  # the node's other ranks wait: nobody writes yet
            remove_stale_temp_files(out_dir)
        return load_resume_state(out_dir, resume_uri)

    state = local_leader_first(world, read_state)
    check_same_state(world, state, out_dir)
    return state


def check_same_state(world: World, state: dict[str, Any] | None, out_dir: Path) -> None:
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


def load_resume_state(out_dir: Path, resume_uri: str | None) -> dict[str, Any] | None:
    """``out_dir``'s saved state (seeded from ``resume_uri`` when missing locally), or None."""
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


def check_compatible(state: dict[str, Any], config: Config, task: str, out_dir: Path) -> None:
    """Refuse a state of another task, or one saved under a config that differs outside
    :data:`RESUMABLE_CHANGES`."""
    if state.get("task") != task:
        raise CheckpointError(
            f"{out_dir / STATE_FILE} belongs to task {state.get('task')!r}, not {task!r}; use "
            f"another --out folder for {task}"
        )
    saved, current = dict(flatten(state["config"])), dict(flatten(config.to_dict()))
    # A key added after the state was saved (train.lr_scaling, ...) had its default then.
    for key, value in flatten(Config().to_dict()):
        saved.setdefault(key, value)
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


def finished(state: dict[str, Any], config: Config) -> bool:
    """Whether the saved run stopped early or has done every epoch ``config`` asks for."""
    return bool(state.get("stopped_early")) or int(state["epoch"]) >= config.train.epochs


def run_state(run: TrainingRun) -> dict[str, Any]:
    """Everything a later run needs to continue ``run`` after its last completed epoch."""
    from maskpipe.checkpoint import cpu_state_dict

    return {
        "format": STATE_FORMAT,
        "task": run.task,
        "config": run.config.to_dict(),
        "epoch": run.epoch,
        "model": cpu_state_dict(run.model),
        "optimizer": run.optimizer.state_dict(),
        "scheduler": run.scheduler.state_dict(),
        "steps_per_epoch": run.steps_per_epoch,
        "rng": rng_state(run.generator),
        "best_score": run.records.best_score,
        "best_epoch": run.records.best_epoch,
        "best_metrics": run.records.best_metrics,
        "bad_epochs": run.records.bad_epochs,
        "stopped_early": run.records.stopped_early,
        "history": run.records.history,
    }


def restore_run(run: TrainingRun, state: dict[str, Any]) -> int:
    """Put ``state`` into ``run``; returns the last completed epoch."""
    run.model.load_state_dict(state["model"])
    run.optimizer.load_state_dict(state["optimizer"])
    run.epoch = int(state["epoch"])
    saved_epochs = int(state["config"]["train"]["epochs"])
    if saved_epochs == run.config.train.epochs and state["steps_per_epoch"] == run.steps_per_epoch:
        run.scheduler.load_state_dict(state["scheduler"])
    else:
        # A longer (or shorter) run: the schedule is rebuilt for the new length and moved
        # to where the completed epochs left it.
        log.info("train.epochs %d -> %d: schedule rebuilt for the new length", saved_epochs, run.config.train.epochs)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)
            for _ in range(run.epoch * run.steps_per_epoch):
                run.scheduler.step()
    set_rng_state(state["rng"], run.generator)
    rank_rngs = state.get("rank_rng") or []
    if run.world.distributed:
        if len(rank_rngs) == run.world.size:
            set_rng_state(rank_rngs[run.world.rank], run.generator)
        elif not run.world.is_main:
            # Another world size saved this state: the other ranks start fresh streams of
            # their own (rank 0 continues the saved one).
            seed_everything(run.config.train.seed + run.world.rank + 7919 * run.epoch)
            run.generator.manual_seed(run.config.train.seed + run.world.rank + 7919 * run.epoch)
    records = run.records
    records.best_score = float(state["best_score"])
    records.best_epoch = int(state["best_epoch"])
    records.best_metrics = dict(state["best_metrics"])
    records.bad_epochs = int(state["bad_epochs"])
    records.history = list(state["history"])
    return run.epoch


def seed_everything(seed: int) -> None:
    """Seed Python's, numpy's and torch's global random streams."""
    # timm.utils.random_seed does the same for 0 <= seed < 2**32 but hands numpy the seed
    # unreduced, so the negative or larger seeds the config admits would raise there.
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def rng_state(generator: torch.Generator) -> dict[str, Any]:
    """The global random streams and the loaders' ``generator``, as tensors and plain values."""
    np_state = np.random.get_state()
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "numpy": [np_state[0], torch.from_numpy(np_state[1].astype(np.int64)), *map(int, np_state[2:4]), float(np_state[4])],
        "python": random.getstate(),
        "loader": generator.get_state(),
    }


def set_rng_state(rng: dict[str, Any], generator: torch.Generator) -> None:
    """Undo :func:`rng_state`: every stream continues where it was saved."""
    torch.set_rng_state(rng["torch"])
    if rng.get("cuda") and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(rng["cuda"])
    name, keys, pos, has_gauss, gauss = rng["numpy"]
    np.random.set_state((name, keys.numpy().astype(np.uint32), pos, has_gauss, gauss))
    version, internal, gauss_next = rng["python"]
    random.setstate((version, tuple(internal), gauss_next))
    generator.set_state(rng["loader"])
