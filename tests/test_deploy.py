"""The deploy step: its InferenceService fits KServe's schema.

The InferenceService is built with the kserve SDK, which lives in the serving environment
(kserve needs pandas<3), so that part runs there, as the deploy step runs in the serving image.
The manifests under k8s/ (ServiceAccount, S3 Secret, deployer Role) are tests/test_k8s.py's.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from types import SimpleNamespace

import pytest
from test_serve import serve_python

from maskpipe.deploy import DEFAULT_SERVICE_ACCOUNT, MODEL_MOUNT, apply_and_wait, storage_uri
from maskpipe.errors import MaskpipeError

ROOT = Path(__file__).resolve().parent.parent
MODEL_URI = "minio://mlpipeline/v2/artifacts/maskpipe/run-1/export-model/model"

BUILD = """
import json, sys
from maskpipe.deploy import build_inference_service, schema_errors, to_manifest
manifest = to_manifest(build_inference_service("gate", "team-a", sys.argv[1], "registry.local/maskpipe:abc-serve"))
misspelt = json.loads(json.dumps(manifest))
misspelt["spec"]["predictor"]["serviceAcountName"] = misspelt["spec"]["predictor"].pop("serviceAccountName")
misspelt["spec"]["predictor"]["containers"][0]["ports"][0]["containerPort"] = "8080"
print(json.dumps({"manifest": manifest, "errors": schema_errors(manifest), "misspelt_errors": schema_errors(misspelt)}))
"""


@pytest.fixture(scope="module")
def built() -> dict:
    result = subprocess.run([serve_python(), "-c", BUILD, MODEL_URI], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def test_inference_service_fits_the_kserve_sdk_schema(built):
    assert built["errors"] == []


def test_schema_check_names_a_misspelt_field_and_a_wrong_type(built):
    errors = built["misspelt_errors"]
    assert ".spec.predictor.serviceAcountName: no such field in V1beta1PredictorSpec" in errors
    assert any(e.startswith(".spec.predictor.containers[0].ports[0].containerPort: expected int") for e in errors)


def test_inference_service_serves_the_exported_artifact_with_the_serving_image(built):
    manifest = built["manifest"]
    assert manifest["apiVersion"] == "serving.kserve.io/v1beta1" and manifest["kind"] == "InferenceService"
    assert manifest["metadata"] == {**manifest["metadata"], "name": "gate", "namespace": "team-a"}
    predictor = manifest["spec"]["predictor"]
    assert predictor["serviceAccountName"] == DEFAULT_SERVICE_ACCOUNT
    (container,) = predictor["containers"]
    assert container["name"] == "kserve-container" and container["image"] == "registry.local/maskpipe:abc-serve"
    assert container["env"] == [{"name": "STORAGE_URI", "value": "s3://mlpipeline/v2/artifacts/maskpipe/run-1/export-model/model"}]
    assert container["args"][:2] == [MODEL_MOUNT, "--port"] and container["args"][container["args"].index("--name") + 1] == "gate"
    assert container["resources"]["requests"] and container["resources"]["limits"]


@pytest.mark.parametrize("uri", ["/local/model", "minio://bucket-only", "gs://b/k"])
def test_a_model_kserve_cannot_fetch_is_refused(uri):
    with pytest.raises(MaskpipeError, match="minio:// or s3://"):
        storage_uri(uri)


class FakeKServeClient:
    """Records calls; Ready after ``polls`` waits (the SDK client's own API)."""

    def __init__(self, exists: bool) -> None:
        self.exists, self.calls = exists, []

    def get(self, name, namespace=None):
        self.calls.append(("get", name, namespace))
        if not self.exists:
            raise RuntimeError("Exception when calling CustomObjectsApi->get_namespaced_custom_object: (404) Reason: Not Found")
        return {"metadata": {"resourceVersion": "41", "generation": 3}, "status": {"url": f"http://{name}.{namespace}.example"}}

    def create(self, service, namespace=None):
        self.calls.append(("create", service.metadata.name, namespace))
        self.exists = True
        return {"metadata": {"generation": 1}}

    def replace(self, name, service, namespace=None):
        self.calls.append(("replace", name, namespace, service.metadata.resource_version))
        return {"metadata": {"generation": 4}}

    def wait_isvc_ready(self, name, namespace=None, **kwargs):
        self.calls.append(("wait", name, kwargs["expected_generation"]))


def _service(name="gate", namespace="team-a"):
    return SimpleNamespace(metadata=SimpleNamespace(name=name, namespace=namespace, resource_version=None))


def test_deploy_creates_a_new_service_and_waits_for_its_generation():
    client = FakeKServeClient(exists=False)
    url = apply_and_wait(_service(), kserve_client=client)
    assert url == "http://gate.team-a.example"
    assert [c[0] for c in client.calls] == ["get", "create", "wait", "get"]
    assert ("wait", "gate", 1) in client.calls


def test_deploy_replaces_an_existing_service_at_its_resource_version():
    client = FakeKServeClient(exists=True)
    apply_and_wait(_service(), kserve_client=client)
    assert ("replace", "gate", "team-a", "41") in client.calls and ("wait", "gate", 4) in client.calls


# ---------------------------------------------------------------- the component's wiring
# (k8s/serving/ and its overlays: tests/test_k8s.py)


def test_deploy_component_defaults_match_the_wiring():
    from components.deploy_model import deploy_model

    inputs = deploy_model.component_spec.inputs
    assert inputs["service_account"].default == DEFAULT_SERVICE_ACCOUNT
    assert inputs["name"].default == "maskpipe"
