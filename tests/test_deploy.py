"""The deploy step: its InferenceService, its calls to a Kubernetes API, run-local --deploy.

The deploy step runs the kserve SDK (the serve extra; the serving image holds it too), so those
tests run the component's function in a process of ``$MASKPIPE_SERVE_PYTHON`` (default: the
repository's ``.venv``), as the deploy step runs in the serving image, against tests/fake_kube.py's API on loopback (found through KUBECONFIG). The
end-to-end test (slow) runs ``pipeline.py run-local --deploy`` and then classifies photos with
the server started from the InferenceService it created.
The manifests under k8s/ (ServiceAccount, S3 Secret, deployer Role) are tests/test_k8s.py's.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import threading
import time
from pathlib import Path

import pandas as pd
import pytest
from datafactory import make_dataset
from fake_kube import FakeKubeAPI
from fixtures.serving import serve_python
from tiny import TINY_OVERRIDES

import pipeline
import pipeline_cli
from components.deploy_model import deploy_model
from maskpipe.deploy import (
    DEFAULT_SERVICE_ACCOUNT, DEPLOYER_RBAC, MAX_SERVICE_NAME, MODEL_MOUNT, check_service_name, storage_uri,
)  # fmt: skip
from benchmarks.serve_client import ServerProcess, request, v1_body
from maskpipe.errors import MaskpipeError
from pipeline_cli.local_deploy import SERVE_PYTHON_ENV

# the deploy step runs in the serving environment against a local Kubernetes API
pytestmark = pytest.mark.integration

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
    assert container["args"][:2] == [MODEL_MOUNT, "--http_port"] and container["args"][container["args"].index("--model_name") + 1] == "gate"
    assert container["resources"]["requests"] and container["resources"]["limits"]


@pytest.mark.parametrize("uri", ["relative/model", "minio://bucket-only", "gs://b/k"])
def test_a_model_kserve_cannot_fetch_is_refused(uri):
    with pytest.raises(MaskpipeError, match="minio:// or s3://"):
        storage_uri(uri)


def test_a_local_runs_model_folder_is_served_from_its_path():
    assert storage_uri("/runs/maskpipe-1/export-model/model") == "file:///runs/maskpipe-1/export-model/model"


@pytest.mark.parametrize("name", ["gate", "maskpipe-v2", "a", "a" * MAX_SERVICE_NAME])
def test_a_dns_label_is_a_service_name(name):
    assert check_service_name(name) == name


@pytest.mark.parametrize(
    ("name", "suggested"),
    [("Gate_1", "gate-1"), ("2gate", "gate"), ("gate-", "gate"), ("gate.v2", "gate-v2"), ("", "maskpipe"),
     ("a" * (MAX_SERVICE_NAME + 1), "a" * MAX_SERVICE_NAME)],
)  # fmt: skip
def test_a_name_kserve_refuses_is_refused_with_one_that_it_accepts(name, suggested):
    with pytest.raises(MaskpipeError) as caught:
        check_service_name(name)
    message = str(caught.value)
    assert "\n" not in message and repr(name) in message and message.endswith(f"--deploy-name {suggested}")
    assert check_service_name(suggested) == suggested


# ------------------------------------------------ the deploy step against a Kubernetes API on loopback
# The component's own function runs in the serving environment with the real kserve SDK and
# kubernetes client, which find tests/fake_kube.py's API through KUBECONFIG as they would a
# cluster's. The test plays KServe's controller (FakeKubeAPI.on_write / mark_ready).

DEPLOY = """
import json, sys
from kfp.dsl import Model
from components.deploy_model import deploy_model
args = json.loads(sys.argv[1])
model = Model(name="model", uri=args.pop("uri"))
print(json.dumps({"url": deploy_model.python_func(model=model, serving_image="registry.local/maskpipe:abc-serve", **args)}))
"""


def run_deploy(api: FakeKubeAPI, tmp_path: Path, *, kubeconfig_namespace="team-a", **args) -> subprocess.CompletedProcess:
    kubeconfig = api.write_kubeconfig(tmp_path / "kubeconfig", namespace=kubeconfig_namespace)
    env = {**os.environ, "KUBECONFIG": str(kubeconfig), "PYTHONPATH": str(ROOT)}
    argv = [serve_python(), "-c", DEPLOY, json.dumps({"uri": MODEL_URI, "name": "gate", **args})]
    return subprocess.run(argv, cwd=ROOT, env=env, capture_output=True, text=True, timeout=180)


def error_line(result: subprocess.CompletedProcess) -> str:
    """The MaskpipeError the step died with (the line a run's log shows as its cause)."""
    assert result.returncode != 0, result.stdout
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("maskpipe.errors.MaskpipeError: "), result.stderr
    return last.removeprefix("maskpipe.errors.MaskpipeError: ")


def test_deploy_creates_the_service_in_the_kubeconfig_namespace_and_returns_its_url(tmp_path):
    with FakeKubeAPI() as api:
        api.on_write = lambda obj: api.mark_ready("team-a", obj["metadata"]["name"], "http://gate.team-a.example")
        result = run_deploy(api, tmp_path)
        assert result.returncode == 0, result.stderr
        assert json.loads(result.stdout.splitlines()[-1]) == {"url": "http://gate.team-a.example"}
        assert list(api.objects) == [("team-a", "gate")]
        stored = api.get_object("team-a", "gate")
        (container,) = stored["spec"]["predictor"]["containers"]
        assert container["image"] == "registry.local/maskpipe:abc-serve"
        assert container["env"] == [{"name": "STORAGE_URI", "value": "s3://mlpipeline/v2/artifacts/maskpipe/run-1/export-model/model"}]
        path = "/apis/serving.kserve.io/v1beta1/namespaces/team-a/inferenceservices"
        assert api.requests[:2] == [("get", f"{path}/gate"), ("create", path)]


def test_deploy_replaces_an_existing_service_and_waits_for_its_new_generation(tmp_path):
    with FakeKubeAPI() as api:
        old = api.put_object("team-a", {
            "apiVersion": "serving.kserve.io/v1beta1", "kind": "InferenceService",
            "metadata": {"name": "gate", "namespace": "team-a"},
            "spec": {"predictor": {"containers": [{"name": "kserve-container", "image": "registry.local/maskpipe:old-serve"}]}},
        })  # fmt: skip
        api.mark_ready("team-a", "gate", "http://gate-old.team-a.example")

        def controller(obj):  # the new generation becomes Ready a little later, at its own URL
            generation = obj["metadata"]["generation"]
            timer = threading.Timer(1.0, api.mark_ready, ("team-a", "gate", f"http://gate-g{generation}.team-a.example"))
            timer.start()

        api.on_write = controller
        result = run_deploy(api, tmp_path)
        assert result.returncode == 0, result.stderr
        assert json.loads(result.stdout.splitlines()[-1]) == {"url": "http://gate-g2.team-a.example"}
        stored = api.get_object("team-a", "gate")
        assert stored["metadata"]["uid"] == old["metadata"]["uid"] and stored["metadata"]["generation"] == 2
        assert stored["spec"]["predictor"]["containers"][0]["image"] == "registry.local/maskpipe:abc-serve"
        assert [verb for verb, _ in api.requests].count("update") == 1 and "create" not in dict(api.requests)


def test_deploy_refused_by_rbac_names_the_namespace_the_verb_and_the_role_to_apply(tmp_path):
    with FakeKubeAPI() as api:
        api.forbidden = {"create"}
        message = error_line(run_deploy(api, tmp_path))
    assert "403 Forbidden" in message and "to create InferenceService team-a/gate" in message
    assert "in namespace 'team-a'" in message and DEPLOYER_RBAC in message
    assert 'cannot create resource "inferenceservices"' in message  # the API's own reason
    assert (ROOT / DEPLOYER_RBAC).is_file()


def test_a_service_that_never_becomes_ready_times_out_naming_it_and_its_last_condition(tmp_path):
    with FakeKubeAPI() as api:
        failing = {"type": "Ready", "status": "False", "reason": "RevisionFailed",
                   "message": "Revision \"gate-predictor-00001\" failed with message: Back-off pulling image."}  # fmt: skip
        api.on_write = lambda obj: api.set_status("team-a", "gate", {"observedGeneration": 1, "conditions": [failing]})
        started = time.monotonic()
        message = error_line(run_deploy(api, tmp_path, timeout_s=3))
    assert message.startswith("InferenceService team-a/gate was not Ready within 3 s")
    assert 'Ready=False (RevisionFailed: Revision "gate-predictor-00001" failed with message: Back-off pulling image.)' in message
    assert "kubectl -n team-a describe inferenceservice gate" in message
    assert time.monotonic() - started < 60


def test_deploy_to_a_cluster_without_kserve_says_to_install_it(tmp_path):
    with FakeKubeAPI(kserve_installed=False) as api:
        message = error_line(run_deploy(api, tmp_path))
    assert "has no InferenceService resource (serving.kserve.io/v1beta1) to get team-a/gate" in message
    assert "install KServe" in message


def test_a_service_deleted_while_the_step_waits_is_not_taken_for_a_missing_kserve(tmp_path):
    with FakeKubeAPI() as api:
        api.on_write = lambda obj: api.objects.pop(("team-a", "gate"))
        message = error_line(run_deploy(api, tmp_path))
    assert message.startswith("InferenceService team-a/gate is gone (404 on get") and "install KServe" not in message


def test_an_api_that_does_not_answer_is_named_with_the_kubeconfig_to_check(tmp_path):
    with FakeKubeAPI() as api:
        url = api.url
    result = run_deploy(api, tmp_path, namespace="team-a")  # its port is closed now
    message = error_line(result)
    assert message.startswith(f"cannot reach the Kubernetes API at {url} to get InferenceService team-a/gate")
    assert "KUBECONFIG" in message


def test_a_kubeconfig_without_a_namespace_is_refused_and_nothing_defaults_to_one(tmp_path):
    with FakeKubeAPI() as api:
        message = error_line(run_deploy(api, tmp_path, kubeconfig_namespace=None))
        assert api.requests == []
    assert "current context 'fake' names none" in message and "--deploy-namespace" in message
    assert deploy_model.component_spec.inputs["namespace"].default == ""
    assert pipeline.make_pipeline().pipeline_spec.root.input_definitions.parameters["deploy_namespace"].default_value.string_value == ""


@pytest.mark.parametrize("command", ["run-local", "submit"])
def test_a_name_that_is_not_a_dns_label_is_refused_before_any_step_runs_or_is_sent(command, tmp_path, capsys):
    out = tmp_path / "out"
    where = ["--output-dir", str(out)] if command == "run-local" else ["--host", "http://127.0.0.1:9"]  # nothing listens
    code = pipeline_cli.main([command, "--data", str(tmp_path), "--deploy", "--deploy-name", "Gate_1", *where])
    error = capsys.readouterr().err.strip()
    assert code == 2 and len(error.splitlines()) == 1
    assert "'Gate_1' is not a name KServe accepts" in error and error.endswith("--deploy-name gate-1")
    assert not out.exists()


def test_run_local_deploy_without_a_namespace_to_deploy_to_is_refused_before_any_step(tmp_path, capsys, monkeypatch):
    with FakeKubeAPI() as api:
        monkeypatch.setenv("KUBECONFIG", str(api.write_kubeconfig(tmp_path / "kubeconfig", namespace=None)))
        monkeypatch.setenv(SERVE_PYTHON_ENV, serve_python())
        out = tmp_path / "out"
        data = make_dataset(tmp_path / "data", eval_images=2).root  # passes the data-root check
        code = pipeline_cli.main(["run-local", "--data", str(data), "--deploy", "--output-dir", str(out)])
    error = capsys.readouterr().err.strip()
    assert code == 2 and len(error.splitlines()) == 1 and "--deploy-namespace" in error
    assert not out.exists() and api.requests == []


# ------------------------------------------------ run-local --deploy, end to end


class KServeStandIn:
    """KServe's part for a local API: on each write, serve the service's ``STORAGE_URI`` folder
    with its predictor container's arguments (``maskpipe serve`` in the serving environment, on
    a free port instead of 8080), then mark it Ready at that generation with the server's URL."""

    def __init__(self, api: FakeKubeAPI, log_dir: Path) -> None:
        self.api, self.log_dir = api, log_dir
        self.servers: list[ServerProcess] = []
        self.errors: list[str] = []

    def __call__(self, obj: dict) -> None:
        threading.Thread(target=self._serve, args=(obj,), daemon=True).start()

    def _serve(self, obj: dict) -> None:
        meta = obj["metadata"]
        try:
            (container,) = obj["spec"]["predictor"]["containers"]
            env = {e["name"]: e["value"] for e in container["env"]}
            assert env["STORAGE_URI"].startswith("file://"), env
            args = list(container["args"])
            assert args[0] == MODEL_MOUNT, args
            port_at = args.index("--http_port")
            extra = args[1:port_at] + args[port_at + 2:]
            server = ServerProcess(env["STORAGE_URI"].removeprefix("file://"), python=serve_python(),
                                   log_path=self.log_dir / f"{meta['name']}.log", extra_args=extra)  # fmt: skip
            self.servers.append(server)
            server.start()
            self.api.mark_ready(meta["namespace"], meta["name"], server.url, generation=meta["generation"])
        except Exception as exc:  # the test reads it; the deploy step would only time out
            self.errors.append(f"{type(exc).__name__}: {exc}")

    def stop(self) -> None:
        for server in self.servers:
            server.stop()


@pytest.mark.slow
def test_run_local_deploy_serves_the_exported_model_and_a_photo_gets_its_class(tmp_path):
    data = make_dataset(tmp_path / "data", eval_images=6)
    out = tmp_path / "out"
    tiny = [arg for override in TINY_OVERRIDES for arg in ("--set", override)]
    command = [sys.executable, str(ROOT / "pipeline.py"), "run-local", "--data", str(data.root), "--preset", "smoke",
               "--epochs", "1", "--val-fraction", "0.34", "--no-tta", *tiny, "--deploy", "--deploy-name", "gate",
               "--output-dir", str(out)]  # fmt: skip
    with FakeKubeAPI() as api:
        kserve = KServeStandIn(api, tmp_path)
        api.on_write = kserve
        env = {**os.environ, "KUBECONFIG": str(api.write_kubeconfig(tmp_path / "kubeconfig")),
               SERVE_PYTHON_ENV: serve_python(), "PYTHONPATH": str(ROOT)}  # fmt: skip
        try:
            run = subprocess.Popen(command, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
            deadline = time.monotonic() + 900
            while run.poll() is None and not kserve.errors and time.monotonic() < deadline:
                time.sleep(1)
            if run.poll() is None:
                run.kill()
            output = run.communicate()[0]
            assert not kserve.errors, kserve.errors
            assert run.returncode == 0, output[-4000:]

            (server,) = kserve.servers
            stored = api.get_object("team-a", "gate")
            served_dir = stored["spec"]["predictor"]["containers"][0]["env"][0]["value"].removeprefix("file://")
            assert re.search(rf"^served model: +{re.escape(served_dir)} ", output, re.M), output[-2000:]
            assert re.search(rf"^deployed at: +{re.escape(server.url)}$", output, re.M), output[-2000:]
            submission = pd.read_csv(out / "submission.csv")
            assert len(submission) == 6
            for image_id, expected in zip(submission["ImageID"], submission["ans"]):
                photo = (data.root / "eval" / "images" / image_id).read_bytes()
                reply = request(f"{server.url}/v1/models/gate:predict", v1_body([photo]))
                assert reply.status == 200, reply.body
                assert reply.body["predictions"][0]["class"] == expected, image_id
        finally:
            kserve.stop()

# ---------------------------------------------------------------- the component's wiring
# (k8s/serving/ and its overlays: tests/test_k8s.py)


def test_deploy_component_defaults_match_the_wiring():
    from components.deploy_model import deploy_model

    inputs = deploy_model.component_spec.inputs
    assert inputs["service_account"].default == DEFAULT_SERVICE_ACCOUNT
    assert inputs["name"].default == "maskpipe"
