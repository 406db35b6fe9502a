"""No MinIO credential ends up in a compiled pipeline, a step's outputs, its
executor_output.json, the run's logs or the objects it writes.

The local run reads its data from the session's S3 server (SeaweedFS) and mirrors training
state to it, so every step really uses the credentials; they are recognisable values made for
the purpose (``s3_user`` in conftest.py), and afterwards
every file under the run folder, everything printed, and every object in the bucket is
searched for them.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from pipeline_cli.local_run import run_local
from datafactory import make_dataset
from tiny import tiny_pipeline_arguments

REPO = Path(__file__).resolve().parents[2]
FAKE_ACCESS_KEY = "FAKEACCESS-leakcheck-3c9e71"
FAKE_SECRET_KEY = "fakeSecret/leakcheck+8d20b4"
FAKES = (FAKE_ACCESS_KEY, FAKE_SECRET_KEY)


def files_containing(root: Path, needles: tuple[str, ...]) -> list[str]:
    found = []
    for path in root.rglob("*"):
        if path.is_file():
            data = path.read_bytes()
            found += [f"{path}: {needle}" for needle in needles if needle.encode() in data]
    return found


def test_compiled_pipeline_holds_no_credential(tmp_path):
    env = {
        **os.environ,
        "MINIO_ACCESS_KEY": FAKE_ACCESS_KEY,
        "MINIO_SECRET_KEY": FAKE_SECRET_KEY,
        "AWS_ACCESS_KEY_ID": FAKE_ACCESS_KEY,
        "AWS_SECRET_ACCESS_KEY": FAKE_SECRET_KEY,
    }
    out = tmp_path / "pipeline.yaml"
    subprocess.run(
        [sys.executable, "pipeline.py", "compile", "-o", str(out)], cwd=REPO, env=env, check=True,
        capture_output=True,
    )  # fmt: skip
    text = out.read_text()
    assert "MINIO_ACCESS_KEY" in text  # the secret reference is there...
    assert not [fake for fake in FAKES if fake in text]  # ...its values are not


@pytest.mark.slow
def test_local_run_on_s3_leaks_no_credential(tmp_path, s3_bucket, s3_env, s3_user, capfd):
    from maskpipe.storage import upload_dir

    keys = s3_user(FAKE_ACCESS_KEY, FAKE_SECRET_KEY)
    data = make_dataset(tmp_path / "data", eval_images=3)
    upload_dir(data.root, f"{s3_bucket}/data")
    bucket = s3_bucket.removeprefix("s3://")
    arguments = tiny_pipeline_arguments(f"{s3_bucket}/data", resume_bucket=bucket)
    out = tmp_path / "out"
    run = run_local(arguments, out)
    captured = capfd.readouterr()

    # the run really went through S3: the index points there and the mirror was written
    assert "s3://" in (run.reports["index"]).read_text()
    mirrored = [o.object_name for o in s3_env.client().list_objects(bucket, prefix="runs/", recursive=True)]
    assert any(name.endswith("/mask/state/last.pt") for name in mirrored)

    assert not files_containing(out, keys)
    for stream in (captured.out, captured.err):
        assert not [fake for fake in keys if fake in stream]
    client = s3_env.client()
    for name in mirrored:
        body = client.get_object(bucket, name).read()
        assert not [fake for fake in keys if fake.encode() in body], name
