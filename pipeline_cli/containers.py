"""Run-local's container runner: every step in the project image through kfp.local.DockerRunner.

What this adds to kfp 2.17.3's DockerRunner, and why:

* **The engine.** It finds the Docker API (``$DOCKER_HOST``, Docker's socket, or the podman
  socket ``docker/engine/setup-podman.sh`` starts) and checks the image is there before the
  first step, so a missing engine, an unreachable socket or an image that was never built is
  one line naming the fix, not a pull error or a traceback.
* **Each step's exit code and log.** kfp runs containers with ``auto_remove=True`` and
  takes a container that is gone before ``wait()`` for exit code 0, so a step that dies
  within a second passes as a success and its log is lost (podman even answers the inspect
  with HTTP 500). Here each step's container is kept until its exit code and log are read,
  the log is written to ``container-logs/<run>/<task>.log`` beside the run's outputs, and a
  step that exits 0 without its ``executor_output.json`` counts as failed.
* **Permissions the way a cluster grants them.** The image runs as uid 1001, group 0; it is
  not run as root. The pipeline root is made group-writable (umask 002 while the run lasts,
  mode 2775 on the root) and the container gets this process's group as a supplementary
  group when it is not 0 already: what Kubernetes' ``fsGroup`` does for a pod's volumes.
* **Data.** A local data folder is bind-mounted read-only at the same path; for ``s3://``
  data the ``MINIO_*`` settings of this environment are handed to the containers at run time
  (never compiled into the pipeline, never printed). ``--network host`` lets the containers
  reach a MinIO on this machine's loopback.
"""

from __future__ import annotations

import contextlib
import json
import os
import stat
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, Iterator, List, Optional

from pipeline_cli.console import TAIL_LINES, quoted_tail

# Where docker/engine/setup-podman.sh serves podman's Docker-compatible API.
PODMAN_SOCKET = "/run/maskpipe/podman.sock"
DOCKER_SOCKET = "/var/run/docker.sock"
SETUP_COMMAND = "sudo docker/engine/setup-podman.sh"
# The image's user (docker/Dockerfile.gpu): what must be able to read the data.
IMAGE_UID, IMAGE_GID = 1001, 0
# Settings the steps read from the environment (maskpipe.storage): MinIO endpoint and keys,
# their AWS_* equivalents, S3 retry knobs.
PASSED_ENV_PREFIXES = ("MINIO_", "MASKPIPE_S3_")
PASSED_ENV_NAMES = (
    "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_ENDPOINT_URL",
    "AWS_ENDPOINT_URL_S3", "AWS_REGION", "AWS_DEFAULT_REGION",
)  # fmt: skip


class ContainerEngineError(RuntimeError):
    """The container engine or the image is not usable; the message names the fix."""


@dataclass
class StepResult:
    """One step's container: where its run folder is, how it ended, the end of its log."""

    task_dir: Optional[Path]
    exit_code: int
    log_tail: str
    log_path: Optional[Path]
    problem: str = ""


@dataclass
class ContainerRun:
    """The settings of one run-local in containers and what each step's container did."""

    image: str
    docker_host: str
    mounts: List[Any] = field(default_factory=list)
    environment: Dict[str, str] = field(default_factory=dict, repr=False)
    shm_size: str = "2g"
    # Host-owned, so the logs can be written whoever the image's user is.
    log_dir: Optional[Path] = None
    steps: List[StepResult] = field(default_factory=list)

    def failed_step(self) -> Optional[StepResult]:
        failed = [s for s in self.steps if s.exit_code != 0 or s.problem]
        return failed[-1] if failed else None

    def run_args(self) -> Dict[str, Any]:
        """``containers.run`` arguments for kfp.local.DockerRunner."""
        args: Dict[str, Any] = {
            "mounts": list(self.mounts),
            "network_mode": "host",
            "shm_size": self.shm_size,
            "environment": dict(self.environment),
        }
        if os.getgid() != IMAGE_GID:
            args["group_add"] = [str(os.getgid())]
        return args


# ---------------------------------------------------------------------------------------------
# the engine and the image


def docker_module():
    try:
        import docker
    except ImportError:
        raise ContainerEngineError(
            "the docker runner needs the Python package `docker`. Fix: pip install 'docker>=7.1,<8'"
        ) from None
    return docker


def find_docker_host(environ: Optional[Dict[str, str]] = None) -> str:
    """``$DOCKER_HOST``, else Docker's socket, else the podman socket the setup script starts."""
    environ = os.environ if environ is None else environ
    if environ.get("DOCKER_HOST", "").strip():
        return environ["DOCKER_HOST"].strip()
    for socket_path in (DOCKER_SOCKET, PODMAN_SOCKET):
        if Path(socket_path).is_socket():
            return f"unix://{socket_path}"
    raise ContainerEngineError(
        f"no container engine: DOCKER_HOST is unset and neither {DOCKER_SOCKET} nor "
        f"{PODMAN_SOCKET} exists. Fix: {SETUP_COMMAND} (installs podman and starts its API)"
    )


def connect(docker_host: str):
    """A docker client for ``docker_host`` that answered a ping within seconds."""
    docker = docker_module()
    try:
        client = docker.DockerClient(base_url=docker_host, timeout=10)
        client.ping()
    except Exception as exc:  # noqa: BLE001 - any failure here means the same fix
        raise ContainerEngineError(
            f"the container engine at {docker_host} does not answer ({_first_line(exc)}). "
            f"Fix: {SETUP_COMMAND} (restarts podman's API service), or start Docker"
        ) from None
    return client


def check_image(client, image: str, docker_host: str) -> None:
    """Fail with the build command when ``image`` is not in the engine (kfp would try to pull)."""
    docker = docker_module()
    try:
        client.images.get(image)
    except docker.errors.ImageNotFound:
        raise ContainerEngineError(
            f"image {image} is not in the container engine at {docker_host}. "
            f"Fix: make image IMAGE_TAG={image}"
        ) from None
    except docker.errors.APIError as exc:
        raise ContainerEngineError(
            f"the container engine at {docker_host} failed to look up image {image} "
            f"({_first_line(exc)}). Fix: {SETUP_COMMAND}"
        ) from None


def start_container(client, image: str, command: List[str], **create_args):
    """Create and start a container; one that was created but would not start (docker-py's
    ``containers.run`` leaves it behind in state "created") is removed before the error."""
    container = client.containers.create(image, command, **create_args)
    try:
        container.start()
    except BaseException:
        with contextlib.suppress(Exception):
            container.remove(force=True)
        raise
    return container


def check_containers_start(client, image: str, docker_host: str) -> None:
    """Start one throw-away container of ``image`` (about a second), so that an engine that is
    not configured for this machine (rlimits, cgroups, runtime) fails here, in one line,
    instead of in the first step."""
    docker = docker_module()
    try:
        container = start_container(client, image, ["true"], network_mode="host")
    except docker.errors.APIError as exc:
        raise ContainerEngineError(
            f"the container engine at {docker_host} cannot start a container of {image} "
            f"({_first_line(exc)}): it is not configured for this machine. Fix: {SETUP_COMMAND}"
        ) from None
    try:
        code = int(container.wait().get("StatusCode", 1))
    finally:
        with contextlib.suppress(docker.errors.APIError):
            container.remove(force=True)
    if code != 0:
        raise ContainerEngineError(
            f"`true` exits {code} in a container of {image}: the image is broken. "
            f"Fix: make image IMAGE_TAG={image}"
        )


def local_image_name(client, image: str) -> str:
    """The name the engine lists ``image`` under: podman stores ``maskpipe:dev`` as
    ``localhost/maskpipe:dev``, and kfp.local looks images up by exact name."""
    tags = client.images.get(image).tags
    if image in tags or not tags:
        return image
    for tag in tags:
        if tag.endswith("/" + image):
            return tag
    return image


def unreadable_for_image_user(folder: Path, limit: int = 3) -> List[Path]:
    """Files or folders under ``folder`` the image's user cannot read: uid 1001 in group 0 and
    in this process's group (ContainerRun.run_args adds it)."""
    found: List[Path] = []
    groups = {IMAGE_GID, os.getgid()}

    def readable(st: os.stat_result, is_dir: bool) -> bool:
        # The kernel checks the owner bits, else the group bits, else the others' bits.
        if st.st_uid == IMAGE_UID:
            need = stat.S_IRUSR | (stat.S_IXUSR if is_dir else 0)
        elif st.st_gid in groups:
            need = stat.S_IRGRP | (stat.S_IXGRP if is_dir else 0)
        else:
            need = stat.S_IROTH | (stat.S_IXOTH if is_dir else 0)
        return st.st_mode & need == need

    for root, dirs, files in os.walk(folder):
        for name in dirs + files:
            path = Path(root) / name
            try:
                st = path.stat()
            except OSError:
                continue
            if not readable(st, stat.S_ISDIR(st.st_mode)):
                found.append(path)
                if len(found) >= limit:
                    return found
        if not readable(Path(root).stat(), True):
            found.append(Path(root))
            return found
    return found


def prepare(image: str, data_root: str, environ: Optional[Dict[str, str]] = None) -> ContainerRun:
    """Check the engine, the image and the data; return the run's settings."""
    environ = os.environ if environ is None else environ
    docker = docker_module()
    mounts = []
    if not data_root.startswith("s3://"):
        data = Path(data_root)
        bad = unreadable_for_image_user(data)
        if bad:
            mode = stat.filemode(bad[0].stat().st_mode)
            raise ContainerEngineError(
                f"{bad[0]} ({mode}) is not readable by the image's user (uid {IMAGE_UID}, "
                f"group {IMAGE_GID}), so the steps could not read the data. Fix: chmod -R a+rX {data}"
            )
        if data.is_dir():  # a missing folder is the index step's error to report
            mounts.append(docker.types.Mount(target=str(data), source=str(data), type="bind",
                                             read_only=True))
    docker_host = find_docker_host(environ)
    client = connect(docker_host)
    try:
        check_image(client, image, docker_host)
        image = local_image_name(client, image)
        check_containers_start(client, image, docker_host)
    finally:
        client.close()
    return ContainerRun(
        image=image, docker_host=docker_host, mounts=mounts, environment=passed_environment(environ)
    )


def passed_environment(environ: Dict[str, str]) -> Dict[str, str]:
    """The settings of this shell the steps get: MinIO's (or their AWS_* equivalents) and the
    S3 retry knobs, nothing else (no HOME, no KFP tokens, no other cloud settings)."""
    return {
        k: v for k, v in environ.items() if k.startswith(PASSED_ENV_PREFIXES) or k in PASSED_ENV_NAMES
    }


# ---------------------------------------------------------------------------------------------
# running the steps


@contextlib.contextmanager
def group_writable_root(pipeline_root: Path) -> Iterator[None]:
    """umask 002 while the run lasts and a setgid, group-writable pipeline root, so the image's
    user (in this process's group, see ContainerRun.run_args) can write every folder kfp.local
    creates for it, as with a pod's fsGroup."""
    pipeline_root.mkdir(parents=True, exist_ok=True)
    pipeline_root.chmod(0o2775)
    saved = os.umask(0o002)
    try:
        yield
    finally:
        os.umask(saved)


@contextlib.contextmanager
def steps_in_containers(run: ContainerRun) -> Iterator[None]:
    """Route kfp.local's DockerRunner through ``_run_step_container`` and point it at the
    engine, for the duration of one run."""
    from kfp.local import docker_task_handler

    saved_runner = docker_task_handler.run_docker_container
    saved_host = os.environ.get("DOCKER_HOST")
    # Not kfp's client: its 60 s read timeout ends the log stream, and the run, whenever a
    # step prints nothing for a minute (a long epoch, a large download).
    own_client = docker_module().DockerClient(base_url=run.docker_host, timeout=None)

    def run_container(client, image, command, volumes, **run_args):  # kfp's signature
        result = _run_step_container(own_client, image, command, volumes, log_dir=run.log_dir,
                                     **run_args)
        run.steps.append(result)
        return result.exit_code if not result.problem else (result.exit_code or 1)

    docker_task_handler.run_docker_container = run_container
    os.environ["DOCKER_HOST"] = run.docker_host
    try:
        yield
    finally:
        own_client.close()
        docker_task_handler.run_docker_container = saved_runner
        if saved_host is None:
            os.environ.pop("DOCKER_HOST", None)
        else:
            os.environ["DOCKER_HOST"] = saved_host


def _run_step_container(client, image: str, command: List[str], volumes: Dict[str, Any],
                        log_dir: Optional[Path] = None, **run_args) -> StepResult:
    """Run one step like kfp's run_docker_container, but keep the container until its exit
    code and log are read, write the log to ``log_dir/<run>/<task>.log``, check the outputs."""
    import docker

    executor_input = _executor_input(command)
    task_dir = _task_dir(executor_input)
    try:
        container = start_container(client, image, command, volumes=volumes, **run_args)
    except docker.errors.APIError as exc:
        text = _first_line(exc)
        fix = (f"Fix: {SETUP_COMMAND} (the engine is not configured for this machine)"
               if any(s in text for s in ("setrlimit", "cgroup", "crun", "OCI runtime")) else
               f"Fix: make image IMAGE_TAG={image}" if "No such image" in text or "not found" in text
               else "Fix: check the engine (podman info / docker info)")
        problem = f"the engine could not start the container: {text}. {fix}"
        print(problem)
        return StepResult(task_dir, 125, problem, None, problem=problem)
    try:
        chunks: List[bytes] = []
        for chunk in container.logs(stream=True, follow=True):
            chunks.append(chunk)
            print(chunk.decode("utf-8", errors="replace"), end="")
        exit_code = int(container.wait().get("StatusCode", 1))
    finally:
        with contextlib.suppress(docker.errors.APIError):
            container.remove(force=True)
    log = b"".join(chunks).decode("utf-8", errors="replace")
    log_path = None
    if task_dir is not None and log_dir is not None:
        from maskpipe.atomic import write_text

        log_path = log_dir / task_dir.parent.name / f"{task_dir.name}.log"
        write_text(log_path, log)
    problem = ""
    if exit_code == 0 and executor_input and executor_input.get("outputs", {}).get("artifacts"):
        output_file = Path(executor_input["outputs"]["outputFile"])
        if not output_file.is_file():
            problem = f"exited 0 but wrote no {output_file.name} (its outputs are missing)"
    tail = "\n".join(log.rstrip().splitlines()[-TAIL_LINES:])
    return StepResult(task_dir, exit_code, tail, log_path, problem=problem)


def _executor_input(command: List[str]) -> Optional[Dict[str, Any]]:
    for flag, value in zip(command, command[1:]):
        if flag == "--executor_input":
            with contextlib.suppress(ValueError):
                return json.loads(value)
    return None


def _task_dir(executor_input: Optional[Dict[str, Any]]) -> Optional[Path]:
    output_file = (executor_input or {}).get("outputs", {}).get("outputFile")
    return Path(output_file).parent if output_file else None


def failure_message(step: str, key: str, result: StepResult, image: str) -> str:
    """Step, exit code, the end of its log, where the whole log and the other outputs are."""
    how = result.problem or f"exit code {result.exit_code}"
    lines = [f"step {step} (task {key}) failed in image {image}: {how}"]
    if result.log_tail.strip():
        lines += quoted_tail(result.log_tail.splitlines())
    if result.log_path is not None:
        lines.append(f"its full log: {result.log_path}")
    return "\n".join(lines)


def _first_line(exc: BaseException) -> str:
    text = getattr(exc, "explanation", None) or str(exc)
    if isinstance(text, bytes):
        text = text.decode("utf-8", errors="replace")
    return (str(text).strip().splitlines() or [type(exc).__name__])[0]
