"""Pipeline step ``deploy``: serve the exported model as a KServe InferenceService."""

from kfp import dsl
from kfp.dsl import Input, Model

from components.image import SERVE_IMAGE


@dsl.component(base_image=SERVE_IMAGE, install_kfp_package=False)
def deploy_model(
    model: Input[Model],
    serving_image: str,
    name: str = "maskpipe",
    namespace: str = "",
    service_account: str = "maskpipe-serving",
    timeout_s: int = 600,
) -> str:
    """Create or update the InferenceService ``name`` serving ``model``, wait until it is Ready.

    Wraps ``maskpipe.deploy`` (the kserve SDK). The predictor is the serving image
    (``docker/Dockerfile.serve``); KServe's storage initializer reads the model folder from
    MinIO with the S3 Secret of ``service_account`` (``k8s/serving/``). Runs in the serving
    image, whose ServiceAccount must be allowed to create InferenceServices (``k8s/serving/``).

    Args:
        model: The folder ``export-model`` wrote (a ``minio://`` artifact).
        serving_image: Image of the predictor container (the pipeline passes
            ``components.image.serving_image(image)``; a lightweight component ships only this
            function's source, so the default cannot name a module constant).
        name: InferenceService name, also the served model's name in its URLs.
        namespace: Namespace of the service; ``""``: the namespace this step runs in.
        service_account: ServiceAccount the predictor runs as (reads MinIO).
        timeout_s: How long to wait for the service to become Ready.

    Returns:
        The service's URL; predictions at ``<url>/v1/models/<name>:predict``.
    """
    from pathlib import Path

    from maskpipe.deploy import apply_and_wait, build_inference_service, schema_errors, to_manifest
    from maskpipe.errors import MaskpipeError

    if not namespace:
        namespace = Path("/var/run/secrets/kubernetes.io/serviceaccount/namespace").read_text().strip()
    service = build_inference_service(name, namespace, model.uri, serving_image, service_account=service_account)
    errors = schema_errors(to_manifest(service))
    if errors:
        raise MaskpipeError(f"the InferenceService does not fit KServe's schema: {errors}")
    url = apply_and_wait(service, timeout_s=timeout_s)
    print(f"InferenceService {namespace}/{name} is ready: {url}")
    print(f"try: curl -H 'Content-Type: application/json' -d @request.json {url}/v1/models/{name}:predict")
    return url
