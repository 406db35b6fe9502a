"""The ``deploy`` step: serve a model folder as a KServe InferenceService and wait until Ready."""

from __future__ import annotations

from maskpipe.errors import MaskpipeError


def deploy_step(
    model_uri: str,
    serving_image: str,
    *,
    name: str = "maskpipe",
    namespace: str = "",
    service_account: str = "maskpipe-serving",
    timeout_s: int = 600,
) -> str:
    """Create or update the InferenceService ``name`` serving ``model_uri``; returns its URL."""
    from maskpipe.deploy import (
        apply_and_wait, build_inference_service, check_service_name, current_namespace, schema_errors, to_manifest,
    )  # fmt: skip

    check_service_name(name)
    namespace = namespace or current_namespace()
    service = build_inference_service(name, namespace, model_uri, serving_image, service_account=service_account)
    errors = schema_errors(to_manifest(service))
    if errors:
        raise MaskpipeError(f"the InferenceService does not fit KServe's schema: {errors}")
    url = apply_and_wait(service, timeout_s=timeout_s)
    print(f"InferenceService {namespace}/{name} is ready: {url}")
    print(f"try: curl -H 'Content-Type: application/json' -d @request.json {url}/v1/models/{name}:predict")
    return url
