"""What a person sees while kfp.local runs the pipeline, and what goes to the run's log.

kfp.local prints every step's executor input and output (hundreds of lines of JSON per step)
to stdout, and warnings to stderr. During a run both go to the log file only; the terminal
gets one line when a step starts and one when it ends (name, duration, status), training's
per-epoch lines, and, when a step fails, the tail of that step's own log.
"""

from __future__ import annotations

import re
import sys
import time
from pathlib import Path
from typing import Callable, Dict, List, Optional, TextIO

ANSI = re.compile(r"\x1b\[[0-9;]*m")
_EXECUTING = re.compile(r"Executing task '([\w-]+)'")
_FINISHED = re.compile(r"Task '([\w-]+)' finished with status (\w+)")
# "[KFP Executor 2026-11-30 12:12:26,118 INFO]: " before each line a component logs
_EXECUTOR_PREFIX = re.compile(r"^\s*\[KFP Executor [^\]]*\]:\s?")
# maskpipe.train's per-epoch result line and its closing summary line (not the progress lines
# "mask epoch 1/6: 14/35 batch (40%) ..." it prints within an epoch)
_TRAINING_LINE = re.compile(r"^(?:mask|gender|age)(?: epoch \d+/\d+: train loss |: epochs \d+/\d+; )")
TAIL_LINES = 15


def quoted_tail(lines: List[str]) -> List[str]:
    """The end of a failed step's log as a failure message quotes it (either runner)."""
    return ["last lines of its log:", *(f"  | {line}" for line in lines[-TAIL_LINES:])]


def format_duration(seconds: float) -> str:
    """``42.0 s``, ``3 min 05 s``: short enough for a step line, exact enough to compare."""
    if seconds < 60:
        return f"{seconds:.1f} s"
    minutes, rest = divmod(int(round(seconds)), 60)
    return f"{minutes} min {rest:02d} s"


class StepConsole:
    """A text stream that keeps everything in ``log`` and shows ``terminal`` the short story.

    ``display_names`` maps kfp task keys (``train-model-2``) to the names people know
    (``train-gender``). ``text()`` returns all that was written, for error messages.
    """

    def __init__(
        self,
        terminal: TextIO,
        log: TextIO,
        display_names: Dict[str, str],
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._terminal = terminal
        self._log = log
        self._names = display_names
        self._clock = clock
        self._pending = ""
        self._parts: List[str] = []
        self._started: Dict[str, float] = {}
        self._step_lines: Dict[str, List[str]] = {}
        self._current: Optional[str] = None
        self.statuses: Dict[str, str] = {}

    # the text-stream interface print() and logging use
    def write(self, text: str) -> int:
        self._log.write(text)
        self._parts.append(text)
        self._pending += text
        *lines, self._pending = self._pending.split("\n")
        for line in lines:
            self._line(ANSI.sub("", line))
        return len(text)

    def flush(self) -> None:
        self._log.flush()
        self._terminal.flush()

    def isatty(self) -> bool:  # steps must not draw progress bars into the log
        return False

    def text(self) -> str:
        return "".join(self._parts)

    def step_log(self, key: str) -> List[str]:
        """The lines a step's own process printed (its streamed log, without kfp's framing)."""
        return list(self._step_lines.get(key, []))

    def name(self, key: str) -> str:
        return self._names.get(key, key)

    def _show(self, text: str) -> None:
        self._terminal.write(text + "\n")
        self._terminal.flush()

    def _line(self, line: str) -> None:
        started = _EXECUTING.search(line)
        if started:
            key = started.group(1)
            self._current = key
            self._started[key] = self._clock()
            self._step_lines[key] = []
            self._show(f"{self.name(key):<15} started")
            return
        finished = _FINISHED.search(line)
        if finished:
            key, status = finished.groups()
            self._current = None
            seconds = self._clock() - self._started.get(key, self._clock())
            self.statuses[self.name(key)] = status
            word = "done" if status == "SUCCESS" else status.lower()
            self._show(f"{self.name(key):<15} {word} in {format_duration(seconds)}")
            return
        if self._current is None:
            return
        message = _EXECUTOR_PREFIX.sub("", line).strip()
        if message:
            self._step_lines[self._current].append(message)
        if _TRAINING_LINE.match(message):
            self._show(f"  {message}")


class console_to:
    """``with console_to(log_path, names) as console:``: stdout and stderr go through a
    StepConsole for the duration; the real stdout is its terminal."""

    def __init__(self, log_path: Path, display_names: Dict[str, str]) -> None:
        self._log_path = Path(log_path)
        self._names = display_names

    def __enter__(self) -> StepConsole:
        self._log_file = open(self._log_path, "w", encoding="utf-8")
        self._saved = sys.stdout, sys.stderr
        self._console = StepConsole(sys.stdout, self._log_file, self._names)
        sys.stdout = sys.stderr = self._console  # type: ignore[assignment]
        return self._console

    def __exit__(self, *exc) -> None:
        sys.stdout, sys.stderr = self._saved
        self._log_file.close()
