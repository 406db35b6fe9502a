"""The maskpipe Kubeflow pipeline: which steps run, in what order, with what cluster settings.

    index-data -> train-mask, train-gender, train-age (no edges between them, one GPU each)
               -> export-model -> ensemble-infer (the exported model, ONNX Runtime on a CPU
                  node: what is scored is what is served) -> deploy
    With ``export=false``, ensemble-infer runs the three checkpoints with torch on a GPU node
    instead; deploy runs only with ``deploy=true``, after ensemble-infer has scored the model it
    serves. No step is cached (see ``_configure``), every pod has a deadline.

This module only wires tasks and cluster settings; each step is a component in ``components/``,
and each component wraps one ``maskpipe`` function. ``pipeline_cli/`` (the command line) imports
it, and ``pipeline.py`` (the entry point) re-exports it, so neither imports the other back.
"""

import inspect
import textwrap
from dataclasses import MISSING, asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple, get_type_hints

from kfp import compiler, dsl, kubernetes

from components import IMAGE, deploy_model, ensemble_infer, export_model, index_data, train_model, train_trainjob
from components.image import serving_image
from maskpipe.trainjob import TrainJobSettings

PIPELINE_NAME = "maskpipe"
TASKS = ("mask", "gender", "age")
# The Secret KFP 2.17 puts in each profile namespace (that namespace's own keys) and in
# `kubeflow` of a standalone install, with keys `accesskey` and `secretkey`.
DEFAULT_SECRET = "mlpipeline-minio-artifact"
# KFP >= 2.16 stores artifacts in SeaweedFS (Service `seaweedfs` in `kubeflow`, S3 on 9000);
# installs before 2.16 had MinIO at LEGACY_MINIO_ENDPOINT (`--minio-endpoint` for those).
DEFAULT_MINIO_ENDPOINT = "seaweedfs.kubeflow:9000"
LEGACY_MINIO_ENDPOINT = "minio-service.kubeflow:9000"
# Steps of STEP_TIMEOUTS / `--step-timeout STEP=...`.
STEPS = ("index", "train", "export", "infer", "deploy")
# How the training steps train: in their own pod (one GPU), or in a Kubeflow Trainer TrainJob.
TRAINERS = ("pod", "kubeflow")


def _param(help: str, default: Any = MISSING, *, flag: str = "", factory: Any = MISSING) -> Any:
    """A run parameter: its default, the help text (the DAG's parameter description and the
    flag's help) and its command-line flag when it is not ``--<name with dashes>``."""
    return field(default=default, default_factory=factory, metadata={"help": help, "flag": flag})


@dataclass(frozen=True)
class RunParameters:
    """The run parameters of the pipeline, written once: the pipeline function's signature and
    docstring (``make_pipeline``), the flags of ``pipeline.py run-local|submit|compile``
    (``pipeline_cli.arguments.param_args``) and the tests' tiny runs are derived from these fields."""

    data_root: str = _param("s3://bucket/prefix (MinIO) or a path mounted in the pods.", flag="--data")
    preset: str = _param("Config preset: default, original or smoke.", "default")
    epochs: int = _param("Training epochs per task; 0 keeps the preset's.", 0)
    batch_size: int = _param("Training batch size; 0 keeps the preset's.", 0)
    learning_rate: float = _param("Peak learning rate; 0 keeps the preset's.", 0.0, flag="--lr")
    architecture: str = _param("timm architecture of all three models; empty keeps the preset's.", "", flag="--arch")
    image_size: str = _param("Model input HEIGHTxWIDTH, e.g. 448x336; empty keeps the preset's.", "")
    val_fraction: float = _param("Fraction of people held out for validation.", 0.2)
    seed: int = _param("Seed of the split and of training.", 42)
    tta: bool = _param("Horizontal-flip test-time augmentation at inference.", True)
    overrides: List[str] = _param(
        "Extra key=value config overrides, applied last (e.g. train.optimizer=adamw).", flag="--set", factory=list
    )
    resume_bucket: str = _param("Bucket for per-epoch resume state of retried training pods.", "")
    export: bool = _param("Export the three models as one ONNX model folder (the served model).", True)
    export_precision: str = _param(
        "fp32, or int8 (ONNX Runtime static quantization calibrated on training photos; "
        "ensemble-infer then scores the int8 graph, which is served).", "fp32",
    )  # fmt: skip
    infer_backend: str = _param(
        "How ensemble-infer runs the models: auto (with export, the exported graph under ONNX "
        "Runtime, the served model, on a CPU node; with export=false, the checkpoints under torch "
        "on a GPU node), onnx, or torch (with export: the exported folder's checkpoints, on that "
        "CPU node).", "auto",
    )  # fmt: skip
    deploy: bool = _param("Serve the exported model as a KServe InferenceService (needs export).", False)
    deploy_name: str = _param("InferenceService name, also the model name in its URLs.", "maskpipe")
    deploy_namespace: str = _param("Namespace of the InferenceService; empty: the run's namespace.", "")

    def arguments(self) -> Dict[str, Any]:
        """Every parameter by name, as a run is given them."""
        return asdict(self)


def run_parameter_flag(name: str) -> str:
    """The command-line flag of the run parameter ``name`` (``--lr`` for learning_rate)."""
    meta = {f.name: f.metadata for f in fields(RunParameters)}[name]
    return meta["flag"] or "--" + name.replace("_", "-")


def run_parameter_help(name: str) -> str:
    return {f.name: f.metadata["help"] for f in fields(RunParameters)}[name]


def run_parameters_signature() -> inspect.Signature:
    """``RunParameters`` as a function signature (name, type, default), what KFP compiles into
    the pipeline's inputs."""
    types = get_type_hints(RunParameters)
    params = []
    for f in fields(RunParameters):
        default = f.default_factory() if f.default_factory is not MISSING else f.default
        default = inspect.Parameter.empty if default is MISSING else default
        kind = inspect.Parameter.POSITIONAL_OR_KEYWORD
        params.append(inspect.Parameter(f.name, kind, default=default, annotation=types[f.name]))
    return inspect.Signature(params)


def _run_parameters_doc() -> str:
    lines = ["Index -> three independent task trainings -> export -> ensemble inference -> deploy.", "", "Args:"]
    for f in fields(RunParameters):
        text = f"{f.name}: {f.metadata['help']}"
        lines += textwrap.wrap(text, 96, initial_indent="    ", subsequent_indent="        ")
    return "\n".join(lines) + "\n"


@dataclass(frozen=True)
class Resources:
    """Kubernetes requests and limits of one step (strings as Kubernetes writes them) and the
    deadline of its pod (``activeDeadlineSeconds``: a hung step must not hold a GPU for ever)."""

    cpu_request: str
    cpu_limit: str
    memory_request: str
    memory_limit: str
    timeout_s: int


@dataclass(frozen=True)
class PipelineOptions:
    """Compile-time settings: everything about the cluster that is not a run parameter.

    ``cluster=False`` (what ``run-local`` uses) leaves out resources, GPUs, environment and
    Kubernetes settings, which kfp.local ignores anyway, so a local run inherits this shell's
    environment (e.g. MINIO_* for s3:// data).
    """

    cluster: bool = True
    image: str = IMAGE
    # Empty: none compiled in, so the run's namespace decides (a Kubeflow profile's
    # `kfp-launcher` defaultPipelineRoot, else the backend's own default).
    pipeline_root: str = ""
    # MinIO credentials: secret keys -> MINIO_ACCESS_KEY / MINIO_SECRET_KEY.
    secret_name: str = DEFAULT_SECRET
    access_key_key: str = "accesskey"
    secret_key_key: str = "secretkey"
    # MINIO_ENDPOINT comes from this plain value, or from a key of the secret when set.
    minio_endpoint: str = DEFAULT_MINIO_ENDPOINT
    endpoint_secret_key: str = ""
    minio_secure: bool = False
    gpu_type: str = "nvidia.com/gpu"
    gpus: int = 1
    index_gpu: bool = False
    gpu_node_selector: Optional[Tuple[str, str]] = None
    gpu_toleration: Optional[Dict[str, Optional[str]]] = None
    image_pull_secret: str = ""
    shm_size: str = "8Gi"
    retries: int = 2
    retry_backoff: str = "60s"
    index_resources: Resources = Resources("2", "4", "4Gi", "8Gi", 2 * 3600)
    train_resources: Resources = Resources("4", "8", "24Gi", "32Gi", 24 * 3600)
    export_resources: Resources = Resources("2", "4", "8Gi", "16Gi", 3600)
    # ensemble-infer on the exported model: ONNX Runtime on CPU cores, no GPU.
    infer_resources: Resources = Resources("8", "16", "16Gi", "24Gi", 6 * 3600)
    # ensemble-infer on the three checkpoints (export=false): torch on a GPU.
    infer_gpu_resources: Resources = Resources("4", "8", "16Gi", "24Gi", 6 * 3600)
    deploy_resources: Resources = Resources("100m", "500m", "256Mi", "512Mi", 1800)
    # trainer="kubeflow": each training step creates a TrainJob of trainer_nodes nodes, each
    # with trainer_gpus GPUs (None: `gpus`) and train_resources' limits, and only follows it.
    trainer: str = "pod"
    trainer_nodes: int = 1
    trainer_gpus: Optional[int] = None
    trainjob_poll_s: float = 5.0  # how often a training step reads its TrainJob's status
    trainjob_step_resources: Resources = Resources("250m", "1", "2Gi", "4Gi", 24 * 3600 + 1800)

    def with_timeouts(self, timeouts: Dict[str, int]) -> "PipelineOptions":
        """These options with the pod deadline of each named step (``STEPS``) replaced."""
        unknown = sorted(set(timeouts) - set(STEPS))
        if unknown:
            raise ValueError(f"unknown step {unknown[0]!r}; steps: {', '.join(STEPS)}")
        changes = {}
        for step, seconds in timeouts.items():
            fields = [f"{step}_resources"] + (["infer_gpu_resources"] if step == "infer" else [])
            for name in fields:
                changes[name] = replace(getattr(self, name), timeout_s=seconds)
        if "train" in timeouts:  # the TrainJob's deadline ends it first, with its own reason
            changes["trainjob_step_resources"] = replace(self.trainjob_step_resources, timeout_s=timeouts["train"] + 1800)
        return replace(self, **changes)

    def trainjob_settings(self) -> TrainJobSettings:
        """The TrainJob each training step creates in trainer="kubeflow" mode."""
        train = self.train_resources
        return TrainJobSettings(
            image=self.image, num_nodes=self.trainer_nodes,
            gpus_per_node=self.gpus if self.trainer_gpus is None else self.trainer_gpus, gpu_type=self.gpu_type,
            cpu_per_node=train.cpu_limit, memory_per_node=train.memory_limit, shm_size=self.shm_size,
            timeout_s=train.timeout_s, secret_name=self.secret_name, access_key_key=self.access_key_key,
            secret_key_key=self.secret_key_key, endpoint_secret_key=self.endpoint_secret_key,
            minio_endpoint=self.minio_endpoint, minio_secure=self.minio_secure,
            image_pull_secret=self.image_pull_secret, poll_s=self.trainjob_poll_s,
        )  # fmt: skip


LOCAL_OPTIONS = PipelineOptions(cluster=False, retries=0)


# ---------------------------------------------------------------------------------------------
# the DAG


def make_pipeline(options: PipelineOptions = PipelineOptions()):
    """Build the pipeline function for these compile-time options."""

    def maskpipe_pipeline(*args, **kwargs):
        # KFP passes one channel per parameter, in the order of the signature below.
        p = RunParameters(*args, **kwargs)
        index_task = index_data(data_root=p.data_root, val_fraction=p.val_fraction, seed=p.seed)
        index_task.set_display_name("index-data")
        _configure(index_task, options, options.index_resources, gpu=options.index_gpu)

        models = {}
        if options.trainer not in TRAINERS:
            raise ValueError(f"unknown trainer {options.trainer!r}; trainers: {', '.join(TRAINERS)}")
        trainjob = options.trainer == "kubeflow"
        train_component = train_trainjob if trainjob else train_model
        extra = {"trainjob": options.trainjob_settings().to_dict()} if trainjob else {}
        for task in TASKS:
            train_task = train_component(
                task=task,
                index=index_task.outputs["index"],
                preset=p.preset,
                epochs=p.epochs,
                batch_size=p.batch_size,
                learning_rate=p.learning_rate,
                architecture=p.architecture,
                image_size=p.image_size,
                seed=p.seed,
                overrides=p.overrides,
                resume_bucket=p.resume_bucket,
                run_id=dsl.PIPELINE_JOB_ID_PLACEHOLDER,
                **extra,
            )
            train_task.set_display_name(f"train-{task}")
            if trainjob:  # the step only creates and follows its TrainJob: no GPU, no /dev/shm
                _configure(train_task, options, options.trainjob_step_resources, gpu=False)
            else:
                _configure(train_task, options, options.train_resources, gpu=True, shm=True)
            if options.retries > 0:
                train_task.set_retry(
                    num_retries=options.retries,
                    backoff_duration=options.retry_backoff,
                    backoff_factor=2.0,
                )
            models[task] = train_task.outputs["model"]

        infer_inputs = dict(
            index=index_task.outputs["index"],
            mask_model=models["mask"],
            gender_model=models["gender"],
            age_model=models["age"],
            preset=p.preset,
            overrides=p.overrides,
            tta=p.tta,
            backend=p.infer_backend,
        )
        # `== True`: a KFP condition on a run parameter, compiled, not a Python comparison.
        with dsl.If(p.export == True, name="export"):  # noqa: E712
            export_task = export_model(
                mask_model=models["mask"], gender_model=models["gender"], age_model=models["age"],
                index=index_task.outputs["index"], tta=p.tta, precision=p.export_precision,
            )  # fmt: skip
            export_task.set_display_name("export-model")
            _configure(export_task, options, options.export_resources, gpu=False)
            # The ensemble scores the exported model folder on a CPU node, where backend auto
            # is ONNX Runtime on the graph that gets served (fp32 or int8): the submission and
            # validation scores are those of the served model, not of its checkpoints.
            infer_task = ensemble_infer(**infer_inputs, exported_model=export_task.outputs["model"])
            infer_task.set_display_name("ensemble-infer")
            _configure(infer_task, options, options.infer_resources, gpu=False, shm=True)
            with dsl.If(p.deploy == True, name="deploy"):  # noqa: E712
                deploy_task = deploy_model(
                    model=export_task.outputs["model"], name=p.deploy_name, namespace=p.deploy_namespace,
                    serving_image=serving_image(options.image),
                )  # fmt: skip
                deploy_task.set_display_name("deploy")
                deploy_task.after(infer_task)  # serve only a model that has just been scored
                _configure(deploy_task, options, options.deploy_resources, gpu=False, image=serving_image(options.image))
        with dsl.Else(name="no-export"):
            infer_task = ensemble_infer(**infer_inputs)  # the three checkpoints, torch on a GPU
            infer_task.set_display_name("ensemble-infer")
            _configure(infer_task, options, options.infer_gpu_resources, gpu=True, shm=True)

    # The parameters KFP reads (inspect.signature honours __signature__, inspect.getdoc the
    # docstring's Args) are RunParameters' fields.
    maskpipe_pipeline.__signature__ = run_parameters_signature()
    maskpipe_pipeline.__doc__ = _run_parameters_doc()
    return dsl.pipeline(
        name=PIPELINE_NAME,
        description="Train mask, gender and age classifiers on face photos and ensemble them "
        "into the 18-class submission.",
        pipeline_root=options.pipeline_root or None,
    )(maskpipe_pipeline)


def _configure(
    task: dsl.PipelineTask,
    options: PipelineOptions,
    resources: Resources,
    *,
    gpu: bool,
    shm: bool = False,
    image: Optional[str] = None,
) -> None:
    """Apply the image and the cluster settings of one step (only the image for local runs);
    ``image``: the step's own image when it is not the pipeline image (the deploy step runs in
    the serving image).

    No step caches. KFP's cache key holds the input artifacts' ids, and index-data must run
    every time (the objects under a data prefix can change while its name stays), so every
    later step gets a new index artifact and a key that never matched an earlier run; the
    training steps also take the run id, which keys their resume state. A cache flag that
    cannot hit would only mislead (docs/pipeline.md, "Caching").
    """
    task.set_caching_options(False)
    if image is not None:
        if image != serving_image(IMAGE):
            task.set_container_image(image)
    elif options.image != IMAGE:
        task.set_container_image(options.image)
    if not options.cluster:
        return
    task.set_cpu_request(resources.cpu_request).set_cpu_limit(resources.cpu_limit)
    task.set_memory_request(resources.memory_request).set_memory_limit(resources.memory_limit)
    kubernetes.set_timeout(task, resources.timeout_s)
    if gpu and options.gpus > 0:
        task.set_accelerator_type(options.gpu_type).set_accelerator_limit(options.gpus)
        if options.gpu_node_selector:
            kubernetes.add_node_selector(task, *options.gpu_node_selector)
        if options.gpu_toleration:
            kubernetes.add_toleration(task, **options.gpu_toleration)
    else:
        # CUDA base images (pytorch/pytorch among them) set NVIDIA_VISIBLE_DEVICES=all; on a
        # node whose default container runtime is NVIDIA's, a pod that requested no GPU would
        # still see every GPU there (and ensemble-infer's auto would pick torch over the graph).
        task.set_env_variable("NVIDIA_VISIBLE_DEVICES", "void")
    if shm:
        # DataLoader workers share batches through /dev/shm; the container default is 64 MiB.
        kubernetes.empty_dir_mount(
            task, "dshm", "/dev/shm", medium="Memory", size_limit=options.shm_size
        )
    secret_env = {
        options.access_key_key: "MINIO_ACCESS_KEY",
        options.secret_key_key: "MINIO_SECRET_KEY",
    }
    if options.endpoint_secret_key:
        secret_env[options.endpoint_secret_key] = "MINIO_ENDPOINT"
    elif options.minio_endpoint:
        task.set_env_variable("MINIO_ENDPOINT", options.minio_endpoint)
    task.set_env_variable("MINIO_SECURE", "true" if options.minio_secure else "false")
    kubernetes.use_secret_as_env(task, options.secret_name, secret_env)
    if options.image_pull_secret:
        kubernetes.set_image_pull_secrets(task, [options.image_pull_secret])


def compile_pipeline(options: PipelineOptions, package_path: Path) -> Path:
    """Compile the pipeline for ``options`` into ``package_path`` (YAML)."""
    package_path = Path(package_path)
    package_path.parent.mkdir(parents=True, exist_ok=True)
    compiler.Compiler().compile(make_pipeline(options), str(package_path))
    return package_path
