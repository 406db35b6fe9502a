"""maskpipe.progress: a bar on a terminal, a plain line every few seconds in logs."""

from __future__ import annotations

import io
import os
import subprocess
import sys
from pathlib import Path

import pytest

from maskpipe import progress as progress_module
from maskpipe.progress import Progress, progress, progress_mode

REPO = Path(__file__).resolve().parent.parent


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


class FakeClock:
    """time.monotonic that advances ``step`` seconds per call."""

    def __init__(self, step: float) -> None:
        self.now, self.step = 0.0, step

    def __call__(self) -> float:
        self.now += self.step
        return self.now


@pytest.fixture(autouse=True)
def no_progress_settings(monkeypatch):
    monkeypatch.delenv("MASKPIPE_PROGRESS", raising=False)
    monkeypatch.delenv("MASKPIPE_PROGRESS_INTERVAL", raising=False)


def test_a_terminal_gets_a_bar_and_a_log_gets_lines():
    assert progress_mode(Terminal()) == "bar"
    assert progress_mode(io.StringIO()) == "lines"


def test_the_environment_overrides_the_terminal(monkeypatch):
    for value, mode in (("1", "bar"), ("lines", "lines"), ("0", "off")):
        monkeypatch.setenv("MASKPIPE_PROGRESS", value)
        assert progress_mode(Terminal()) == mode and progress_mode(io.StringIO()) == mode


def test_on_a_terminal_the_bar_redraws_in_place():
    out = Terminal()
    assert list(progress(range(50), desc="decode", unit="img", stream=out)) == list(range(50))
    text = out.getvalue()
    assert "\r" in text and "decode" in text and "50/50" in text


class CountedPasses:
    """An iterable that counts how often a pass over it starts (as a DataLoader would start
    its workers and draw a seed)."""

    def __init__(self, n: int) -> None:
        self.n, self.passes = n, 0

    def __len__(self) -> int:
        return self.n

    def __iter__(self):
        self.passes += 1
        return iter(range(self.n))


@pytest.mark.parametrize("setting", ["bar", "lines", "0"])
def test_every_mode_makes_exactly_one_pass_over_the_items(monkeypatch, setting):
    # Training must draw the same batches on a terminal and in a pod log.
    monkeypatch.setenv("MASKPIPE_PROGRESS", setting)
    items = CountedPasses(20)
    assert list(progress(items, desc="train", stream=Terminal())) == list(range(20))
    assert items.passes == 1


def test_in_a_log_a_line_every_interval_and_one_at_the_end(monkeypatch):
    # each clock call advances 2 s: with a 5 s interval, a line about every third item
    monkeypatch.setattr(progress_module.time, "monotonic", FakeClock(2.0))
    out = io.StringIO()
    assert list(progress(range(10), desc="upload", unit="file", stream=out)) == list(range(10))
    lines = out.getvalue().splitlines()
    assert "\r" not in out.getvalue()
    assert lines[0].startswith("upload: 3/10 file (30%), ") and "left" in lines[0]
    assert len(lines) == 4 and lines[-1] == "upload: done, 10 file in 22 s"


def test_a_short_loop_in_a_log_prints_nothing(monkeypatch):
    monkeypatch.setattr(progress_module.time, "monotonic", FakeClock(0.001))
    out = io.StringIO()
    assert list(progress(range(100), desc="infer", stream=out)) == list(range(100))
    assert out.getvalue() == ""


def test_the_manual_counter_reports_like_the_loop(monkeypatch):
    monkeypatch.setattr(progress_module.time, "monotonic", FakeClock(3.0))
    out = io.StringIO()
    with Progress(4, desc="download", unit="file", stream=out) as bar:
        for _ in range(4):
            bar.update(1)
    assert out.getvalue().splitlines()[-1].startswith("download: done, 4 file")
    silent = io.StringIO()
    with Progress(4, desc="download", stream=silent, enabled=False) as bar:
        bar.update(4)
    assert silent.getvalue() == ""


def test_indexing_in_a_pod_log_prints_progress_lines_not_a_bar(tmp_path):
    from datafactory import make_dataset

    data = make_dataset(tmp_path / "data", eval_images=2)
    env = {**os.environ, "PYTHONPATH": str(REPO), "MASKPIPE_PROGRESS_INTERVAL": "0"}
    env.pop("MASKPIPE_PROGRESS", None)
    result = subprocess.run(
        [sys.executable, "-m", "maskpipe", "index", str(data.root), "-o", str(tmp_path / "index.parquet")],
        capture_output=True, text=True, env=env, check=True,
    )  # fmt: skip
    assert "decode-check: done, 84 img" in result.stderr
    assert "\r" not in result.stderr
