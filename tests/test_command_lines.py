"""User errors on the two command lines, run as a user runs them: `maskpipe serve` with
$MASKPIPE_SERVE_PYTHON (default: the repository's .venv) and `python pipeline.py`. A wrong port, address, URL
or path is refused before any work starts (no model opened, no KServe start, no pipeline
step), in one line on stderr that names the value and the fix, with exit status 2 and no
traceback.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from datafactory import make_dataset

from benchmarks.serve_client import free_port, serving_python

REPO = Path(__file__).resolve().parent.parent


def run(argv: list[str], *, timeout: float = 120, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        argv, cwd=REPO, capture_output=True, text=True, timeout=timeout,
        env=dict(env if env is not None else os.environ, PYTHONPATH=str(REPO)),
    )  # fmt: skip


def one_error_line(result: subprocess.CompletedProcess, prefix: str) -> str:
    """The single line a refused command printed: exit 2, nothing else on stderr, no traceback."""
    assert "Traceback" not in result.stderr + result.stdout, result.stderr
    assert result.returncode == 2, result.stderr
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith(f"{prefix}: "), lines[0]
    return lines[0]


# ---------------------------------------------------------------------------- maskpipe serve


def serve(*args: str, timeout: float = 60) -> subprocess.CompletedProcess:
    python = serving_python(REPO)
    if not python.exists():
        pytest.fail(f"no serving environment at {python}: run `make venv` (or set MASKPIPE_SERVE_PYTHON)")
    return run([str(python), "-m", "maskpipe", "serve", *args], timeout=timeout)


@pytest.mark.parametrize(
    ("flags", "named"),
    [
        (["--port", "70000"], "port 70000 is out of range: use a port in 1-65535"),
        (["--port", "0"], "port 0 is out of range"),
        (["--port", "http"], "'http' is not a port number"),
        (["--max-batch", "0"], "argument --max-batch: 0 is too small: use 1 or more"),
        (["--max-body-mb", "0"], "argument --max-body-mb: 0 is too small"),
        (["--batch-wait-ms", "-1"], "argument --batch-wait-ms: -1 is too small"),
        (["--name", "mask/pipe"], "'mask/pipe' cannot be a model name in URLs"),
        (["--http_port", "70000"], "argument --http_port: port 70000 is out of range"),
        (["--model_name", "mask/pipe"], "argument --model_name: 'mask/pipe' cannot be a model name in URLs"),
        (["--workers", "2"], "argument --workers: maskpipe serve runs one server process"),
        (["--enable_grpc", "true"], "argument --enable_grpc: maskpipe serve answers REST (v1 and v2) only"),
    ],
)
def test_serve_refuses_a_bad_flag_when_parsing_it(tmp_path, flags, named):
    line = one_error_line(serve(str(tmp_path), *flags), "maskpipe serve")
    assert named in line and "maskpipe serve --help" in line


def test_serve_help_lists_kserves_flags_and_its_own():
    result = serve("--help")
    assert result.returncode == 0, result.stderr
    kserve = ["--http_port", "--model_name", "--workers", "--timeout-keep-alive", "--enable_docs_url"]
    own = ["--host", "--port", "--name", "--max-batch", "--auth-token-file", "--enable-model-repository"]
    assert [flag for flag in kserve + own if flag not in result.stdout] == []


def test_serve_takes_kserves_flags_and_the_older_spellings_of_two():
    python = serving_python(REPO)
    code = (
        "import json, sys; from maskpipe.cli import parse_serve_args\n"
        "a = [parse_serve_args(['m', *f.split()]) for f in sys.argv[1:]]\n"
        "print(json.dumps([[x.http_port, x.model_name, x.timeout_keep_alive] for x in a]))"
    )
    result = run([str(python), "-c", code, "", "--http_port 9001 --model_name gate --timeout-keep-alive 7", "--port 9002 --name gate"])
    assert result.returncode == 0, result.stderr
    # maskpipe serve's defaults where they differ from KServe's (model, 8080 and 65): the model name
    assert json.loads(result.stdout) == [[8080, "maskpipe", 65], [9001, "gate", 7], [9002, "gate", 65]]


def test_serve_on_a_busy_port_says_so_before_it_opens_the_model(tmp_path):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        # the folder does not exist: the port is checked before the model is looked at
        result = serve(str(tmp_path / "no-model"), "--host", "127.0.0.1", "--port", str(port))
    line = one_error_line(result, "maskpipe serve")
    assert f"port {port} is already in use on 127.0.0.1" in line and "--port" in line


def test_serve_on_a_busy_port_with_a_good_model_never_starts_kserve(exported_model):
    with socket.socket() as taken:
        taken.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        taken.bind(("0.0.0.0", 0))
        taken.listen()
        port = taken.getsockname()[1]
        started = time.monotonic()
        result = serve(str(exported_model), "--port", str(port))
    assert time.monotonic() - started < 30
    line = one_error_line(result, "maskpipe serve")
    assert f"port {port} is already in use" in line
    assert "Application startup complete" not in result.stdout + result.stderr


def test_serve_on_an_address_of_another_machine_names_it(tmp_path):
    # 192.0.2.1 is TEST-NET-1 (RFC 5737): never an address of this machine, and no DNS lookup
    result = serve(str(tmp_path), "--host", "192.0.2.1", "--port", str(free_port()))
    line = one_error_line(result, "maskpipe serve")
    assert "--host 192.0.2.1 is not an address of this machine" in line and "127.0.0.1" in line


@pytest.mark.parametrize("folder", ["missing", "empty"])
def test_serve_on_a_folder_that_is_not_an_exported_model_names_it(tmp_path, folder):
    model_dir = tmp_path / folder
    if folder == "empty":
        model_dir.mkdir()
    line = one_error_line(serve(str(model_dir), "--port", str(free_port())), "maskpipe serve")
    assert str(model_dir) in line and "maskpipe export" in line


# ---------------------------------------------------------------------------- pipeline.py


def pipeline(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    return run([sys.executable, "pipeline.py", *args], env=env)


def without_kfp_env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if not k.startswith("KF_PIPELINES_")}


@pytest.mark.parametrize(
    ("host", "problem"),
    [
        ("not-a-url", "no http:// or https:// in front"),
        ("ftp://kubeflow.example.com", "scheme 'ftp' is not http or https"),
        ("http://localhost:99999", "Port out of range"),
        ("https://", "it names no host"),
    ],
)
def test_submit_refuses_a_host_that_is_not_an_http_url(host, problem):
    started = time.monotonic()
    result = pipeline("submit", "--host", host, "--data", "s3://maskpipe-data/x", env=without_kfp_env())
    line = one_error_line(result, "pipeline.py submit")
    assert time.monotonic() - started < 30  # refused at parsing: no request, no retries
    assert f"argument --host: {host!r} is not the URL of a Kubeflow Pipelines API ({problem}" in line
    assert "http(s)://HOST[:PORT][/PATH]" in line


def test_a_bad_host_from_the_environment_names_the_variable():
    env = dict(without_kfp_env(), KF_PIPELINES_ENDPOINT="localhost:8080")
    line = one_error_line(pipeline("upload", env=env), "pipeline.py upload")
    assert "'localhost:8080' (from $KF_PIPELINES_ENDPOINT) is not the URL" in line


def test_submit_to_a_host_where_nothing_listens_names_the_host():
    host = f"http://127.0.0.1:{free_port()}"
    line = one_error_line(pipeline("submit", "--host", host, "--data", "s3://maskpipe-data/x"), "pipeline.py submit")
    assert f"cannot reach the Kubeflow Pipelines API at {host}" in line and "port-forward" in line


@pytest.mark.parametrize(
    ("flags", "named"),
    [
        (["--minio-endpoint", "minio host:9000"], "MINIO_ENDPOINT='minio host:9000' is not an endpoint"),
        (["--minio-endpoint", "minio:99999"], "Port out of range"),
        (["--pipeline-root", "mlpipeline/v2"], "'mlpipeline/v2' is not an artifact store URI"),
        (["--shm-size", "8GB"], "'8GB' is not a Kubernetes quantity"),
    ],
)
def test_compile_refuses_a_malformed_cluster_setting(tmp_path, flags, named):
    result = pipeline("compile", "-o", str(tmp_path / "p.yaml"), *flags)
    line = one_error_line(result, "pipeline.py compile")
    assert named in line and not (tmp_path / "p.yaml").exists()


def test_submit_with_a_relative_data_path_says_the_steps_run_in_pods():
    result = pipeline("submit", "--host", "http://127.0.0.1:1", "--data", "data/competition")
    line = one_error_line(result, "pipeline.py submit")
    assert "--data data/competition is a relative path" in line and "maskpipe data upload" in line


def test_submit_in_cluster_without_the_pods_token_names_the_path(tmp_path):
    token = tmp_path / "token"
    result = pipeline("submit", "--in-cluster", "--sa-token-path", str(token), "--data", "s3://maskpipe-data/x",
                      env=without_kfp_env())  # fmt: skip
    line = one_error_line(result, "pipeline.py submit")
    assert f"token from {token}, which is not a file here" in line


def run_local(tmp_path: Path, *flags: str, env: dict[str, str] | None = None) -> tuple[str, float]:
    out = tmp_path / "out"
    started = time.monotonic()
    result = pipeline("run-local", "--preset", "smoke", "--output-dir", str(out), *flags, env=env)
    line = one_error_line(result, "pipeline.py run-local")
    assert not (out / "runs").exists()  # kfp.local never started
    return line, time.monotonic() - started


def test_run_local_on_a_data_root_that_does_not_exist_fails_before_the_pipeline(tmp_path):
    line, seconds = run_local(tmp_path, "--data", str(tmp_path / "nonexistent"))
    assert f"data root {tmp_path / 'nonexistent'} does not exist" in line
    assert seconds < 30


def test_run_local_on_a_folder_in_no_known_layout_lists_the_layouts(tmp_path):
    (tmp_path / "photos").mkdir()
    (tmp_path / "photos" / "face.jpg").write_bytes(b"not checked yet")
    line, _ = run_local(tmp_path, "--data", str(tmp_path / "photos"))
    assert "no recognisable layout" in line and "train/images/<id>_<gender>_<race>_<age>" in line


def test_run_local_on_training_data_without_eval_photos_says_what_is_missing(tmp_path):
    data = make_dataset(tmp_path / "data", eval_images=0).root
    line, _ = run_local(tmp_path, "--data", str(data))
    assert f"data root {data} (competition layout) has no eval/info.csv" in line


def test_run_local_with_a_truth_file_that_does_not_exist_names_it(tmp_path):
    data = make_dataset(tmp_path / "data", eval_images=2).root
    line, _ = run_local(tmp_path, "--data", str(data), "--truth", str(tmp_path / "truth.csv"))
    assert f"argument --truth: {tmp_path / 'truth.csv'} does not exist" in line


def test_run_local_on_an_empty_bucket_prefix_says_it_is_empty(tmp_path, s3_bucket):
    line, _ = run_local(tmp_path, "--data", f"{s3_bucket}/competition")
    assert f"{s3_bucket}/competition" in line and ("empty" in line or "holds no files" in line)


def test_run_local_on_a_bucket_that_does_not_exist_names_it(tmp_path, s3_env):
    line, _ = run_local(tmp_path, "--data", "s3://no-such-bucket-for-maskpipe/competition")
    assert "bucket 'no-such-bucket-for-maskpipe' does not exist" in line
    assert s3_env.secret_key not in line


def test_run_local_on_an_s3_uri_without_a_valid_bucket_is_refused_when_parsing(tmp_path):
    line, _ = run_local(tmp_path, "--data", "s3://Bad_Bucket/x")
    assert "argument --data:" in line and "'Bad_Bucket' is not a valid bucket name" in line
