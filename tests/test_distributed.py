"""Training under torchrun: the sampler's shares of one global draw, the world from the
environment, and (slow) two gloo ranks on the CPU against one process, a killed rank, a resume.

The torchrun tests run ``python -m torch.distributed.run --standalone --nproc_per_node=2 -m
maskpipe train ...`` (what ``torchrun`` runs) on a small synthetic set, one mask model each: one
2-rank run shared by the tests that read it, and a smaller 2-epoch one the killed-rank test
kills and resumes. The 1-process reference and ``maskpipe infer`` run ``maskpipe.cli.main`` in
the test's own process (the same command, without another interpreter importing torch).
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from torch.utils.data import WeightedRandomSampler

from maskpipe.config import ConfigError, load_config
from maskpipe.data.samplers import ShardedDraw, inverse_frequency_weights
from maskpipe.distributed import DistributedError, World, gather_strided, shard, world_from_env
from maskpipe.optim import effective_batch, scaled_lr

# 103 labels, classes 80:15:8, so no world size divides the draw evenly.
LABELS = np.array([0] * 80 + [1] * 15 + [2] * 8)


def _shares(kind: str, world_size: int, epoch: int, seed: int = 5) -> list[ShardedDraw]:
    samplers = [ShardedDraw(LABELS, 3, kind, rank=r, world_size=world_size, seed=seed) for r in range(world_size)]
    for sampler in samplers:
        sampler.set_epoch(epoch)
    return samplers


@pytest.mark.parametrize("world_size", [2, 3, 4])
def test_the_ranks_share_out_one_weighted_draw_without_repeating_a_position(world_size):
    samplers = _shares("weighted", world_size, epoch=2)
    # The global draw is exactly one process's WeightedRandomSampler draw with the epoch's seed.
    one_process = list(
        WeightedRandomSampler(
            inverse_frequency_weights(LABELS, 3), len(LABELS), replacement=True,
            generator=torch.Generator().manual_seed(5 + 2),
        )
    )  # fmt: skip
    assert all(s.global_draw() == one_process for s in samplers)
    per_rank = [list(s) for s in samplers]
    positions = [s.positions() for s in samplers]
    assert len({len(p) for p in per_rank}) == 1  # DDP needs the same batch count on every rank
    assert all(len(set(p)) == len(p) for p in positions)  # no rank sees a position twice
    padded = len(per_rank[0]) * world_size - len(LABELS)
    assert 0 <= padded < world_size
    # Interleaved back (rank r holds positions r, r+W, ...), less the padding: the global draw.
    interleaved = [per_rank[k % world_size][k // world_size] for k in range(len(LABELS) + padded)]
    assert interleaved[: len(LABELS)] == one_process
    assert sorted(p for ps in positions for p in ps) == sorted([*range(len(LABELS)), *range(padded)])
    # So the class balance over the ranks is one process's.
    union = [i for k, i in enumerate(interleaved) if k < len(LABELS)]
    assert np.bincount(LABELS[union], minlength=3).tolist() == np.bincount(LABELS[one_process], minlength=3).tolist()


def test_each_epoch_draws_anew_and_the_same_epoch_draws_the_same():
    first, again, second = _shares("weighted", 2, 1)[0], _shares("weighted", 2, 1)[0], _shares("weighted", 2, 2)[0]
    assert list(first) == list(again) and list(first) != list(second)


def test_shuffled_shares_cover_every_image_once_plus_the_padding():
    samplers = _shares("shuffle", 2, epoch=0)
    drawn = [i for s in samplers for i in s]
    assert len(drawn) == 104 and set(drawn) == set(range(len(LABELS)))


def test_a_strided_split_is_gathered_back_in_order():
    whole = torch.arange(11 * 3).reshape(11, 3)
    for size in (1, 2, 3, 4):
        parts = [shard(whole, World(rank, size, rank, size)) for rank in range(size)]
        assert torch.equal(gather_strided(parts), whole)


def test_the_world_comes_from_torchruns_environment():
    assert world_from_env({}) == World(0, 1, 0, 1)
    world = world_from_env({"RANK": "3", "WORLD_SIZE": "4", "LOCAL_RANK": "1", "LOCAL_WORLD_SIZE": "2"})
    assert (world.rank, world.size, world.local_rank, world.local_size, world.is_main) == (3, 4, 1, 2, False)
    with pytest.raises(DistributedError, match="RANK=4 WORLD_SIZE=4"):
        world_from_env({"RANK": "4", "WORLD_SIZE": "4"})
    with pytest.raises(DistributedError, match="WORLD_SIZE='two'"):
        world_from_env({"WORLD_SIZE": "two"})


def test_the_learning_rate_follows_the_world_size_as_configured():
    config = load_config("smoke", ["train.lr=0.001", "train.batch_size=16", "train.grad_accum=2"])
    assert config.train.lr_scaling == "linear"
    assert scaled_lr(config, 1) == 0.001 and scaled_lr(config, 4) == pytest.approx(0.004)
    assert effective_batch(config, 4) == 16 * 4 * 2
    assert scaled_lr(load_config("smoke", ["train.lr=0.001", "train.lr_scaling=sqrt"]), 4) == pytest.approx(0.002)
    assert scaled_lr(load_config("smoke", ["train.lr=0.001", "train.lr_scaling=none"]), 4) == 0.001
    with pytest.raises(ConfigError, match="train.lr_scaling"):
        load_config("smoke", ["train.lr_scaling=cubic"])


def test_a_state_saved_before_the_distributed_keys_existed_still_resumes(tmp_path):
    from maskpipe.resume import check_compatible

    config = load_config("smoke")
    saved = config.to_dict()
    del saved["train"]["lr_scaling"], saved["train"]["sync_batchnorm"]
    check_compatible({"task": "mask", "config": saved}, config, "mask", tmp_path)


# ---------------------------------------------------------------------------------------------
# two gloo ranks on the CPU (slow)

EPOCHS = 6
# The smoke preset at its own size; the 1-process run gets the 2-rank run's effective batch
# (16 x 2) and the learning rate linear scaling gives the 2 ranks (2 x 2e-3).
COMMON = ["--preset", "smoke", "--set", "data.num_workers=0"]
# The killed-rank test needs one epoch saved before the kill and one left for the rerun.
KILLED_EPOCHS = 2
TWO_RANKS = ["--set", "train.batch_size=16", "--set", "train.lr=0.002"]
ONE_PROCESS = ["--set", "train.batch_size=32", "--set", "train.lr=0.004"]
# Macro-F1 of the mask model on the 24 held-out people (168 images). The two runs see other
# augmentations and other sampler draws (rank 1 has its own streams), so they differ as two
# seeds of one run do. Measured here: 1 process 0.860, 2 ranks 0.898 (0.038 apart);
# tests/test_train.py's two seeds of the 1-process smoke run gave 0.921 / 0.922. 0.10 is
# about 2.5 times the gap seen, and far below what a broken recipe costs (a doubled or halved
# effective learning rate, or ranks training on the same draw, lose more than that here; a model
# that learned nothing scores about 0.28). Both must also have learned (F1_FLOOR).
F1_TOLERANCE = 0.10
F1_FLOOR = 0.75


def _env() -> dict[str, str]:
    env = dict(os.environ, MASKPIPE_PROGRESS="off", OMP_NUM_THREADS="1")
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(Path(__file__).resolve().parents[1]), env.get("PYTHONPATH")]))
    return env


def _torchrun(*args: str) -> list[str]:
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "-m", "maskpipe", *args]


def _train_args(index: Path, out: Path, cache: Path, *extra: str, epochs: int = EPOCHS) -> list[str]:
    return [
        "train", "--task", "mask", "--index", str(index), "--out", str(out), "--cache-dir", str(cache),
        *COMMON, "--set", f"train.epochs={epochs}", *extra,
    ]  # fmt: skip


def _run(command: list[str], timeout: float = 240) -> subprocess.CompletedProcess:
    return subprocess.run(command, env=_env(), capture_output=True, text=True, timeout=timeout)


@pytest.fixture(scope="module")
def synth(tmp_path_factory):
    """A 90-person synthetic set (66 train / 24 held-out people, 4 eval people) and its index."""
    from maskpipe.data.index import build_index
    from maskpipe.data.synth import generate

    root = tmp_path_factory.mktemp("ddp")
    generate(root / "data", people=90, eval_people=4, seed=3, size=(96, 128))
    build_index(str(root / "data"), root / "index.parquet", val_fraction=0.25, seed=1)
    return root


@pytest.fixture(scope="module")
def two_rank_run(synth):
    out = synth / "two-ranks"
    done = _run(_torchrun(*_train_args(synth / "index.parquet", out, synth / "cache", *TWO_RANKS)))
    assert done.returncode == 0, done.stdout + done.stderr
    return out, done


def _maskpipe(*args: str) -> int:
    """``maskpipe ARGS`` in this process, on one compute thread as each rank has (_env): on a
    busy machine several spinning OpenMP threads make a run several times slower."""
    from maskpipe.cli import main

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with pytest.MonkeyPatch.context() as env:
            env.setenv("MASKPIPE_PROGRESS", "off")
            return main(list(args))
    finally:
        torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def one_process_run(synth):
    out = synth / "one"
    assert _maskpipe(*_train_args(synth / "index.parquet", out, synth / "cache", *ONE_PROCESS)) == 0
    return out


@pytest.mark.slow
def test_two_ranks_train_a_checkpoint_that_infer_scores(two_rank_run, synth, tmp_path):
    from maskpipe.checkpoint import load_checkpoint
    from tests.tiny import write_task_checkpoints

    out, done = two_rank_run
    # Rank 0 alone reports and writes; rank 1 stays quiet unless something is wrong.
    assert done.stdout.count("mask: epochs 6/6") == 1, done.stdout
    assert "[rank 1]" not in done.stdout + done.stderr
    assert "effective batch 32 (train.batch_size 16 x 2 ranks x train.grad_accum 1), lr 0.004" in done.stderr
    assert "lr 0.004" in (out / "config.yaml").read_text().splitlines()[-1]
    loaded = load_checkpoint(out)
    assert loaded.task == "mask" and loaded.meta["epoch"] == EPOCHS
    others = write_task_checkpoints(tmp_path / "others", arch="resnet10t", overrides=["data.input_size=96x72"])
    submission = tmp_path / "submission.csv"
    scored = _maskpipe(
        "infer", "--mask", str(out), "--gender", str(others["gender"]), "--age", str(others["age"]),
        "--data", str(synth / "data"), "-o", str(submission), "--workers", "0",
    )  # fmt: skip
    assert scored == 0
    assert len(submission.read_text().splitlines()) == 1 + 4 * 7  # header + 7 photos per eval person


@pytest.mark.slow
def test_two_ranks_score_the_held_out_people_like_one_process_at_the_same_effective_batch(two_rank_run, one_process_run):
    import json

    two_f1 = json.loads((two_rank_run[0] / "metrics.json").read_text())["macro_f1"]
    one_f1 = json.loads((one_process_run / "metrics.json").read_text())["macro_f1"]
    print(f"held-out mask macro-F1: 1 process {one_f1:.4f}, 2 ranks {two_f1:.4f}")
    assert min(one_f1, two_f1) >= F1_FLOOR, (one_f1, two_f1)
    assert abs(two_f1 - one_f1) <= F1_TOLERANCE, (one_f1, two_f1)


def _rank_pid(agent: int, rank: int) -> int | None:
    """The pid of the torchrun worker of ``rank`` among ``agent``'s children."""
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            environ = (entry / "environ").read_bytes().split(b"\0")
        except (OSError, IndexError, ValueError):
            continue
        if ppid == agent and f"RANK={rank}".encode() in environ:
            return int(entry.name)
    return None


@pytest.mark.slow
def test_a_killed_rank_ends_the_job_naming_it_and_a_rerun_resumes(synth):
    from maskpipe.checkpoint import load_state

    out = synth / "killed"
    smaller = ("--set", "data.input_size=48x36")
    command = _torchrun(*_train_args(synth / "index.parquet", out, synth / "cache", *TWO_RANKS, *smaller, epochs=KILLED_EPOCHS))
    job = subprocess.Popen(command, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.monotonic() + 180
        while not (out / "state" / "last.pt").is_file() and job.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
        victim = _rank_pid(job.pid, 1)
        assert victim is not None, "rank 1 not found among torchrun's workers"
        os.kill(victim, signal.SIGKILL)
        output, _ = job.communicate(timeout=120)
    finally:
        job.kill()
    assert job.returncode != 0, output
    # torchrun's failure summary names the rank that died first and how.
    assert re.search(r"Root Cause.*?rank\s*:\s*1 \(local_rank: 1\)\s+exitcode\s*:\s*-9", output, re.S), output
    saved_epoch = load_state(out / "state" / "last.pt")["epoch"]
    assert 1 <= saved_epoch < KILLED_EPOCHS

    rerun = _run(command)
    assert rerun.returncode == 0, rerun.stdout + rerun.stderr
    assert f"resuming {out} after epoch {saved_epoch}" in rerun.stderr
    assert f"mask: epochs {KILLED_EPOCHS}/{KILLED_EPOCHS}, resumed after epoch {saved_epoch}" in rerun.stdout
