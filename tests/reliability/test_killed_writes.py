"""A process killed (SIGKILL) while it writes never leaves a half-written file under a final name,
and a checkpoint folder killed mid-save still loads: as the previous checkpoint or the new one.

The checkpoint test kills the writer at every commit boundary in turn: a child process counts
the file renames of its second save and sends itself SIGKILL right after the k-th one (no
clean-up handler can run, exactly as with an OOM kill or a lost node). The atomic-write test
kills a writer at random moments in the middle of multi-megabyte writes.
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch

from maskpipe.checkpoint import PENDING_WEIGHTS_FILE, WEIGHTS_FILE, load_checkpoint

REPO = Path(__file__).resolve().parents[2]

_SAVE_TWICE_AND_DIE = textwrap.dedent(
    """
    import os, signal, sys
    import torch
    from maskpipe.checkpoint import save_checkpoint
    from maskpipe.config import load_config
    from maskpipe.models import create_model

    folder, kill_after = sys.argv[1], int(sys.argv[2])
    config = load_config("smoke", ["data.input_size=[32,24]", "data.crop_size=null"])
    torch.manual_seed(1)
    save_checkpoint(folder, create_model("resnet10t", 3), task="mask", config=config, epoch=1, metrics={"n": 1})

    renames = 0
    real_replace = os.replace

    def replace_then_maybe_die(src, dst):
        global renames
        real_replace(src, dst)
        renames += 1
        if renames == kill_after:
            os.kill(os.getpid(), signal.SIGKILL)

    os.replace = replace_then_maybe_die
    torch.manual_seed(2)
    save_checkpoint(folder, create_model("resnet10t", 3), task="mask", config=config, epoch=2, metrics={"n": 2})
    print("finished without being killed")
    """
)


def _weights_of(seed: int) -> dict[str, torch.Tensor]:
    from maskpipe.models import create_model

    torch.manual_seed(seed)
    return create_model("resnet10t", 3).state_dict()


@pytest.mark.parametrize("kill_after", [1, 2, 3, 4])  # after: pending weights, config, checkpoint.json, weights
def test_checkpoint_killed_at_each_step_of_a_save_still_loads_consistently(tmp_path, kill_after):
    folder = tmp_path / "mask"
    result = subprocess.run(
        [sys.executable, "-c", _SAVE_TWICE_AND_DIE, str(folder), str(kill_after)],
        cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)}, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    if kill_after == 4 and result.returncode == 0:
        pytest.fail("the save made fewer than 4 renames; update the kill points of this test")
    assert result.returncode == -signal.SIGKILL, result.stderr

    loaded = load_checkpoint(folder, expected_task="mask")
    epoch = loaded.meta["epoch"]
    # before the commit (checkpoint.json) the old checkpoint stands; after it, the new one
    assert epoch == (1 if kill_after < 3 else 2)
    expected = _weights_of(epoch)
    state = loaded.model.state_dict()
    assert all(torch.equal(state[name], expected[name]) for name in expected)
    assert loaded.meta["metrics"] == {"n": epoch}
    assert not (folder / PENDING_WEIGHTS_FILE).exists() or kill_after < 3  # recovered on load
    assert (folder / WEIGHTS_FILE).is_file()


def test_interrupted_save_is_readable_from_a_read_only_copy(tmp_path):
    if os.geteuid() == 0:
        pytest.skip("root ignores folder permissions; the rename-completing path is covered above")
    folder = tmp_path / "mask"
    result = subprocess.run(
        [sys.executable, "-c", _SAVE_TWICE_AND_DIE, str(folder), "3"],
        cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)}, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert result.returncode == -signal.SIGKILL, result.stderr
    folder.chmod(0o500)
    try:
        loaded = load_checkpoint(folder)
    finally:
        folder.chmod(0o700)
    assert loaded.meta["epoch"] == 2


_WRITE_FOREVER = textwrap.dedent(
    """
    import sys
    from maskpipe.atomic import write_bytes

    target = sys.argv[1]
    versions = [bytes([65 + i]) * (6 << 20) for i in range(3)]  # 6 MiB of A, of B, of C
    print("ready", flush=True)
    i = 0
    while True:
        write_bytes(target, versions[i % 3])
        i += 1
    """
)


def test_atomic_writes_killed_at_random_moments_leave_a_whole_file(tmp_path):
    target = tmp_path / "metrics.json"
    rng = random.Random(7)
    whole = {bytes([65 + i]) * (6 << 20) for i in range(3)}
    for _round in range(6):
        proc = subprocess.Popen(
            [sys.executable, "-c", _WRITE_FOREVER, str(target)],
            cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)}, stdout=subprocess.PIPE,
        )  # fmt: skip
        assert proc.stdout is not None and proc.stdout.readline().strip() == b"ready"
        time.sleep(rng.uniform(0.05, 0.6))
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
        if target.exists():
            assert target.read_bytes() in whole, "a half-written file sits under the final name"
        leftovers = [p.name for p in tmp_path.iterdir() if p != target]
        assert all(name.startswith(".metrics.json.") and name.endswith(".tmp") for name in leftovers), leftovers
    assert target.exists()


def test_training_start_removes_temp_files_a_killed_run_left(tmp_path):
    from maskpipe.train import _remove_stale_temp_files

    out = tmp_path / "out"
    (out / "state").mkdir(parents=True)
    stale = [out / ".history.json.abc.tmp", out / "state" / ".last.pt.def.tmp"]
    for path in stale:
        path.write_bytes(b"half")
    keep = out / "history.json"
    keep.write_text(json.dumps([]))
    _remove_stale_temp_files(out)
    assert not any(p.exists() for p in stale) and keep.exists()
