"""Deploy an exported model as a KServe ``InferenceService`` (the pipeline's ``deploy`` step).

The service runs the serving image (``docker/Dockerfile.serve``: ``maskpipe serve`` on ONNX
Runtime) as a custom predictor container. KServe's storage initializer copies the model
folder from the object store into ``/mnt/models`` before the container starts, with the endpoint
and keys of the ServiceAccount the predictor runs as (``k8s/serving/``: an S3 Secret annotated
with the store's endpoint). The served model's name is the service's name, so its v1 URL is
``<status.url>/v1/models/<name>:predict``.

The service goes into the namespace the step runs in (a Kubeflow profile namespace, where
KServe's pod mutator works; it skips control-plane namespaces such as ``kubeflow``): the pod's
own namespace on a cluster, the kubeconfig's current namespace elsewhere (``run-local
--deploy``). Nothing here defaults to a fixed namespace.

Needs the ``kserve`` SDK (the serving environment); imported lazily so the module's pure
helpers (names, namespaces, URIs) can be used anywhere.
"""

from __future__ import annotations

import json
import logging
import os
import re
import time
from pathlib import Path
from typing import Any

from maskpipe.errors import MaskpipeError

log = logging.getLogger(__name__)

SERVING_PORT = 8080
MODEL_MOUNT = "/mnt/models"
DEFAULT_SERVICE_ACCOUNT = "maskpipe-serving"
# The Role a 403 tells the user to apply (relative to the repository root).
# The deployer Role; k8s/overlays/{profile,standalone} bind it to the runs' ServiceAccount.
DEPLOYER_RBAC = "k8s/serving/deployer-role.yaml"
# A pod's own namespace, as Kubernetes mounts it with the ServiceAccount token.
POD_NAMESPACE_FILE = Path("/var/run/secrets/kubernetes.io/serviceaccount/namespace")

# KServe's rule for InferenceService names (IsvcNameFmt in pkg/apis/serving/v1beta1/
# inference_service_validation.go): a DNS-1035 label. KServe names the predictor's Service
# "<name>-predictor", and a Service name is at most 63 characters: hence 53.
_SERVICE_NAME = re.compile(r"[a-z]([-a-z0-9]*[a-z0-9])?")
MAX_SERVICE_NAME = 63 - len("-predictor")


def check_service_name(name: str) -> str:
    """``name`` if KServe accepts it as an InferenceService name, else a MaskpipeError saying
    the rule and a name that follows it."""
    if len(name) <= MAX_SERVICE_NAME and _SERVICE_NAME.fullmatch(name):
        return name
    suggestion = re.sub(r"[^a-z0-9-]+", "-", name.lower()).strip("-")
    suggestion = re.sub(r"^[^a-z]+", "", suggestion)[:MAX_SERVICE_NAME].rstrip("-") or "maskpipe"
    raise MaskpipeError(
        f"deploy name {name!r} is not a name KServe accepts for an InferenceService: use a DNS label "
        f"of lower-case letters, digits and '-', starting with a letter, ending with a letter or digit, "
        f"at most {MAX_SERVICE_NAME} characters (KServe appends '-predictor'), e.g. --deploy-name {suggestion}"
    )


def kubeconfig_path() -> str:
    """The kubeconfig the Kubernetes client loads outside a pod: ``$KUBECONFIG`` (a list
    separated by ``:`` is merged) or ``~/.kube/config``. Read at each call: the client reads
    its own default once, at import."""
    return os.environ.get("KUBECONFIG") or "~/.kube/config"


def current_namespace() -> str:
    """The namespace the deploy step runs in: the pod's on a cluster, else the current
    context's namespace in the kubeconfig (what ``kubectl`` uses).

    Unlike kubectl there is no fallback to ``default``: no Kubeflow profile is called that, and
    a service there would lack the profile's serving ServiceAccount; a context without a
    namespace is refused with the fix.
    """
    if POD_NAMESPACE_FILE.is_file():
        return POD_NAMESPACE_FILE.read_text().strip()
    from kubernetes.config import ConfigException, list_kube_config_contexts

    path = kubeconfig_path()
    try:
        _, active = list_kube_config_contexts(config_file=path)
    except (ConfigException, OSError, ValueError) as exc:
        raise MaskpipeError(
            f"no Kubernetes API to deploy to: not in a pod, and the kubeconfig {path} cannot be read "
            f"({' '.join(str(exc).split())}); set KUBECONFIG to the cluster's kubeconfig"
        ) from None
    namespace = ((active or {}).get("context") or {}).get("namespace")
    if not namespace:
        context = (active or {}).get("name", "?")
        raise MaskpipeError(
            f"no namespace to deploy to: the kubeconfig {path}'s current context {context!r} names none; "
            "pass your profile namespace with --deploy-namespace NS, or set it with "
            "`kubectl config set-context --current --namespace NS`"
        )
    return namespace


def storage_uri(artifact_uri: str) -> str:
    """The ``STORAGE_URI`` KServe's storage initializer reads for a KFP artifact URI.

    KFP writes ``minio://bucket/key`` for its object store (SeaweedFS, or MinIO on older
    installs); the same objects are ``s3://bucket/key`` to an S3 client pointed at that endpoint
    (the ServiceAccount's secret). A local run (kfp.local) writes a local folder, which becomes
    ``file://<folder>``: KServe reads that path inside its own containers, so such a service
    is only servable where that folder is (the tests' loopback API, a one-node cluster that
    mounts it).
    """
    if artifact_uri.startswith("/"):
        return f"file://{artifact_uri}"
    for scheme in ("minio://", "s3://"):
        if artifact_uri.startswith(scheme):
            rest = artifact_uri[len(scheme):].strip("/")
            if "/" not in rest:
                break
            return f"s3://{rest}"
    raise MaskpipeError(
        f"cannot serve the model at {artifact_uri!r}: KServe reads it from object storage, so it "
        "must be a minio:// or s3:// URI with a bucket and a key (run the pipeline on a cluster "
        "whose pipeline root is its object store), or an absolute local path (a local run)"
    )


def build_inference_service(
    name: str,
    namespace: str,
    model_uri: str,
    image: str,
    *,
    service_account: str = DEFAULT_SERVICE_ACCOUNT,
    max_batch: int = 32,
    cpu: str = "2",
    memory: str | None = None,
):
    """A ``V1beta1InferenceService`` (kserve SDK object) that serves ``model_uri`` with ``image``."""
    from kserve import V1beta1InferenceService, V1beta1InferenceServiceSpec, V1beta1PredictorSpec, constants
    from kubernetes import client

    container = client.V1Container(
        name="kserve-container",
        image=image,
        args=[MODEL_MOUNT, "--http_port", str(SERVING_PORT), "--model_name", name, "--max-batch", str(max_batch)],
        env=[client.V1EnvVar(name="STORAGE_URI", value=storage_uri(model_uri))],
        ports=[client.V1ContainerPort(container_port=SERVING_PORT, protocol="TCP")],
        resources=_resources(cpu, memory),
    )
    return V1beta1InferenceService(
        api_version=f"{constants.KSERVE_GROUP}/{constants.KSERVE_V1BETA1_VERSION}",
        kind=constants.KSERVE_KIND_INFERENCESERVICE,
        metadata=client.V1ObjectMeta(name=name, namespace=namespace, labels={"app.kubernetes.io/part-of": "maskpipe"}),
        spec=V1beta1InferenceServiceSpec(
            predictor=V1beta1PredictorSpec(service_account_name=service_account, containers=[container])
        ),
    )


def _resources(cpu: str, memory: str | None):
    """Requests = limits (Guaranteed QoS); the memory is what the serving limits need
    (``maskpipe.serve_limits.ServeLimits.pod_memory``) unless given."""
    from kubernetes import client

    from maskpipe.serve_limits import ServeLimits

    memory = memory or ServeLimits().pod_memory()
    return client.V1ResourceRequirements(requests={"cpu": cpu, "memory": memory}, limits={"cpu": cpu, "memory": memory})


def to_manifest(inference_service: Any) -> dict:
    """The object as the API server receives it (camelCase keys, no nulls)."""
    from kserve import ApiClient

    return ApiClient().sanitize_for_serialization(inference_service)


def apply_and_wait(
    inference_service: Any, *, timeout_s: float = 600, poll_s: float = 2, kserve_client: Any = None
) -> str:
    """Create the service, or replace the one of that name, then wait until it is Ready.

    Ready means what ``KServeClient.is_isvc_ready`` checks: the ``Ready`` condition is True
    at the generation this call wrote (``status.observedGeneration``), so the previous
    version of a replaced service being Ready does not count.

    Returns:
        The service's URL (``status.url``).

    Raises:
        MaskpipeError: one line for what a user can fix: the API refused a call (403: names
            the namespace, the verb and the RBAC to apply), KServe is not installed, the API is
            unreachable, or the service was not Ready within ``timeout_s`` (names its last
            condition).
    """
    if kserve_client is None:
        from kserve import KServeClient
        from kubernetes.config import ConfigException

        try:
            kserve_client = KServeClient()  # in a pod: its ServiceAccount; elsewhere: the kubeconfig
        except ConfigException as exc:
            raise MaskpipeError(
                f"no Kubernetes API to deploy to: not in a pod, and the kubeconfig {kubeconfig_path()} "
                f"cannot be loaded ({' '.join(str(exc).split())}); set KUBECONFIG to the cluster's kubeconfig"
            ) from None
    meta = inference_service.metadata
    where = f"{meta.namespace}/{meta.name}"
    applied = None
    for _ in range(_WRITE_ATTEMPTS):
        current = _call(kserve_client.get, "get", meta, meta.name, namespace=meta.namespace, missing_ok=True)
        try:
            if current is None:
                log.info("creating InferenceService %s", where)
                applied = _call(kserve_client.create, "create", meta, inference_service, namespace=meta.namespace)
            else:
                log.info("replacing InferenceService %s at resourceVersion %s", where,
                         current["metadata"]["resourceVersion"])  # fmt: skip
                meta.resource_version = current["metadata"]["resourceVersion"]
                applied = _call(kserve_client.replace, "update", meta, meta.name, inference_service,
                                namespace=meta.namespace)  # fmt: skip
            break
        except _Conflict:  # created or changed by someone else since the get: read it again
            continue
    if applied is None:
        raise MaskpipeError(
            f"InferenceService {where} kept changing while the deploy step wrote it "
            f"({_WRITE_ATTEMPTS} conflicts); stop whatever else updates it and rerun"
        )
    generation = applied["metadata"].get("generation")
    deadline = time.monotonic() + timeout_s
    while True:
        current = _call(kserve_client.get, "get", meta, meta.name, namespace=meta.namespace)
        if _is_ready(current, generation):
            break
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise MaskpipeError(
                f"InferenceService {where} was not Ready within {timeout_s:g} s; its last condition: "
                f"{last_condition(current, generation)}. See `kubectl -n {meta.namespace} describe "
                f"inferenceservice {meta.name}` and its predictor pod's events"
            )
        time.sleep(min(poll_s, remaining))
    status = current.get("status", {})
    url = status.get("url") or status.get("address", {}).get("url")
    if not url:
        raise MaskpipeError(f"InferenceService {where} is Ready but reports no URL (status.url): {status}")
    return url


def _is_ready(service: dict, generation: int | None) -> bool:
    """``KServeClient.is_isvc_ready``'s rule (kserve 0.21), on an object already fetched."""
    status = service.get("status") or {}
    for condition in status.get("conditions") or []:
        if condition.get("type") == "Ready":
            if str(condition.get("status", "Unknown")).lower() != "true":
                return False
            return generation is None or status.get("observedGeneration", 0) >= generation
    return False


def last_condition(service: dict, generation: int | None = None) -> str:
    """The service's Ready condition in words (or why there is none), for a timeout message."""
    status = service.get("status") or {}
    conditions = status.get("conditions") or []
    if not conditions:
        return "none (no status yet: is KServe's controller running in the cluster?)"
    ready = next((c for c in conditions if c.get("type") == "Ready"), None)
    failing = [c for c in conditions if str(c.get("status")).lower() != "true" and c is not ready]
    shown = ready if ready is not None and str(ready.get("status")).lower() != "true" else None
    if shown is None and failing:
        shown = failing[0]
    if shown is None:
        observed = status.get("observedGeneration", 0)
        return f"Ready=True, but for generation {observed}, not the new {generation}"
    words = f"{shown.get('type')}={shown.get('status')}"
    detail = ": ".join(str(shown[k]) for k in ("reason", "message") if shown.get(k))
    return f"{words} ({' '.join(detail.split())})" if detail else words


# How often a replace is retried when another writer changed the object between get and put.
_WRITE_ATTEMPTS = 3


class _Conflict(Exception):
    """409 from the API: the object exists already (create) or changed since it was read."""


def _call(method, verb: str, meta: Any, *args, missing_ok: bool = False, **kwargs):
    """One kserve SDK call; the API's refusals as one-line MaskpipeErrors.

    The SDK (kserve 0.21) wraps the API's ``ApiException`` in a ``RuntimeError`` raised inside
    its ``except``, so the ApiException is the RuntimeError's ``__context__``;
    tests/test_deploy.py fails if that stops being so.
    """
    from kubernetes.client.rest import ApiException
    from urllib3.exceptions import HTTPError

    where = f"{meta.namespace}/{meta.name}"
    try:
        return method(*args, **kwargs)
    except HTTPError as exc:  # no answer at all: the SDK passes these through
        raise MaskpipeError(
            f"cannot reach the Kubernetes API at {_api_host()} to {verb} InferenceService {where}: "
            f"{type(exc).__name__}: {exc}; check the kubeconfig (KUBECONFIG) or the pod's network"
        ) from None
    except (RuntimeError, ApiException) as exc:
        api = exc if isinstance(exc, ApiException) else exc.__context__
        if not isinstance(api, ApiException):
            raise
        reason = api_message(api)
        if api.status == 404 and _object_missing(api):
            if missing_ok:
                return None
            raise MaskpipeError(
                f"InferenceService {where} is gone (404 on {verb}: {reason}) while the deploy step "
                "waited for it: something deleted it; rerun the deploy"
            ) from None
        if api.status == 404:
            raise MaskpipeError(
                f"the Kubernetes API at {_api_host()} has no InferenceService resource "
                f"(serving.kserve.io/v1beta1) to {verb} {where}: {reason}; install KServe in the "
                "cluster (its CRDs and controller) or point the kubeconfig at one that has it"
            ) from None
        if api.status == 403:
            raise MaskpipeError(
                f"the Kubernetes API refused (403 Forbidden) to {verb} InferenceService {where}: "
                f"{reason}; let the deploy step's ServiceAccount {verb} inferenceservices.serving.kserve.io "
                f"in namespace {meta.namespace!r}: apply the Role {DEPLOYER_RBAC} with its binding "
                f"(kubectl apply -k k8s/overlays/profile, or k8s/overlays/standalone; subject: the "
                f"ServiceAccount the pipeline's pods run as)"
            ) from None
        if api.status == 401:
            raise MaskpipeError(
                f"the Kubernetes API at {_api_host()} did not accept this client's credentials (401) "
                f"to {verb} InferenceService {where}: {reason}; renew the kubeconfig's token or "
                "check the pod's ServiceAccount token"
            ) from None
        if api.status == 409:
            raise _Conflict(reason) from None
        raise MaskpipeError(
            f"the Kubernetes API answered {api.status} {api.reason} to {verb} InferenceService {where}: {reason}"
        ) from None


def api_message(api: Any) -> str:
    """The ``message`` of the API's Status body, on one line (the raw body if it is not one)."""
    try:
        message = json.loads(api.body).get("message") or api.body
    except (TypeError, ValueError, AttributeError):
        message = api.body or api.reason
    return " ".join(str(message).split())


def _object_missing(api: Any) -> bool:
    """A 404 for the object, not for the resource: the API's Status names the object then."""
    try:
        details = json.loads(api.body).get("details") or {}
    except (TypeError, ValueError, AttributeError):
        return False
    return bool(details.get("name"))


def _api_host() -> str:
    from kubernetes import client

    return client.Configuration.get_default_copy().host

_SCALARS = {"str": str, "int": int, "bool": bool, "float": (int, float), "object": object}


def schema_errors(data: Any, type_name: str = "V1beta1InferenceService", where: str = "") -> list[str]:
    """Where ``data`` (a manifest, camelCase keys) departs from the kserve SDK's schema.

    The SDK's generated models (``kserve.models``, and ``kubernetes.client.models`` for the
    core types they embed) record every field's JSON name and type; an unknown or misspelt
    field, or a value of the wrong type, is named by its path. The API server would drop an
    unknown field silently and the service would run without it.
    """
    if type_name.startswith("list["):
        if not isinstance(data, list):
            return [f"{where or '.'}: expected a list, got {type(data).__name__}"]
        return [e for i, item in enumerate(data) for e in schema_errors(item, type_name[5:-1], f"{where}[{i}]")]
    if type_name.startswith("dict("):
        if not isinstance(data, dict):
            return [f"{where or '.'}: expected an object, got {type(data).__name__}"]
        inner = type_name[5:-1].split(", ", 1)[1]
        return [e for key, value in data.items() for e in schema_errors(value, inner, f"{where}.{key}")]
    if type_name in _SCALARS:
        return [] if isinstance(data, _SCALARS[type_name]) else [f"{where}: expected {type_name}, got {data!r}"]
    model = _sdk_model(type_name)
    if model is None:
        return []  # a type the SDKs leave open (e.g. datetime, quantities)
    if not isinstance(data, dict):
        return [f"{where or '.'}: expected a {type_name} object, got {type(data).__name__}"]
    by_json_name = {json_name: attr for attr, json_name in model.attribute_map.items()}
    errors = []
    for key, value in data.items():
        if key not in by_json_name:
            errors.append(f"{where}.{key}: no such field in {type_name}")
        elif value is not None:
            errors += schema_errors(value, model.openapi_types[by_json_name[key]], f"{where}.{key}")
    return errors


def _sdk_model(type_name: str):
    import kserve.models
    from kubernetes.client import models as core

    return getattr(kserve.models, type_name, None) or getattr(core, type_name, None)
