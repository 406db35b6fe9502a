"""More bad input through the command line: S3 URIs and endpoints, damaged checkpoints given to
``maskpipe infer``, mismatched files given to ``maskpipe evaluate``, and training outputs or
indexes that do not fit. Each one exits with code 2 and one line that names the file, object or
setting and the fix, within seconds, and without a traceback.
"""

from __future__ import annotations

import json
import shutil
import socket
import time
from pathlib import Path

import pytest
from cli_helpers import cli_error
from datafactory import make_dataset, write_huge_png_header

from maskpipe.checkpoint import META_FILE, WEIGHTS_FILE, save_state
from maskpipe.data.index import build_index

ACCESS = "FAKEACCESS-extra-test-31d0"
SECRET = "fakeSecret-extra-test-77c4"




pytestmark = pytest.mark.usefixtures("fresh_storage_clients")


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


# ---------------------------------------------------------------------------- S3 URIs and endpoints


@pytest.mark.parametrize("uri", ["s3://", "s3:///datasets/mask", "s3://Bad_Bucket/x"])
@pytest.mark.parametrize("command", ["index", "infer", "upload"])
def test_s3_uri_without_a_valid_bucket_is_refused_at_once(tmp_path, capsys, checkpoints, uri, command):
    argv = {
        "index": ["index", uri, "-o", str(tmp_path / "i.parquet")],
        "infer": _infer(checkpoints, uri, tmp_path / "s.csv"),
        "upload": ["data", "upload", str(tmp_path), uri],
    }[command]
    started = time.monotonic()
    line = cli_error(capsys, *argv)
    assert time.monotonic() - started < 5
    assert repr(uri) in line and ("has no bucket" in line or "not a valid bucket name" in line)
    assert "s3://BUCKET/PREFIX" in line or "lowercase" in line


def test_missing_bucket_through_the_cli_names_it(s3_env, tmp_path, capsys):
    started = time.monotonic()
    line = cli_error(capsys, "index", "s3://no-such-bucket-for-maskpipe/data", "-o", str(tmp_path / "i.parquet"))
    assert time.monotonic() - started < 10
    assert "bucket 'no-such-bucket-for-maskpipe' does not exist at http" in line and "maskpipe data upload" in line
    assert s3_env.secret_key not in line


def test_unreachable_endpoint_through_the_cli_fails_within_seconds(monkeypatch, tmp_path, capsys):
    port = _free_port()
    monkeypatch.setenv("MINIO_ENDPOINT", f"127.0.0.1:{port}")
    monkeypatch.setenv("MINIO_SECURE", "false")
    monkeypatch.setenv("MINIO_ACCESS_KEY", ACCESS)
    monkeypatch.setenv("MINIO_SECRET_KEY", SECRET)
    started = time.monotonic()
    line = cli_error(capsys, "index", "s3://datasets/mask", "-o", str(tmp_path / "i.parquet"))
    assert time.monotonic() - started < 15
    assert f"cannot reach the S3 endpoint http://127.0.0.1:{port}" in line and "MINIO_ENDPOINT" in line
    assert SECRET not in line and ACCESS not in line


def test_s3_path_without_any_endpoint_settings_says_which_variables_to_set(monkeypatch, tmp_path, capsys):
    for name in ("MINIO_ENDPOINT", "AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3"):
        monkeypatch.delenv(name, raising=False)
    line = cli_error(capsys, "index", "s3://datasets/mask", "-o", str(tmp_path / "i.parquet"))
    assert "no S3 endpoint configured" in line and "MINIO_ENDPOINT" in line


@pytest.mark.parametrize(
    ("endpoint", "problem"),
    [
        ("127.0.0.1:notaport", "Port could not be cast to integer"),
        ("127.0.0.1:99999", "Port out of range"),
        ("[::1", "Invalid IPv6 URL"),
        ("minio host:9000", "is not an endpoint"),
        ("http://127.0.0.1:9000/bucket", "is not an endpoint"),
    ],
)
def test_malformed_endpoint_is_named_not_a_library_value_error(monkeypatch, tmp_path, capsys, endpoint, problem):
    monkeypatch.setenv("MINIO_ENDPOINT", endpoint)
    monkeypatch.setenv("MINIO_SECURE", "false")
    monkeypatch.setenv("MINIO_ACCESS_KEY", ACCESS)
    monkeypatch.setenv("MINIO_SECRET_KEY", SECRET)
    line = cli_error(capsys, "index", "s3://datasets/mask", "-o", str(tmp_path / "i.parquet"))
    assert f"MINIO_ENDPOINT={endpoint!r}" in line and problem in line
    assert "host:port or http(s)://host:port" in line


# ---------------------------------------------------------------------------- maskpipe infer


@pytest.fixture
def eval_data(tmp_path) -> Path:
    return make_dataset(tmp_path / "data", ["000001_female_Asian_45"], eval_images=2).root


def _infer(checkpoints: dict[str, Path], data: Path | str, out: Path, **replace: Path) -> list[str]:
    chosen = {**checkpoints, **replace}
    return [
        "infer", "--mask", str(chosen["mask"]), "--gender", str(chosen["gender"]), "--age", str(chosen["age"]),
        "--data", str(data), "-o", str(out), "--workers", "0",
    ]  # fmt: skip


def _damaged_copy(checkpoints, tmp_path, task: str) -> Path:
    return Path(shutil.copytree(checkpoints[task], tmp_path / f"{task}-copy"))


def test_infer_with_truncated_safetensors_names_the_file(checkpoints, eval_data, tmp_path, capsys):
    age = _damaged_copy(checkpoints, tmp_path, "age")
    weights = age / WEIGHTS_FILE
    weights.write_bytes(weights.read_bytes()[:4096])
    line = cli_error(capsys, *_infer(checkpoints, eval_data, tmp_path / "s.csv", age=age))
    assert f"{weights} is corrupt, truncated or was replaced" in line and "copy the folder again or retrain" in line
    assert not (tmp_path / "s.csv").exists()


def test_infer_with_a_truncated_checkpoint_json_names_it(checkpoints, eval_data, tmp_path, capsys):
    gender = _damaged_copy(checkpoints, tmp_path, "gender")
    meta = gender / META_FILE
    meta.write_text(meta.read_text()[:40])
    line = cli_error(capsys, *_infer(checkpoints, eval_data, tmp_path / "s.csv", gender=gender))
    assert str(meta) in line and "not valid JSON" in line


def test_infer_with_a_checkpoint_of_another_architecture_names_it(checkpoints, eval_data, tmp_path, capsys):
    mask = _damaged_copy(checkpoints, tmp_path, "mask")
    meta = json.loads((mask / META_FILE).read_text())
    meta["arch"] = "resnet18"
    (mask / META_FILE).write_text(json.dumps(meta))
    line = cli_error(capsys, *_infer(checkpoints, eval_data, tmp_path / "s.csv", mask=mask))
    assert "does not fit architecture 'resnet18'" in line and str(mask) in line


def test_infer_with_checkpoints_given_to_the_wrong_flags_names_both(checkpoints, eval_data, tmp_path, capsys):
    line = cli_error(
        capsys, *_infer(checkpoints, eval_data, tmp_path / "s.csv", mask=checkpoints["gender"], gender=checkpoints["mask"])
    )
    assert "trained for task 'gender', not 'mask'" in line or "trained for task 'mask', not 'gender'" in line


def test_infer_with_a_huge_eval_image_names_it(checkpoints, eval_data, tmp_path, capsys):
    image_id = sorted((eval_data / "eval" / "images").iterdir())[1].name
    write_huge_png_header(eval_data / "eval" / "images" / image_id)
    line = cli_error(capsys, *_infer(checkpoints, eval_data, tmp_path / "s.csv"))
    assert image_id in line and "image too large" in line
    assert not (tmp_path / "s.csv").exists()


# ---------------------------------------------------------------------------- maskpipe evaluate


def _answers(path: Path, rows: list[tuple[str, int]]) -> Path:
    path.write_text("ImageID,ans\n" + "".join(f"{i},{a}\n" for i, a in rows))
    return path


def test_evaluate_with_files_of_different_eval_sets_names_both(tmp_path, capsys):
    submission = _answers(tmp_path / "submission.csv", [("a.jpg", 0), ("b.jpg", 3)])
    truth = _answers(tmp_path / "truth.csv", [("a.jpg", 0), ("c.jpg", 5)])
    line = cli_error(capsys, "evaluate", str(submission), str(truth))
    assert f"of {truth} missing from the submission: c.jpg" in line
    assert f"of {submission} not in the truth file: b.jpg" in line


def test_evaluate_with_swapped_arguments_of_other_columns_names_the_columns(tmp_path, capsys):
    submission = _answers(tmp_path / "submission.csv", [("a.jpg", 0)])
    truth = tmp_path / "eval_truth.csv"
    truth.write_text("ImageID,mask,gender,age\na.jpg,0,0,0\n")
    line = cli_error(capsys, "evaluate", str(submission), str(truth))
    assert str(truth) in line and "lacks column(s) ans" in line


def test_evaluate_given_a_folder_says_so(tmp_path, capsys):
    truth = _answers(tmp_path / "truth.csv", [("a.jpg", 0)])
    line = cli_error(capsys, "evaluate", str(tmp_path), str(truth))
    assert f"submission file {tmp_path} is a folder" in line


# ---------------------------------------------------------------------------- maskpipe train


@pytest.fixture
def tiny_index(tmp_path) -> Path:
    data = make_dataset(tmp_path / "data", eval_images=0)
    build_index(str(data.root), tmp_path / "index.parquet", val_fraction=0.34)
    return tmp_path / "index.parquet"


def _train(index: Path, out: Path, task: str = "mask") -> list[str]:
    return ["train", "--task", task, "--index", str(index), "--out", str(out), "--preset", "smoke"]


def test_train_into_a_folder_of_another_task_is_refused(tiny_index, tmp_path, capsys):
    out = tmp_path / "out"
    save_state(out / "state" / "last.pt", {"format": 1, "task": "age", "epoch": 2, "config": {}})
    line = cli_error(capsys, *_train(tiny_index, out, "mask"))
    assert "belongs to task 'age', not 'mask'" in line and "another --out folder" in line


@pytest.mark.parametrize("content", [b"", b"PAR1 not really", b"\x00" * 64])
def test_train_on_an_index_that_is_not_parquet_names_it(tmp_path, capsys, content):
    index = tmp_path / "index.parquet"
    index.write_bytes(content)
    line = cli_error(capsys, *_train(index, tmp_path / "out"))
    assert f"index {index} is not a readable parquet file" in line and "rebuild it with `maskpipe index`" in line
    assert not (tmp_path / "out").exists()


def test_train_on_an_index_of_a_data_root_that_is_gone_names_the_root(tiny_index, tmp_path, capsys):
    shutil.rmtree(tmp_path / "data")
    line = cli_error(capsys, *_train(tiny_index, tmp_path / "out"))
    assert str(tmp_path / "data") in line and "does not exist" in line


def test_train_when_an_indexed_image_was_damaged_afterwards_names_it(tiny_index, tmp_path, capsys):
    victim = sorted((tmp_path / "data" / "train" / "images").rglob("mask2.jpg"))[0]
    victim.write_bytes(victim.read_bytes()[:200])
    line = cli_error(
        capsys, *_train(tiny_index, tmp_path / "out"), "--set", "data.input_size=[32,24]",
        "--set", "data.crop_size=null", "--set", "data.num_workers=0", "--set", "train.epochs=1",
        "--cache-dir", str(tmp_path / "cache"),
    )  # fmt: skip
    assert victim.name in line and str(victim.parent.name) in line and "truncated" in line
