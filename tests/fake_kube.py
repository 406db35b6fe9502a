"""A Kubernetes API on loopback that answers the calls the deploy step makes, for tests.

It serves KServe's ``serving.kserve.io/v1beta1`` InferenceServices in any namespace: GET one
(``get``), POST (``create``) and PUT (``replace``, which the kubernetes client sends as
``update``), with the API server's rules for what they touch: ``metadata.uid``,
``resourceVersion`` (a PUT must carry the current one: missing is 422, stale is 409),
``generation`` (1 on create, +1 when a PUT changes the spec), ``status`` kept on PUT (KServe's
CRD has a status subresource), the namespace of the URL matching the object's, a bearer token
(401 without it). Refusals are the API server's ``Status`` objects: 404 NotFound for a missing
object (``details.name`` set) or, with ``kserve_installed=False``, for the resource itself,
409 AlreadyExists / Conflict, 403 Forbidden for a verb listed in ``forbidden`` (with the
RBAC authorizer's message). Any other method or path is 405 / 404, so an unexpected call
fails the test instead of passing unseen.

No controller runs: the test plays KServe's, through ``on_write`` (called after each create
or replace with the stored object) and ``set_status`` / ``mark_ready``.

It also answers what the ``kubeflow`` SDK's TrainerClient (0.5) calls for Kubeflow Trainer
v2.3: the ``kubeflow-trainer-public`` ConfigMap, namespaced ``trainingruntimes`` (none: 404)
and the ``torch-distributed`` ``clustertrainingruntimes`` (Trainer's own manifest, vendored in
tests/data/trainer-v2.3.0), ``trainjobs`` (create, get, list, delete; a create is checked
against the vendored CRD's openAPIV3Schema, 422 Invalid as the API server answers), the pods
of a TrainJob's nodes (list by the JobSet labels) and their ``log`` (``follow=true`` streams
until the pod ends). No Trainer controller runs: ``on_trainjob`` (called in its own thread with
each created TrainJob) plays it, e.g. with :func:`run_trainjob_locally`, which runs each node's
command on this machine as the kubelet would run it in the image.
"""

from __future__ import annotations

import copy
import json
import os
import re
import socket
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, Callable, Iterator, Optional
from urllib.parse import parse_qs, urlsplit

GROUP, VERSION, PLURAL = "serving.kserve.io", "v1beta1", "inferenceservices"
_PATH = re.compile(rf"^/apis/{GROUP}/{VERSION}/namespaces/(?P<ns>[^/]+)/{PLURAL}(?:/(?P<name>[^/?]+))?/?(?:\?.*)?$")
_VERBS = {"GET": "get", "POST": "create", "PUT": "update"}


class FakeKubeAPI:
    """``with FakeKubeAPI() as api:`` a server on 127.0.0.1; ``api.write_kubeconfig(path)``."""

    def __init__(self, *, token: str = "fake-token-for-tests", user: str = "system:serviceaccount:team-a:default-editor",
                 kserve_installed: bool = True) -> None:  # fmt: skip
        self.token, self.user, self.kserve_installed = token, user, kserve_installed
        self.objects: dict[tuple[str, str], dict] = {}
        self.requests: list[tuple[str, str]] = []  # (verb, path) of every request, in order
        self.forbidden: set[str] = set()  # verbs (get, create, update) answered 403
        self.on_write: Optional[Callable[[dict], None]] = None
        # Kubeflow Trainer's side: TrainJobs, their nodes' pods and logs, Secrets for their env.
        self.trainer_installed = True
        self.trainjobs: dict[tuple[str, str], dict] = {}
        self.pods: dict[tuple[str, str], dict] = {}
        self.pod_logs: dict[tuple[str, str], list[str]] = {}
        self.secrets: dict[tuple[str, str], dict[str, str]] = {}
        self.on_trainjob: Optional[Callable[["FakeKubeAPI", str, dict], None]] = None
        self.trainjob_threads: list[threading.Thread] = []
        self._changed = threading.Condition()
        self._lock = threading.Lock()
        self._version = 100
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), _handler_for(self))
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    def __enter__(self) -> "FakeKubeAPI":
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.shutdown()
        self._server.server_close()

    def write_kubeconfig(self, path: Path, namespace: Optional[str] = "team-a") -> Path:
        """A kubeconfig (JSON is YAML) whose current context points at this server."""
        context: dict[str, Any] = {"cluster": "fake", "user": "tester"}
        if namespace:
            context["namespace"] = namespace
        config = {
            "apiVersion": "v1", "kind": "Config", "current-context": "fake",
            "clusters": [{"name": "fake", "cluster": {"server": self.url}}],
            "users": [{"name": "tester", "user": {"token": self.token}}],
            "contexts": [{"name": "fake", "context": context}],
        }  # fmt: skip
        Path(path).write_text(json.dumps(config))
        return Path(path)

    # -- the test's side (KServe's controller) ---------------------------------------------------

    def put_object(self, namespace: str, obj: dict) -> dict:
        """Store ``obj`` as if created earlier (generation 1), without calling ``on_write``."""
        with self._lock:
            stored = self._new_object(namespace, copy.deepcopy(obj))
            self.objects[(namespace, stored["metadata"]["name"])] = stored
            return copy.deepcopy(stored)

    def set_status(self, namespace: str, name: str, status: dict) -> None:
        with self._lock:
            stored = self.objects[(namespace, name)]
            stored["status"] = copy.deepcopy(status)
            stored["metadata"]["resourceVersion"] = self._next_version()

    def mark_ready(self, namespace: str, name: str, url: str, generation: Optional[int] = None) -> None:
        """Ready=True at ``generation`` (default: the object's current one), serving ``url``."""
        with self._lock:
            generation = generation or self.objects[(namespace, name)]["metadata"]["generation"]
        ready = {"type": "Ready", "status": "True", "lastTransitionTime": "2026-12-01T00:00:00Z"}
        self.set_status(namespace, name, {
            "observedGeneration": generation, "url": url, "address": {"url": url},
            "conditions": [{**ready, "type": "PredictorReady"}, ready],
        })  # fmt: skip

    def get_object(self, namespace: str, name: str) -> dict:
        with self._lock:
            return copy.deepcopy(self.objects[(namespace, name)])

    # -- the API's side ---------------------------------------------------------------------------

    def handle(self, method: str, path: str, headers: Any, body: bytes) -> tuple[int, Any]:
        verb = _VERBS.get(method)
        if _TRAINER_PATHS.match(urlsplit(path).path):
            verb = _TRAINER_VERBS.get(method)
            self.requests.append((verb or method, path))
            if headers.get("Authorization") != f"Bearer {self.token}":
                return _status(401, "Unauthorized", "Unauthorized")
            return self._trainer(method, path, body)
        self.requests.append((verb or method, path))
        if headers.get("Authorization") != f"Bearer {self.token}":
            return _status(401, "Unauthorized", "Unauthorized")
        match = _PATH.match(path)
        if not match or not self.kserve_installed:
            return _status(404, "NotFound", "the server could not find the requested resource")
        namespace, name = match["ns"], match["name"]
        if verb is None or (verb == "create") != (name is None):
            return _status(405, "MethodNotAllowed", f"{method} is not supported here by the fake API")
        obj = None
        if body:
            obj = json.loads(body)
            name = name or (obj.get("metadata") or {}).get("name")
        if verb in self.forbidden:
            subject = f'{PLURAL}.{GROUP} "{name}"' if verb != "create" else f"{PLURAL}.{GROUP}"
            return _status(403, "Forbidden", (
                f'{subject} is forbidden: User "{self.user}" cannot {verb} resource "{PLURAL}" in API group '
                f'"{GROUP}" in the namespace "{namespace}"'
            ), name=name)  # fmt: skip
        with self._lock:
            if verb == "get":
                return self._get(namespace, name)
            if verb == "create":
                answer = self._create(namespace, obj)
            else:
                answer = self._replace(namespace, name, obj)
        if answer[0] < 300 and self.on_write is not None:
            self.on_write(copy.deepcopy(answer[1]))
        return answer

    def _get(self, namespace: str, name: str) -> tuple[int, dict]:
        if (namespace, name) not in self.objects:
            return _not_found(name)
        return 200, copy.deepcopy(self.objects[(namespace, name)])

    def _create(self, namespace: str, obj: dict) -> tuple[int, dict]:
        meta = obj.setdefault("metadata", {})
        if meta.get("namespace", namespace) != namespace:
            return _status(400, "BadRequest", "the namespace of the provided object does not match the namespace sent on the request")
        if (namespace, meta.get("name")) in self.objects:
            return _status(409, "AlreadyExists", f'{PLURAL}.{GROUP} "{meta["name"]}" already exists', name=meta["name"])
        stored = self._new_object(namespace, obj)
        self.objects[(namespace, meta["name"])] = stored
        return 201, copy.deepcopy(stored)

    def _replace(self, namespace: str, name: str, obj: dict) -> tuple[int, dict]:
        if (namespace, name) not in self.objects:
            return _not_found(name)
        stored = self.objects[(namespace, name)]
        sent_version = (obj.get("metadata") or {}).get("resourceVersion")
        if not sent_version:
            return _status(422, "Invalid", f'{PLURAL}.{GROUP} "{name}" is invalid: metadata.resourceVersion: '
                           "Invalid value: 0x0: must be specified for an update", name=name)  # fmt: skip
        if sent_version != stored["metadata"]["resourceVersion"]:
            return _status(409, "Conflict", f'Operation cannot be fulfilled on {PLURAL}.{GROUP} "{name}": the object '
                           "has been modified; please apply your changes to the latest version and try again", name=name)  # fmt: skip
        replaced = copy.deepcopy(obj)
        replaced["metadata"] = {**replaced["metadata"], **{k: stored["metadata"][k] for k in ("uid", "creationTimestamp")}}
        replaced["metadata"]["namespace"] = namespace
        changed = replaced.get("spec") != stored.get("spec")
        replaced["metadata"]["generation"] = stored["metadata"]["generation"] + (1 if changed else 0)
        replaced["metadata"]["resourceVersion"] = self._next_version()
        replaced.pop("status", None)
        if "status" in stored:
            replaced["status"] = stored["status"]
        self.objects[(namespace, name)] = replaced
        return 200, copy.deepcopy(replaced)

    def _new_object(self, namespace: str, obj: dict) -> dict:
        obj.pop("status", None)
        obj["metadata"].update(
            namespace=namespace, uid=str(uuid.uuid4()), generation=1, resourceVersion=self._next_version(),
            creationTimestamp="2026-12-01T00:00:00Z",
        )  # fmt: skip
        return obj

    def _next_version(self) -> str:
        self._version += 1
        return str(self._version)

    # -- Kubeflow Trainer: the API's side ---------------------------------------------------------

    def _trainer(self, method: str, path: str, body: bytes) -> tuple[int, Any]:
        url = urlsplit(path)
        query = {k: v[0] for k, v in parse_qs(url.query).items()}
        route = url.path.rstrip("/")
        if method == "GET" and route == f"/api/v1/namespaces/kubeflow-system/configmaps/{TRAINER_CONFIGMAP}":
            if not self.trainer_installed:
                return _status(404, "NotFound", f'configmaps "{TRAINER_CONFIGMAP}" not found', name=TRAINER_CONFIGMAP)
            return 200, {"apiVersion": "v1", "kind": "ConfigMap", "data": {"kubeflow_trainer_version": "v2.3.0"},
                         "metadata": {"name": TRAINER_CONFIGMAP, "namespace": "kubeflow-system"}}  # fmt: skip
        if not self.trainer_installed and route.startswith(f"/apis/{TRAINER_GROUP}/"):
            return _status(404, "NotFound", "the server could not find the requested resource")
        match = re.match(rf"^/apis/{TRAINER_GROUP}/{TRAINER_VERSION}/namespaces/[^/]+/trainingruntimes/(?P<name>[^/]+)$", route)
        if match and method == "GET":
            return _status(404, "NotFound", f'trainingruntimes.{TRAINER_GROUP} "{match["name"]}" not found', name=match["name"])
        match = re.match(rf"^/apis/{TRAINER_GROUP}/{TRAINER_VERSION}/clustertrainingruntimes/(?P<name>[^/]+)$", route)
        if match and method == "GET":
            runtime = torch_distributed_runtime()
            if match["name"] != runtime["metadata"]["name"]:
                return _status(404, "NotFound", f'clustertrainingruntimes.{TRAINER_GROUP} "{match["name"]}" not found', name=match["name"])
            return 200, runtime
        match = re.match(rf"^/apis/{TRAINER_GROUP}/{TRAINER_VERSION}/namespaces/(?P<ns>[^/]+)/trainjobs(?:/(?P<name>[^/]+))?$", route)
        if match:
            return self._trainjobs(method, match["ns"], match["name"], body)
        match = re.match(r"^/api/v1/namespaces/(?P<ns>[^/]+)/pods$", route)
        if match and method == "GET":
            return 200, self._list_pods(match["ns"], query.get("labelSelector", ""))
        match = re.match(r"^/api/v1/namespaces/(?P<ns>[^/]+)/pods/(?P<name>[^/]+)/log$", route)
        if match and method == "GET":
            key = (match["ns"], match["name"])
            if key not in self.pods:
                return _status(404, "NotFound", f'pods "{key[1]}" not found', name=key[1])
            if query.get("follow", "").lower() == "true":  # Go's ParseBool: the client sends "True"
                return 200, _Stream(self._follow_log(key))
            with self._lock:
                return 200, _Text("".join(line + "\n" for line in self.pod_logs[key]))
        return _status(405, "MethodNotAllowed", f"{method} {route} is not supported by the fake API")

    def _trainjobs(self, method: str, namespace: str, name: Optional[str], body: bytes) -> tuple[int, Any]:
        if method == "POST" and name is None:
            job = json.loads(body)
            errors = trainjob_schema_errors(job)
            job_name = (job.get("metadata") or {}).get("name")
            if errors:
                return _status(422, "Invalid", f'TrainJob.{TRAINER_GROUP} "{job_name}" is invalid: ' + "; ".join(errors), name=job_name)
            if "create" in self.forbidden:
                return _status(403, "Forbidden", (
                    f'trainjobs.{TRAINER_GROUP} is forbidden: User "{self.user}" cannot create resource "trainjobs" '
                    f'in API group "{TRAINER_GROUP}" in the namespace "{namespace}"'
                ))  # fmt: skip
            with self._lock:
                if (namespace, job_name) in self.trainjobs:
                    return _status(409, "AlreadyExists", f'trainjobs.{TRAINER_GROUP} "{job_name}" already exists', name=job_name)
                stored = self._new_object(namespace, job)
                self.trainjobs[(namespace, job_name)] = stored
            if self.on_trainjob is not None:
                thread = threading.Thread(target=self.on_trainjob, args=(self, namespace, copy.deepcopy(stored)), daemon=True)
                self.trainjob_threads.append(thread)
                thread.start()
            return 201, copy.deepcopy(stored)
        if method == "GET" and name is None:
            with self._lock:
                items = [copy.deepcopy(j) for (ns, _), j in sorted(self.trainjobs.items()) if ns == namespace]
            return 200, {"apiVersion": f"{TRAINER_GROUP}/{TRAINER_VERSION}", "kind": "TrainJobList",
                         "metadata": {"resourceVersion": str(self._version)}, "items": items}  # fmt: skip
        with self._lock:
            if (namespace, name) not in self.trainjobs:
                return _status(404, "NotFound", f'trainjobs.{TRAINER_GROUP} "{name}" not found', name=name)
            if method == "GET":
                return 200, copy.deepcopy(self.trainjobs[(namespace, name)])
            if method == "DELETE":
                self.trainjobs.pop((namespace, name))
                # The JobSet and its pods go with it (owner references).
                for key in [k for k, p in self.pods.items() if k[0] == namespace and _jobset_of(p) == name]:
                    self.pods[key]["metadata"]["deletionTimestamp"] = "2026-12-01T00:00:01Z"
                    self.pods[key]["status"]["phase"] = "Failed"
                with self._changed:
                    self._changed.notify_all()
                return 200, {"kind": "Status", "apiVersion": "v1", "status": "Success", "details": {"name": name}}
        return _status(405, "MethodNotAllowed", f"{method} is not supported on trainjobs by the fake API")

    def _list_pods(self, namespace: str, selector: str) -> dict:
        wanted = re.match(r"^jobset\.sigs\.k8s\.io/jobset-name=(?P<name>[^,]+)", selector)
        with self._lock:
            items = [copy.deepcopy(p) for (ns, _), p in sorted(self.pods.items())
                     if ns == namespace and "deletionTimestamp" not in p["metadata"]
                     and (wanted is None or _jobset_of(p) == wanted["name"])]  # fmt: skip
        return {"apiVersion": "v1", "kind": "PodList", "metadata": {}, "items": items}

    def _follow_log(self, key: tuple[str, str]) -> Iterator[bytes]:
        sent = 0
        while True:
            with self._changed:
                lines = self.pod_logs.get(key, [])
                new, sent = lines[sent:], len(lines)
                done = self.pods.get(key, {}).get("status", {}).get("phase") in ("Succeeded", "Failed")
                if not new and not done:
                    self._changed.wait(timeout=1)
            for line in new:
                yield (line + "\n").encode()
            if done and not new:
                return

    # -- Kubeflow Trainer: the controller's side (the test's) -------------------------------------

    def add_secret(self, namespace: str, name: str, data: dict[str, str]) -> None:
        self.secrets[(namespace, name)] = dict(data)

    def set_trainjob_condition(self, namespace: str, name: str, type_: str, reason: str, message: str) -> None:
        """Add the condition ``type_`` (Complete or Failed) with status True, as Trainer does."""
        with self._lock:
            job = self.trainjobs.get((namespace, name))
            if job is None:
                return
            conditions = job.setdefault("status", {}).setdefault("conditions", [])
            conditions.append({"type": type_, "status": "True", "reason": reason, "message": message,
                               "lastTransitionTime": "2026-12-01T00:00:02Z"})  # fmt: skip
            job["metadata"]["resourceVersion"] = self._next_version()

    def delete_trainjob(self, namespace: str, name: str) -> None:
        self._trainjobs("DELETE", namespace, name, b"")

    def add_node_pod(self, namespace: str, job: dict, index: int, container: dict) -> tuple[str, str]:
        """The pod of node ``index`` of ``job``, Running, labelled as JobSet labels it."""
        name = job["metadata"]["name"]
        pod_name = f"{name}-node-0-{index}-{uuid.uuid4().hex[:5]}"
        pod = {
            "apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": pod_name, "namespace": namespace, "creationTimestamp": "2026-12-01T00:00:01Z",
                         "labels": {"jobset.sigs.k8s.io/jobset-name": name, "jobset.sigs.k8s.io/replicatedjob-name": "node",
                                    "batch.kubernetes.io/job-completion-index": str(index),
                                    "trainer.kubeflow.org/trainjob-ancestor-step": "trainer"}},
            "spec": {"containers": [container]},
            "status": {"phase": "Running"},
        }  # fmt: skip
        with self._lock:
            self.pods[(namespace, pod_name)] = pod
            self.pod_logs[(namespace, pod_name)] = []
        return namespace, pod_name

    def append_log(self, pod: tuple[str, str], line: str) -> None:
        with self._changed:
            self.pod_logs[pod].append(line)
            self._changed.notify_all()

    def end_pod(self, pod: tuple[str, str], phase: str) -> None:
        with self._changed:
            self.pods[pod]["status"]["phase"] = phase
            self._changed.notify_all()

    def trainjob_exists(self, namespace: str, name: str) -> bool:
        with self._lock:
            return (namespace, name) in self.trainjobs


# ---------------------------------------------------------------------------------------------
# Kubeflow Trainer v2.3.0, as the fake serves it

TRAINER_GROUP, TRAINER_VERSION = "trainer.kubeflow.org", "v1alpha1"
TRAINER_CONFIGMAP = "kubeflow-trainer-public"
TRAINER_DATA = Path(__file__).parent / "data" / "trainer-v2.3.0"
_TRAINER_PATHS = re.compile(rf"^/apis/{TRAINER_GROUP}/|^/api/v1/namespaces/[^/]+/(pods|configmaps)(/|$)")
_TRAINER_VERBS = {"GET": "get", "POST": "create", "DELETE": "delete"}
_SCHEMA: dict = {}


def torch_distributed_runtime() -> dict:
    import yaml

    return yaml.safe_load((TRAINER_DATA / "torch_distributed.yaml").read_text())


def trainjob_schema() -> dict:
    """The TrainJob CRD's openAPIV3Schema (v2.3.0), as JSON Schema."""
    if not _SCHEMA:
        import yaml

        crd = yaml.safe_load((TRAINER_DATA / "trainer.kubeflow.org_trainjobs.yaml").read_text())
        (version,) = [v for v in crd["spec"]["versions"] if v["name"] == TRAINER_VERSION]
        _SCHEMA.update(version["schema"]["openAPIV3Schema"])
    return _SCHEMA


def trainjob_schema_errors(job: dict) -> list[str]:
    """What the API server's structural-schema validation would refuse in ``job`` (its
    ``x-kubernetes-*`` extensions and CEL rules are not checked)."""
    import jsonschema

    validator = jsonschema.Draft4Validator(trainjob_schema())
    return [f"{'.'.join(str(p) for p in e.absolute_path) or '<root>'}: {e.message}" for e in validator.iter_errors(job)]


def _jobset_of(pod: dict) -> str:
    return pod["metadata"]["labels"].get("jobset.sigs.k8s.io/jobset-name", "")


def node_container(job: dict) -> tuple[dict, list[dict]]:
    """The ``node`` container the Trainer controller would build from the TrainJob (its
    trainer's image, command, env, resources, and the runtime patch's env and mounts), and the
    patch's volumes."""
    trainer = job["spec"].get("trainer") or {}
    container = {"name": "node", "image": trainer.get("image", "pytorch/pytorch"), "command": trainer.get("command", []),
                 "env": list(trainer.get("env") or []), "volumeMounts": [],
                 "resources": trainer.get("resourcesPerNode") or {}}  # fmt: skip
    volumes: list[dict] = []
    for patch in job["spec"].get("runtimePatches") or []:
        for rjob in patch.get("trainingRuntimeSpec", {}).get("template", {}).get("spec", {}).get("replicatedJobs", []):
            if rjob.get("name") != "node":
                continue
            pod = rjob["template"]["spec"]["template"]["spec"]
            volumes += pod.get("volumes", [])
            for patched in pod.get("containers", []):
                if patched["name"] == "node":
                    container["env"] += patched.get("env", [])
                    container["volumeMounts"] += patched.get("volumeMounts", [])
    return container, volumes


def run_trainjob_locally(api: FakeKubeAPI, namespace: str, job: dict, *, base_env: Optional[dict] = None) -> None:
    """Play Trainer's controller and the kubelet for ``job``: one pod a node, each running the
    node container's command here (``torchrun`` as this interpreter's ``torch.distributed.run``;
    the ``PET_*`` variables Trainer's torch plugin sets; the secretKeyRef variables from
    ``api.secrets``; each volume mount a fresh folder, its path in the command rewritten), its
    output the pod's log; then Complete, or Failed with JobSet's reason as Trainer reports it."""
    name = job["metadata"]["name"]
    container, _ = node_container(job)
    nodes = int((job["spec"].get("trainer") or {}).get("numNodes") or 1)
    port = _free_port()
    work = Path(tempfile.mkdtemp(prefix=f"{name}-"))
    processes = []
    for index in range(nodes):
        mounts = {m["mountPath"]: work / f"node-{index}" / m["name"] for m in container["volumeMounts"]}
        for folder in mounts.values():
            folder.mkdir(parents=True)
        command = [_mounted(arg, mounts) for arg in container["command"]]
        if command and command[0] == "torchrun":
            command = [sys.executable, "-m", "torch.distributed.run", *command[1:]]
        env = {**(base_env if base_env is not None else os.environ)}
        for var in container["env"]:
            if "value" in var:
                env[var["name"]] = var["value"]
                continue
            ref = var["valueFrom"]["secretKeyRef"]
            value = api.secrets.get((namespace, ref["name"]), {}).get(ref["key"])
            if value is None:  # the kubelet cannot start the container; the job's deadline ends it
                api.set_trainjob_condition(namespace, name, "Failed", "DeadlineExceeded", "TrainJob exceeded its active "
                                           f'deadline (its pods: CreateContainerConfigError: secret "{ref["name"]}" '
                                           f'or its key "{ref["key"]}" not found)')  # fmt: skip
                return
            env[var["name"]] = value
        env.update(PET_NNODES=str(nodes), PET_NODE_RANK=str(index), PET_MASTER_ADDR="127.0.0.1", PET_MASTER_PORT=str(port))
        pod = api.add_node_pod(namespace, job, index, container)
        proc = subprocess.Popen(command, env=env, cwd=work, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        processes.append((pod, proc))
    threads = [threading.Thread(target=_pump, args=(api, pod, proc), daemon=True) for pod, proc in processes]
    for thread in threads:
        thread.start()
    while any(proc.poll() is None for _, proc in processes):
        if not api.trainjob_exists(namespace, name):  # deleted: the kubelet kills its pods
            for _, proc in processes:
                proc.kill()
        time.sleep(0.2)
    for thread in threads:
        thread.join(timeout=30)
    failed = [(pod, proc.returncode) for pod, proc in processes if proc.returncode != 0]
    for pod, proc in processes:
        api.end_pod(pod, "Failed" if proc.returncode else "Succeeded")
    if failed:
        api.set_trainjob_condition(namespace, name, "Failed", "FailedJobs",
                                   f"jobset failed due to one or more job failures: pod {failed[0][0][1]} "
                                   f"exited with code {failed[0][1]}")  # fmt: skip
    else:
        api.set_trainjob_condition(namespace, name, "Complete", "JobSetCompleted", "jobset completed successfully")


def _pump(api: FakeKubeAPI, pod: tuple[str, str], proc: subprocess.Popen) -> None:
    for line in proc.stdout:
        api.append_log(pod, line.rstrip("\n"))


def _mounted(arg: str, mounts: dict[str, Path]) -> str:
    for path, folder in mounts.items():
        if arg == path or arg.startswith(path + "/"):
            return str(folder) + arg[len(path):]
    return arg


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class _Stream:
    """A streamed text/plain answer (a followed pod log): chunks until the pod ends."""

    def __init__(self, chunks: Iterator[bytes]) -> None:
        self.chunks = chunks


class _Text:
    def __init__(self, text: str) -> None:
        self.text = text


def _status(code: int, reason: str, message: str, *, name: Optional[str] = None) -> tuple[int, dict]:
    details = {"name": name, "group": GROUP, "kind": PLURAL} if name else {}
    return code, {
        "kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
        "message": message, "reason": reason, "details": details, "code": code,
    }  # fmt: skip


def _not_found(name: str) -> tuple[int, dict]:
    return _status(404, "NotFound", f'{PLURAL}.{GROUP} "{name}" not found', name=name)


def _handler_for(api: FakeKubeAPI) -> type:
    class Handler(BaseHTTPRequestHandler):
        def _answer(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            body = self.rfile.read(length) if length else b""
            code, payload = api.handle(self.command, self.path, self.headers, body)
            if isinstance(payload, _Stream):  # HTTP/1.0: the body ends when the connection closes
                self.send_response(code)
                self.send_header("Content-Type", "text/plain")
                self.end_headers()
                for chunk in payload.chunks:
                    self.wfile.write(chunk)
                    self.wfile.flush()
                return
            is_text = isinstance(payload, _Text)
            raw = payload.text.encode() if is_text else json.dumps(payload).encode()
            self.send_response(code)
            self.send_header("Content-Type", "text/plain" if is_text else "application/json")
            self.send_header("Content-Length", str(len(raw)))
            self.end_headers()
            self.wfile.write(raw)

        do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = _answer

        def log_message(self, *args: Any) -> None:  # requests are in api.requests
            pass

    return Handler
