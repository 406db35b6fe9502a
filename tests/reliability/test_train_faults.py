"""A training process killed with SIGKILL mid-run resumes from its last completed epoch and
leaves valid outputs (no half-written files)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from maskpipe.checkpoint import load_checkpoint, load_state

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def small_index(tmp_path_factory) -> Path:
    from maskpipe.data.index import build_index
    from maskpipe.data.synth import generate

    root = tmp_path_factory.mktemp("fault-synth")
    generate(root / "data", people=16, eval_people=2, seed=5, size=(72, 96))
    build_index(str(root / "data"), root / "index.parquet", val_fraction=0.25, seed=2)
    return root / "index.parquet"


def _train_cmd(index: Path, out: Path, cache: Path, epochs: int) -> list[str]:
    return [
        sys.executable, "-m", "maskpipe.cli", "train", "--task", "mask", "--index", str(index),
        "--out", str(out), "--preset", "smoke", "--set", f"train.epochs={epochs}",
        "--cache-dir", str(cache),
    ]  # fmt: skip


def _env() -> dict[str, str]:
    env = dict(os.environ, MASKPIPE_PROGRESS="0", PYTHONPATH=str(REPO))
    return env


@pytest.mark.slow
def test_sigkill_after_first_epoch_then_rerun_resumes_and_finishes(small_index, tmp_path):
    out, cache = tmp_path / "mask", tmp_path / "cache"
    cmd = _train_cmd(small_index, out, cache, epochs=4)
    proc = subprocess.Popen(cmd, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    state = out / "state" / "last.pt"
    deadline = time.monotonic() + 240
    while not state.exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    assert state.exists(), "no resume state appeared"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(timeout=30)
    assert proc.returncode == -signal.SIGKILL
    killed_at = load_state(state)["epoch"]
    assert 1 <= killed_at < 4

    rerun = subprocess.run(cmd, env=_env(), capture_output=True, text=True, timeout=600)
    assert rerun.returncode == 0, rerun.stderr
    assert f"resuming {out} after epoch {killed_at}" in rerun.stderr
    assert f"mask epoch {killed_at + 1}/4" in rerun.stderr
    history = json.loads((out / "history.json").read_text())
    assert [row["epoch"] for row in history] == [1, 2, 3, 4]
    assert load_state(state)["epoch"] == 4
    assert load_checkpoint(out, expected_task="mask").meta["task"] == "mask"
    assert not [p for p in out.rglob("*") if p.name.endswith(".tmp")]
    assert "mask: epochs 4/4" in rerun.stdout
