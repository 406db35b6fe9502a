"""The maskpipe Kubeflow pipeline and its command line.

    index-data -> train-mask, train-gender, train-age (no edges between them) -> ensemble-infer

Commands:
    python pipeline.py compile [-o pipeline.yaml]          compile for a cluster
    python pipeline.py run-local --data DIR [--preset smoke]  run every step here (kfp.local)
    python pipeline.py submit --host URL [...]              start a run on a cluster
    python pipeline.py upload --host URL [...]              register the pipeline or a new version

This file only wires tasks and cluster settings; each step is a component in ``components/``,
and each component wraps one ``maskpipe`` function.
"""

import argparse
import dataclasses
import datetime
import json
import os
import re
import shutil
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

from kfp import compiler, dsl, kubernetes

from components import IMAGE, ensemble_infer, index_data, train_model
from maskpipe.errors import MaskpipeError

PIPELINE_NAME = "maskpipe"
TASKS = ("mask", "gender", "age")
DEFAULT_PIPELINE_ROOT = "minio://mlpipeline/v2/artifacts"
# The secret every standard KFP install copies into each profile namespace.
DEFAULT_SECRET = "mlpipeline-minio-artifact"
DEFAULT_MINIO_ENDPOINT = "minio-service.kubeflow:9000"
TOKEN_ENV = "KF_PIPELINES_TOKEN"
TOKEN_FILE_ENV = "KF_PIPELINES_TOKEN_FILE"
COOKIE_ENV = "KF_PIPELINES_COOKIE"


class PipelineRunError(RuntimeError):
    """A local pipeline run failed; the message names the step and the cause."""


@dataclass(frozen=True)
class Resources:
    """Kubernetes requests and limits of one step (strings as Kubernetes writes them)."""

    cpu_request: str
    cpu_limit: str
    memory_request: str
    memory_limit: str


@dataclass(frozen=True)
class PipelineOptions:
    """Compile-time settings: everything about the cluster that is not a run parameter.

    ``cluster=False`` (what ``run-local`` uses) leaves out resources, GPUs, environment and
    Kubernetes settings, which kfp.local ignores anyway, so a local run inherits this shell's
    environment (e.g. MINIO_* for s3:// data).
    """

    cluster: bool = True
    image: str = IMAGE
    pipeline_root: str = DEFAULT_PIPELINE_ROOT
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
    cache_training: bool = False
    index_resources: Resources = Resources("2", "4", "4Gi", "8Gi")
    train_resources: Resources = Resources("4", "8", "24Gi", "32Gi")
    infer_resources: Resources = Resources("4", "8", "16Gi", "24Gi")


LOCAL_OPTIONS = PipelineOptions(cluster=False, pipeline_root="", retries=0)


# ---------------------------------------------------------------------------------------------
# the DAG


def make_pipeline(options: PipelineOptions = PipelineOptions()):
    """Build the pipeline function for these compile-time options."""

    @dsl.pipeline(
        name=PIPELINE_NAME,
        description="Train mask, gender and age classifiers on face photos and ensemble them "
        "into the 18-class submission.",
        pipeline_root=options.pipeline_root or None,
    )
    def maskpipe_pipeline(
        data_root: str,
        preset: str = "default",
        epochs: int = 0,
        batch_size: int = 0,
        learning_rate: float = 0.0,
        architecture: str = "",
        image_size: str = "",
        val_fraction: float = 0.2,
        seed: int = 42,
        tta: bool = True,
        overrides: List[str] = [],
        resume_bucket: str = "",
    ):
        """Index -> three independent task trainings -> ensemble inference.

        Args:
            data_root: ``s3://bucket/prefix`` (MinIO) or a path mounted in the pods.
            preset: Config preset: default, original or smoke.
            epochs: Training epochs per task; 0 keeps the preset's.
            batch_size: Training batch size; 0 keeps the preset's.
            learning_rate: Peak learning rate; 0 keeps the preset's.
            architecture: timm architecture of all three models; empty keeps the preset's.
            image_size: Model input HEIGHTxWIDTH, e.g. 448x336; empty keeps the preset's.
            val_fraction: Fraction of people held out for validation.
            seed: Seed of the split and of training.
            tta: Horizontal-flip test-time augmentation at inference.
            overrides: Extra key=value config overrides, applied last.
            resume_bucket: Bucket for per-epoch resume state of retried training pods.
        """
        index_task = index_data(data_root=data_root, val_fraction=val_fraction, seed=seed)
        index_task.set_display_name("index-data")
        _configure(index_task, options, options.index_resources, gpu=options.index_gpu)
        index_task.set_caching_options(False)  # data under a prefix can change between runs

        models = {}
        for task in TASKS:
            train_task = train_model(
                task=task,
                index=index_task.outputs["index"],
                preset=preset,
                epochs=epochs,
                batch_size=batch_size,
                learning_rate=learning_rate,
                architecture=architecture,
                image_size=image_size,
                seed=seed,
                overrides=overrides,
                resume_bucket=resume_bucket,
                run_id=dsl.PIPELINE_JOB_ID_PLACEHOLDER,
            )
            train_task.set_display_name(f"train-{task}")
            _configure(train_task, options, options.train_resources, gpu=True, shm=True)
            train_task.set_caching_options(options.cache_training)
            if options.retries > 0:
                train_task.set_retry(
                    num_retries=options.retries,
                    backoff_duration=options.retry_backoff,
                    backoff_factor=2.0,
                )
            models[task] = train_task.outputs["model"]

        infer_task = ensemble_infer(
            index=index_task.outputs["index"],
            mask_model=models["mask"],
            gender_model=models["gender"],
            age_model=models["age"],
            preset=preset,
            overrides=overrides,
            tta=tta,
        )
        infer_task.set_display_name("ensemble-infer")
        _configure(infer_task, options, options.infer_resources, gpu=True, shm=True)

    return maskpipe_pipeline


def _configure(
    task: dsl.PipelineTask,
    options: PipelineOptions,
    resources: Resources,
    *,
    gpu: bool,
    shm: bool = False,
) -> None:
    """Apply the cluster settings of one step (nothing for local runs)."""
    if not options.cluster:
        return
    if options.image != IMAGE:
        task.set_container_image(options.image)
    task.set_cpu_request(resources.cpu_request).set_cpu_limit(resources.cpu_limit)
    task.set_memory_request(resources.memory_request).set_memory_limit(resources.memory_limit)
    if gpu and options.gpus > 0:
        task.set_accelerator_type(options.gpu_type).set_accelerator_limit(options.gpus)
        if options.gpu_node_selector:
            kubernetes.add_node_selector(task, *options.gpu_node_selector)
        if options.gpu_toleration:
            kubernetes.add_toleration(task, **options.gpu_toleration)
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


# ---------------------------------------------------------------------------------------------
# run parameters


def pipeline_arguments(args: argparse.Namespace) -> Dict[str, Any]:
    """The run's pipeline parameters from the command line (every parameter, explicitly)."""
    preset = args.preset
    tta = args.tta
    if tta is None:
        from maskpipe.config import load_config

        tta = load_config(preset, args.overrides).infer.tta
    return {
        "data_root": args.data,
        "preset": preset,
        "epochs": args.epochs,
        "batch_size": args.batch_size,
        "learning_rate": args.lr,
        "architecture": args.arch,
        "image_size": args.image_size,
        "val_fraction": args.val_fraction,
        "seed": args.seed,
        "tta": bool(tta),
        "overrides": list(args.overrides),
        "resume_bucket": args.resume_bucket,
    }


def options_from_args(args: argparse.Namespace) -> PipelineOptions:
    """Compile-time options from the cluster flags."""
    return PipelineOptions(
        image=args.image or IMAGE,
        pipeline_root=args.pipeline_root,
        secret_name=args.secret_name,
        access_key_key=args.access_key_key,
        secret_key_key=args.secret_key_key,
        minio_endpoint=args.minio_endpoint,
        endpoint_secret_key=args.endpoint_secret_key,
        minio_secure=args.minio_secure,
        gpu_type=args.gpu_type,
        gpus=args.gpus,
        index_gpu=args.index_gpu,
        gpu_node_selector=_parse_node_selector(args.gpu_node_selector),
        gpu_toleration=_parse_toleration(args.gpu_toleration),
        image_pull_secret=args.image_pull_secret,
        shm_size=args.shm_size,
        retries=args.retries,
        cache_training=args.cache_training,
    )


def _parse_node_selector(text: Optional[str]) -> Optional[Tuple[str, str]]:
    if not text:
        return None
    if "=" not in text:
        raise argparse.ArgumentTypeError(
            f"--gpu-node-selector must be KEY=VALUE, e.g. nvidia.com/gpu.present=true; got {text!r}"
        )
    key, value = text.split("=", 1)
    return key.strip(), value.strip()


def _parse_toleration(text: Optional[str]) -> Optional[Dict[str, Optional[str]]]:
    """``KEY[=VALUE][:EFFECT]`` -> add_toleration kwargs (no value means operator Exists)."""
    if not text:
        return None
    effect = None
    body = text
    if ":" in text:
        body, effect = text.rsplit(":", 1)
        if effect not in ("NoSchedule", "PreferNoSchedule", "NoExecute"):
            raise argparse.ArgumentTypeError(
                f"--gpu-toleration effect must be NoSchedule, PreferNoSchedule or NoExecute; "
                f"got {effect!r} in {text!r}"
            )
    if "=" in body:
        key, value = body.split("=", 1)
        return {"key": key, "operator": "Equal", "value": value, "effect": effect}
    return {"key": body, "operator": "Exists", "value": None, "effect": effect}


# ---------------------------------------------------------------------------------------------
# run-local


@dataclass
class LocalRun:
    """Where a local run put its outputs."""

    run_dir: Path
    output_dir: Path
    submission: Path
    index_dir: Path
    checkpoints: Dict[str, Path]
    reports: Dict[str, Path]
    metrics: Dict[str, Dict[str, Any]]
    scores: Optional[Dict[str, Any]] = None
    log_path: Optional[Path] = None

    def summary(self) -> str:
        lines = [f"run folder:      {self.run_dir}", f"submission:      {self.submission}"]
        lines += [f"checkpoint {t + ':':<7}{p}" for t, p in self.checkpoints.items()]
        lines += [f"index:           {self.index_dir}"]
        lines += [f"report {n + ':':<9}{p}" for n, p in self.reports.items()]
        for step, values in self.metrics.items():
            shown = ", ".join(
                f"{k} {v:.4f}" for k, v in values.items() if k in ("val_accuracy", "val_macro_f1")
            )
            if shown:
                lines.append(f"metrics {step}: {shown}")
        if self.log_path:
            lines.append(f"log:             {self.log_path}")
        return "\n".join(lines)


def run_local(
    arguments: Dict[str, Any],
    output_dir: Path,
    *,
    options: PipelineOptions = LOCAL_OPTIONS,
    truth: Optional[Path] = None,
) -> LocalRun:
    """Run the whole pipeline here with kfp.local.SubprocessRunner(use_venv=False).

    Each step runs as a subprocess of this Python, with this environment. On failure raises
    PipelineRunError naming the step (display name) and the last error line of its log.
    """
    from kfp import local

    output_dir = Path(output_dir).resolve()
    runs_root = output_dir / "runs"
    runs_root.mkdir(parents=True, exist_ok=True)
    arguments = dict(arguments)
    if not _is_s3(arguments["data_root"]):
        arguments["data_root"] = str(Path(arguments["data_root"]).resolve())
    log_path = output_dir / "run-local.log"
    pipeline_func = make_pipeline(options)
    display_names = {
        key: spec.task_info.name for key, spec in pipeline_func.pipeline_spec.root.dag.tasks.items()
    }

    local.init(
        runner=local.SubprocessRunner(use_venv=False),
        pipeline_root=str(runs_root),
        raise_on_error=True,
    )
    before = set(runs_root.iterdir())
    with _tee_stdout(log_path) as captured:
        try:
            pipeline_func(**arguments)
        except RuntimeError as exc:
            raise PipelineRunError(
                _failure_message(str(exc), captured.getvalue(), display_names, log_path)
            ) from None
    new_dirs = sorted(p for p in set(runs_root.iterdir()) - before if p.is_dir())
    if not new_dirs:
        raise PipelineRunError(f"kfp.local wrote no run folder under {runs_root}")
    run = collect_local_run(new_dirs[-1], output_dir, display_names)
    run.log_path = log_path
    if truth is None and not _is_s3(arguments["data_root"]):
        found = Path(arguments["data_root"]) / "eval_truth.csv"
        truth = found if found.exists() else None
    if truth is not None:
        from maskpipe.evaluate import evaluate_files

        run.scores = evaluate_files(run.submission, truth, json_path=output_dir / "scores.json")
    return run


def collect_local_run(
    run_dir: Path, output_dir: Path, display_names: Dict[str, str]
) -> LocalRun:
    """Find each step's outputs in a kfp.local run folder (``<run>/<task key>/<output>``)."""
    by_name = {name: run_dir / key for key, name in display_names.items()}
    infer_dir = by_name["ensemble-infer"]
    submission = output_dir / "submission.csv"
    shutil.copyfile(infer_dir / "submission", submission)
    metrics = {}
    for name, folder in by_name.items():
        executor_output = folder / "executor_output.json"
        if executor_output.exists():
            metrics[name] = _metrics_from_executor_output(executor_output)
    return LocalRun(
        run_dir=run_dir,
        output_dir=output_dir,
        submission=submission,
        index_dir=by_name["index-data"] / "index",
        checkpoints={task: by_name[f"train-{task}"] / "model" for task in TASKS},
        reports={
            "index": by_name["index-data"] / "report",
            "inference": infer_dir / "report",
        },
        metrics=metrics,
    )


def _metrics_from_executor_output(path: Path) -> Dict[str, Any]:
    """The scalar metrics a step logged (kfp.local keeps them only in executor_output.json)."""
    data = json.loads(path.read_text())
    values: Dict[str, Any] = {}
    # executor_output.json lists artifacts by output name, without their types
    for artifact in data.get("artifacts", {}).get("metrics", {}).get("artifacts", []):
        values.update(artifact.get("metadata", {}))
    return {k: float(v) for k, v in values.items() if isinstance(v, (int, float))}


_ANSI = re.compile(r"\x1b\[[0-9;]*m")
_ERROR_LINE = re.compile(r"^\s*((?:[A-Za-z_][\w.]*\.)?[A-Z]\w*(?:Error|Exception|Exit)\b.*)$")


def _failure_message(
    error: str, log: str, display_names: Dict[str, str], log_path: Path
) -> str:
    """Name the failed step and quote the last error line of its streamed log."""
    error = _ANSI.sub("", error)
    log = _ANSI.sub("", log)
    match = re.search(r"Inner task failed: '?([\w-]+)", error)
    key = match.group(1) if match else None
    step = display_names.get(key, key) if key else "unknown step"
    section = log
    if key:
        start = log.rfind(f"Executing task '{key}'")
        end = log.find(f"Task '{key}' finished", start if start >= 0 else 0)
        if start >= 0:
            section = log[start : end if end > start else len(log)]
    causes = [m.group(1).strip() for m in map(_ERROR_LINE.match, section.splitlines()) if m]
    cause = causes[-1] if causes else error.strip()
    return f"step {step} (task {key}) failed: {cause}\nfull log: {log_path}"


class _Tee:
    """Write to the real stdout and keep a copy (kfp.local prints each step's log)."""

    def __init__(self, stream, log_file):
        self._stream = stream
        self._log_file = log_file
        self._parts: List[str] = []

    def write(self, text: str) -> int:
        self._stream.write(text)
        self._log_file.write(text)
        self._parts.append(text)
        return len(text)

    def flush(self) -> None:
        self._stream.flush()
        self._log_file.flush()

    def getvalue(self) -> str:
        return "".join(self._parts)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._stream, name)


class _tee_stdout:
    def __init__(self, log_path: Path):
        self._log_path = log_path

    def __enter__(self) -> _Tee:
        self._log_file = open(self._log_path, "w", encoding="utf-8")
        self._saved = sys.stdout
        self._tee = _Tee(sys.stdout, self._log_file)
        sys.stdout = self._tee
        return self._tee

    def __exit__(self, *exc) -> None:
        sys.stdout = self._saved
        self._log_file.close()


def _is_s3(uri: str) -> bool:
    return uri.startswith("s3://")


# ---------------------------------------------------------------------------------------------
# cluster: submit and upload


def make_client(args: argparse.Namespace):
    """A kfp.Client with the auth a multi-user Kubeflow needs.

    Order: ``--token`` / $KF_PIPELINES_TOKEN / ``--token-file`` / $KF_PIPELINES_TOKEN_FILE
    (a bearer token, e.g. from ``kubectl create token``), then ``--in-cluster`` (the pod's
    projected service-account token), and ``--cookie`` / $KF_PIPELINES_COOKIE (e.g.
    ``authservice_session=...`` from a browser session behind Dex/oauth2-proxy).
    """
    import kfp

    token = args.token or os.environ.get(TOKEN_ENV) or _read_token_file(args)
    cookie = args.cookie or os.environ.get(COOKIE_ENV) or None
    credentials = None
    if not token and args.in_cluster:
        credentials = kfp.client.ServiceAccountTokenVolumeCredentials(path=args.sa_token_path)
    return kfp.Client(
        host=args.host,
        namespace=args.namespace,
        existing_token=token or None,
        cookies=cookie,
        credentials=credentials,
        ui_host=args.ui_host,
        verify_ssl=False if args.insecure else None,
    )


def _read_token_file(args: argparse.Namespace) -> Optional[str]:
    path = args.token_file or os.environ.get(TOKEN_FILE_ENV)
    if not path:
        return None
    try:
        return Path(path).read_text().strip() or None
    except OSError as exc:
        raise SystemExit(f"pipeline.py: cannot read token file {path}: {exc.strerror}") from None


def _profile_namespace(args: argparse.Namespace) -> Optional[str]:
    """The profile namespace, or None for a single-user install (kfp.Client's "kubeflow")."""
    return None if args.namespace in ("", "kubeflow") else args.namespace


def submit(args: argparse.Namespace) -> Any:
    """Compile with the cluster flags and start a run; returns kfp's RunPipelineResult."""
    client = make_client(args)
    arguments = pipeline_arguments(args)
    with tempfile.TemporaryDirectory() as tmp:
        package = Path(args.package) if args.package else compile_pipeline(
            options_from_args(args), Path(tmp) / "pipeline.yaml"
        )
        run_name = args.run_name or f"{PIPELINE_NAME} {arguments['preset']} " + (
            datetime.datetime.now().strftime("%Y-%m-%d %H:%M:%S")
        )
        result = client.create_run_from_pipeline_package(
            str(package),
            arguments=arguments,
            run_name=run_name,
            experiment_name=args.experiment,
            namespace=_profile_namespace(args),
            pipeline_root=args.pipeline_root,
            service_account=args.service_account,
        )
    print(f"run id: {result.run_id}")
    print(f"run link: {client._get_url_prefix()}/#/runs/details/{result.run_id}")
    if args.wait:
        run = client.wait_for_run_completion(result.run_id, timeout=args.timeout)
        print(f"run finished: {run.state}")
        if str(run.state).upper() != "SUCCEEDED":
            raise SystemExit(1)
    return result


def upload(args: argparse.Namespace) -> Any:
    """Register the pipeline, or a new version of it when it already exists."""
    client = make_client(args)
    version = args.version or datetime.datetime.now().strftime("v%Y%m%d-%H%M%S")
    with tempfile.TemporaryDirectory() as tmp:
        package = compile_pipeline(options_from_args(args), Path(tmp) / "pipeline.yaml")
        pipeline_id = client.get_pipeline_id(args.name)
        if pipeline_id is None:
            result = client.upload_pipeline(
                str(package), pipeline_name=args.name, description=args.description,
                namespace=_profile_namespace(args) if args.private else None,
            )
            print(f"pipeline id: {result.pipeline_id}")
        else:
            result = client.upload_pipeline_version(
                str(package), pipeline_version_name=version, pipeline_id=pipeline_id,
                description=args.description,
            )
            print(f"pipeline id: {pipeline_id}, version id: {result.pipeline_version_id}")
    return result


# ---------------------------------------------------------------------------------------------
# command line


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="pipeline.py", description=__doc__.splitlines()[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("compile", help="compile the pipeline to YAML")
    p.add_argument("-o", "--output", type=Path, default=Path("pipeline.yaml"))
    _cluster_args(p)
    p.set_defaults(func=_cmd_compile)

    p = sub.add_parser("run-local", help="run the whole pipeline here through kfp.local")
    _param_args(p)
    p.add_argument("--output-dir", type=Path, default=Path("local_outputs"))
    p.add_argument("--truth", type=Path, help="eval truth CSV (default: DATA/eval_truth.csv)")
    p.add_argument("--retries", type=int, default=0, help="retries of each training step")
    p.set_defaults(func=_cmd_run_local)

    p = sub.add_parser("submit", help="compile and start a run on a Kubeflow cluster")
    _client_args(p)
    _param_args(p)
    _cluster_args(p)
    p.add_argument("--experiment", default=PIPELINE_NAME)
    p.add_argument("--run-name")
    p.add_argument("--package", type=Path, help="submit this compiled YAML instead of compiling")
    p.add_argument("--service-account", help="Kubernetes service account of the run's pods")
    p.add_argument("--wait", action="store_true", help="wait for the run to finish")
    p.add_argument("--timeout", type=int, default=24 * 3600, help="seconds --wait waits")
    p.set_defaults(func=_cmd_submit)

    p = sub.add_parser("upload", help="register the pipeline (or a new version of it)")
    _client_args(p)
    _cluster_args(p)
    p.add_argument("--name", default=PIPELINE_NAME, help="pipeline name in the UI")
    p.add_argument("--version", help="version name (default: a timestamp)")
    p.add_argument("--description")
    p.add_argument(
        "--private", action="store_true", help="register in --namespace only (multi-user)"
    )
    p.set_defaults(func=_cmd_upload)
    return parser


def _param_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("pipeline parameters")
    g.add_argument("--data", required=True, help="data root: s3://bucket/prefix or a folder")
    g.add_argument("--preset", default="default", help="default | original | smoke")
    g.add_argument("--epochs", type=int, default=0, help="0 keeps the preset's")
    g.add_argument("--batch-size", type=int, default=0, help="0 keeps the preset's")
    g.add_argument("--lr", type=float, default=0.0, help="0 keeps the preset's")
    g.add_argument("--arch", default="", help="timm architecture; empty keeps the preset's")
    g.add_argument("--image-size", default="", help="HEIGHTxWIDTH, e.g. 448x336")
    g.add_argument("--val-fraction", type=float, default=0.2)
    g.add_argument("--seed", type=int, default=42)
    g.add_argument(
        "--tta", action=argparse.BooleanOptionalAction, default=None,
        help="flip TTA at inference (default: the preset's infer.tta)",
    )
    g.add_argument(
        "--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
        help="extra config override, repeatable (e.g. --set train.optimizer=adamw)",
    )
    g.add_argument("--resume-bucket", default="", help="bucket for per-epoch resume state")


def _cluster_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("cluster settings (compiled into the pipeline)")
    g.add_argument("--image", help=f"container image (default {IMAGE}; or $MASKPIPE_IMAGE)")
    g.add_argument("--pipeline-root", default=DEFAULT_PIPELINE_ROOT,
                   help="artifact root, e.g. minio://mlpipeline/v2/artifacts")
    g.add_argument("--secret-name", default=DEFAULT_SECRET, help="Secret with MinIO keys")
    g.add_argument("--access-key-key", default="accesskey", help="its key -> MINIO_ACCESS_KEY")
    g.add_argument("--secret-key-key", default="secretkey", help="its key -> MINIO_SECRET_KEY")
    g.add_argument("--minio-endpoint", default=DEFAULT_MINIO_ENDPOINT,
                   help="MINIO_ENDPOINT host:port (plain env); empty to leave unset")
    g.add_argument("--endpoint-secret-key", default="",
                   help="take MINIO_ENDPOINT from this key of the secret instead")
    g.add_argument("--minio-secure", action="store_true", help="MinIO speaks TLS")
    g.add_argument("--gpu-type", default="nvidia.com/gpu")
    g.add_argument("--gpus", type=int, default=1, help="GPUs per training/inference step (0: CPU)")
    g.add_argument("--index-gpu", action="store_true", help="give index-data a GPU too")
    g.add_argument("--gpu-node-selector", help="KEY=VALUE node label for GPU steps")
    g.add_argument("--gpu-toleration", help="KEY[=VALUE][:EFFECT], e.g. nvidia.com/gpu:NoSchedule")
    g.add_argument("--image-pull-secret", default="")
    g.add_argument("--shm-size", default="8Gi", help="size of the memory-backed /dev/shm")
    g.add_argument("--retries", type=int, default=2, help="retries of each training step")
    g.add_argument("--cache-training", action="store_true",
                   help="let KFP reuse cached training results (off by default)")


def _client_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("Kubeflow connection")
    g.add_argument("--host", default=os.environ.get("KF_PIPELINES_ENDPOINT"),
                   help="KFP API, e.g. https://kubeflow.example.com/pipeline "
                   "(default $KF_PIPELINES_ENDPOINT)")
    g.add_argument("--ui-host", help="UI address for printed links (default: --host)")
    g.add_argument("--namespace", default="kubeflow", help="profile namespace (multi-user)")
    g.add_argument("--token", help=f"bearer token (default ${TOKEN_ENV})")
    g.add_argument("--token-file", help=f"file holding a bearer token (or ${TOKEN_FILE_ENV})")
    g.add_argument("--cookie", help=f"session cookie, e.g. authservice_session=... (${COOKIE_ENV})")
    g.add_argument("--in-cluster", action="store_true",
                   help="use the pod's projected service-account token (from a notebook)")
    g.add_argument("--sa-token-path", help="token file for --in-cluster (kfp's default path)")
    g.add_argument("--insecure", action="store_true", help="skip TLS verification")


def _cmd_compile(args: argparse.Namespace) -> None:
    path = compile_pipeline(options_from_args(args), args.output)
    print(f"compiled {path}")


def _cmd_run_local(args: argparse.Namespace) -> None:
    options = dataclasses.replace(LOCAL_OPTIONS, retries=args.retries)
    run = run_local(pipeline_arguments(args), args.output_dir, options=options, truth=args.truth)
    print()
    print(run.summary())
    if run.scores is not None:
        from maskpipe.evaluate import format_scores

        print()
        print(f"scores against {run.scores['truth']}:")
        print(format_scores(run.scores))
    print()
    print(f"submission.csv: {run.submission}")


def _cmd_submit(args: argparse.Namespace) -> None:
    _require_host(args)
    submit(args)


def _cmd_upload(args: argparse.Namespace) -> None:
    _require_host(args)
    upload(args)


def _require_host(args: argparse.Namespace) -> None:
    if not args.host and not args.in_cluster:
        raise SystemExit(
            "pipeline.py: --host is required (or $KF_PIPELINES_ENDPOINT), e.g. "
            "--host http://localhost:8080 after `kubectl -n kubeflow port-forward "
            "svc/ml-pipeline-ui 8080:80`"
        )


def main(argv: Optional[List[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        args.func(args)
    except PipelineRunError as exc:
        print(f"pipeline.py {args.command}: {exc}", file=sys.stderr)
        return 1
    except MaskpipeError as exc:
        print(f"pipeline.py {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except argparse.ArgumentTypeError as exc:
        print(f"pipeline.py {args.command}: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
