"""The project image, built from a clean tree, and the whole pipeline run inside it.

Builds ``docker/Dockerfile.gpu`` with docker/build-image.sh (what ``make image`` runs) from a
copy of the repository's tracked and unignored files, then checks the image (``maskpipe
--version``, every runtime dependency and every maskpipe module imports, the CUDA torch, a
non-root user in group 0, no credential or CA file baked in), that a compiled pipeline names
the built image, and runs the pipeline with ``run-local --runner docker`` on a tiny synthetic
set served by the loopback S3 server: its submission must equal the subprocess runner's with
the same seed. Fault cases: a step failing inside its container, a container that dies at
once, an image that was never built, a build failing on a dependency.

Needs a container engine. When none answers and this runs as root on a machine with
apt-get, docker/engine/setup-podman.sh sets podman up first; otherwise the tests skip, unless
``MASKPIPE_REQUIRE_CONTAINERS=1`` (set by .ci/run), which makes that a failure.
Deselect with ``-m "not container"``. ``MASKPIPE_TEST_IMAGE`` names the tag to build
(default ``maskpipe:test``, so a developer's ``maskpipe:dev`` is left alone). With
``MASKPIPE_TEST_PREBUILT=1`` that image is tested as it is, not built (the image workflow
builds it itself and passes its commit as ``MASKPIPE_TEST_REVISION``).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import time
import tomllib
from pathlib import Path

import pandas as pd
import pytest
import yaml

from datafactory import make_dataset
from fixtures.images import build_image, clean_tree, run_in_image
from pipeline_cli import containers
from pipeline_cli.local_run import LocalRun, PipelineRunError, run_local
from tiny import TINY_OVERRIDES, tiny_pipeline_arguments

# The first test builds the image: on a fresh machine with the stand-in base ~8 min, more
# than the suite's 900 s per test when the machine is busy.
pytestmark = [pytest.mark.container, pytest.mark.timeout(2400)]

REPO = Path(__file__).resolve().parent.parent
PYPROJECT = tomllib.loads((REPO / "pyproject.toml").read_text())


# ---------------------------------------------------------------- the image


def test_the_image_builds_from_a_clean_tree_and_is_labelled_with_its_commit(engine, built_image):
    labels = engine.client.images.get(built_image.tag).labels
    assert labels["org.opencontainers.image.revision"] == built_image.revision
    assert labels["org.opencontainers.image.version"] == PYPROJECT["project"]["version"]
    assert re.search(rf"built {re.escape(built_image.tag)} with \w+ in \d+ s: [\d.]+ GB", built_image.output)
    print(f"\nimage build: {built_image.seconds:.0f} s; {built_image.output.strip().splitlines()[-1]}")


def test_maskpipe_version_runs_in_the_image(engine, built_image):
    output = run_in_image(engine, built_image.tag, ["maskpipe", "--version"])
    assert output.strip() == f"maskpipe {PYPROJECT['project']['version']}"


_IMPORT_EVERYTHING = """
import importlib, importlib.metadata as md, pkgutil, re, sys, torch
import maskpipe
names = md.packages_distributions()
modules = {}
for requirement in sys.argv[3:]:
    dist = re.split(r"[<>=!~;\\[ ]", requirement, maxsplit=1)[0]
    md.version(dist)  # installed at all
    tops = sorted(m for m, dists in names.items() if dist.lower().replace("_", "-") in
                  {d.lower().replace("_", "-") for d in dists} and not m.startswith("_"))
    assert tops, f"{dist}: no importable module"
    for module in tops:
        importlib.import_module(module)
    modules[dist] = tops
serve_only = set(sys.argv[1].split(","))  # in the serving image, not in this one
for info in pkgutil.walk_packages(maskpipe.__path__, "maskpipe."):
    if info.name.endswith(".__main__"):  # importing it runs the command line
        continue
    try:
        importlib.import_module(info.name)
    except ModuleNotFoundError as missing:
        if missing.name.split(".")[0] not in serve_only:
            raise
        print("serving-image module", info.name, "needs", missing.name)
import kfp.kubernetes
expect_cuda = {"maskpipe": True, "maskpipe-cpu": False}[sys.argv[2]]
assert bool(torch.version.cuda) is expect_cuda, f"torch {torch.__version__}: not the build {sys.argv[2]} carries"
print("imported", len(modules), "dependencies and every maskpipe module of this image; torch", torch.__version__)
"""


def test_every_runtime_dependency_and_maskpipe_module_imports_in_the_image(engine, built_image):
    dependencies = PYPROJECT["project"]["dependencies"]
    title = engine.client.images.get(built_image.tag).labels["org.opencontainers.image.title"]
    output = run_in_image(engine, built_image.tag,
                          ["python", "-c", _IMPORT_EVERYTHING, ",".join(_serve_only_modules()), title, *dependencies])
    assert f"imported {len(dependencies)} dependencies" in output
    print("\n" + output.strip())


def _serve_only_modules() -> set[str]:
    """Top-level modules of what only the serving image installs (docker/serve-requirements.txt
    less pyproject.toml's dependencies, plus kserve's web framework): maskpipe.serve and
    maskpipe.serve_app need them, and they are not here."""
    def names(lines):
        return {re.split(r"[<>=!~;\[ ]", l.strip(), maxsplit=1)[0].lower().replace("-", "_")
                for l in lines if l.strip() and not l.strip().startswith("#")}
    serve = names((REPO / "docker" / "serve-requirements.txt").read_text().splitlines())
    # maskpipe.serve_app speaks HTTP through the web framework kserve brings (its own pins).
    serve |= {"fastapi", "starlette"}
    return serve - names(PYPROJECT["project"]["dependencies"])


def test_the_image_runs_as_uid_1001_in_group_0(engine, built_image):
    assert engine.client.images.get(built_image.tag).attrs["Config"]["User"] == "1001:0"
    assert run_in_image(engine, built_image.tag, ["id", "-u"]).strip() == "1001"
    assert run_in_image(engine, built_image.tag, ["id", "-g"]).strip() == "0"


_FIND_BAKED_SECRETS = """
import os, pathlib, sys
extra = [p.read_text() for p in pathlib.Path("/host-extra-cas").glob("*.crt")]
bodies = ["".join(l for l in text.splitlines() if l and not l.startswith("-----"))[:200] for text in extra]
found = []
for root, dirs, files in os.walk("/"):
    dirs[:] = [d for d in dirs if os.path.join(root, d) not in ("/proc", "/sys", "/dev", "/host-extra-cas")]
    for name in files:
        path = os.path.join(root, name)
        if name in (".netrc", ".git-credentials", ".pypirc", "minio.env", "credentials") or path.endswith(
                (".docker/config.json", ".aws/config", ".config/pip/pip.conf")):
            found.append("credential file " + path)
        if name.endswith((".crt", ".pem", ".cer")) and bodies and os.path.isfile(path):
            text = "".join(open(path, errors="replace").read().split())
            found += [f"host CA {i} in {path}" for i, body in enumerate(bodies) if body in text]
print("\\n".join(found) or "clean", len(bodies))
"""


def test_no_credential_or_host_ca_was_baked_into_the_image(engine, built_image):
    import docker

    image = engine.client.images.get(built_image.tag)
    env_names = [entry.split("=", 1)[0] for entry in image.attrs["Config"]["Env"]]
    assert not [n for n in env_names if re.search(r"SECRET|PASSWORD|TOKEN|ACCESS_KEY|MINIO_|AWS_", n)], env_names
    history = json.dumps(image.history())
    assert "BEGIN CERTIFICATE" not in history and "ca-certificates.crt" not in history
    assert not re.search(r"(SECRET|PASSWORD|TOKEN)[A-Z_]*=\S", history)
    # The CAs this machine added (e.g. a TLS proxy's) are mounted to compare, never copied.
    extra_cas = Path("/usr/local/share/ca-certificates")
    mounts = [docker.types.Mount("/host-extra-cas", str(extra_cas), type="bind", read_only=True)] \
        if extra_cas.is_dir() else []
    output = run_in_image(engine, built_image.tag, ["python", "-c", _FIND_BAKED_SECRETS], mounts=mounts, user="0")
    verdict, checked = output.strip().rsplit(None, 1) if output.strip() != "clean" else ("clean", "0")
    assert verdict == "clean", output
    print(f"\nchecked the image for {checked} host-added CA certificate(s)")


def test_a_compiled_pipeline_names_the_built_image(built_image, tmp_path):
    package = tmp_path / "pipeline.yaml"
    subprocess.run([sys.executable, "pipeline.py", "compile", "--image", built_image.tag, "-o", str(package)],
                   cwd=REPO, check=True, capture_output=True, timeout=120)
    spec = next(yaml.safe_load_all(package.read_text()))
    from components.image import serving_image

    images = {name: ex["container"]["image"] for name, ex in spec["deploymentSpec"]["executors"].items()}
    used = {c["executorLabel"] for c in spec["components"].values() if "executorLabel" in c}
    assert set(images) == used and len(used) >= 5, images
    # the deploy step runs in the serving image (docker/Dockerfile.serve) of the same tag
    expected = {name: serving_image(built_image.tag) if name == "exec-deploy-model" else built_image.tag
                for name in images}
    assert images == expected


# ---------------------------------------------------------------- the pipeline in containers


@pytest.fixture(scope="module")
def s3_data(s3_server, tmp_path_factory):
    """A tiny synthetic set in a fresh bucket of the loopback S3 server; MINIO_* point at it."""
    from maskpipe import storage

    local = make_dataset(tmp_path_factory.mktemp("s3-data") / "data", eval_images=12).root
    bucket = f"maskpipe-containers-{os.getpid()}"
    with pytest.MonkeyPatch.context() as patch:
        for name in [n for n in os.environ if n.startswith(("MINIO_", "AWS_", "MASKPIPE_S3_"))]:
            patch.delenv(name)
        for name, value in s3_server.env().items():
            patch.setenv(name, value)
        patch.setenv("MASKPIPE_CACHE_DIR", str(tmp_path_factory.mktemp("s3-cache")))
        storage._clients.clear()
        storage._verified_buckets.clear()
        storage.upload_dir(local, f"s3://{bucket}/data")
        yield f"s3://{bucket}/data", local


@pytest.fixture(scope="module")
def both_runs(s3_data, built_image, tmp_path_factory) -> dict[str, LocalRun]:
    """The same run (data on S3, same seed) through the subprocess runner and in containers,
    with the export on, as a default run has it: export-model, then ensemble-infer on the
    exported folder (ONNX Runtime in the image)."""
    data_uri, _ = s3_data
    out = tmp_path_factory.mktemp("both-runs")
    arguments = tiny_pipeline_arguments(data_uri, export=True)
    runs = {"subprocess": run_local(arguments, out / "subprocess")}
    started = time.monotonic()
    runs["containers"] = run_local(arguments, out / "containers", image=built_image.tag)
    print(f"\npipeline in containers: {time.monotonic() - started:.0f} s")
    return runs


def test_the_ensemble_in_its_container_scored_the_model_exported_in_another(both_runs):
    run = both_runs["containers"]
    from maskpipe.model_card import read_model_dir

    read_model_dir(run.model_dir)  # every file hashed: written whole by the image's user
    log = run.output_dir / "container-logs" / run.run_dir.name / "ensemble-infer.log"
    assert "running the exported model, onnx backend" in log.read_text()


def test_the_pipeline_in_containers_gives_the_subprocess_runners_submission(both_runs):
    in_containers = pd.read_csv(both_runs["containers"].submission)
    here = pd.read_csv(both_runs["subprocess"].submission)
    assert len(in_containers) == 12
    assert in_containers["ImageID"].tolist() == here["ImageID"].tolist()
    differing = in_containers.loc[in_containers["ans"] != here["ans"], "ImageID"].tolist()
    assert not differing, f"classes differ for {differing}"


def test_every_step_ran_in_a_container_as_the_image_user(both_runs):
    run = both_runs["containers"]
    steps = sorted(p for p in run.run_dir.iterdir() if p.is_dir())
    # the export branch: export-model and its ensemble-infer (not the no-export branch's -2)
    assert {p.name for p in steps} == {
        "index-data", "train-model", "train-model-2", "train-model-3", "export-model", "ensemble-infer"}
    logs = run.output_dir / "container-logs" / run.run_dir.name
    assert sorted(p.stem for p in logs.iterdir()) == [p.name for p in steps]
    for step in steps:
        assert (step / "executor_output.json").stat().st_uid == containers.IMAGE_UID, step
    assert (run.run_dir.parent.stat().st_mode & 0o2775) == 0o2775, "the pipeline root is group-writable"


def test_the_s3_keys_reach_the_containers_but_no_file_of_the_run(both_runs, s3_server):
    # they were used (the data came from S3 inside the containers) ...
    run = both_runs["containers"]
    assert "s3://" in (run.index_dir / "report.json").read_text()
    # ... and are neither in the log, the step logs, the compiled steps nor any output
    leaked = [str(path) for path in run.output_dir.rglob("*") if path.is_file()
              and s3_server.secret_key.encode() in path.read_bytes()]
    assert not leaked


def test_a_step_failing_in_its_container_reports_step_exit_code_and_log_tail(built_image, tmp_path):
    data = make_dataset(tmp_path / "data", eval_images=2).root
    bad = tiny_pipeline_arguments(data, overrides=[*TINY_OVERRIDES, "train.epochs=three"])
    with pytest.raises(PipelineRunError) as failure:
        run_local(bad, tmp_path / "out", image=built_image.tag)
    message = str(failure.value)
    first = message.splitlines()[0]
    assert re.fullmatch(r"step train-(mask|gender|age) \(task train-model(-\d)?\) failed in image "
                        rf"\S*{re.escape(built_image.tag)}: exit code 1", first), message
    assert "last lines of its log:" in message and "train.epochs" in message and "three" in message
    log_path = Path(re.search(r"its full log: (\S+)", message).group(1))
    assert "ConfigError" in log_path.read_text()
    (index_parquet,) = (tmp_path / "out" / "runs").glob("*/index-data/index/index.parquet")
    assert index_parquet.stat().st_size > 0, "the steps that ran keep their outputs"
    assert not (tmp_path / "out" / "submission.csv").exists()


def test_a_container_that_dies_at_once_reports_its_exit_code_and_log(engine, built_image):
    result = containers._run_step_container(
        engine.client, built_image.tag, ["sh", "-c", "echo dying now; exit 3"], volumes={})
    assert (result.exit_code, result.log_tail) == (3, "dying now")
    assert not engine.client.containers.list(all=True, filters={"ancestor": built_image.tag}), \
        "the step's container is removed once its exit code and log are read"


def test_a_step_silent_for_over_a_minute_is_waited_for(engine, built_image):
    # kfp's own docker client gives up reading a log stream after 60 s without a line
    from kfp.local import docker_task_handler

    run = containers.ContainerRun(image=built_image.tag, docker_host=engine.docker_host)
    with containers.steps_in_containers(run):
        code = docker_task_handler.run_docker_container(
            client=engine.client, image=built_image.tag, volumes={},
            command=["sh", "-c", "sleep 65; echo still here; exit 5"])
    assert code == 5 and run.steps[-1].log_tail == "still here"


def test_run_local_with_an_image_that_was_never_built_names_the_build_command(engine, tmp_path):
    make_dataset(tmp_path / "data", eval_images=2)  # data run-local's own check accepts
    started = time.monotonic()
    result = subprocess.run(
        [sys.executable, "pipeline.py", "run-local", "--runner", "docker", "--image", "maskpipe:never-built",
         "--data", str(tmp_path / "data"), "--output-dir", str(tmp_path / "out")],
        cwd=REPO, capture_output=True, text=True, timeout=120,
        env=dict(os.environ, DOCKER_HOST=engine.docker_host, PYTHONPATH=str(REPO)))
    assert time.monotonic() - started < 30
    assert result.returncode == 1 and "Traceback" not in result.stderr
    (line,) = result.stderr.strip().splitlines()
    assert "image maskpipe:never-built is not in the container engine" in line
    assert line.endswith("Fix: make image IMAGE_TAG=maskpipe:never-built")


@pytest.fixture
def misconfigured_podman(engine, tmp_path):
    """podman's API served with a setting this machine refuses (an nproc limit above the
    current one): what an engine without docker/engine/setup-podman.sh's settings does."""
    components = [c.get("Name", "") for c in engine.client.version().get("Components", [])]
    if shutil.which("podman") is None or not any("podman" in c.lower() for c in components):
        pytest.skip("needs the image in podman's store (the misconfiguration is a podman setting)")
    conf = tmp_path / "containers.conf"
    conf.write_text('[containers]\ndefault_ulimits = ["nproc=99999999:99999999"]\n'
                    '[engine]\nruntime = "runc"\ncgroup_manager = "cgroupfs"\n')
    socket_path = tmp_path / "podman.sock"
    service = subprocess.Popen(["podman", "system", "service", "--time=0", f"unix://{socket_path}"],
                               env=dict(os.environ, CONTAINERS_CONF=str(conf)),
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 20
        while not socket_path.is_socket() and time.monotonic() < deadline:
            time.sleep(0.2)
        yield f"unix://{socket_path}"
    finally:
        service.terminate()
        service.wait(timeout=30)


def test_run_local_on_an_engine_not_configured_for_this_machine_names_the_setup_script(
        engine, built_image, misconfigured_podman, tmp_path):
    make_dataset(tmp_path / "data", eval_images=2)  # data run-local's own check accepts
    started = time.monotonic()
    result = subprocess.run(
        [sys.executable, "pipeline.py", "run-local", "--runner", "docker", "--image", built_image.tag,
         "--data", str(tmp_path / "data"), "--output-dir", str(tmp_path / "out")],
        cwd=REPO, capture_output=True, text=True, timeout=120,
        env=dict(os.environ, DOCKER_HOST=misconfigured_podman, PYTHONPATH=str(REPO)))
    assert time.monotonic() - started < 60
    assert result.returncode == 1 and "Traceback" not in result.stderr
    (line,) = result.stderr.strip().splitlines()
    assert "rlimit" in line and "not configured for this machine" in line
    assert line.endswith("Fix: sudo docker/engine/setup-podman.sh")
    assert not engine.client.containers.list(all=True, filters={"status": "created"}), \
        "the container that would not start is removed"


def test_a_build_failing_on_a_dependency_ends_in_one_line_naming_it(engine, built_image, tmp_path):
    if os.environ.get("MASKPIPE_TEST_PREBUILT") == "1":
        pytest.skip("a prebuilt image is under test; docker/build-image.sh is not")
    tree = clean_tree(tmp_path / "tree")
    pyproject = tree / "pyproject.toml"
    text = pyproject.read_text()
    pyproject.write_text(text.replace("dependencies = [\n", 'dependencies = [\n    "maskpipe-no-such-package==1.0",\n', 1))
    result = build_image(tree, "maskpipe:broken-dependency-test", engine, "test")
    assert result.returncode != 0
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("build-image.sh: building maskpipe:broken-dependency-test from docker/Dockerfile.gpu failed")
    assert "maskpipe-no-such-package==1.0" in last and "Fix: correct its pin in pyproject.toml" in last
    assert "Traceback" not in result.stderr.splitlines()[-1]
