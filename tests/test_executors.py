"""Every executor of the cluster-cluster_spec pipeline starts, as the KFP launcher starts it.

For each executor in the YAML that ``pipeline.py compile`` writes, its own ``command`` and
``args`` run under ``sh`` in a fresh interpreter with only what its image holds: the serving
environment for the serving image (the deploy step), the training environment for the others;
``maskpipe`` importable, but neither ``components/`` nor ``pipeline.py``/``pipeline_dag.py`` (the images ship
neither: a lightweight component carries only its function's source). The launcher's
``{{$}}`` is replaced by a real executor input: every input parameter (its default, or a
value), every artifact a temporary folder. So kfp's own executor imports the embedded source,
defines the function, parses its inputs and calls it; the folders are empty, so the body then
stops at its first real work. The test passes when the body was entered and what stopped it is
not a missing name or module (what a default naming a module constant, or an import the image
lacks, raises).
"""

from __future__ import annotations

import subprocess
import sys

import pytest
from fixtures.launcher import STARTED_EXECUTORS, assert_started, executors, image_env, passed_artifacts, run_executor
from fixtures.serving import serve_python

from components.image import serving_image

# each executor runs as a process, as the KFP launcher starts it
pytestmark = pytest.mark.integration


@pytest.mark.parametrize("environment", ["training", "serving"])
def test_the_step_environment_holds_maskpipe_and_kfp_but_not_this_checkout(environment, tmp_path):
    """Otherwise a step's source that imports components/ or pipeline.py would pass here and
    fail in the pod."""
    python = serve_python() if environment == "serving" else sys.executable
    code = ("import importlib.util as u, kfp, maskpipe; "
            "print([n for n in ('components', 'pipeline', 'pipeline_dag', 'pipeline_cli') if u.find_spec(n)])")  # fmt: skip
    result = subprocess.run(["python3", "-c", code], cwd=tmp_path, env=image_env(python, tmp_path),
                            capture_output=True, text=True, timeout=120)  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"


def test_every_executor_is_one_of_the_pipeline_steps(cluster_spec):
    labels = set(executors(cluster_spec))
    assert labels == {
        "exec-index-data", "exec-train-model", "exec-train-model-2", "exec-train-model-3",
        "exec-export-model", "exec-ensemble-infer", "exec-ensemble-infer-2", "exec-deploy-model",
    }  # fmt: skip
    images = {label: container["image"] for label, (container, _) in executors(cluster_spec).items()}
    assert images["exec-deploy-model"] == serving_image(images["exec-index-data"])


@pytest.mark.parametrize("label", STARTED_EXECUTORS)
def test_executor_starts_its_function_in_its_own_environment(cluster_spec, label, tmp_path):
    container, component = executors(cluster_spec)[label]
    result = run_executor(container, component, passed_artifacts(cluster_spec, label), tmp_path)
    assert_started(label, container, result.returncode, result.stdout + result.stderr)
