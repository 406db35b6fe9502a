"""The compiled pipeline spec: DAG, cluster settings, and no secret values in the YAML.

These read the YAML that ``python pipeline.py compile`` writes (two documents: the pipeline
spec, then the Kubernetes platform spec), not the Python objects that produced it.
"""

from __future__ import annotations

import os
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest
import yaml

import pipeline
from components import IMAGE, SERVE_IMAGE
from pipeline_dag import LOCAL_OPTIONS, PipelineOptions, make_pipeline

REPO = Path(__file__).resolve().parent.parent
TRAIN_STEPS = ("train-mask", "train-gender", "train-age")
FAKE_SECRETS = {
    "MINIO_ACCESS_KEY": "FAKEACCESSKEY-spec-7f3a9c",
    "MINIO_SECRET_KEY": "fakeSecretKey/spec+91b2e4",
    "AWS_ACCESS_KEY_ID": "FAKEAWSKEY-spec-55d0",
    "AWS_SECRET_ACCESS_KEY": "fakeAwsSecret/spec+6c1f",
    "KF_PIPELINES_TOKEN": "fake-bearer-token-spec-0a8d",
}


def compile_yaml(tmp_path: Path, *extra: str, env: dict[str, str] | None = None) -> str:
    """Compile through the CLI in a fresh process (as a user would) and return the YAML."""
    out = tmp_path / "pipeline.yaml"
    subprocess.run(
        [sys.executable, str(REPO / "pipeline.py"), "compile", "-o", str(out), *extra],
        check=True,
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
    )
    return out.read_text()


@pytest.fixture(scope="module")
def compiled(tmp_path_factory) -> tuple[str, dict, dict]:
    """(raw YAML, pipeline spec, Kubernetes platform spec) compiled with fake credentials set."""
    tmp = tmp_path_factory.mktemp("spec")
    env = {**os.environ, **FAKE_SECRETS}
    text = compile_yaml(
        tmp,
        "--gpu-node-selector", "nvidia.com/gpu.present=true",
        "--gpu-toleration", "nvidia.com/gpu:NoSchedule",
        "--secret-name", "maskpipe-minio",
        env=env,
    )  # fmt: skip
    spec, platform = list(yaml.safe_load_all(text))
    return text, spec, platform


def tasks_by_display_name(spec: dict) -> dict[str, dict]:
    """Every step (not the condition groups) by display name, in the root DAG and inside
    conditions. A name that two branches share is qualified by its branch:
    ensemble-infer runs in the `export` branch (on the exported model) or in `no-export`."""
    groups = {}  # component name of a sub-DAG -> the display name of the group that runs it
    found = []  # (step display name, the group it is in, its task)
    for owner, dag in _dags(spec).items():
        for task in dag["tasks"].values():
            if "dag" in spec["components"][task["componentRef"]["name"]]:
                groups[task["componentRef"]["name"]] = task["taskInfo"]["name"]
            else:
                found.append((task["taskInfo"]["name"], owner, task))
    names = [name for name, _, _ in found]
    return {name if names.count(name) == 1 else f"{name}@{groups[owner]}": task for name, owner, task in found}


def _dags(spec: dict) -> dict[str, dict]:
    """Component name ("root" for the pipeline) -> its DAG."""
    return {"root": spec["root"]["dag"], **{n: c["dag"] for n, c in spec["components"].items() if "dag" in c}}


# The two ensemble-infer tasks, one per branch of the `export` condition.
INFER_STEPS = ("ensemble-infer@export", "ensemble-infer@no-export")
# The steps that get a GPU: training, and ensemble-infer on the three checkpoints. The
# export branch's ensemble-infer scores the exported graph with ONNX Runtime on a CPU node.
GPU_STEPS = (*TRAIN_STEPS, "ensemble-infer@no-export")
ALL_STEPS = ("index-data", *TRAIN_STEPS, "export-model", *INFER_STEPS, "deploy")


def key_of(spec: dict, display_name: str) -> str:
    for key, task in spec["root"]["dag"]["tasks"].items():
        if task["taskInfo"]["name"] == display_name:
            return key
    raise KeyError(display_name)


def executor_of(spec: dict, display_name: str) -> str:
    task = tasks_by_display_name(spec)[display_name]
    component = spec["components"][task["componentRef"]["name"]]
    return component["executorLabel"]


def k8s_of(spec: dict, platform: dict, display_name: str) -> dict:
    executors = platform["platforms"]["kubernetes"]["deploymentSpec"]["executors"]
    return executors.get(executor_of(spec, display_name), {})


def container_of(spec: dict, display_name: str) -> dict:
    return spec["deploymentSpec"]["executors"][executor_of(spec, display_name)]["container"]


def test_pipeline_has_the_named_steps_and_the_export_branches(compiled):
    _, spec, _ = compiled
    assert sorted(tasks_by_display_name(spec)) == sorted(
        ["index-data", *TRAIN_STEPS, "export-model", *INFER_STEPS, "deploy"]
    )
    root = {task["taskInfo"]["name"] for task in spec["root"]["dag"]["tasks"].values()}
    assert root == {"index-data", *TRAIN_STEPS, "condition-branches-1"}


def _branch(spec: dict, display_name: str) -> tuple[dict, dict]:
    """(the condition task, its sub-DAG's tasks by display name)."""
    for tasks in [spec["root"]["dag"]["tasks"], *(c["dag"]["tasks"] for c in spec["components"].values() if "dag" in c)]:
        for task in tasks.values():
            if task["taskInfo"]["name"] == display_name and "triggerPolicy" in task:
                dag = spec["components"][task["componentRef"]["name"]]["dag"]["tasks"]
                return task, {t["taskInfo"]["name"]: t for t in dag.values()}
    raise KeyError(display_name)


def test_export_runs_after_the_three_trainings_unless_export_is_false(compiled):
    _, spec, _ = compiled
    branch, inside = _branch(spec, "export")
    assert branch["triggerPolicy"]["condition"] == "inputs.parameter_values['pipelinechannel--export'] == true"
    artifacts = inside["export-model"]["inputs"]["artifacts"]
    assert set(artifacts) == {"mask_model", "gender_model", "age_model", "index"}  # index: int8 calibration
    parameters = inside["export-model"]["inputs"]["parameters"]
    assert parameters["tta"] == {"componentInputParameter": "pipelinechannel--tta"}
    assert parameters["precision"] == {"componentInputParameter": "pipelinechannel--export_precision"}
    assert container_of_component(spec, "export-model")["image"] == IMAGE


def test_deploy_runs_only_when_asked_in_the_serving_image_on_the_exported_model(compiled):
    _, spec, _ = compiled
    branch, inside = _branch(spec, "deploy")
    assert branch["triggerPolicy"]["condition"] == "inputs.parameter_values['pipelinechannel--deploy'] == true"
    deploy = inside["deploy"]
    assert set(branch["dependentTasks"]) == {"export-model", "ensemble-infer"}  # deploy what was scored
    assert deploy["inputs"]["artifacts"]["model"] == {"componentInputArtifact": "pipelinechannel--export-model-model"}
    assert deploy["inputs"]["parameters"]["name"] == {"componentInputParameter": "pipelinechannel--deploy_name"}
    assert container_of_component(spec, "deploy-model")["image"] == SERVE_IMAGE
    assert deploy["inputs"]["parameters"]["serving_image"]["runtimeValue"]["constant"] == SERVE_IMAGE
    assert deploy["cachingOptions"] == {}  # never reuse a cached deployment


def test_image_flag_gives_deploy_the_matching_serving_image(tmp_path):
    spec = next(yaml.safe_load_all(compile_yaml(tmp_path, "--image", "registry.local/maskpipe:abc123")))
    assert container_of_component(spec, "deploy-model")["image"] == "registry.local/maskpipe:abc123-serve"
    assert container_of_component(spec, "export-model")["image"] == "registry.local/maskpipe:abc123"


def container_of_component(spec: dict, component: str) -> dict:
    return spec["deploymentSpec"]["executors"][f"exec-{component}"]["container"]


def test_training_steps_depend_only_on_indexing(compiled):
    _, spec, _ = compiled
    tasks = tasks_by_display_name(spec)
    index_key = key_of(spec, "index-data")
    assert "dependentTasks" not in tasks["index-data"]
    for name in TRAIN_STEPS:
        assert tasks[name]["dependentTasks"] == [index_key], name


def test_the_export_branches_wait_for_indexing_and_all_three_trainings(compiled):
    _, spec, _ = compiled
    (branches,) = [t for t in spec["root"]["dag"]["tasks"].values() if t["taskInfo"]["name"] == "condition-branches-1"]
    assert set(branches["dependentTasks"]) == {key_of(spec, name) for name in ("index-data", *TRAIN_STEPS)}


def test_inference_scores_the_exported_model_when_export_is_on(compiled):
    _, spec, _ = compiled
    _, inside = _branch(spec, "export")
    infer = inside["ensemble-infer"]
    assert infer["dependentTasks"] == ["export-model"]
    artifacts = infer["inputs"]["artifacts"]
    assert artifacts["exported_model"] == {"taskOutputArtifact": {"outputArtifactKey": "model", "producerTask": "export-model"}}
    for task in ("mask", "gender", "age"):  # the checkpoints still come from the trainings
        assert artifacts[f"{task}_model"] == {"componentInputArtifact": f"pipelinechannel--train-model{_suffix(task)}-model"}
    assert infer["inputs"]["parameters"]["backend"] == {"componentInputParameter": "pipelinechannel--infer_backend"}


def test_inference_runs_the_checkpoints_when_export_is_off(compiled):
    _, spec, _ = compiled
    branch, inside = _branch(spec, "no-export")
    assert branch["triggerPolicy"]["condition"] == "!(inputs.parameter_values['pipelinechannel--export'] == true)"
    infer = inside["ensemble-infer"]
    assert "exported_model" not in infer["inputs"]["artifacts"]
    assert set(infer["inputs"]["artifacts"]) == {"index", "mask_model", "gender_model", "age_model"}


def _suffix(task: str) -> str:
    """train-model, train-model-2, train-model-3: the task keys of the mask, gender, age trainings."""
    return {"mask": "", "gender": "-2", "age": "-3"}[task]


def test_each_training_step_trains_its_own_task(compiled):
    _, spec, _ = compiled
    tasks = tasks_by_display_name(spec)
    for task in ("mask", "gender", "age"):
        params = tasks[f"train-{task}"]["inputs"]["parameters"]
        assert params["task"]["runtimeValue"]["constant"] == task
        # the resume mirror is keyed by the run id the backend fills in at run time
        assert params["run_id"]["runtimeValue"]["constant"] == "{{$.pipeline_job_uuid}}"
        assert params["resume_bucket"] == {"componentInputParameter": "resume_bucket"}


def test_every_step_has_one_html_report_for_the_ui(compiled):
    _, spec, _ = compiled
    for name in ("index-data", *TRAIN_STEPS, *INFER_STEPS):
        component = spec["components"][tasks_by_display_name(spec)[name]["componentRef"]["name"]]
        outputs = component["outputDefinitions"]["artifacts"]
        html = [key for key, value in outputs.items() if value["artifactType"]["schemaTitle"] == "system.HTML"]
        assert html == ["html_report"], name


def test_training_and_checkpoint_inference_request_one_gpu_and_nothing_else_does(compiled):
    _, spec, _ = compiled
    for name in GPU_STEPS:
        accelerator = container_of(spec, name)["resources"]["accelerator"]
        assert accelerator["resourceType"] == "nvidia.com/gpu", name
        assert int(accelerator["resourceCount"]) == 1, name
    for name in set(ALL_STEPS) - set(GPU_STEPS):
        assert "accelerator" not in container_of(spec, name).get("resources", {}), name


def test_exported_model_is_scored_on_a_cpu_node_that_sees_no_gpu(compiled):
    """On a cluster the export branch scores the served graph: no GPU is requested, and the
    CUDA base image's NVIDIA_VISIBLE_DEVICES=all is overridden, so backend auto cannot find CUDA
    (on a node whose default runtime is NVIDIA's) and runs ONNX Runtime."""
    _, spec, _ = compiled
    container = container_of(spec, "ensemble-infer@export")
    assert "accelerator" not in container["resources"]
    env = {e["name"]: e["value"] for e in container["env"]}
    assert env["NVIDIA_VISIBLE_DEVICES"] == "void"
    assert int(container["resources"]["resourceCpuLimit"]) >= 8  # ONNX Runtime uses the cores
    gpu_env = {e["name"] for e in container_of(spec, "ensemble-infer@no-export")["env"]}
    assert "NVIDIA_VISIBLE_DEVICES" not in gpu_env  # the device plugin decides there


def test_index_gpu_flag_gives_indexing_a_gpu(tmp_path):
    spec = next(yaml.safe_load_all(compile_yaml(tmp_path, "--index-gpu")))
    assert container_of(spec, "index-data")["resources"]["accelerator"]["resourceCount"] == "1"


def test_every_step_has_cpu_and_memory_requests_and_limits(compiled):
    _, spec, _ = compiled
    for name in ALL_STEPS:
        resources = container_of(spec, name)["resources"]
        for field in ("resourceCpuRequest", "resourceCpuLimit", "resourceMemoryRequest", "resourceMemoryLimit"):
            assert resources.get(field), (name, field)


def test_gpu_steps_mount_memory_backed_dev_shm(compiled):
    _, spec, platform = compiled
    for name in (*TRAIN_STEPS, *INFER_STEPS):
        mounts = k8s_of(spec, platform, name)["emptyDirMounts"]
        assert [m["mountPath"] for m in mounts] == ["/dev/shm"], name
        assert mounts[0]["medium"] == "Memory"


def test_every_step_gets_minio_keys_from_the_secret(compiled):
    _, spec, platform = compiled
    for name in ALL_STEPS:
        (secret,) = k8s_of(spec, platform, name)["secretAsEnv"]
        assert secret["secretNameParameter"]["runtimeValue"]["constant"] == "maskpipe-minio"
        env = {m["envVar"]: m["secretKey"] for m in secret["keyToEnv"]}
        assert env == {"MINIO_ACCESS_KEY": "accesskey", "MINIO_SECRET_KEY": "secretkey"}
        plain_env = {e["name"]: e["value"] for e in container_of(spec, name)["env"]}
        assert plain_env["MINIO_ENDPOINT"] == "seaweedfs.kubeflow:9000"  # KFP 2.16+'s store
        assert "MINIO_ACCESS_KEY" not in plain_env and "MINIO_SECRET_KEY" not in plain_env


def test_endpoint_can_come_from_the_secret(tmp_path):
    text = compile_yaml(tmp_path, "--endpoint-secret-key", "endpoint")
    spec, platform = list(yaml.safe_load_all(text))
    (secret,) = k8s_of(spec, platform, "train-age")["secretAsEnv"]
    assert {m["envVar"] for m in secret["keyToEnv"]} == {
        "MINIO_ACCESS_KEY", "MINIO_SECRET_KEY", "MINIO_ENDPOINT",
    }  # fmt: skip
    assert "MINIO_ENDPOINT" not in {e["name"] for e in container_of(spec, "train-age")["env"]}


def test_default_secret_is_the_one_kfp_puts_in_every_namespace(tmp_path):
    spec, platform = list(yaml.safe_load_all(compile_yaml(tmp_path)))
    (secret,) = k8s_of(spec, platform, "index-data")["secretAsEnv"]
    assert secret["secretNameParameter"]["runtimeValue"]["constant"] == "mlpipeline-minio-artifact"
    assert {m["secretKey"] for m in secret["keyToEnv"]} == {"accesskey", "secretkey"}


def test_older_installs_get_minio_service_by_the_endpoint_flag(tmp_path):
    spec = next(yaml.safe_load_all(compile_yaml(tmp_path, "--minio-endpoint", pipeline.LEGACY_MINIO_ENDPOINT)))
    env = {e["name"]: e["value"] for e in container_of(spec, "train-mask")["env"]}
    assert env["MINIO_ENDPOINT"] == "minio-service.kubeflow:9000"


def test_gpu_steps_get_node_selector_and_toleration_when_asked(compiled):
    _, spec, platform = compiled
    for name in GPU_STEPS:
        k8s = k8s_of(spec, platform, name)
        assert k8s["nodeSelector"]["labels"] == {"nvidia.com/gpu.present": "true"}
        assert k8s["tolerations"] == [
            {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}
        ]
    for name in set(ALL_STEPS) - set(GPU_STEPS):
        assert "nodeSelector" not in k8s_of(spec, platform, name), name


def test_no_node_selector_or_toleration_by_default(tmp_path):
    spec, platform = list(yaml.safe_load_all(compile_yaml(tmp_path)))
    k8s = k8s_of(spec, platform, "train-mask")
    assert "nodeSelector" not in k8s and "tolerations" not in k8s


def test_training_steps_retry(compiled):
    _, spec, _ = compiled
    tasks = tasks_by_display_name(spec)
    for name in TRAIN_STEPS:
        assert tasks[name]["retryPolicy"]["maxRetryCount"] == 2, name
    assert "retryPolicy" not in tasks["index-data"]


def test_no_step_caches_because_no_cache_key_could_hit(compiled):
    """KFP's cache key holds the ids of the input artifacts. index-data must rerun every time
    (a data prefix can change under the same name), so every later step gets a new index
    artifact and could never hit; the trainings also take the per-run run id. See
    docs/pipeline.md, "Caching"."""
    _, spec, _ = compiled
    tasks = tasks_by_display_name(spec)
    for name in ALL_STEPS:
        assert tasks[name]["cachingOptions"].get("enableCache", False) is False, name
    for name in TRAIN_STEPS:
        assert tasks[name]["inputs"]["parameters"]["run_id"]["runtimeValue"]["constant"] == "{{$.pipeline_job_uuid}}"
    index_artifact = {"taskOutputArtifact": {"outputArtifactKey": "index", "producerTask": key_of(spec, "index-data")}}
    for name in TRAIN_STEPS:
        assert tasks[name]["inputs"]["artifacts"]["index"] == index_artifact, name


def test_there_is_no_cache_flag(tmp_path):
    result = subprocess.run(
        [sys.executable, str(REPO / "pipeline.py"), "compile", "-o", str(tmp_path / "p.yaml"), "--cache-training"],
        cwd=REPO, capture_output=True, text=True,
    )  # fmt: skip
    assert result.returncode == 2 and "--cache-training" in result.stderr


def test_every_step_has_a_pod_deadline(compiled):
    _, spec, platform = compiled
    expected = {"index-data": 7200, "export-model": 3600, "deploy": 1800,
                **dict.fromkeys(TRAIN_STEPS, 86400), **dict.fromkeys(INFER_STEPS, 21600)}  # fmt: skip
    for name in ALL_STEPS:
        assert int(k8s_of(spec, platform, name)["activeDeadlineSeconds"]) == expected[name], name


def test_step_timeout_flag_sets_one_step_or_all(tmp_path):
    spec, platform = list(yaml.safe_load_all(compile_yaml(tmp_path, "--step-timeout", "all=3h", "--step-timeout", "train=90m")))
    for name in ALL_STEPS:
        expected = 90 * 60 if name in TRAIN_STEPS else 3 * 3600
        assert int(k8s_of(spec, platform, name)["activeDeadlineSeconds"]) == expected, name


@pytest.mark.parametrize("value", ["train", "train=0", "train=5x", "fit=1h"])
def test_bad_step_timeout_is_rejected_with_the_expected_form(tmp_path, value):
    result = subprocess.run(
        [sys.executable, str(REPO / "pipeline.py"), "compile", "-o", str(tmp_path / "p.yaml"), "--step-timeout", value],
        cwd=REPO, capture_output=True, text=True,
    )  # fmt: skip
    assert result.returncode == 2
    (line,) = result.stderr.strip().splitlines()
    assert "--step-timeout" in line and value in line and "train=12h" in line
    assert not (tmp_path / "p.yaml").exists()


def test_default_image_is_pinned_to_this_checkouts_commit(tmp_path):
    """CI publishes :sha-<commit> for every commit on main; :main moves, and a node that has
    it already (IfNotPresent) would run a stale image."""
    commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO, capture_output=True, text=True, check=True).stdout.strip()
    env = {k: v for k, v in os.environ.items() if k not in ("MASKPIPE_IMAGE", "MASKPIPE_SERVE_IMAGE")}
    spec = next(yaml.safe_load_all(compile_yaml(tmp_path, env=env)))
    assert container_of(spec, "train-mask")["image"] == f"ghcr.io/maskpipe/maskpipe:sha-{commit}"
    assert container_of_component(spec, "deploy-model")["image"] == f"ghcr.io/maskpipe/maskpipe:sha-{commit}-serve"


def test_moving_tag_only_when_chosen(tmp_path):
    spec = next(yaml.safe_load_all(compile_yaml(tmp_path, "--image", "ghcr.io/maskpipe/maskpipe:main")))
    assert container_of(spec, "train-mask")["image"] == "ghcr.io/maskpipe/maskpipe:main"


def test_without_git_the_default_image_is_refused_with_the_fix(tmp_path):
    """A checkout without git cannot name its commit: the cluster compile says so instead of
    falling back to the moving tag."""
    env = {k: v for k, v in os.environ.items() if k not in ("MASKPIPE_IMAGE", "MASKPIPE_SERVE_IMAGE")}
    env["PATH"] = str(Path(sys.executable).parent)  # no git on PATH
    result = subprocess.run(
        [sys.executable, str(REPO / "pipeline.py"), "compile", "-o", str(tmp_path / "p.yaml")],
        cwd=REPO, env=env, capture_output=True, text=True,
    )  # fmt: skip
    assert result.returncode == 2
    (line,) = result.stderr.strip().splitlines()
    assert "--image" in line and ":sha-" in line and ":main" in line
    assert not (tmp_path / "p.yaml").exists()
    # Named explicitly, the moving tag is a choice, not a fallback.
    spec = next(yaml.safe_load_all(compile_yaml(tmp_path, env={**env, "MASKPIPE_IMAGE": "ghcr.io/maskpipe/maskpipe:main"})))
    assert container_of(spec, "train-mask")["image"] == "ghcr.io/maskpipe/maskpipe:main"


def test_steps_run_in_the_project_image_without_pip_installs(compiled):
    text, spec, _ = compiled
    for name in ("index-data", *TRAIN_STEPS, *INFER_STEPS):
        container = container_of(spec, name)
        assert container["image"] == IMAGE
        assert "pip install" not in " ".join(container["command"]), name
    assert "pip install" not in text


def test_image_flag_replaces_the_image_of_every_step(tmp_path):
    spec = next(yaml.safe_load_all(compile_yaml(tmp_path, "--image", "registry.local/maskpipe:abc123")))
    for name in ("index-data", *TRAIN_STEPS, *INFER_STEPS):
        assert container_of(spec, name)["image"] == "registry.local/maskpipe:abc123"


def test_pipeline_parameters_and_defaults(compiled):
    _, spec, _ = compiled
    params = spec["root"]["inputDefinitions"]["parameters"]
    assert set(params) == {
        "data_root", "preset", "epochs", "batch_size", "learning_rate", "architecture",
        "image_size", "val_fraction", "seed", "tta", "overrides", "resume_bucket",
        "export", "export_precision", "infer_backend", "deploy", "deploy_name", "deploy_namespace",
    }  # fmt: skip
    assert params["infer_backend"]["defaultValue"] == "auto"
    assert params["export_precision"]["defaultValue"] == "fp32"
    assert params["export"]["defaultValue"] is True and params["deploy"]["defaultValue"] is False
    assert "defaultValue" not in params["data_root"]  # must be given per run
    assert params["preset"]["defaultValue"] == "default"
    assert params["overrides"]["parameterType"] == "LIST"
    assert params["resume_bucket"]["defaultValue"] == ""


def test_no_pipeline_root_is_compiled_in_by_default(compiled):
    """The UI pre-fills a run's root from the spec, and a run's root overrides the Kubeflow
    profile's own (minio://mlpipeline/private-artifacts/<ns>/v2/artifacts), outside which the
    namespace's keys may not write."""
    text, spec, _ = compiled
    assert "defaultPipelineRoot" not in spec
    assert "v2/artifacts" not in text


def test_pipeline_root_flag_compiles_it_in(tmp_path):
    spec = next(yaml.safe_load_all(compile_yaml(tmp_path, "--pipeline-root", "minio://mlpipeline/shared/maskpipe")))
    assert spec["defaultPipelineRoot"] == "minio://mlpipeline/shared/maskpipe"


def test_no_secret_value_anywhere_in_the_yaml(compiled):
    text, _, _ = compiled
    for name, value in FAKE_SECRETS.items():
        assert value not in text, f"{name}'s value leaked into the compiled pipeline"


@pytest.mark.parametrize(
    "flag, value",
    [("--gpu-toleration", "nvidia.com/gpu:Sometimes"), ("--gpu-node-selector", "no-equals-sign")],
)
def test_bad_cluster_flags_are_rejected_with_the_expected_form(tmp_path, flag, value):
    result = subprocess.run(
        [sys.executable, str(REPO / "pipeline.py"), "compile", "-o", str(tmp_path / "p.yaml"), flag, value],
        cwd=REPO,
        capture_output=True,
        text=True,
    )
    assert result.returncode == 2
    assert flag in result.stderr and value in result.stderr
    assert not (tmp_path / "p.yaml").exists()


# ---------------------------------------------------------------------------------------------
# --gpus-per-task: N GPUs and N torchrun processes per training step


_BINARY = {"Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40}


def _amount(quantity: str) -> float:
    """A Kubernetes quantity as a number (8Gi -> bytes, 500m -> 0.5), to compare sizes."""
    for suffix, factor in _BINARY.items():
        if quantity.endswith(suffix):
            return float(quantity[: -len(suffix)]) * factor
    return float(quantity[:-1]) / 1000 if quantity.endswith("m") else float(quantity)


@pytest.fixture(scope="module")
def one_and_two_gpus_per_task(tmp_path_factory) -> tuple[tuple[dict, dict], tuple[dict, dict]]:
    """((spec, platform) of a default compile, the same with --gpus-per-task 2)."""
    tmp = tmp_path_factory.mktemp("gpus-per-task")
    one = list(yaml.safe_load_all(compile_yaml(tmp / "one")))
    two = list(yaml.safe_load_all(compile_yaml(tmp / "two", "--gpus-per-task", "2")))
    return tuple(one), tuple(two)


def _processes_env(container: dict) -> str | None:
    return {e["name"]: e["value"] for e in container.get("env", [])}.get("MASKPIPE_TRAIN_PROCESSES")


def test_gpus_per_task_gives_each_training_step_that_many_gpus_and_torchrun_processes(one_and_two_gpus_per_task):
    _, (spec, _) = one_and_two_gpus_per_task
    for name in TRAIN_STEPS:
        container = container_of(spec, name)
        assert container["resources"]["accelerator"]["resourceCount"] == "2", name
        assert _processes_env(container) == "2", name  # maskpipe.steps.train then runs torchrun


def test_gpus_per_task_scales_the_training_pods_cpu_memory_and_shm_with_it(one_and_two_gpus_per_task):
    (spec1, platform1), (spec2, platform2) = one_and_two_gpus_per_task
    for name in TRAIN_STEPS:
        one, two = container_of(spec1, name)["resources"], container_of(spec2, name)["resources"]
        for field in ("resourceCpuRequest", "resourceCpuLimit", "resourceMemoryRequest", "resourceMemoryLimit"):
            assert _amount(two[field]) == 2 * _amount(one[field]), (name, field)
        (shm1,), (shm2,) = k8s_of(spec1, platform1, name)["emptyDirMounts"], k8s_of(spec2, platform2, name)["emptyDirMounts"]
        assert _amount(shm2["sizeLimit"]) == 2 * _amount(shm1["sizeLimit"]), name
        assert k8s_of(spec2, platform2, name)["activeDeadlineSeconds"] == k8s_of(spec1, platform1, name)["activeDeadlineSeconds"]


def test_gpus_per_task_leaves_every_other_step_as_it_was(one_and_two_gpus_per_task):
    (spec1, platform1), (spec2, platform2) = one_and_two_gpus_per_task
    for name in set(ALL_STEPS) - set(TRAIN_STEPS):
        assert container_of(spec2, name) == container_of(spec1, name), name
        assert k8s_of(spec2, platform2, name) == k8s_of(spec1, platform1, name), name


def test_one_gpu_per_task_compiles_exactly_the_default_pipeline(tmp_path):
    default = compile_yaml(tmp_path / "default")
    assert compile_yaml(tmp_path / "one", "--gpus-per-task", "1") == default
    assert "MASKPIPE_TRAIN_PROCESSES" not in default


def test_gpus_per_task_on_cpu_nodes_runs_that_many_processes_without_a_gpu(tmp_path):
    spec, platform = list(yaml.safe_load_all(compile_yaml(tmp_path, "--gpus", "0", "--gpus-per-task", "3")))
    for name in TRAIN_STEPS:
        container = container_of(spec, name)
        assert "accelerator" not in container["resources"], name
        assert _processes_env(container) == "3", name
        assert {e["name"]: e["value"] for e in container["env"]}["NVIDIA_VISIBLE_DEVICES"] == "void"
        assert _amount(container["resources"]["resourceCpuRequest"]) == 3 * _amount(
            PipelineOptions().train_resources.cpu_request
        )


@pytest.mark.parametrize(
    "flags, said",
    [
        (["--gpus-per-task", "0"], "0 is too small: use 1 or more"),
        (["--gpus-per-task", "two"], "'two' is not a whole number"),
        (["--gpus", "2", "--gpus-per-task", "2"], "--gpus 2 with --gpus-per-task 2"),
    ],
)
def test_a_bad_gpus_per_task_is_refused_in_one_line(tmp_path, flags, said):
    result = subprocess.run(
        [sys.executable, str(REPO / "pipeline.py"), "compile", "-o", str(tmp_path / "p.yaml"), *flags],
        cwd=REPO, capture_output=True, text=True,
    )  # fmt: skip
    assert result.returncode == 2
    assert said in result.stderr and len(result.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "p.yaml").exists()


def test_a_local_run_passes_gpus_per_task_to_its_training_steps_only():
    """run-local compiles without cluster settings (kfp.local ignores them), but the process
    count still reaches the training steps, through the environment kfp.local gives them."""
    from google.protobuf import json_format

    spec = make_pipeline(replace(LOCAL_OPTIONS, gpus_per_task=2)).pipeline_spec
    for key, executor in json_format.MessageToDict(spec.deployment_spec)["executors"].items():
        env = {e["name"]: e["value"] for e in executor["container"].get("env", [])}
        assert env.get("MASKPIPE_TRAIN_PROCESSES") == ("2" if key.startswith("exec-train-model") else None), key
        assert "resources" not in executor["container"], key
