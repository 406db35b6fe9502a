"""One training task as a Kubeflow Trainer ``TrainJob`` (``trainer.kubeflow.org/v1alpha1``),
created and followed through the ``kubeflow`` SDK's ``TrainerClient`` (PyPI ``kubeflow`` 0.5).

The job runs the ``torch-distributed`` runtime with ``num_nodes`` nodes of the project image,
each node ``torchrun --nproc-per-node=<GPUs> -m maskpipe train ...``: the same command line the
in-pod training step runs, reading the index from the run's object store and mirroring its
checkpoint folder (rank 0 writes it) to ``checkpoint_uri`` with ``--resume-uri``. The MinIO /
S3 keys come from the Secret the pipeline's steps use (``secretKeyRef`` through a runtime
patch), never as values. The step that created the job streams node 0's log into its own,
waits for a ``Complete`` or ``Failed`` condition, fails with the TrainJob's own condition
message, and deletes the job when it is itself stopped (SIGTERM, as Kubernetes stops a pod).

The TrainJob's ``status.conditions`` (the failure's reason and message) and its disappearance
are read from the Kubernetes API directly (``CustomObjectsApi``): the SDK's ``TrainJob`` carries
only a status word. Checked against kubeflow 0.5.0 and Trainer v2.3.0.
"""

from __future__ import annotations

import logging
import os
import signal
import threading
import time
import uuid
from dataclasses import asdict, dataclass, fields
from pathlib import PurePosixPath
from typing import Any, Callable, Dict, List, Optional, Sequence

from maskpipe.errors import MaskpipeError

log = logging.getLogger(__name__)

GROUP, VERSION, PLURAL = "trainer.kubeflow.org", "v1alpha1", "trainjobs"
RUNTIME = "torch-distributed"
# The trainer container of the torch-distributed runtime (and of every Trainer runtime).
NODE_CONTAINER = "node"
# An emptyDir in each node: the checkpoint folder and the s3:// image cache (the image's own
# WORKDIR is root's, and its user is 1001).
WORK_MOUNT = "/workspace"
TRAINER_RBAC = "k8s/trainer/trainjob-role.yaml"


class TrainJobError(MaskpipeError):
    """The TrainJob could not be created, failed, or vanished before it finished."""


@dataclass(frozen=True)
class TrainJobSettings:
    """How each training TrainJob is shaped: compile-time settings of the pipeline (secret
    names and keys, never their values)."""

    image: str
    num_nodes: int = 1
    gpus_per_node: int = 1
    gpu_type: str = "nvidia.com/gpu"
    cpu_per_node: str = "8"
    memory_per_node: str = "32Gi"
    shm_size: str = "8Gi"
    timeout_s: int = 24 * 3600
    secret_name: str = "mlpipeline-minio-artifact"
    access_key_key: str = "accesskey"
    secret_key_key: str = "secretkey"
    endpoint_secret_key: str = ""
    minio_endpoint: str = ""
    minio_secure: bool = False
    image_pull_secret: str = ""
    namespace: str = ""  # empty: the namespace the step runs in
    poll_s: float = 5.0

    def to_dict(self) -> Dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, values: Dict[str, Any]) -> "TrainJobSettings":
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise TrainJobError(f"unknown TrainJob setting(s) {', '.join(unknown)}; known: {', '.join(sorted(known))}")
        if not values.get("image"):
            raise TrainJobError("the TrainJob settings name no image; compile with --trainer kubeflow --image REPOSITORY:TAG")
        # A KFP struct parameter arrives as JSON, where 86400 may come back as 86400.0.
        kinds = {f.name: f.type for f in fields(cls)}
        settings = cls(**{k: int(v) if kinds[k] == "int" else v for k, v in values.items()})
        if settings.num_nodes < 1 or settings.gpus_per_node < 0:
            raise TrainJobError(
                f"a TrainJob needs num_nodes >= 1 and gpus_per_node >= 0, got {settings.num_nodes} and "
                f"{settings.gpus_per_node}; pass --trainer-nodes M --gpus-per-task N"
            )
        return settings


def object_store_uri(artifact_uri: str, what: str) -> str:
    """A KFP artifact URI as the TrainJob's pods reach it: ``minio://b/k`` -> ``s3://b/k`` (the
    same objects on the same endpoint), ``s3://`` as it is, a local path (kfp.local) as it is."""
    if artifact_uri.startswith("/"):
        return artifact_uri.rstrip("/")
    for scheme in ("minio://", "s3://"):
        if artifact_uri.startswith(scheme) and "/" in artifact_uri[len(scheme):].strip("/"):
            return "s3://" + artifact_uri[len(scheme):].strip("/")
    raise TrainJobError(
        f"the {what} artifact is at {artifact_uri!r}, which a TrainJob's pods cannot read: the Trainer "
        "mode needs the pipeline root in the S3 store (minio:// or s3://), as KFP's default is"
    )


def checkpoint_uri_of(model_uri: str) -> str:
    """Where the TrainJob's rank 0 mirrors its checkpoint folder: ``trainjob-checkpoint/`` beside
    the step's own outputs (inside the run's prefix, which a profile's keys may write)."""
    base = object_store_uri(model_uri, "model")
    parent = str(PurePosixPath(base.split("://", 1)[-1]).parent)
    return ("s3://" if base.startswith("s3://") else "") + f"{parent}/trainjob-checkpoint/"


def node_command(task: str, index_uri: str, checkpoint_uri: str, preset: str, overrides: Sequence[str],
                  nproc_per_node: int) -> List[str]:  # fmt: skip
    """The node's command: ``maskpipe train`` under torchrun (the runtime sets ``PET_NNODES``,
    ``PET_NODE_RANK``, ``PET_MASTER_ADDR`` and ``PET_MASTER_PORT``, which torchrun reads)."""
    prefix = ["torchrun", f"--nproc-per-node={max(1, nproc_per_node)}", "-m", "maskpipe"]
    return prefix + train_arguments(task, index_uri, checkpoint_uri, preset, overrides)


def train_arguments(task: str, index_uri: str, checkpoint_uri: str, preset: str, overrides: Sequence[str]) -> List[str]:
    """``train ...``: the arguments of ``maskpipe`` on every node of a TrainJob (checkpoint and
    image cache under ``/workspace``, the checkpoint mirrored to ``checkpoint_uri``)."""
    arguments = [
        "train", "--task", task, "--index", index_uri, "--out", f"{WORK_MOUNT}/checkpoint",
        "--resume-uri", checkpoint_uri, "--cache-dir", f"{WORK_MOUNT}/cache", "--preset", preset,
    ]  # fmt: skip
    for setting in overrides:
        arguments += ["--set", setting]
    return arguments


def node_env(settings: TrainJobSettings) -> tuple[Dict[str, str], List[Dict[str, Any]]]:
    """(plain variables, ``secretKeyRef`` variables) of each node, as the pipeline's steps get them."""
    plain = {"MINIO_SECURE": "true" if settings.minio_secure else "false", "MASKPIPE_PROGRESS": "0"}
    refs = {settings.access_key_key: "MINIO_ACCESS_KEY", settings.secret_key_key: "MINIO_SECRET_KEY"}
    if settings.endpoint_secret_key:
        refs[settings.endpoint_secret_key] = "MINIO_ENDPOINT"
    elif settings.minio_endpoint:
        plain["MINIO_ENDPOINT"] = settings.minio_endpoint
    from_secret = [
        {"name": env, "valueFrom": {"secretKeyRef": {"name": settings.secret_name, "key": key}}}
        for key, env in refs.items()
    ]
    return plain, from_secret


def trainjob_request(settings: TrainJobSettings, command: List[str], name: str, labels: Dict[str, str]):
    """(trainer, options) for ``TrainerClient.train``: the whole TrainJob but its runtime."""
    from kubeflow.trainer import CustomTrainerContainer
    from kubeflow.trainer.options import (
        ActiveDeadlineSeconds, ContainerPatch, JobSetSpecPatch, JobSetTemplatePatch, JobSpecPatch,
        JobTemplatePatch, Labels, Name, PodSpecPatch, PodTemplatePatch, ReplicatedJobPatch,
        RuntimePatch, TrainerCommand, TrainingRuntimeSpecPatch,
    )  # fmt: skip

    resources: Dict[str, Any] = {"cpu": settings.cpu_per_node, "memory": settings.memory_per_node}
    if settings.gpus_per_node > 0:  # a string: the SDK would send the number 1 as 1.0
        resources[settings.gpu_type] = str(settings.gpus_per_node)
    plain, from_secret = node_env(settings)
    trainer = CustomTrainerContainer(
        image=settings.image, num_nodes=settings.num_nodes, resources_per_node=resources, env=plain
    )
    volumes = [
        {"name": "maskpipe-work", "emptyDir": {}},
        # DataLoader workers share batches through /dev/shm; the container default is 64 MiB.
        {"name": "dshm", "emptyDir": {"medium": "Memory", "sizeLimit": settings.shm_size}},
    ]
    mounts = [{"name": "maskpipe-work", "mountPath": WORK_MOUNT}, {"name": "dshm", "mountPath": "/dev/shm"}]
    pod = PodSpecPatch(
        volumes=volumes,
        containers=[ContainerPatch(name=NODE_CONTAINER, env=from_secret, volume_mounts=mounts)],
        image_pull_secrets=[{"name": settings.image_pull_secret}] if settings.image_pull_secret else None,
    )
    node = ReplicatedJobPatch(
        name=NODE_CONTAINER, template=JobTemplatePatch(spec=JobSpecPatch(template=PodTemplatePatch(spec=pod)))
    )
    patch = RuntimePatch(training_runtime_spec=TrainingRuntimeSpecPatch(
        template=JobSetTemplatePatch(spec=JobSetSpecPatch(replicated_jobs=[node]))
    ))  # fmt: skip
    options = [Name(name), Labels(labels), TrainerCommand(command), patch, ActiveDeadlineSeconds(settings.timeout_s)]
    return trainer, options


def new_job_name(task: str) -> str:
    """``maskpipe-<task>-<8 hex>``: short enough for the JobSet's pod and Service names."""
    return f"maskpipe-{task}-{uuid.uuid4().hex[:8]}"


# ------------------------------------------------------------ the SDK's local backends
# ``TrainerClient(backend_config=ContainerBackendConfig(...))`` or ``LocalProcessBackendConfig()``
# run a TrainJob on this machine. Both take only a ``CustomTrainer`` (a Python function whose
# source the SDK ships to each node and runs under its own torchrun); :func:`run_maskpipe` is
# that function for ``maskpipe <arguments>``. Checked against kubeflow 0.5.0 (docs/training.md).


def run_maskpipe(argv):
    """``maskpipe <argv>`` on one node of a local TrainJob, in the process the backend's torchrun
    started (RANK, WORLD_SIZE, ... set). The SDK runs this function's source alone, so it
    imports what it needs here."""
    import sys

    from maskpipe.cli import main

    # The container backend calls it with func_args as keywords, the local process backend
    # with the func_args dict as its one argument (kubeflow 0.5.0).
    if isinstance(argv, dict):
        argv = argv["argv"]
    code = main([str(a) for a in argv])
    if code:
        sys.exit(code)


def container_trainer(argv: Sequence[str], *, image: str, num_nodes: int, env: Optional[Dict[str, str]] = None):
    """The ``CustomTrainer`` of ``maskpipe <argv>`` for the SDK's container backend: ``num_nodes``
    containers of ``image`` on one network, one process each (the backend's torchrun)."""
    from kubeflow.trainer import CustomTrainer

    return CustomTrainer(func=run_maskpipe, func_args={"argv": list(argv)}, image=image, num_nodes=num_nodes, env=dict(env or {}))


def process_trainer(argv: Sequence[str], *, requirement: str, processes: int = 1, env: Optional[Dict[str, str]] = None):
    """The ``CustomTrainer`` of ``maskpipe <argv>`` for the SDK's local process backend:
    ``processes`` ranks on this machine, after pip installs ``requirement`` (``maskpipe==X`` or
    ``maskpipe @ file:///path/to/checkout``) with all its dependencies into the job's venv.

    That backend makes a bare venv per job and runs ``<venv>/bin/torchrun`` with the trainer's
    ``env`` as the whole environment (kubeflow 0.5.0: localprocess/utils.py 140-146 and
    259-303, constants.py LOCAL_EXEC_JOB_TEMPLATE, job.py 382-390), so nothing of this
    environment is reused: the venv holds torch with its CUDA libraries, about 6 GB. The job
    gets this process's environment less ``PYTHONPATH`` (on it, the venv's ensurepip finds this
    environment's pip, installs none, and the job's ``pip install`` runs another environment's
    pip into that one); torchrun reads the rank count from ``PET_NPROC_PER_NODE``, as Trainer's
    torch runtime passes it."""
    from kubeflow.trainer import CustomTrainer

    job_env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV")}
    job_env.update({"PET_NPROC_PER_NODE": str(processes), "PET_STANDALONE": "1", "PIP_NO_COMPILE": "1"})
    job_env.update(env or {})
    return CustomTrainer(func=run_maskpipe, func_args={"argv": list(argv)}, packages_to_install=[requirement], env=job_env)


class TrainJobRun:
    """Create one TrainJob and follow it to its end (``run``), with the SDK's Kubernetes backend
    on the kubeconfig (``$KUBECONFIG``) or, in a pod, its ServiceAccount."""

    def __init__(self, settings: TrainJobSettings, *, echo: Callable[[str], None] = print) -> None:
        from kubeflow.common.types import KubernetesBackendConfig
        from kubeflow.trainer import TrainerClient
        from kubernetes import client

        from maskpipe.deploy import current_namespace, kubeconfig_path

        self.settings, self.echo = settings, echo
        self.namespace = settings.namespace or current_namespace()
        config_file = None if _in_pod() else kubeconfig_path()
        self.trainer = TrainerClient(KubernetesBackendConfig(namespace=self.namespace, config_file=config_file))
        # The SDK loaded the kubeconfig (or the pod's ServiceAccount) as the default configuration.
        self.api = client.CustomObjectsApi()
        self.name: Optional[str] = None
        self._logs: Optional[threading.Thread] = None

    def run(self, command: List[str], name: str, labels: Dict[str, str]) -> dict:
        """Create the TrainJob, stream node 0's log, return the finished TrainJob object; a
        Failed or vanished TrainJob raises TrainJobError, SIGTERM deletes it first."""
        trainer, options = trainjob_request(self.settings, command, name, labels)
        previous = signal.signal(signal.SIGTERM, _raise_stopped) if _main_thread() else None
        try:
            runtime = self._sdk("get the runtime", self.trainer.get_runtime, RUNTIME)
            self.name = self._sdk("create", self.trainer.train, runtime=runtime, trainer=trainer, options=options)
            self.echo(f"TrainJob {self.namespace}/{self.name}: {self.settings.num_nodes} node(s) x "
                      f"{self.settings.gpus_per_node} GPU(s), image {self.settings.image}")  # fmt: skip
            return self._follow()
        except _Stopped:
            self.delete("the step was stopped (SIGTERM)")
            raise TrainJobError(f"the training step was stopped; its TrainJob {self.namespace}/{self.name} was deleted") from None
        finally:
            if previous is not None:
                signal.signal(signal.SIGTERM, previous)

    def delete(self, why: str) -> None:
        if self.name is None:
            return
        self.echo(f"deleting TrainJob {self.namespace}/{self.name}: {why}")
        try:
            self.trainer.delete_job(self.name)
        except RuntimeError as exc:
            log.warning("could not delete TrainJob %s/%s: %s", self.namespace, self.name, _cause(exc))

    def _follow(self) -> dict:
        while True:
            job = self._read()
            condition = finished_condition(job)
            if condition is not None:
                self._join_logs()
                if condition["type"] == "Failed":
                    raise TrainJobError(
                        f"TrainJob {self.namespace}/{self.name} failed: {condition.get('reason', 'Failed')}: "
                        f"{condition.get('message') or '(no message)'}"
                    )
                self.echo(f"TrainJob {self.namespace}/{self.name} completed")
                return job
            if self._logs is None:
                self._start_logs()
            time.sleep(self.settings.poll_s)

    def _read(self) -> dict:
        from kubernetes.client.rest import ApiException

        try:
            return self.api.get_namespaced_custom_object(GROUP, VERSION, self.namespace, PLURAL, self.name)
        except ApiException as exc:
            if exc.status == 404:
                raise TrainJobError(
                    f"TrainJob {self.namespace}/{self.name} was deleted before it finished (by a person "
                    "or a controller); the training step cannot publish a model. Rerun the step"
                ) from None
            raise TrainJobError(f"cannot read TrainJob {self.namespace}/{self.name}: {exc.status} {_api_message(exc)}") from None

    def _start_logs(self) -> None:
        steps = self._sdk("read the nodes of", self.trainer.get_job, self.name).steps
        if not any(s.name == "node-0" and s.status not in (None, "Pending") for s in steps):
            return

        def stream() -> None:
            try:
                for line in self.trainer.get_job_logs(self.name, step="node-0", follow=True):
                    self.echo(f"[node-0] {line}")
            except RuntimeError as exc:  # the pod went away; the status says why
                log.warning("log of TrainJob %s node-0 ended: %s", self.name, _cause(exc))

        self._logs = threading.Thread(target=stream, name=f"logs-{self.name}", daemon=True)
        self._logs.start()

    def _join_logs(self) -> None:
        if self._logs is None:  # finished between two polls: the whole log at once
            try:
                for line in self.trainer.get_job_logs(self.name, step="node-0"):
                    self.echo(f"[node-0] {line}")
            except RuntimeError as exc:
                log.warning("no log of TrainJob %s node-0: %s", self.name, _cause(exc))
        else:
            self._logs.join(timeout=60)

    def _sdk(self, verb: str, method, *args, **kwargs):
        """One SDK call; its RuntimeError (the API's refusal in ``__cause__``) as one line."""
        try:
            return method(*args, **kwargs)
        except (RuntimeError, TimeoutError) as exc:
            reason = _cause(exc)
            hint = ""
            if "403" in reason or "Forbidden" in reason:
                hint = (f"; let the step's ServiceAccount use TrainJobs in {self.namespace!r}: apply "
                        f"{TRAINER_RBAC} (kubectl apply -k k8s/overlays/profile)")  # fmt: skip
            elif "404" in reason and verb == "get the runtime":
                hint = "; install Kubeflow Trainer v2 with its torch-distributed ClusterTrainingRuntime"
            target = RUNTIME if verb == "get the runtime" else (self.name or "a TrainJob")
            raise TrainJobError(f"cannot {verb} {target} in {self.namespace!r}: {reason}{hint}") from None


def finished_condition(job: dict) -> Optional[dict]:
    """The TrainJob's ``Complete`` or ``Failed`` condition with status True, or None."""
    for condition in (job.get("status") or {}).get("conditions") or []:
        if condition.get("type") in ("Complete", "Failed") and condition.get("status") == "True":
            return condition
    return None


class _Stopped(BaseException):
    """SIGTERM arrived (BaseException: no ``except Exception`` on the way swallows it)."""


def _raise_stopped(signum, frame) -> None:
    raise _Stopped()


def _main_thread() -> bool:
    return threading.current_thread() is threading.main_thread()


def _in_pod() -> bool:
    from maskpipe.deploy import POD_NAMESPACE_FILE

    return POD_NAMESPACE_FILE.is_file()


def _cause(exc: BaseException) -> str:
    """The SDK's message and, when it wraps one, the API's own answer."""
    from kubernetes.client.rest import ApiException

    inner = exc.__cause__ or exc.__context__
    if isinstance(inner, ApiException):
        return f"{exc} ({inner.status} {_api_message(inner)})"
    return f"{exc} ({inner})" if inner is not None else str(exc)


def _api_message(api: Any) -> str:
    from maskpipe.deploy import api_message  # the deploy step reads the API's Status body alike

    return api_message(api)
