"""Credentials never surface: not in the command line's output or its debug logs (urllib3 and
minio included), not in error messages for wrong keys, not in the files a command writes; and
an endpoint setting that carries a password is refused without echoing it.

The S3 cases run ``maskpipe`` against the session's S3 server (SeaweedFS, which checks every
request's signature) with recognisable keys made for the purpose, at
``-v`` (DEBUG for every logger), and search everything captured for the key values.
"""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
from datafactory import make_dataset

from maskpipe import storage
from maskpipe.cli import main
from maskpipe.errors import StorageError

ACCESS = "FAKEACCESS-sec-test-5be1c2"
SECRET = "fakeSecret/sec-test+a07d93"
# keys the server does know (made by the s3_user fixture); ACCESS and SECRET stay unknown
KNOWN_ACCESS = "FAKEACCESS-sec-known-test-e4a1"
KNOWN_SECRET = "fakeSecret/sec-known-test+c58e"


pytestmark = pytest.mark.usefixtures("fresh_storage_clients")


# The loopback server and the boto3 set-up calls run in this process too; what they log is the
# server's side (it sees the Authorization header by design), not maskpipe's output.
_NOT_OURS = ("moto", "werkzeug", "botocore", "boto3", "s3transfer")


def _everything_logged(caplog) -> str:
    return "\n".join(
        f"{r.name} {r.getMessage()} {r.exc_text or ''}"
        for r in caplog.records
        if not r.name.startswith(_NOT_OURS)
    )


def _files_holding(folder: Path, *needles: str) -> list[str]:
    found = []
    for path in folder.rglob("*"):
        if path.is_file():
            data = path.read_bytes()
            found += [f"{path}: {n}" for n in needles if n.encode() in data]
    return found


def _run_cli(capsys, caplog, *argv: str) -> tuple[int, str]:
    caplog.set_level(logging.DEBUG)  # root: urllib3, minio and maskpipe at their most talkative
    code = main(["-v", *argv])
    captured = capsys.readouterr()
    return code, captured.out + captured.err + _everything_logged(caplog)


def _one_error_line(text: str) -> str:
    lines = [line for line in text.splitlines() if line.startswith("maskpipe ") and ": error: " in line]
    assert len(lines) == 1, text
    return lines[0]


# ---------------------------------------------------------------------------- S3 through the CLI


def test_index_of_s3_data_logs_and_writes_no_credential(tmp_path, s3_bucket, s3_user, capsys, caplog):
    data = make_dataset(tmp_path / "data", eval_images=2)
    storage.upload_dir(data.root, f"{s3_bucket}/data", workers=4)
    access, secret = s3_user(KNOWN_ACCESS, KNOWN_SECRET)
    out = tmp_path / "out"
    code, text = _run_cli(
        capsys, caplog, "index", f"{s3_bucket}/data", "-o", str(out / "index.parquet"),
        "--report", str(out / "report.json"), "--cache-dir", str(out / "cache"),
    )  # fmt: skip
    assert code == 0, text
    assert "GET" in text or "HEAD" in text, "the debug log should show the S3 requests it scans"
    assert access not in text and secret not in text
    assert not _files_holding(out, access, secret)


def test_unknown_access_key_is_one_line_without_the_keys(s3_bucket, monkeypatch, capsys, caplog, tmp_path):
    monkeypatch.setenv("MINIO_ACCESS_KEY", ACCESS)
    monkeypatch.setenv("MINIO_SECRET_KEY", SECRET)
    code, text = _run_cli(capsys, caplog, "index", f"{s3_bucket}/data", "-o", str(tmp_path / "i.parquet"))
    assert code == 2
    line = _one_error_line(text)
    # a HEAD request gets no error body, so the preflight may see a bare 403 (AccessDenied)
    assert "rejected the credentials (InvalidAccessKeyId)" in line or "denied access" in line, line
    assert "MINIO_ACCESS_KEY" in line and "MINIO_SECRET_KEY" in line and "values are not shown" in line
    assert "Traceback" not in text
    assert ACCESS not in text and SECRET not in text


def test_wrong_secret_for_a_real_access_key_is_one_line_without_either(
    s3_bucket, s3_env, monkeypatch, capsys, caplog, tmp_path
):
    access, real_secret = s3_env.access_key, s3_env.secret_key  # a key the server knows
    wrong_secret = real_secret[:-6] + "XXXXXX"
    monkeypatch.setenv("MINIO_ACCESS_KEY", access)
    monkeypatch.setenv("MINIO_SECRET_KEY", wrong_secret)
    code, text = _run_cli(capsys, caplog, "index", f"{s3_bucket}/data", "-o", str(tmp_path / "i.parquet"))
    assert code == 2
    line = _one_error_line(text)
    assert "rejected the credentials (SignatureDoesNotMatch)" in line or "denied access" in line, line
    assert "Traceback" not in text
    assert access not in text and wrong_secret not in text and real_secret not in text


def test_upload_with_unknown_keys_is_one_line_without_the_keys(s3_bucket, monkeypatch, capsys, caplog, tmp_path):
    data = make_dataset(tmp_path / "data", eval_images=0)
    monkeypatch.setenv("MINIO_ACCESS_KEY", ACCESS)
    monkeypatch.setenv("MINIO_SECRET_KEY", SECRET)
    code, text = _run_cli(capsys, caplog, "data", "upload", str(data.root), f"{s3_bucket}/data")
    assert code == 2
    line = _one_error_line(text)
    assert "rejected the credentials" in line or "denied access" in line, line
    assert "MINIO_ACCESS_KEY" in line and "values are not shown" in line
    assert ACCESS not in text and SECRET not in text


# ---------------------------------------------------------------------------- endpoint settings


@pytest.mark.parametrize(
    "endpoint",
    [f"http://admin:{SECRET}@127.0.0.1:9000", f"admin:{SECRET}@minio.example:9000", f"https://{SECRET}@minio.example"],
)
def test_endpoint_with_a_password_in_it_is_refused_without_echoing_it(monkeypatch, capsys, caplog, tmp_path, endpoint):
    monkeypatch.setenv("MINIO_ENDPOINT", endpoint)
    monkeypatch.setenv("MINIO_ACCESS_KEY", ACCESS)
    monkeypatch.setenv("MINIO_SECRET_KEY", SECRET)
    code, text = _run_cli(capsys, caplog, "index", "s3://datasets/mask", "-o", str(tmp_path / "i.parquet"))
    assert code == 2
    line = _one_error_line(text)
    assert "MINIO_ENDPOINT holds a user name or password" in line and "value not shown" in line
    assert SECRET not in text and ACCESS not in text


def test_settings_never_print_keys_in_repr_or_errors(monkeypatch):
    env = {"MINIO_ENDPOINT": "127.0.0.1:9", "MINIO_ACCESS_KEY": ACCESS, "MINIO_SECRET_KEY": SECRET}
    settings = storage.S3Settings.from_env(env)
    assert ACCESS not in repr(settings) and SECRET not in repr(settings)
    assert ACCESS not in settings.credential_hint and SECRET not in settings.credential_hint
    with pytest.raises(StorageError) as info:
        storage.S3Settings.from_env({**env, "MINIO_ENDPOINT": f"http://u:{SECRET}@h:1"})
    assert SECRET not in str(info.value)
