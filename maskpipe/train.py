"""Train one task model (mask, gender or age) into a checkpoint folder, resumably: what ``maskpipe train`` runs.

``train_task`` checks its arguments, joins the torchrun process group when there is one
(:mod:`maskpipe.distributed`), reads the resume state (:mod:`maskpipe.resume`), and runs the
remaining epochs (:class:`maskpipe.training_run.TrainingRun`). After every completed epoch the run
writes ``state/last.pt`` (model, optimizer, scheduler, RNG, best score, history) atomically,
and the best weights through :func:`maskpipe.checkpoint.save_checkpoint`; with ``resume_uri``
the folder is mirrored to object storage. Running it again with the same folder continues
after the last completed epoch; a finished run is a no-op that reports its result again.

Under ``torchrun`` every process runs ``train_task`` with the same arguments: the model is
wrapped in DistributedDataParallel, each rank trains on its share of the epoch's global draw,
and only rank 0 writes files.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

import torch

from maskpipe.atomic import write_text
from maskpipe.checkpoint import CONFIG_FILE
from maskpipe.config import Config, validate
from maskpipe.device import resolve_device, training_device
from maskpipe.distributed import World, collective_failure, device_of, is_collective_failure, session, world_from_env
from maskpipe.epoch_records import HISTORY_FILE, METRICS_FILE, MISTAKES_FILE
from maskpipe.errors import TrainingError
from maskpipe.labels import check_task
from maskpipe.optim import make_optimizer, make_scheduler
from maskpipe.resume import (
    RESUMABLE_CHANGES,
    STATE_FILE,
    STATE_FORMAT,
    check_compatible,
    finished,
    read_resume_state,
    remove_stale_temp_files,
    restore_run,
    seed_everything,
)
from maskpipe.task_data import MISTAKES_KEPT, REVIEW_SAMPLE, Review, TaskData, build_task_data, confident_mistakes
from maskpipe.train_result import TrainResult, finished_result
from maskpipe.training_run import TrainingRun

# Names other modules and tests import from here; they live in the modules above.
__all__ = [
    "CONFIG_FILE", "HISTORY_FILE", "METRICS_FILE", "MISTAKES_FILE", "MISTAKES_KEPT", "RESUMABLE_CHANGES",
    "REVIEW_SAMPLE", "STATE_FILE", "STATE_FORMAT", "Review", "TaskData", "TrainResult",
    "TrainingError", "TrainingRun", "build_task_data", "confident_mistakes", "make_optimizer",
    "make_scheduler", "resolve_device", "seed_everything", "train_task",
]  # fmt: skip
_remove_stale_temp_files = remove_stale_temp_files  # the name tests/reliability use

log = logging.getLogger(__name__)


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
    device = device_of(world, training_device(config.train.device))
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
    state = read_resume_state(world, out_dir, resume_uri)
    if state is not None:
        check_compatible(state, config, task, out_dir)
        if finished(state, config):
            return finished_result(state, config, task, out_dir)

    threads = torch.get_num_threads()
    try:
        run = TrainingRun(config, task, index_path, out_dir, cache_dir, world=world, device=device)
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
