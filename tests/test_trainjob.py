"""The training step in Kubeflow Trainer mode (``--trainer kubeflow``): compiled, and run
through kfp.local (SubprocessRunner) against the loopback Kubernetes API of tests/fake_kube.py,
which answers the kubeflow SDK's TrainJob calls and plays Trainer's controller.

Success: the fake runs the TrainJob's own node command (``torchrun -m maskpipe train ...``) here,
its log reaches the step's log, and the checkpoint it mirrored becomes the step's Model, which
loads. Failure: a TrainJob that Trainer marks Failed fails the step with its condition's reason
and message; one deleted mid-run fails it as deleted; a step stopped with SIGTERM deletes its
TrainJob. The TrainJob every path creates is valid under the Trainer v2.3.0 CRD's schema (the
fake refuses others with 422, as the API server does).
"""

from __future__ import annotations

import dataclasses
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from kfp import dsl, local

from components import index_data, train_trainjob
from datafactory import make_dataset
from fake_kube import FakeKubeAPI, node_container, run_trainjob_locally, trainjob_schema_errors
from tiny import TINY_OVERRIDES
from pipeline_dag import LOCAL_OPTIONS, PipelineOptions
from maskpipe.trainjob import TrainJobSettings, checkpoint_uri_of, object_store_uri, train_command, trainjob_request

pytestmark = pytest.mark.integration  # a loopback API server, kfp.local subprocesses

REPO = Path(__file__).resolve().parents[1]
NAMESPACE = "team-a"
SETTINGS = dataclasses.replace(LOCAL_OPTIONS, trainer="kubeflow", trainjob_poll_s=0.3, image="maskpipe:dev")


@pytest.fixture(scope="module")
def data_root(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("data")
    make_dataset(root, eval_images=2)
    return root


@pytest.fixture
def api(tmp_path, monkeypatch):
    with FakeKubeAPI() as server:
        monkeypatch.setenv("KUBECONFIG", str(server.write_kubeconfig(tmp_path / "kubeconfig", NAMESPACE)))
        server.add_secret(NAMESPACE, "mlpipeline-minio-artifact", {"accesskey": "maskpipe-test-key", "secretkey": "maskpipe-test-secret"})
        yield server


def one_training(data_root: str, settings: dict):
    @dsl.pipeline(name="trainjob-step")
    def pipeline():
        index = index_data(data_root=data_root, val_fraction=0.34).set_caching_options(False)
        train_trainjob(task="mask", index=index.outputs["index"], trainjob=settings, preset="smoke", epochs=1,
                       architecture="resnet10t", overrides=TINY_OVERRIDES).set_caching_options(False)  # fmt: skip

    return pipeline


def run_step(api, data_root, tmp_path, capfd):
    """Index then train-mask in Trainer mode through kfp.local; (the run's folder or the
    error, the step's log)."""
    local.init(runner=local.SubprocessRunner(use_venv=False), pipeline_root=str(tmp_path / "runs"), raise_on_error=True)
    settings = SETTINGS.trainjob_settings().to_dict()
    try:
        one_training(str(data_root), settings)()
        outcome = None
    except RuntimeError as exc:
        outcome = exc
    out, err = capfd.readouterr()
    return outcome, out + err


def created_trainjobs(api) -> list[dict]:
    return [json.loads(body) for body in api.created_bodies]


@pytest.fixture
def recording(api):
    """Keep each TrainJob body the step sent (the fake stores them with server fields added)."""
    api.created_bodies = []
    handle = api.handle

    def record(method, path, headers, body):
        if method == "POST" and path.rstrip("/").endswith("/trainjobs"):
            api.created_bodies.append(body)
        return handle(method, path, headers, body)

    api.handle = record
    return api


@pytest.mark.slow
def test_a_completed_trainjob_becomes_the_steps_model(recording, data_root, tmp_path, capfd):
    api = recording
    api.on_trainjob = run_trainjob_locally
    error, log = run_step(api, data_root, tmp_path, capfd)
    assert error is None, log[-4000:]
    (job,) = created_trainjobs(api)
    assert trainjob_schema_errors(job) == []
    assert job["spec"]["runtimeRef"]["name"] == "torch-distributed"
    assert job["spec"]["trainer"]["command"][:4] == ["torchrun", "--nproc-per-node=1", "-m", "maskpipe"]
    # node 0's own output reached the step's log
    assert "[node-0]" in log and "mask: epochs 1/1" in log
    (model_dir,) = list((tmp_path / "runs").glob("*/train-trainjob/model"))
    from maskpipe.checkpoint import load_checkpoint

    loaded = load_checkpoint(model_dir)
    assert loaded.task == "mask" and loaded.config.train.epochs == 1 and not (model_dir / "state").exists()
    mirrored = Path(checkpoint_uri_of(str(model_dir)))
    assert (mirrored / "model.safetensors").is_file()  # what the TrainJob's rank 0 wrote
    executor = json.loads(next((tmp_path / "runs").glob("*/train-trainjob/executor_output.json")).read_text())
    assert executor["artifacts"]["model"]["artifacts"][0]["metadata"]["trainjob"].startswith(f"{NAMESPACE}/maskpipe-mask-")


def test_a_failed_trainjob_fails_the_step_with_its_reason(recording, data_root, tmp_path, capfd):
    api = recording

    def fail(api, namespace, job):
        pod = api.add_node_pod(namespace, job, 0, node_container(job)[0])
        api.append_log(pod, "CUDA error: out of memory on rank 0")
        api.end_pod(pod, "Failed")
        api.set_trainjob_condition(namespace, job["metadata"]["name"], "Failed", "FailedJobs",
                                   "jobset failed due to one or more job failures")  # fmt: skip

    api.on_trainjob = fail
    error, log = run_step(api, data_root, tmp_path, capfd)
    assert error is not None
    assert "failed: FailedJobs: jobset failed due to one or more job failures" in log
    assert "[node-0] CUDA error: out of memory on rank 0" in log
    assert trainjob_schema_errors(created_trainjobs(api)[0]) == []


def test_a_trainjob_deleted_mid_run_fails_the_step_as_deleted(recording, data_root, tmp_path, capfd):
    api = recording

    def delete(api, namespace, job):
        api.add_node_pod(namespace, job, 0, node_container(job)[0])
        time.sleep(1)
        api.delete_trainjob(namespace, job["metadata"]["name"])

    api.on_trainjob = delete
    error, log = run_step(api, data_root, tmp_path, capfd)
    assert error is not None
    assert "was deleted before it finished" in log


def test_a_stopped_step_deletes_its_trainjob(api, data_root, tmp_path):
    """SIGTERM (how Kubernetes stops the step's pod when the run is cancelled) deletes the job."""
    started = []
    api.on_trainjob = lambda api, ns, job: (started.append(job["metadata"]["name"]),
                                            api.add_node_pod(ns, job, 0, node_container(job)[0]))  # fmt: skip
    from maskpipe.steps.index import index_step  # noqa: F401  (the index comes from index_data below)

    index_dir = tmp_path / "index"
    from components import index_data as component

    component.python_func(data_root=str(data_root), index=dsl.Dataset(name="index", uri=str(index_dir), metadata={}),
                          report=dsl.Markdown(name="r", uri=str(tmp_path / "r"), metadata={}),
                          html_report=dsl.HTML(name="h", uri=str(tmp_path / "h"), metadata={}), val_fraction=0.34)  # fmt: skip
    code = (
        "import json, sys\n"
        "from maskpipe.steps.train import trainjob_train_step\n"
        f"trainjob_train_step('mask', {str(index_dir)!r}, {str(index_dir)!r}, {str(tmp_path / 'out' / 'model')!r}, "
        f"{str(tmp_path / 'out' / 'model')!r}, {str(tmp_path / 'out' / 'h.html')!r}, "
        f"settings=json.loads(sys.argv[1]), preset='smoke', overrides={TINY_OVERRIDES!r})\n"
    )
    settings = json.dumps(SETTINGS.trainjob_settings().to_dict())
    step = subprocess.Popen([sys.executable, "-c", code, settings], cwd=tmp_path, env={**os.environ, "PYTHONPATH": str(REPO)},
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)  # fmt: skip
    deadline = time.monotonic() + 120
    while not (started and api.trainjob_exists(NAMESPACE, started[0])) and time.monotonic() < deadline:
        assert step.poll() is None, step.stdout.read()
        time.sleep(0.2)
    time.sleep(1)
    step.send_signal(signal.SIGTERM)
    out, _ = step.communicate(timeout=60)
    assert step.returncode != 0
    assert not api.trainjob_exists(NAMESPACE, started[0]), out
    assert ("delete", f"/apis/trainer.kubeflow.org/v1alpha1/namespaces/{NAMESPACE}/trainjobs/{started[0]}") in api.requests
    assert "its TrainJob team-a/" in out and "was deleted" in out


# ---------------------------------------------------------------------------------------------
# the TrainJob itself, and the compiled spec


def cluster_settings(**changes) -> TrainJobSettings:
    options = dataclasses.replace(PipelineOptions(image="registry.local/maskpipe:sha-0"), trainer="kubeflow", **changes)
    return options.trainjob_settings()


def trainjob_body(settings: TrainJobSettings) -> dict:
    """The TrainJob the SDK sends for ``settings`` (its Kubernetes backend builds it; no API)."""
    from kubeflow.trainer.backends.kubernetes.backend import KubernetesBackend
    from kubeflow.trainer.types.types import Runtime, RuntimeKind, RuntimeTrainer, TrainerType
    from kubeflow.trainer.constants import constants

    command = train_command("age", "s3://mlpipeline/a/index/index.parquet", "s3://mlpipeline/a/trainjob-checkpoint/",
                            "default", ["train.epochs=3"], settings.gpus_per_node)  # fmt: skip
    trainer, options = trainjob_request(settings, command, "maskpipe-age-0123abcd", {"maskpipe/task": "age"})
    backend = KubernetesBackend.__new__(KubernetesBackend)  # no API: build the spec only
    job_spec: dict = {}
    for option in options:
        option(job_spec, trainer, backend)
    runtime_trainer = RuntimeTrainer(trainer_type=TrainerType.CUSTOM_TRAINER, framework="torch", image="pytorch/pytorch")
    runtime_trainer.set_command(constants.TORCH_COMMAND)
    runtime = Runtime(name="torch-distributed", kind=RuntimeKind.CLUSTER_TRAINING_RUNTIME, trainer=runtime_trainer)
    spec = backend._get_trainjob_spec(runtime=runtime, trainer=trainer, trainer_overrides=job_spec["spec"]["trainer"],
                                      runtime_patches=job_spec["spec"]["runtimePatches"],
                                      active_deadline_seconds=job_spec["spec"]["activeDeadlineSeconds"])  # fmt: skip
    return {"apiVersion": "trainer.kubeflow.org/v1alpha1", "kind": "TrainJob",
            "metadata": {"name": "maskpipe-age-0123abcd", "labels": {"maskpipe/task": "age"}}, "spec": spec.to_dict()}  # fmt: skip


@pytest.mark.parametrize("nodes,gpus", [(1, 1), (4, 8), (2, 0)])
def test_the_trainjob_of_a_cluster_compile_is_valid_under_the_trainer_crd(nodes, gpus):
    job = trainjob_body(cluster_settings(trainer_nodes=nodes, trainer_gpus=gpus, image_pull_secret="regcred"))
    assert trainjob_schema_errors(job) == []
    trainer = job["spec"]["trainer"]
    assert trainer["numNodes"] == nodes and trainer["image"] == "registry.local/maskpipe:sha-0"
    assert trainer["command"][1] == f"--nproc-per-node={max(gpus, 1)}"
    assert trainer["resourcesPerNode"]["limits"].get("nvidia.com/gpu") == (str(gpus) if gpus else None)
    container, volumes = node_container(job)
    secret_refs = {e["name"]: e["valueFrom"]["secretKeyRef"] for e in container["env"] if "valueFrom" in e}
    assert secret_refs == {"MINIO_ACCESS_KEY": {"name": "mlpipeline-minio-artifact", "key": "accesskey"},
                           "MINIO_SECRET_KEY": {"name": "mlpipeline-minio-artifact", "key": "secretkey"}}  # fmt: skip
    assert {"name": "MINIO_ENDPOINT", "value": "seaweedfs.kubeflow:9000"} in container["env"]
    assert {m["mountPath"] for m in container["volumeMounts"]} == {"/workspace", "/dev/shm"}
    assert job["spec"]["activeDeadlineSeconds"] == 24 * 3600


def test_a_trainjob_without_a_required_field_is_refused_by_the_schema():
    job = trainjob_body(cluster_settings())
    del job["spec"]["runtimeRef"]
    assert any("runtimeRef" in error for error in trainjob_schema_errors(job))


def test_artifact_uris_map_to_what_the_trainjob_pods_read():
    assert object_store_uri("minio://mlpipeline/private-artifacts/team-a/v2/artifacts/x/index", "index") == \
        "s3://mlpipeline/private-artifacts/team-a/v2/artifacts/x/index"  # fmt: skip
    assert checkpoint_uri_of("minio://mlpipeline/v2/artifacts/p/r/train-trainjob/7/model") == \
        "s3://mlpipeline/v2/artifacts/p/r/train-trainjob/7/trainjob-checkpoint/"  # fmt: skip
    from maskpipe.trainjob import TrainJobError

    with pytest.raises(TrainJobError, match="minio:// or s3://"):
        object_store_uri("gs://bucket/x/index", "index")


@pytest.fixture(scope="module")
def trainer_spec(tmp_path_factory) -> dict:
    out = tmp_path_factory.mktemp("spec") / "pipeline.yaml"
    subprocess.run([sys.executable, str(REPO / "pipeline.py"), "compile", "--trainer", "kubeflow", "--trainer-nodes", "2",
                    "--trainer-gpus", "4", "--image", "registry.local/maskpipe:sha-0", "-o", str(out)],
                   check=True, cwd=REPO, capture_output=True, text=True)  # fmt: skip
    return list(yaml.safe_load_all(out.read_text()))


def test_trainer_mode_compiles_trainjob_steps_that_request_no_gpu(trainer_spec):
    spec, platform = trainer_spec
    executors = spec["deploymentSpec"]["executors"]
    assert {"exec-train-trainjob", "exec-train-trainjob-2", "exec-train-trainjob-3"} <= set(executors)
    assert not any(label.startswith("exec-train-model") for label in executors)
    resources = executors["exec-train-trainjob"]["container"].get("resources", {})
    assert "accelerator" not in resources
    tasks = spec["root"]["dag"]["tasks"]
    trainjob = tasks["train-trainjob"]["inputs"]["parameters"]["trainjob"]["runtimeValue"]["constant"]
    assert trainjob["num_nodes"] == 2 and trainjob["gpus_per_node"] == 4
    job = trainjob_body(TrainJobSettings.from_dict(trainjob))
    assert trainjob_schema_errors(job) == []
    # the step itself still gets the store's keys from the Secret (to download the checkpoint)
    kubernetes = platform["platforms"]["kubernetes"]["deploymentSpec"]["executors"]["exec-train-trainjob"]
    assert kubernetes["secretAsEnv"][0]["secretName"] == "mlpipeline-minio-artifact"


def test_trainer_mode_executor_starts_its_function(trainer_spec, tmp_path, monkeypatch):
    """As tests/test_executors.py starts the others: its source, in the step's environment."""
    from fixtures import launcher
    from fixtures.launcher import assert_started, executors, passed_artifacts, run_executor

    spec = trainer_spec[0]
    constant = spec["root"]["dag"]["tasks"]["train-trainjob"]["inputs"]["parameters"]["trainjob"]["runtimeValue"]["constant"]
    monkeypatch.setitem(launcher.REQUIRED_VALUES, "trainjob", constant)  # the DAG's value (no default)
    container, component = executors(spec)["exec-train-trainjob"]
    result = run_executor(container, component, passed_artifacts(spec, "exec-train-trainjob"), tmp_path)
    assert_started("exec-train-trainjob", container, result.returncode, result.stdout + result.stderr)
