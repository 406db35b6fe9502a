"""Deploy an exported model as a KServe ``InferenceService`` (the pipeline's ``deploy`` step).

The service runs the serving image (``docker/Dockerfile.serve``: ``maskpipe serve`` on ONNX
Runtime) as a custom predictor container. KServe's storage initializer copies the model
folder from MinIO into ``/mnt/models`` before the container starts, with the endpoint and keys
of the ServiceAccount the predictor runs as (``k8s/serving/``: an S3 Secret annotated with the
MinIO endpoint). The served model's name is the service's name, so its v1 URL is
``<status.url>/v1/models/<name>:predict``.

Needs the ``kserve`` SDK (the serving environment); imported lazily so the module's pure
helpers can be used anywhere.
"""

from __future__ import annotations

import logging
from typing import Any

from maskpipe.errors import MaskpipeError

log = logging.getLogger(__name__)

SERVING_PORT = 8080
MODEL_MOUNT = "/mnt/models"
DEFAULT_SERVICE_ACCOUNT = "maskpipe-serving"


def storage_uri(artifact_uri: str) -> str:
    """The ``s3://`` URI KServe's storage initializer reads for a KFP artifact URI.

    KFP writes ``minio://bucket/key`` for its MinIO (or SeaweedFS) store; the same objects are
    ``s3://bucket/key`` to an S3 client pointed at that endpoint (the ServiceAccount's secret).
    """
    for scheme in ("minio://", "s3://"):
        if artifact_uri.startswith(scheme):
            rest = artifact_uri[len(scheme):].strip("/")
            if "/" not in rest:
                break
            return f"s3://{rest}"
    raise MaskpipeError(
        f"cannot serve the model at {artifact_uri!r}: KServe reads it from object storage, so it "
        "must be a minio:// or s3:// URI with a bucket and a key (run the pipeline on a cluster "
        "whose pipeline root is MinIO)"
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
        args=[MODEL_MOUNT, "--port", str(SERVING_PORT), "--name", name, "--max-batch", str(max_batch)],
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


def apply_and_wait(inference_service: Any, *, timeout_s: int = 600, kserve_client: Any = None) -> str:
    """Create the service, or replace the one of that name, then wait until it is Ready.

    Returns:
        The service's URL (``status.url``).
    """
    if kserve_client is None:
        from kserve import KServeClient

        kserve_client = KServeClient()
    meta = inference_service.metadata
    try:
        current = kserve_client.get(meta.name, namespace=meta.namespace)
    except RuntimeError as exc:  # the SDK wraps the API's 404 in a RuntimeError
        if "Not Found" not in str(exc) and "404" not in str(exc):
            raise
        current = None
    if current is None:
        log.info("creating InferenceService %s/%s", meta.namespace, meta.name)
        applied = kserve_client.create(inference_service, namespace=meta.namespace)
    else:
        log.info("replacing InferenceService %s/%s", meta.namespace, meta.name)
        meta.resource_version = current["metadata"]["resourceVersion"]
        applied = kserve_client.replace(meta.name, inference_service, namespace=meta.namespace)
    kserve_client.wait_isvc_ready(
        meta.name, namespace=meta.namespace, timeout_seconds=timeout_s, polling_interval=5,
        expected_generation=applied["metadata"].get("generation"),
    )  # fmt: skip
    status = kserve_client.get(meta.name, namespace=meta.namespace).get("status", {})
    url = status.get("url") or status.get("address", {}).get("url")
    if not url:
        raise MaskpipeError(f"InferenceService {meta.namespace}/{meta.name} is Ready but reports no URL: {status}")
    return url


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
