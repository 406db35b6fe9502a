"""Faults in a pipeline run: a failing step is named with its cause and a rerun after the fix
works; a training pod killed mid-run continues from its mirrored epoch when retried.

The local runs use kfp.local exactly as ``python pipeline.py run-local`` does, on a tiny data
set (24x32 photos) with one-epoch models at 32x24 pixels. The kill test runs the training
component in a subprocess against the loopback S3 server (``s3_bucket`` in conftest.py) and
sends SIGKILL, which is what a node loss or an OOM kill does to a pod.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pandas as pd
import pytest

from pipeline_cli.local_run import PipelineRunError, run_local
from datafactory import make_dataset
from tiny import TINY_OVERRIDES, tiny_pipeline_arguments

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture
def tiny_data(tmp_path) -> Path:
    return make_dataset(tmp_path / "data", eval_images=4).root


def test_bad_data_root_names_the_index_step_and_the_missing_folder(tmp_path):
    missing = tmp_path / "no-such-data"
    with pytest.raises(PipelineRunError) as failure:
        run_local(tiny_pipeline_arguments(missing), tmp_path / "out")
    message = str(failure.value)
    assert message.startswith("step index-data (task index-data) failed: ")
    assert "DataLayoutError" in message and "no-such-data" in message
    assert str(tmp_path / "out" / "run-local.log") in message


@pytest.mark.slow
def test_bad_override_names_the_training_step_and_a_rerun_after_the_fix_works(tiny_data, tmp_path):
    out = tmp_path / "out"
    bad = tiny_pipeline_arguments(tiny_data, overrides=[*TINY_OVERRIDES, "train.epochs=three"])
    with pytest.raises(PipelineRunError) as failure:
        run_local(bad, out)
    message = str(failure.value)
    # kfp.local runs the sibling trainings one after another, in an order of its choosing
    expected = {"train-model": "train-mask", "train-model-2": "train-gender", "train-model-3": "train-age"}
    match = re.match(r"step (train-\w+) \(task (train-model(?:-\d)?)\) failed: ", message)
    assert match and expected[match.group(2)] == match.group(1), message
    assert "ConfigError" in message and "train.epochs" in message and "three" in message
    assert not (out / "submission.csv").exists()

    run = run_local(tiny_pipeline_arguments(tiny_data), out)
    submission = pd.read_csv(run.submission)
    assert len(submission) == 4
    assert run.run_dir.parent == out.resolve() / "runs"
    # export=false: the no-export branch's ensemble-infer ran the checkpoints, nothing exported
    assert run.model_dir is None and not (run.run_dir / "export-model").exists()
    assert "running the three checkpoints, torch backend" in run.log_path.read_text()


@pytest.mark.slow
def test_run_local_cli_reports_the_failed_step_on_stderr(tiny_data, tmp_path):
    # A root that passes run-local's own check (layout, eval/info.csv) but whose eval listing
    # names a photo that is not there: index-data finds that when it reads the listing.
    info = tiny_data / "eval" / "info.csv"
    info.write_text(info.read_text() + "absent.jpg" + "," * info.read_text().splitlines()[0].count(",") + "\n")
    result = subprocess.run(
        [sys.executable, "pipeline.py", "run-local", "--data", str(tiny_data),
         "--preset", "smoke", "--output-dir", str(tmp_path / "out")],
        cwd=REPO, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert result.returncode == 1
    lines = result.stderr.splitlines()
    (first,) = [line for line in lines if line.startswith("pipeline.py run-local: step ")]
    assert "step index-data" in first and "absent" in first
    # the tail of the step's own log follows, then where the whole log is
    assert "last lines of its log:" in lines
    assert any(line.startswith("  | ") and "absent" in line for line in lines)
    assert lines[-1] == f"full log: {tmp_path / 'out' / 'run-local.log'}"
    # the terminal got one line per step start and end, not kfp's executor JSON
    started, ended = result.stdout.splitlines()
    assert started == "index-data      started"
    assert re.fullmatch(r"index-data +failure in \d+\.\d s", ended), ended


# ---------------------------------------------------------------------------------------------
# a training pod killed after its first mirrored epoch

_TRAIN_SCRIPT = textwrap.dedent(
    """
    import json, sys
    from pathlib import Path
    from kfp import dsl
    from components import train_model

    args = json.loads(sys.argv[1])
    out = Path(args.pop("out"))
    index = dsl.Dataset(name="index", uri=args.pop("index"), metadata={})
    outputs = {
        name: cls(name=name, uri=str(out / name), metadata={})
        for name, cls in (("model", dsl.Model), ("metrics", dsl.Metrics),
                          ("confusion_matrix", dsl.ClassificationMetrics), ("html_report", dsl.HTML))
    }
    train_model.python_func(index=index, **outputs, **args)
    """
)


def train_args(index_dir: Path, out: Path, bucket: str, run_id: str, epochs: int) -> dict:
    return {
        "out": str(out),
        "index": str(index_dir),
        "task": "gender",
        "preset": "smoke",
        "epochs": epochs,
        "overrides": [*TINY_OVERRIDES, "train.scheduler=cosine"],
        "resume_bucket": bucket.removeprefix("s3://"),
        "run_id": run_id,
    }


def wait_for_object(client, bucket: str, key: str, process: subprocess.Popen, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            client.stat_object(bucket, key)
            return
        except Exception:  # noqa: BLE001 - not there yet
            if process.poll() is not None:
                raise AssertionError(f"training ended (rc {process.returncode}) before {key} appeared")
            time.sleep(0.05)
    raise AssertionError(f"{key} did not appear within {timeout} s")


@pytest.mark.slow
def test_killed_training_step_resumes_from_the_mirrored_epoch(tiny_data, tmp_path, s3_bucket, s3_env):
    from kfp import dsl

    from components import index_data, train_model

    index = dsl.Dataset(name="index", uri=str(tmp_path / "index"), metadata={})
    index_data.python_func(
        data_root=str(tiny_data), index=index,
        report=dsl.Markdown(name="report", uri=str(tmp_path / "report"), metadata={}),
        html_report=dsl.HTML(name="html_report", uri=str(tmp_path / "html_report"), metadata={}), val_fraction=0.34,
    )  # fmt: skip
    bucket = s3_bucket.removeprefix("s3://")
    run_id, epochs = "run-4f2a", 6
    prefix = f"runs/{run_id}/gender"
    client = s3_env.client()

    # first pod: killed as soon as its first epoch's resume state is in the bucket
    first = subprocess.Popen(
        [sys.executable, "-c", _TRAIN_SCRIPT,
         json.dumps(train_args(Path(index.path), tmp_path / "pod-1", s3_bucket, run_id, epochs))],
        cwd=REPO, env=os.environ.copy(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        wait_for_object(client, bucket, f"{prefix}/state/last.pt", first, timeout=240)
    finally:
        first.send_signal(signal.SIGKILL)
        first.wait(timeout=30)
    assert first.returncode == -signal.SIGKILL
    mirrored = json.loads(client.get_object(bucket, f"{prefix}/history.json").read())
    assert 1 <= len(mirrored) < epochs

    # the retried pod starts with an empty output folder and the same run id
    out = tmp_path / "pod-2"
    model = dsl.Model(name="model", uri=str(out / "model"), metadata={})
    args = train_args(Path(index.path), out, s3_bucket, run_id, epochs)
    del args["out"], args["index"]
    train_model.python_func(
        index=index, model=model,
        metrics=dsl.Metrics(name="metrics", uri=str(out / "metrics"), metadata={}),
        confusion_matrix=dsl.ClassificationMetrics(name="cm", uri=str(out / "cm"), metadata={}),
        html_report=dsl.HTML(name="html_report", uri=str(out / "html_report"), metadata={}),
        **args,
    )  # fmt: skip
    resumed_after = model.metadata["resumed_after_epoch"]
    assert 1 <= resumed_after < epochs
    history = json.loads((Path(model.path) / "history.json").read_text())
    assert [row["epoch"] for row in history] == list(range(1, epochs + 1))
    # the epochs done before the kill were restored from the mirror, not trained again
    assert history[:resumed_after] == mirrored[:resumed_after]
    assert model.metadata["epochs"] == epochs
