"""Every executor of the cluster-compiled pipeline starts, as the KFP launcher starts it.

For each executor in the YAML that ``pipeline.py compile`` writes, its own ``command`` and
``args`` run under ``sh`` in a fresh interpreter with only what its image holds: the serving
environment for the serving image (the deploy step), the training environment for the others;
``maskpipe`` importable, but neither ``components/`` nor ``pipeline.py`` (the images ship
neither: a lightweight component carries only its function's source). The launcher's
``{{$}}`` is replaced by a real executor input: every input parameter (its default, or a
value), every artifact a temporary folder. So kfp's own executor imports the embedded source,
defines the function, parses its inputs and calls it; the folders are empty, so the body then
stops at its first real work. The test passes when the body was entered and what stopped it is
not a missing name or module (what a default naming a module constant, or an import the image
lacks, raises).
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from fixtures.serving import serve_python

from components.image import serving_image

# each executor runs as a process, as the KFP launcher starts it
pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parent.parent
# Values for parameters without a default; every other parameter gets its default.
REQUIRED_VALUES = {
    "task": "mask",
    "data_root": "/nonexistent/maskpipe-data",
    "serving_image": "registry.local/maskpipe:sha-0-serve",
}
# Replacing defaults: the smoke preset loads no pretrained weights (the default downloads them
# before reading the index), and a namespace keeps the deploy step off the pod's token files.
OVERRIDES = {"preset": "smoke", "namespace": "team-a"}
# One of each function (train-model-2 and -3 run train-model's source with other values).
STARTED_EXECUTORS = ["exec-index-data", "exec-train-model", "exec-export-model", "exec-ensemble-infer",
                     "exec-ensemble-infer-2", "exec-deploy-model"]  # fmt: skip
BROKEN_START = ("NameError", "ModuleNotFoundError", "ImportError", "SyntaxError")


@pytest.fixture(scope="module")
def compiled(tmp_path_factory) -> dict:
    out = tmp_path_factory.mktemp("spec") / "pipeline.yaml"
    subprocess.run(
        [sys.executable, str(REPO / "pipeline.py"), "compile", "-o", str(out)],
        check=True, cwd=REPO, capture_output=True, text=True,
    )  # fmt: skip
    return next(yaml.safe_load_all(out.read_text()))


def executors(spec: dict) -> dict[str, tuple[dict, dict]]:
    """Executor label -> (its container, the component spec that uses it)."""
    by_label = {c["executorLabel"]: c for c in spec["components"].values() if "executorLabel" in c}
    return {label: (e["container"], by_label[label]) for label, e in spec["deploymentSpec"]["executors"].items()}


def passed_artifacts(spec: dict, label: str) -> set[str]:
    """The input artifacts that the task(s) running executor ``label`` are given in the DAG
    (an optional one, such as ensemble-infer's exported_model, only in the export branch)."""
    names = set()
    for dag in [spec["root"]["dag"], *(c["dag"] for c in spec["components"].values() if "dag" in c)]:
        for task in dag["tasks"].values():
            if spec["components"][task["componentRef"]["name"]].get("executorLabel") == label:
                names |= set(task.get("inputs", {}).get("artifacts", {}))
    return names


def executor_input(component: dict, passed: set[str], work: Path, *, remote_inputs: bool = False) -> dict:
    """A minimal executor input as the launcher writes it: values for every parameter (an
    integral number as JSON writes it, as the Go launcher does: 42, not 42.0) and a folder
    (its local path as the URI) for every artifact the task is given."""
    definitions = component.get("inputDefinitions", {})
    parameters = {}
    for name, spec in definitions.get("parameters", {}).items():
        value = OVERRIDES.get(name, spec.get("defaultValue", REQUIRED_VALUES.get(name)))
        parameters[name] = int(value) if spec["parameterType"] == "NUMBER_INTEGER" else value

    def artifact(name: str, spec: dict, kind: str) -> dict:
        folder = work / kind / name
        if kind == "in":
            folder.mkdir(parents=True)
        uri = str(folder)
        if remote_inputs and kind == "in":  # read by URI only (the deploy step hands it to KServe)
            uri = f"minio://mlpipeline/private-artifacts/team-a/v2/artifacts/{name}"
        return {"artifacts": [{"name": name, "type": {"schemaTitle": spec["artifactType"]["schemaTitle"]},
                               "uri": uri, "metadata": {}}]}  # fmt: skip

    inputs = {n: artifact(n, s, "in") for n, s in definitions.get("artifacts", {}).items() if n in passed}
    outputs_def = component.get("outputDefinitions", {})
    outputs = {n: artifact(n, s, "out") for n, s in outputs_def.get("artifacts", {}).items()}
    out_params = {n: {"outputFile": str(work / "out" / "parameters" / n)} for n in outputs_def.get("parameters", {})}
    return {
        "inputs": {"parameterValues": parameters, "artifacts": inputs},
        "outputs": {"artifacts": outputs, "parameters": out_params, "outputFile": str(work / "executor_output.json")},
    }


def image_env(python: str, work: Path) -> dict[str, str]:
    """The environment of a step's container: ``python`` first on PATH as ``python3``, and
    only maskpipe beside the environment's packages, as `pip install .` puts it into the images."""
    site = work / "site"
    site.mkdir(exist_ok=True)
    if not (site / "maskpipe").exists():
        (site / "maskpipe").symlink_to(REPO / "maskpipe")
    return {
        "PATH": f"{Path(python).parent}{os.pathsep}/usr/bin{os.pathsep}/bin",
        "HOME": str(work),
        "PYTHONPATH": str(site),
        "KUBECONFIG": str(work / "no-kubeconfig"),  # the deploy step must not reach a cluster
        "MASKPIPE_PROGRESS": "0",
    }


def is_serving(container: dict) -> bool:
    """Whether the executor runs in the serving image (the deploy step)."""
    return container["image"].endswith("-serve")


def launcher_argv(container: dict, component: dict, passed: set[str], work: Path) -> list[str]:
    """``container``'s command and args as the launcher starts them, ``{{$}}`` filled in."""
    payload = json.dumps(executor_input(component, passed, work, remote_inputs=is_serving(container)))
    return [*container["command"], *[payload if a == "{{$}}" else a for a in container["args"]]]


def run_executor(container: dict, component: dict, passed: set[str], work: Path) -> subprocess.CompletedProcess:
    """Start ``container``'s command and args as the launcher does, in this machine's venvs."""
    python = serve_python() if is_serving(container) else sys.executable
    argv = launcher_argv(container, component, passed, work)
    return subprocess.run(argv, cwd=work, env=image_env(python, work), capture_output=True, text=True, timeout=300)


def assert_started(label: str, container: dict, returncode: int, log: str) -> None:
    """The function's own frame is in the traceback: kfp defined it and called it with the
    parsed inputs, and its body ran until the empty folders stopped it; what stopped it is not
    a missing name or module."""
    function = container["args"][container["args"].index("--function_to_execute") + 1]
    assert returncode != 0, f"{label}: ran to the end on empty folders?\n{log[-3000:]}"
    frame = re.search(rf'ephemeral_component\.py", line \d+, in {function}\n', log)
    assert frame, f"{label}: {function} was never entered:\n{log[-3000:]}"
    last = [line for line in log.splitlines() if line.strip()][-1]
    assert not last.startswith(BROKEN_START), f"{label}: {last}\n{log[-3000:]}"


@pytest.mark.parametrize("environment", ["training", "serving"])
def test_the_step_environment_holds_maskpipe_and_kfp_but_not_this_checkout(environment, tmp_path):
    """Otherwise a step's source that imports components/ or pipeline.py would pass here and
    fail in the pod."""
    python = serve_python() if environment == "serving" else sys.executable
    code = ("import importlib.util as u, kfp, maskpipe; "
            "print([n for n in ('components', 'pipeline', 'pipeline_cli') if u.find_spec(n)])")  # fmt: skip
    result = subprocess.run(["python3", "-c", code], cwd=tmp_path, env=image_env(python, tmp_path),
                            capture_output=True, text=True, timeout=120)  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"


def test_every_executor_is_one_of_the_pipeline_steps(compiled):
    labels = set(executors(compiled))
    assert labels == {
        "exec-index-data", "exec-train-model", "exec-train-model-2", "exec-train-model-3",
        "exec-export-model", "exec-ensemble-infer", "exec-ensemble-infer-2", "exec-deploy-model",
    }  # fmt: skip
    images = {label: container["image"] for label, (container, _) in executors(compiled).items()}
    assert images["exec-deploy-model"] == serving_image(images["exec-index-data"])


@pytest.mark.parametrize("label", STARTED_EXECUTORS)
def test_executor_starts_its_function_in_its_own_environment(compiled, label, tmp_path):
    container, component = executors(compiled)[label]
    result = run_executor(container, component, passed_artifacts(compiled, label), tmp_path)
    assert_started(label, container, result.returncode, result.stdout + result.stderr)
