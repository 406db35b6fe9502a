"""The run-local console: kfp.local's output split into a short terminal story and a full log."""

from __future__ import annotations

import io
import itertools

from pipeline_cli.console import StepConsole, format_duration

NAMES = {"index-data": "index-data", "train-model-2": "train-gender"}
CYAN, GREEN, RED, RESET = "\x1b[96m", "\x1b[92m", "\x1b[91m", "\x1b[0m"

KFP_OUTPUT = f"""\
12:00:00.000 - INFO - Executing task {CYAN}'index-data'{RESET}
12:00:00.001 - INFO - Streamed logs:

    [KFP Executor 2026-11-30 12:00:00,100 INFO]: Got executor_input:
    {{
        "inputs": {{"parameterValues": {{"seed": 42}}}}
    }}
    indexed /data (competition layout): 12 people
12:00:01.000 - INFO - Task {CYAN}'index-data'{RESET} finished with status {GREEN}SUCCESS{RESET}
12:00:01.001 - INFO - Executing task {CYAN}'train-model-2'{RESET}
    [KFP Executor 2026-11-30 12:00:01,900 INFO]: gender epoch 1/2: 14/35 batch (40%), 2.7 batch/s, about 8 s left
    [KFP Executor 2026-11-30 12:00:02,000 INFO]: gender epoch 1/2: done, 35 batch in 13 s
    [KFP Executor 2026-11-30 12:00:02,100 INFO]: gender epoch 1/2: train loss 0.5 acc 0.7 f1 0.7 | 5.0 s *
    [KFP Executor 2026-11-30 12:00:03,100 INFO]: gender epoch 2/2: train loss 0.3 acc 0.9 f1 0.9 | 5.0 s *
    Traceback (most recent call last):
    maskpipe.errors.ConfigError: train.epochs must be an int
12:01:10.000 - INFO - Task {CYAN}'train-model-2'{RESET} finished with status {RED}FAILURE{RESET}
"""


def run_console(text: str, chunk: int = 7) -> tuple[StepConsole, str, str]:
    """Feed ``text`` in small chunks, as a pipe would; a fake clock ticks 1.5 s per reading."""
    terminal, log = io.StringIO(), io.StringIO()
    ticks = itertools.count(step=1.5)
    console = StepConsole(terminal, log, NAMES, clock=lambda: next(ticks))
    for start in range(0, len(text), chunk):
        console.write(text[start : start + chunk])
    return console, terminal.getvalue(), log.getvalue()


def test_terminal_gets_step_lines_and_epoch_lines_only():
    _, terminal, _ = run_console(KFP_OUTPUT)
    assert terminal.splitlines() == [
        "index-data      started",
        "index-data      done in 1.5 s",
        "train-gender    started",
        "  gender epoch 1/2: train loss 0.5 acc 0.7 f1 0.7 | 5.0 s *",
        "  gender epoch 2/2: train loss 0.3 acc 0.9 f1 0.9 | 5.0 s *",
        "train-gender    failure in 1.5 s",
    ]


def test_log_keeps_everything_byte_for_byte():
    _, _, log = run_console(KFP_OUTPUT)
    assert log == KFP_OUTPUT


def test_step_log_is_the_steps_own_lines_without_kfp_framing():
    console, _, _ = run_console(KFP_OUTPUT)
    step_log = console.step_log("train-model-2")
    assert step_log[-1] == "maskpipe.errors.ConfigError: train.epochs must be an int"
    assert not any("Executing task" in line or "finished with status" in line for line in step_log)
    assert console.statuses == {"index-data": "SUCCESS", "train-gender": "FAILURE"}


def test_console_is_not_a_terminal_so_steps_print_no_progress_bars():
    console, _, _ = run_console("")
    assert console.isatty() is False


def test_durations_read_as_seconds_then_minutes():
    assert format_duration(4.24) == "4.2 s"
    assert format_duration(185.0) == "3 min 05 s"
