"""Training steps with several processes in their pod (``--gpus-per-task N``): ``maskpipe.torchrun``
runs a command as N ranks under a real torchrun (gloo, on this CPU), streams what they print
into the step's log and turns a failed rank into one line that names it; ``train_step`` with
``processes=2`` runs ``maskpipe train`` so and publishes the checkpoint as one process does;
``pipeline.py run-local --gpus-per-task 2`` runs every training step that way through kfp.local.
"""

from __future__ import annotations

import contextlib
import io
import re
import shutil
import sys
from pathlib import Path

import pytest
from kfp import dsl

from datafactory import make_dataset
from maskpipe.cli import build_parser as maskpipe_parser
from maskpipe.errors import TrainingError
from maskpipe.steps.index import index_step
from maskpipe.steps.train import train_command, train_step
from maskpipe.torchrun import PROCESSES_ENV, processes_from_env, run_torchrun, torchrun_command
from tiny import TINY_OVERRIDES

# A child that prints its rank and, on the rank named by argv[1], fails as argv[2] says
# (an exit status, or "kill": SIGKILL itself).
CHILD = """
import os, signal, sys
rank = int(os.environ["RANK"])
print(f"hello from rank {rank} of {os.environ['WORLD_SIZE']}", flush=True)
if rank == int(sys.argv[1]):
    print(f"rank {rank} gives up", file=sys.stderr, flush=True)
    if sys.argv[2] == "kill":
        os.kill(os.getpid(), signal.SIGKILL)
    sys.exit(int(sys.argv[2]))
"""


@pytest.fixture()
def child(tmp_path) -> Path:
    path = tmp_path / "child.py"
    path.write_text(CHILD)
    return path


# ---------------------------------------------------------------------------------------------
# the command lines (no process started)


def test_the_launch_is_torchrun_standalone_with_one_process_per_gpu_around_the_child():
    command = torchrun_command(4, ["-m", "maskpipe", "train", "--task", "age"], "/tmp/logs")
    assert command[:3] == [sys.executable, "-m", "torch.distributed.run"]
    assert "--standalone" in command and "--nproc_per_node=4" in command
    assert command[-5:] == ["-m", "maskpipe", "train", "--task", "age"]


def test_the_child_command_is_maskpipe_train_with_the_steps_settings(tmp_path):
    overrides = ["train.epochs=2", "train.seed=7", "data.input_size=32x24"]
    child = train_command(
        "gender", tmp_path / "index" / "index.parquet", tmp_path / "model", tmp_path / "report.html",
        "smoke", overrides, "s3://bucket/runs/r1/gender/",
    )  # fmt: skip
    assert child[:3] == ["-m", "maskpipe", "train"]
    args = maskpipe_parser().parse_args(child[2:])
    assert args.func.__name__ == "_cmd_train"
    assert (args.task, str(args.index), args.out) == ("gender", str(tmp_path / "index" / "index.parquet"), tmp_path / "model")
    assert (args.html, args.preset, args.overrides) == (tmp_path / "report.html", "smoke", overrides)
    assert args.resume_uri == "s3://bucket/runs/r1/gender/"


def test_without_a_resume_mirror_the_child_gets_no_resume_uri(tmp_path):
    child = train_command("age", tmp_path / "i.parquet", tmp_path / "m", tmp_path / "r.html", "default", [], None)
    assert maskpipe_parser().parse_args(child[2:]).resume_uri is None


@pytest.mark.parametrize("value, expected", [(None, 1), ("1", 1), ("4", 4), (" 2 ", 2)])
def test_processes_come_from_the_environment_and_default_to_one(value, expected):
    env = {} if value is None else {PROCESSES_ENV: value}
    assert processes_from_env(env) == expected


@pytest.mark.parametrize("value", ["0", "two", "-1", "1.5"])
def test_a_bad_process_count_is_refused_naming_the_variable(value):
    with pytest.raises(TrainingError, match=PROCESSES_ENV) as caught:
        processes_from_env({PROCESSES_ENV: value})
    assert repr(value) in str(caught.value) and "\n" not in str(caught.value)


# ---------------------------------------------------------------------------------------------
# a real torchrun (gloo, this CPU)


@pytest.mark.integration
def test_every_ranks_output_is_streamed_rank_zero_as_it_printed_it(child):
    lines: list[str] = []
    run_torchrun(2, [str(child), "-1", "0"], echo=lines.append)
    assert lines[0].startswith("torchrun: 2 processes: ") and str(child) in lines[0]
    assert "hello from rank 0 of 2\n" in lines
    assert "[rank 1] hello from rank 1 of 2\n" in lines


@pytest.mark.integration
@pytest.mark.parametrize("how, said", [("3", "exited with status 3"), ("kill", "was killed by SIGKILL")])
def test_a_failing_rank_fails_the_launch_in_one_line_naming_the_rank(child, how, said):
    lines: list[str] = []
    with pytest.raises(TrainingError) as caught:
        run_torchrun(2, [str(child), "1", how], echo=lines.append)
    message = str(caught.value)
    assert f"rank 1 of 2 (local rank 1) {said}" in message
    assert "its last line: rank 1 gives up" in message
    assert "\n" not in message
    assert any("ChildFailedError" in line for line in lines)  # torchrun's own report, streamed


# ---------------------------------------------------------------------------------------------
# the training step with two processes


@pytest.fixture(scope="module")
def index_dir(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("data")
    make_dataset(root, eval_images=3)
    out = tmp_path_factory.mktemp("index")
    index_step(str(root), out / "index", out / "report.md", out / "index.html", val_fraction=0.34)
    return out / "index"


STEP_OVERRIDES = [*TINY_OVERRIDES, "model.arch=resnet10t", "train.epochs=1"]


def _train(index_dir: Path, out: Path, processes: int):
    log = io.StringIO()
    with contextlib.redirect_stdout(log):
        result = train_step(
            "mask", index_dir, out / "model", out / "report.html", preset="smoke",
            overrides=STEP_OVERRIDES, processes=processes,
        )  # fmt: skip
    return result, log.getvalue()


@pytest.mark.slow
@pytest.mark.integration
def test_two_processes_publish_a_run_exactly_as_one_process_does(index_dir, tmp_path):
    """A folder that holds a finished run (a retried pod after its mirror was restored): the
    two ranks of `maskpipe train` find it finished and write only the report, and the step
    publishes the same artifact, metrics and metadata as the one-process step."""
    from maskpipe.config import load_config
    from maskpipe.train import train_task

    train_task(load_config("smoke", STEP_OVERRIDES), "mask", index_dir / "index.parquet", tmp_path / "run")
    for name in ("one", "two"):
        shutil.copytree(tmp_path / "run", tmp_path / name / "model")
    one, _ = _train(index_dir, tmp_path / "one", 1)
    two, log = _train(index_dir, tmp_path / "two", 2)
    assert "torchrun: 2 processes: " in log and "--nproc_per_node=2" in log
    assert "mask: epochs 1/1" in log and "already finished" in log  # the ranks' lines, streamed
    assert (two.metrics, two.confusion, two.metadata) == (one.metrics, one.confusion, one.metadata)
    files = sorted(p.relative_to(tmp_path / "one").as_posix() for p in (tmp_path / "one").rglob("*"))
    assert files == sorted(p.relative_to(tmp_path / "two").as_posix() for p in (tmp_path / "two").rglob("*"))
    assert "model/state" not in files and "report.html" in files  # no resume state published
    for name in ("model/model.safetensors", "model/checkpoint.json", "model/metrics.json"):
        assert (tmp_path / "two" / name).read_bytes() == (tmp_path / "one" / name).read_bytes(), name


@pytest.mark.slow
@pytest.mark.integration
def test_two_processes_train_and_publish_the_model_artifact_as_one_process_does(index_dir, tmp_path):
    one, _ = _train(index_dir, tmp_path / "one", 1)
    two, log = _train(index_dir, tmp_path / "two", 2)
    assert "torchrun: 2 processes: " in log and "mask: epochs 1/1" in log
    files = {p.relative_to(tmp_path / "one" / "model") for p in (tmp_path / "one" / "model").rglob("*")}
    assert files == {p.relative_to(tmp_path / "two" / "model") for p in (tmp_path / "two" / "model").rglob("*")}
    assert not (tmp_path / "two" / "model" / "state").exists()  # resume state is not published
    assert (tmp_path / "two" / "report.html").stat().st_size > 0
    assert sorted(two.metrics) == sorted(one.metrics) and two.confusion[0] == one.confusion[0]
    assert two.metadata.keys() == one.metadata.keys()
    assert {k: two.metadata[k] for k in ("task", "architecture", "input_size", "epochs")} == {
        "task": "mask", "architecture": "resnet10t", "input_size": "32x24", "epochs": 1,
    }  # fmt: skip


@pytest.mark.slow
@pytest.mark.integration
def test_a_failing_maskpipe_train_fails_the_step_naming_the_rank_and_its_error(tmp_path):
    empty_index = tmp_path / "index"  # no index.parquet: `maskpipe train` refuses on every rank
    empty_index.mkdir()
    with pytest.raises(TrainingError) as caught:
        train_step("age", empty_index, tmp_path / "model", tmp_path / "r.html", preset="smoke", processes=2)
    message = str(caught.value)
    assert " of 2 (local rank " in message and "exited with status 2" in message
    # torchrun's first observed failure: the rank refusing the index, or (DDP) the one that lost it
    assert "its last line: maskpipe train" in message and "error: " in message


@pytest.mark.slow
@pytest.mark.integration
def test_run_local_with_two_gpus_per_task_trains_every_task_as_two_ranks_on_the_cpu(tmp_path):
    from pipeline_cli.commands import main

    data = tmp_path / "data"
    make_dataset(data, eval_images=5)
    flags = [
        "run-local", "--data", str(data), "--preset", "smoke", "--epochs", "1", "--val-fraction", "0.34",
        "--no-tta", "--no-export", "--arch", "resnet10t", *[f"--set={item}" for item in TINY_OVERRIDES],
        "--output-dir", str(tmp_path / "out"), "--gpus-per-task", "2",
    ]  # fmt: skip
    terminal = io.StringIO()
    with contextlib.redirect_stdout(terminal):
        assert main(flags) == 0
    log = (tmp_path / "out" / "run-local.log").read_text()
    launches = re.findall(r"torchrun: 2 processes: .* -m maskpipe train --task (\w+)", log)
    assert sorted(launches) == ["age", "gender", "mask"]  # each training step, as 2 ranks
    assert "[rank 1]" not in terminal.getvalue()  # the terminal shows rank 0's epoch lines only
    assert "submission.csv" in terminal.getvalue()
