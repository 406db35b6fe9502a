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

    Wraps ``maskpipe.steps.deploy.deploy_step`` (the kserve SDK). The predictor is the serving image
    (``docker/Dockerfile.serve``); KServe's storage initializer reads the model folder from
    the object store with the S3 Secret of ``service_account`` (``k8s/serving/``). Runs in the
    serving image, whose ServiceAccount must be allowed to create InferenceServices
    (``k8s/serving/deployer-role.yaml``). ``run-local --deploy`` runs it in the serving
    environment against the API of the kubeconfig (``$KUBECONFIG``).

    Args:
        model: The folder ``export-model`` wrote (a ``minio://`` artifact; a local folder in
            a local run).
        serving_image: Image of the predictor container (the pipeline passes
            ``components.image.serving_image(image)``; a lightweight component ships only this
            function's source, so the default cannot name a module constant).
        name: InferenceService name, also the served model's name in its URLs; a DNS label.
        namespace: Namespace of the service; ``""``: the namespace this step runs in (the
            pod's; outside a cluster, the kubeconfig's current namespace).
        service_account: ServiceAccount the predictor runs as (reads the object store).
        timeout_s: How long to wait for the service to become Ready.

    Returns:
        The service's URL; predictions at ``<url>/v1/models/<name>:predict``.
    """
    from maskpipe.steps.deploy import deploy_step

    return deploy_step(
        model.uri, serving_image, name=name, namespace=namespace, service_account=service_account,
        timeout_s=timeout_s,
    )  # fmt: skip
