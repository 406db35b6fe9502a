"""maskpipe with nothing but a Kubeflow profile namespace's own object-store keys.

``profile_namespace`` (conftest.py, tests/seaweedfs.py) makes the namespace's user on the
session's SeaweedFS exactly as the KFP 2.17 profile controller does: an IAM access key, a user
policy for ``mlpipeline/{artifacts, private-artifacts/<ns>, private/<ns>, shared}/*`` and the
bucket's ListBucket policy. The commands below get only the endpoint and those two keys (the
namespace's ``mlpipeline-minio-artifact`` Secret): no region, no admin keys, no other setting.
"""

from __future__ import annotations

import io
import json
import logging
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
from datafactory import make_dataset
from seaweedfs import KFP_BUCKET, clean_environ
from tiny import TINY_OVERRIDES

from maskpipe import storage
from maskpipe.errors import StorageError

REPO = Path(__file__).resolve().parents[1]
ALLOWED = "s3://mlpipeline/{artifacts, private-artifacts/<ns>, private/<ns>, shared}/*"


def _maskpipe(namespace, tmp_path: Path, *argv: str) -> subprocess.CompletedProcess:
    """``maskpipe ARGV`` in a fresh process whose environment holds no S3 setting but the namespace's."""
    env = clean_environ({**namespace.env(), "MASKPIPE_CACHE_DIR": str(tmp_path / "s3-cache")})
    return subprocess.run(
        [sys.executable, "-m", "maskpipe.cli", *argv], cwd=REPO, env=env, capture_output=True, text=True, timeout=300
    )


def _stored(s3_server, keys: list[str]) -> list[str]:
    """Which of ``keys`` exist in the mlpipeline bucket, asked with the admin keys one by one:
    the profile controller's bucket policy denies every user, the admin too, a listing inside
    a namespace's private prefix that is not its own."""
    from minio.error import S3Error

    client, found = s3_server.client(), []
    for key in keys:
        try:
            client.stat_object(KFP_BUCKET, key)
        except S3Error as exc:
            if exc.code != "NoSuchKey":
                raise
        else:
            found.append(key)
    return found


def _files(root: Path) -> list[str]:
    return sorted(p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file())


def _error_line(result: subprocess.CompletedProcess) -> str:
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, result.stderr
    return lines[0]


def test_data_upload_to_the_namespace_prefix_works_with_its_keys(profile_namespace, s3_server, tmp_path):
    data = make_dataset(tmp_path / "data", eval_images=2)
    target = f"s3://{KFP_BUCKET}/private/{profile_namespace.name}/data"

    result = _maskpipe(profile_namespace, tmp_path, "data", "upload", str(data.root), target)

    assert result.returncode == 0, result.stderr
    local = _files(data.root)
    keys = [f"private/{profile_namespace.name}/data/{rel}" for rel in local]
    assert _stored(s3_server, keys) == keys
    again = _maskpipe(profile_namespace, tmp_path, "data", "upload", str(data.root), target)
    assert again.returncode == 0 and f"skipped {len(local)} already there" in again.stdout + again.stderr


@pytest.mark.parametrize("prefix", ["private/team-someone-else/data", "v2/artifacts/data", "data"])
def test_upload_outside_the_namespace_prefixes_is_one_line_naming_the_path_and_the_allowed_ones(
    profile_namespace, s3_server, tmp_path, prefix
):
    data = make_dataset(tmp_path / "data", eval_images=0)
    target = f"s3://{KFP_BUCKET}/{prefix}"

    result = _maskpipe(profile_namespace, tmp_path, "data", "upload", str(data.root), target)

    assert result.returncode == 2
    line = _error_line(result)
    assert "denied access" in line and target in line, line
    assert ALLOWED in line and "s3://mlpipeline/private/<your namespace>/" in line, line
    assert "Traceback" not in result.stderr
    assert profile_namespace.access_key not in line and profile_namespace.secret_key not in line
    assert _stored(s3_server, [f"{prefix}/{rel}" for rel in _files(data.root)]) == []


def test_upload_to_another_bucket_with_the_namespace_keys_names_the_path_and_the_key_variables(
    profile_namespace, s3_bucket, tmp_path
):
    data = make_dataset(tmp_path / "data", eval_images=0)
    result = _maskpipe(profile_namespace, tmp_path, "data", "upload", str(data.root), f"{s3_bucket}/data")
    assert result.returncode == 2
    line = _error_line(result)
    assert "denied access" in line and f"{s3_bucket}/data" in line and "MINIO_ACCESS_KEY" in line, line
    assert ALLOWED not in line  # the Kubeflow hint is for the mlpipeline bucket only


def test_index_of_the_namespace_data_works_with_its_keys(profile_namespace, tmp_path):
    data = make_dataset(tmp_path / "data", eval_images=2)
    uri = f"s3://{KFP_BUCKET}/private/{profile_namespace.name}/data"
    assert _maskpipe(profile_namespace, tmp_path, "data", "upload", str(data.root), uri).returncode == 0

    result = _maskpipe(
        profile_namespace, tmp_path, "index", uri, "-o", str(tmp_path / "index.parquet"),
        "--report", str(tmp_path / "report.json"),
    )  # fmt: skip

    assert result.returncode == 0, result.stderr
    report = json.loads((tmp_path / "report.json").read_text())
    assert report["images"] == len(data.folders) * 7
    assert (tmp_path / "index.parquet").is_file()


def test_reading_another_namespace_data_is_denied_naming_it(namespace_env, s3_server, tmp_path):
    other = f"private/team-other-{namespace_env.name[-4:]}/data/train/train.csv"
    s3_server.client().put_object(KFP_BUCKET, other, io.BytesIO(b"id\n"), 3)
    with pytest.raises(StorageError, match="denied access") as info:
        storage.read_bytes(f"s3://{KFP_BUCKET}/{other.rsplit('/', 1)[0]}", "train.csv")
    assert f"s3://{KFP_BUCKET}/{other}" in str(info.value) and ALLOWED in str(info.value)
    with pytest.raises(StorageError, match="denied access"):
        storage.list_files(f"s3://{KFP_BUCKET}/{other.split('/data/')[0]}/data")


def test_resume_mirror_round_trips_under_the_namespace_prefixes(namespace_env, tmp_path, monkeypatch):
    monkeypatch.setattr(storage.transfer, "PART_SIZE", 5 * 1024 * 1024)  # a checkpoint goes up in parts
    state = tmp_path / "state"
    state.mkdir()
    (state / "last.pt").write_bytes(b"epoch-3")
    (state / "weights.safetensors").write_bytes(bytes(range(256)) * (6 * 4096))  # 6 MiB: two parts
    for prefix in (f"private/{namespace_env.name}", f"private-artifacts/{namespace_env.name}", "shared", "artifacts"):
        uri = f"s3://{KFP_BUCKET}/{prefix}/runs/{tmp_path.name}/mask"
        assert storage.sync_up(state, uri) is True
        assert storage.sync_up(state, uri) is False  # unchanged: nothing copied
        restored = tmp_path / "restored" / prefix
        assert storage.sync_down(uri, restored) is True
        assert _files(restored) == _files(state)
        assert all((restored / rel).read_bytes() == (state / rel).read_bytes() for rel in _files(state))


def test_no_bucket_location_request_is_made(namespace_env, tmp_path, caplog):
    caplog.set_level(logging.DEBUG, logger="urllib3")
    (tmp_path / "a.txt").write_bytes(b"a")
    storage.upload_file(tmp_path / "a.txt", f"s3://{KFP_BUCKET}/private/{namespace_env.name}/a.txt")
    requests = [r.getMessage() for r in caplog.records if r.name.startswith("urllib3") and "HTTP/1.1" in r.getMessage()]
    assert requests, "the debug log should show the requests"
    assert not [r for r in requests if "location" in r], requests


@pytest.mark.slow
def test_whole_local_run_on_namespace_data_completes_with_only_its_keys(profile_namespace, s3_server, tmp_path):
    data = make_dataset(tmp_path / "data", eval_images=3)
    uri = f"s3://{KFP_BUCKET}/private/{profile_namespace.name}/mask-data"
    assert _maskpipe(profile_namespace, tmp_path, "data", "upload", str(data.root), uri).returncode == 0
    env = clean_environ({**profile_namespace.env(), "MASKPIPE_CACHE_DIR": str(tmp_path / "s3-cache")})
    overrides = [arg for item in TINY_OVERRIDES for arg in ("--set", item)]
    out = tmp_path / "run"

    result = subprocess.run(
        [sys.executable, "pipeline.py", "run-local", "--data", uri, "--preset", "smoke", "--epochs", "1",
         "--val-fraction", "0.34", *overrides, "--output-dir", str(out)],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=1200,
    )  # fmt: skip

    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    [submission] = list(out.rglob("submission.csv"))
    assert len(pd.read_csv(submission)) == len(data.eval_ids)
    assert any(uri in path.read_text(errors="replace") for path in out.rglob("report.json")), "the run read S3"
