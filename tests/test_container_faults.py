"""Faults of the container path that need no container engine: each ends in one line that
names the cause and the command that fixes it, within seconds, without a traceback.

No engine, an unreachable engine socket, an unconfigured podman (for ``make image``), data the
image's user cannot read, and flags that do not fit together. The faults that need a working
engine (an image that was never built, a build failing on a dependency, a step failing inside
its container) are in tests/test_containers.py.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
from datafactory import make_dataset

from pipeline_cli import containers

REPO = Path(__file__).resolve().parent.parent
BUILD_SCRIPT = REPO / "docker" / "build-image.sh"
# What docker/build-image.sh needs from PATH before it looks for an engine.
SCRIPT_TOOLS = ("bash", "dirname", "mkdir", "sed", "tee", "timeout", "grep", "cat", "head", "python3")


def run_cli(*argv: str, env: dict[str, str], timeout: float = 60) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "pipeline.py", *argv], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=timeout)


def last_line(text: str) -> str:
    return [line for line in text.splitlines() if line.strip()][-1]


@pytest.fixture
def no_engine_env(monkeypatch, tmp_path) -> dict[str, str]:
    """An environment whose DOCKER_HOST names a socket nothing listens on."""
    env = {k: v for k, v in os.environ.items() if k != "DOCKER_HOST"}
    env["DOCKER_HOST"] = f"unix://{tmp_path}/nothing-listens.sock"
    env["PYTHONPATH"] = str(REPO)
    return env


# ---------------------------------------------------------------- the runner's engine checks


def test_without_docker_host_or_sockets_the_runner_names_the_setup_script(monkeypatch, tmp_path):
    monkeypatch.setattr(containers, "DOCKER_SOCKET", str(tmp_path / "docker.sock"))
    monkeypatch.setattr(containers, "PODMAN_SOCKET", str(tmp_path / "podman.sock"))
    with pytest.raises(containers.ContainerEngineError) as error:
        containers.find_docker_host({})
    message = str(error.value)
    assert "no container engine" in message and message.endswith(
        "Fix: sudo docker/engine/setup-podman.sh (installs podman and starts its API)")
    assert "\n" not in message


def test_docker_host_wins_over_the_sockets():
    assert containers.find_docker_host({"DOCKER_HOST": " tcp://10.0.0.1:2375 "}) == "tcp://10.0.0.1:2375"


def test_an_unreachable_socket_fails_within_seconds_naming_the_fix(tmp_path):
    started = time.monotonic()
    with pytest.raises(containers.ContainerEngineError) as error:
        containers.connect(f"unix://{tmp_path}/nothing-listens.sock")
    assert time.monotonic() - started < 15
    message = str(error.value)
    assert "does not answer" in message and "Fix: sudo docker/engine/setup-podman.sh" in message
    assert "\n" not in message


def test_run_local_in_containers_without_an_engine_is_one_line_on_stderr(tmp_path, no_engine_env):
    make_dataset(tmp_path / "data", eval_images=2)  # data run-local's own check accepts
    started = time.monotonic()
    result = run_cli("run-local", "--runner", "docker", "--data", str(tmp_path / "data"),
                     "--output-dir", str(tmp_path / "out"), env=no_engine_env)
    assert time.monotonic() - started < 30
    assert result.returncode == 1, result.stderr
    assert "Traceback" not in result.stderr + result.stdout
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert "does not answer" in result.stderr and "setup-podman.sh" in result.stderr


def test_image_without_the_docker_runner_is_refused(tmp_path, no_engine_env):
    result = run_cli("run-local", "--image", "maskpipe:dev", "--data", str(tmp_path),
                     "--output-dir", str(tmp_path / "out"), env=no_engine_env)
    assert result.returncode == 2
    assert last_line(result.stderr).endswith("--image runs the steps in containers: add --runner docker")


# ---------------------------------------------------------------- data the image user must read


def test_data_the_image_user_cannot_read_is_named_with_the_chmod_fix(tmp_path):
    data = tmp_path / "data"
    (data / "train").mkdir(parents=True)
    private = data / "train" / "train.csv"
    private.write_text("id\n")
    private.chmod(0o600)
    with pytest.raises(containers.ContainerEngineError) as error:
        containers.prepare("maskpipe:dev", str(data), environ={"DOCKER_HOST": "unix:///nowhere"})
    message = str(error.value)
    assert str(private) in message and "-rw-------" in message
    assert message.endswith(f"Fix: chmod -R a+rX {data}")


def test_readable_data_passes_the_check(tmp_path):
    data = tmp_path / "data"
    (data / "train").mkdir(parents=True)
    (data / "train" / "train.csv").write_text("id\n")
    (data / "train" / "train.csv").chmod(0o644)
    (data / "train").chmod(0o755)
    data.chmod(0o755)
    assert containers.unreadable_for_image_user(data) == []
    (data / "train").chmod(0o750)  # group 0 is the image's group only when the folder is in it
    expected = [] if (data / "train").stat().st_gid == containers.IMAGE_GID else [data / "train"]
    assert containers.unreadable_for_image_user(data) == expected


def test_only_the_s3_settings_storage_reads_are_handed_to_the_containers(tmp_path):
    shell = {
        "MINIO_ENDPOINT": "127.0.0.1:9000", "MINIO_SECRET_KEY": "maskpipe-test-secret",
        "MASKPIPE_S3_RETRIES": "2", "HOME": "/root", "KF_PIPELINES_TOKEN": "fake-token",
        "AWS_SECRET_ACCESS_KEY": "maskpipe-test-aws-secret", "AWS_PROFILE": "dev", "GOOGLE_CLOUD_PROJECT": "p",
    }  # fmt: skip
    settings = containers.ContainerRun(
        image="maskpipe:dev", docker_host="unix:///x", environment=containers.passed_environment(shell)
    )
    args = settings.run_args()
    assert args["environment"] == {
        "MINIO_ENDPOINT": "127.0.0.1:9000", "MINIO_SECRET_KEY": "maskpipe-test-secret", "MASKPIPE_S3_RETRIES": "2",
        "AWS_SECRET_ACCESS_KEY": "maskpipe-test-aws-secret",  # storage.py reads the AWS_* names too
    }  # fmt: skip
    assert args["network_mode"] == "host"
    assert "user" not in args, "the image's own non-root user runs the steps"
    assert "ContainerRun(image='maskpipe:dev'" in repr(settings) and "127.0.0.1" not in repr(settings)


def test_a_failed_step_message_has_step_exit_code_log_tail_and_log_path(tmp_path):
    result = containers.StepResult(tmp_path, 3, "loading\nValueError: bad value", tmp_path / "container.log")
    message = containers.failure_message("train-age", "train-model-3", result, "localhost/maskpipe:dev")
    lines = message.splitlines()
    assert lines[0] == "step train-age (task train-model-3) failed in image localhost/maskpipe:dev: exit code 3"
    assert lines[-3:] == ["  | loading", "  | ValueError: bad value", f"its full log: {tmp_path / 'container.log'}"]


# ---------------------------------------------------------------- make image without an engine


def _path_with(tmp_path: Path, tools: dict[str, str]) -> str:
    """A PATH holding only SCRIPT_TOOLS and the given fake tools (name -> shell script)."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for tool in SCRIPT_TOOLS:
        (bin_dir / tool).symlink_to(shutil.which(tool))
    for name, body in tools.items():
        (bin_dir / name).write_text("#!/bin/bash\n" + body + "\n")
        (bin_dir / name).chmod(0o755)
    return str(bin_dir)


def run_build_script(tmp_path: Path, tools: dict[str, str]) -> subprocess.CompletedProcess:
    env = {"PATH": _path_with(tmp_path, tools), "HOME": str(tmp_path)}
    started = time.monotonic()
    result = subprocess.run(["bash", str(BUILD_SCRIPT), "--tag", "maskpipe:fault-test"], cwd=tmp_path,
                            env=env, capture_output=True, text=True, timeout=60)
    assert time.monotonic() - started < 20, "a fault must be reported within seconds"
    assert result.returncode != 0
    assert "Traceback" not in result.stderr
    return result


def test_make_image_without_any_engine_names_the_setup_script(tmp_path):
    result = run_build_script(tmp_path, {})
    assert last_line(result.stderr) == (
        "build-image.sh: no container engine: neither a running Docker daemon nor podman. "
        "Fix: sudo docker/engine/setup-podman.sh")


def test_make_image_ignores_a_docker_cli_without_a_daemon(tmp_path):
    result = run_build_script(tmp_path, {"docker": 'echo "Cannot connect to the Docker daemon" >&2; exit 1'})
    assert "no container engine" in last_line(result.stderr)


def test_make_image_builds_with_podman_when_the_docker_cli_talks_to_podman(tmp_path):
    # docker info answers (DOCKER_HOST is podman's socket); the long version output would
    # have failed an early-exiting grep under pipefail, which once sent the build to docker
    docker = ('case "$1" in info) exit 0 ;; version) printf "Server:\\n Podman Engine:\\n";'
              ' for ((i = 0; i < 5000; i++)); do echo "line $i"; done ;; esac; exit 0')
    result = run_build_script(tmp_path, {"docker": docker, "podman": 'echo "broken" >&2; exit 125'})
    assert "podman is installed but does not work here" in last_line(result.stderr)


def test_make_image_with_an_unconfigured_podman_names_the_setup_script(tmp_path):
    podman = 'if [ "$1" = info ]; then echo crun; exit 0; fi; exit 99'
    result = run_build_script(tmp_path, {"podman": podman})
    message = last_line(result.stderr)
    assert "podman is not configured for this machine" in message
    assert message.endswith("Fix: sudo docker/engine/setup-podman.sh")


def test_make_image_with_a_broken_podman_names_the_setup_script(tmp_path):
    result = run_build_script(tmp_path, {"podman": 'echo "cannot re-exec process" >&2; exit 125'})
    assert last_line(result.stderr).endswith(
        "podman is installed but does not work here (podman info failed). Fix: sudo docker/engine/setup-podman.sh")
