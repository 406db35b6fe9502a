"""Progress of long loops: a tqdm bar on a terminal, a plain line every few seconds elsewhere.

Pod logs and CI logs are not terminals: a bar there is one endless line of carriage returns,
and no output at all looks like a hang. So when stderr is not a terminal, :func:`progress`
prints ``desc: 1200/18900 files (6%), 35.2 files/s, about 8 min left`` at most every
``MASKPIPE_PROGRESS_INTERVAL`` seconds (default 5), and one closing line if it printed any.

``MASKPIPE_PROGRESS`` chooses the mode: ``1``/``bar`` forces the bar (e.g. under
``kubectl logs -f``), ``lines`` forces lines, ``0``/``off`` silences both; unset, the terminal
decides.
"""

from __future__ import annotations

import os
import sys
import time
from typing import IO, Iterable, Iterator, TypeVar

T = TypeVar("T")

DEFAULT_INTERVAL_S = 5.0
_BAR, _LINES, _OFF = "bar", "lines", "off"
_SETTINGS = {
    "1": _BAR, "true": _BAR, "yes": _BAR, "on": _BAR, "bar": _BAR,
    "0": _OFF, "false": _OFF, "no": _OFF, "off": _OFF,
    "lines": _LINES, "line": _LINES,
}  # fmt: skip


def progress_mode(stream: IO[str] | None = None) -> str:
    """``"bar"``, ``"lines"`` or ``"off"``: the environment's choice, else the terminal's."""
    setting = os.environ.get("MASKPIPE_PROGRESS", "").strip().lower()
    if setting in _SETTINGS:
        return _SETTINGS[setting]
    stream = sys.stderr if stream is None else stream
    isatty = getattr(stream, "isatty", None)
    return _BAR if isatty is not None and isatty() else _LINES


def progress_interval() -> float:
    """Seconds between two progress lines (``MASKPIPE_PROGRESS_INTERVAL``, default 5)."""
    text = os.environ.get("MASKPIPE_PROGRESS_INTERVAL", "").strip()
    try:
        return max(0.0, float(text)) if text else DEFAULT_INTERVAL_S
    except ValueError:
        return DEFAULT_INTERVAL_S


def progress(
    items: Iterable[T],
    *,
    total: int | None = None,
    desc: str,
    unit: str = "it",
    stream: IO[str] | None = None,
    leave: bool = True,
) -> Iterator[T]:
    """Yield ``items`` while showing progress (see the module docstring); ``total`` defaults
    to ``len(items)`` when it has one."""
    if total is None and hasattr(items, "__len__"):
        total = len(items)  # type: ignore[arg-type]
    stream = sys.stderr if stream is None else stream
    mode = progress_mode(stream)
    if mode == _OFF:
        yield from items
    elif mode == _BAR:
        # tqdm.std, not tqdm.auto: the auto (asyncio) class calls iter() on the iterable when
        # created, so a DataLoader would start a second, thrown-away pass (workers, and a draw
        # from its generator that changes the batches of the real pass).
        from tqdm import tqdm

        with tqdm(items, total=total, desc=desc, unit=unit, file=stream, leave=leave, dynamic_ncols=True) as bar:
            yield from bar
    else:
        yield from _lines(items, total, desc, unit, stream, progress_interval())


class Progress:
    """Manual counterpart of :func:`progress` for loops that finish items out of order
    (futures): ``with Progress(total, desc=...) as p: ... p.update(1)``."""

    def __init__(
        self, total: int | None, *, desc: str, unit: str = "it", stream: IO[str] | None = None, enabled: bool = True
    ) -> None:
        self._stream = sys.stderr if stream is None else stream
        self._mode = progress_mode(self._stream) if enabled else _OFF
        self._bar = None
        self._lines: _LineReporter | None = None
        if self._mode == _BAR:
            from tqdm import tqdm

            self._bar = tqdm(total=total, desc=desc, unit=unit, file=self._stream, dynamic_ncols=True)
        elif self._mode == _LINES:
            self._lines = _LineReporter(total, desc, unit, self._stream, progress_interval())

    def update(self, n: int = 1) -> None:
        if self._bar is not None:
            self._bar.update(n)
        elif self._lines is not None:
            self._lines.advance(n)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
        elif self._lines is not None:
            self._lines.finish()

    def __enter__(self) -> "Progress":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _lines(items: Iterable[T], total: int | None, desc: str, unit: str, stream: IO[str], interval: float) -> Iterator[T]:
    reporter = _LineReporter(total, desc, unit, stream, interval)
    for item in items:
        yield item
        reporter.advance(1)
    reporter.finish()


class _LineReporter:
    """Counts items and writes a line when ``interval`` seconds passed since the last one."""

    def __init__(self, total: int | None, desc: str, unit: str, stream: IO[str], interval: float) -> None:
        self.total, self.desc, self.unit, self.stream, self.interval = total, desc, unit, stream, interval
        self.done = 0
        self.started = self.last = time.monotonic()
        self.printed = False

    def advance(self, n: int) -> None:
        self.done += n
        now = time.monotonic()
        if now - self.last >= self.interval:
            self.last = now
            self._write(self._status(now))

    def finish(self) -> None:
        # Short loops stay silent; a loop that reported progress also says that it ended.
        if self.printed:
            seconds = time.monotonic() - self.started
            self._write(f"{self.desc}: done, {self.done} {self.unit} in {_duration(seconds)}")

    def _status(self, now: float) -> str:
        seconds = max(now - self.started, 1e-9)
        rate = self.done / seconds
        text = f"{self.desc}: {self.done}"
        if self.total:
            text += f"/{self.total} {self.unit} ({100 * self.done / self.total:.0f}%)"
        else:
            text += f" {self.unit}"
        text += f", {rate:.1f} {self.unit}/s"
        if self.total and rate > 0 and self.done < self.total:
            text += f", about {_duration((self.total - self.done) / rate)} left"
        return text

    def _write(self, line: str) -> None:
        self.printed = True
        self.stream.write(line + "\n")
        self.stream.flush()


def _duration(seconds: float) -> str:
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 90 * 60:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"
