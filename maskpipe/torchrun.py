"""Run a command as N processes of this pod under ``torchrun`` (one per GPU), its output
streamed into this process's log, and a failed rank turned into one error line that names it.

The training step uses it when its pod has several GPUs (``maskpipe.steps.train``); the
processes rendezvous on this host (``--standalone``), so nothing outside the pod is needed.
"""

from __future__ import annotations

import collections
import os
import re
import shlex
import signal
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Deque, Dict, List, Mapping, Optional, Sequence

from maskpipe.errors import TrainingError

# How many processes the training step runs; the pipeline sets it on the training steps when
# they have more than one GPU each (pipeline_dag, `--gpus-per-task`). Unset: 1.
PROCESSES_ENV = "MASKPIPE_TRAIN_PROCESSES"
# Checked against torch 2.14: with `--tee 3` torchrun prefixes each line of local rank R with
# `[defaultR]:` and keeps it in `<log-dir>/<run>/attempt_<A>/<R>/stdout.log|stderr.log`, and
# when a rank fails it prints ChildFailedError's "Root Cause" block with
# `rank : R (local_rank: L)` and `exitcode : C (pid: P)`. tests/test_torchrun.py runs a real
# torchrun and fails when these change.
_RANK_PREFIX = re.compile(r"^\[default(\d+)\]:(.*)$", re.S)
_ROOT_CAUSE_RANK = re.compile(r"^\s*rank\s*:\s*(\d+)\s*\(local_rank:\s*(\d+)\)")
_ROOT_CAUSE_EXIT = re.compile(r"^\s*exitcode\s*:\s*(-?\d+)")
_LINES_KEPT = 200


def processes_from_env(env: Mapping[str, str] = os.environ) -> int:
    """The number of training processes ``PROCESSES_ENV`` asks for (1 when unset)."""
    text = env.get(PROCESSES_ENV, "").strip() or "1"
    if not text.isdigit() or int(text) < 1:
        raise TrainingError(
            f"{PROCESSES_ENV}={text!r} is not a number of processes: set a whole number of at "
            "least 1 (the pipeline sets it from --gpus-per-task), or unset it for one process"
        )
    return int(text)


def torchrun_command(processes: int, child: Sequence[str], log_dir: str) -> List[str]:
    """``torchrun --standalone --nproc_per_node=N`` (through this Python, so the pod's ``torchrun``
    script need not be on PATH) running ``child`` (``["-m", "maskpipe", "train", ...]`` or a
    script and its arguments), every rank's output teed with its rank prefix."""
    return [
        sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={processes}",
        "--tee", "3", "--log-dir", log_dir, *child,
    ]  # fmt: skip


@dataclass
class RankFailure:
    """The first rank that failed, as torchrun's root-cause report names it."""

    rank: int
    local_rank: int
    exit_code: int

    def describe(self, processes: int) -> str:
        """``rank 1 of 2 (local rank 1) exited with status 3``, or ``was killed by SIGKILL``."""
        if self.exit_code < 0:
            try:
                how = f"was killed by {signal.Signals(-self.exit_code).name}"
            except ValueError:
                how = f"was killed by signal {-self.exit_code}"
        else:
            how = f"exited with status {self.exit_code}"
        return f"rank {self.rank} of {processes} (local rank {self.local_rank}) {how}"


def first_failure(lines: Sequence[str]) -> Optional[RankFailure]:
    """The rank and exit code in torchrun's "Root Cause (first observed failure)" block, or None."""
    rank = None
    for line in lines[_root_cause_start(lines):]:
        found = _ROOT_CAUSE_RANK.match(line)
        if found:
            rank = int(found.group(1)), int(found.group(2))
        found = _ROOT_CAUSE_EXIT.match(line)
        if found and rank is not None:
            return RankFailure(rank[0], rank[1], int(found.group(1)))
    return None


def _root_cause_start(lines: Sequence[str]) -> int:
    for i in range(len(lines) - 1, -1, -1):
        if lines[i].startswith("Root Cause"):
            return i
    return len(lines)


def run_torchrun(
    processes: int,
    child: Sequence[str],
    *,
    env: Optional[Mapping[str, str]] = None,
    echo: Optional[Callable[[str], None]] = None,
) -> None:
    """Run ``child`` as ``processes`` ranks under torchrun and wait for it.

    The command first, then every line is passed to ``echo`` as it arrives: rank 0's as the rank printed it (so its
    epoch lines read as a one-process run's do), other ranks' after ``[rank R]``, torchrun's own
    unchanged (default: this process's stdout, flushed per line, which is the step's log).
    ``env``: the children's environment (default: this one).

    Raises:
        TrainingError: torchrun exited non-zero; names the first rank that failed, its exit
            status or signal, and that rank's last line of output.
    """
    echo = echo or _print
    with tempfile.TemporaryDirectory(prefix="maskpipe-torchrun-") as log_dir:
        command = torchrun_command(processes, child, log_dir)
        echo(f"torchrun: {processes} processes: {shlex.join(command)}\n")
        tail: Deque[str] = collections.deque(maxlen=_LINES_KEPT)
        last_line: Dict[int, str] = {}
        process = subprocess.Popen(
            command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, errors="replace",
            env=None if env is None else dict(env), bufsize=1,
        )  # fmt: skip
        try:
            assert process.stdout is not None
            for line in process.stdout:
                prefixed = _RANK_PREFIX.match(line)
                if prefixed:
                    local_rank, line = int(prefixed.group(1)), prefixed.group(2)
                    if line.strip():
                        last_line[local_rank] = line.strip()
                    marked = local_rank == 0 or line.startswith(f"[rank {local_rank}]")  # maskpipe's log lines
                    echo(line if marked else f"[rank {local_rank}] {line}")
                else:
                    tail.append(line.rstrip("\n"))
                    echo(line)
            status = process.wait()
        finally:
            if process.poll() is None:  # interrupted: do not leave the ranks running
                process.terminate()
                try:
                    process.wait(timeout=30)
                except subprocess.TimeoutExpired:
                    process.kill()
                    process.wait()
        if status != 0:
            failure = first_failure(list(tail))
            said = None if failure is None else _last_error_line(log_dir, failure.local_rank)
            if failure is not None and said is None:
                said = last_line.get(failure.local_rank)
            raise TrainingError(_failure_message(status, processes, list(tail), failure, said))


def _last_error_line(log_dir: str, local_rank: int) -> Optional[str]:
    """The last line local rank ``local_rank`` wrote to stderr (its error, or a traceback's
    last line), from torchrun's log folder; None when there is none."""
    logs = sorted(Path(log_dir).glob(f"*/attempt_*/{local_rank}/stderr.log"), key=lambda p: p.stat().st_mtime)
    if not logs:
        return None
    lines = [line.strip() for line in logs[-1].read_text(errors="replace").splitlines() if line.strip()]
    return lines[-1] if lines else None


def _print(line: str) -> None:
    sys.stdout.write(line)
    sys.stdout.flush()


def _failure_message(
    status: int, processes: int, tail: List[str], failure: Optional[RankFailure], said: Optional[str]
) -> str:
    where = "every rank's output is in the log above"
    if failure is None:
        said = next((line.strip() for line in reversed(tail) if line.strip()), "no output")
        return f"torchrun exited with status {status} before any of its {processes} ranks failed: {said}; {where}"
    said = f"its last line: {said}" if said else "it printed nothing"
    return f"training under torchrun failed: {failure.describe(processes)} first; {said}; {where}"
