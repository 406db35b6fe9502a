"""Command-line flags -> the pipeline's run parameters and compile-time options."""

import argparse
import os
import re
from dataclasses import MISSING, fields
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple
from urllib.parse import urlsplit

from components import IMAGE
from components.image import DEFAULT_IMAGE, DEFAULT_IMAGE_PINNED
from maskpipe.cli_args import number, whole_number
from pipeline_dag import (
    DEFAULT_MINIO_ENDPOINT,
    DEFAULT_SECRET,
    LEGACY_MINIO_ENDPOINT,
    STEPS,
    TRAINERS,
    PipelineOptions,
    RunParameters,
    run_parameter_flag,
    run_parameter_help,
)

ENDPOINT_ENV = "KF_PIPELINES_ENDPOINT"
TOKEN_ENV = "KF_PIPELINES_TOKEN"
TOKEN_FILE_ENV = "KF_PIPELINES_TOKEN_FILE"
COOKIE_ENV = "KF_PIPELINES_COOKIE"


def pipeline_arguments(args: argparse.Namespace) -> Dict[str, Any]:
    """The run's pipeline parameters from the command line (every parameter, explicitly)."""
    preset = args.preset
    tta = args.tta
    if args.infer_backend == "onnx" and not (args.export or args.deploy):
        raise argparse.ArgumentTypeError(
            "--infer-backend onnx runs the exported model, and --no-export skips the export: "
            "drop one of them"
        )
    if args.deploy:
        from maskpipe.deploy import check_service_name

        check_service_name(args.deploy_name)  # before any training, or sending the run
    if tta is None:
        from maskpipe.config import load_config

        tta = load_config(preset, args.overrides).infer.tta
    arguments = {f.name: getattr(args, f.name) for f in fields(RunParameters)}
    arguments.update(
        tta=bool(tta),
        overrides=list(args.overrides),
        export=bool(args.export or args.deploy),
        deploy=bool(args.deploy),
    )
    return RunParameters(**arguments).arguments()


def options_from_args(args: argparse.Namespace) -> PipelineOptions:
    """Compile-time options from the cluster flags."""
    image = args.image or IMAGE
    chosen = bool(args.image) or bool(os.environ.get("MASKPIPE_IMAGE", "").strip())
    if not chosen and image == DEFAULT_IMAGE and not DEFAULT_IMAGE_PINNED:
        raise argparse.ArgumentTypeError(
            f"cannot tell the commit of this checkout (no git), so the default image would be "
            f"the moving tag {DEFAULT_IMAGE}; pass --image REPOSITORY:sha-<commit> (what CI "
            f"publishes), or --image {DEFAULT_IMAGE} to choose the moving tag"
        )
    options = PipelineOptions(
        image=image,
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
        trainer=args.trainer,
        trainer_nodes=args.trainer_nodes,
        trainer_gpus=args.trainer_gpus,
    )
    return options.with_timeouts(_parse_step_timeouts(args.step_timeout))


_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def _parse_step_timeouts(items: List[str]) -> Dict[str, int]:
    """``["train=12h", "infer=90m"]`` -> ``{"train": 43200, "infer": 5400}`` (``all=`` sets every step)."""
    timeouts: Dict[str, int] = {}
    for item in items:
        step, sep, text = item.partition("=")
        step, text = step.strip(), text.strip().lower()
        number, unit = (text[:-1], text[-1]) if text[-1:] in _UNITS else (text, "s")
        if not sep or step not in (*STEPS, "all") or not number.isdigit() or int(number) <= 0:
            raise argparse.ArgumentTypeError(
                f"--step-timeout must be STEP=DURATION with STEP one of {', '.join(STEPS)} or all "
                f"and DURATION a positive number of s, m, h or d, e.g. train=12h; got {item!r}"
            )
        seconds = int(number) * _UNITS[unit]
        timeouts.update(dict.fromkeys(STEPS, seconds) if step == "all" else {step: seconds})
    return timeouts


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
# flag values, checked as argparse reads them (one line naming the value and the fix)

_KFP_EXAMPLE = "e.g. https://kubeflow.example.com/pipeline, or http://localhost:8080 after a port-forward"
# Kubernetes quantities as a memory size is written: 8Gi, 512Mi, 1G, 1e9
_QUANTITY = re.compile(r"\d+(\.\d+)?([eE]\d+|Ki|Mi|Gi|Ti|Pi|Ei|k|M|G|T|P|E)?")


def http_url(text: str) -> str:
    """An http(s) URL with a host, as the Kubeflow Pipelines API is reached (``--host``)."""
    problem = _url_problem(text)
    if problem:
        # argparse applies the type to --host's default too, which comes from the environment
        source = f" (from ${ENDPOINT_ENV})" if text == os.environ.get(ENDPOINT_ENV) else ""
        raise argparse.ArgumentTypeError(
            f"{text!r}{source} is not the URL of a Kubeflow Pipelines API ({problem}): use "
            f"http(s)://HOST[:PORT][/PATH], {_KFP_EXAMPLE}"
        )
    return text


def _url_problem(text: str) -> Optional[str]:
    if any(ch.isspace() for ch in text):
        return "it holds a space"
    try:
        parts = urlsplit(text)
        parts.port  # noqa: B018 - the property validates the port
    except ValueError as exc:
        return str(exc)
    if "://" not in text:
        return "no http:// or https:// in front"
    if parts.scheme not in ("http", "https"):
        return f"scheme {parts.scheme!r} is not http or https"
    if not parts.hostname:
        return "it names no host"
    if parts.port == 0:
        return "port 0"
    if parts.username is not None or parts.password is not None:
        return "a user name or password before '@'; pass a token with --token instead"
    if parts.query or parts.fragment:
        return "it has a '?' query or '#' fragment"
    return None


def minio_endpoint(text: str) -> str:
    """MINIO_ENDPOINT of the steps (``--minio-endpoint``): checked as the steps will read it."""
    from maskpipe.errors import StorageError
    from maskpipe.storage import _parse_endpoint

    if text:
        try:
            _parse_endpoint(text, "MINIO_ENDPOINT", {"MINIO_SECURE": "false"})
        except StorageError as exc:
            raise argparse.ArgumentTypeError(str(exc)) from None
    return text


def artifact_root(text: str) -> str:
    """``--pipeline-root``: SCHEME://BUCKET[/PATH] (or empty: the cluster's default)."""
    if text:
        parts = urlsplit(text)
        if not re.fullmatch(r"[a-z][a-z0-9+.-]*", parts.scheme) or not parts.netloc or "://" not in text:
            raise argparse.ArgumentTypeError(
                f"{text!r} is not an artifact store URI: use SCHEME://BUCKET[/PATH], e.g. "
                "minio://mlpipeline/v2/artifacts or s3://my-bucket/kfp"
            )
    return text


def data_root(text: str) -> str:
    """``--data``: an s3:// URI must name a valid bucket (checked without a request)."""
    from maskpipe import storage
    from maskpipe.errors import StorageError

    if not text:
        raise argparse.ArgumentTypeError("the data root is empty: pass a data folder or s3://bucket/prefix")
    if storage.is_s3(text):
        try:
            storage.parse_s3_uri(text)
        except StorageError as exc:
            raise argparse.ArgumentTypeError(str(exc)) from None
    return text


def quantity(text: str) -> str:
    """A Kubernetes memory quantity, e.g. 8Gi (``--shm-size``)."""
    if not _QUANTITY.fullmatch(text):
        raise argparse.ArgumentTypeError(
            f"{text!r} is not a Kubernetes quantity: use a size such as 8Gi, 512Mi or 2G"
        )
    return text


def existing_file(text: str) -> Path:
    """A file that must exist now (``--package``, ``--truth``)."""
    path = Path(text)
    if not path.exists():
        raise argparse.ArgumentTypeError(f"{text} does not exist: check the path")
    if not path.is_file():
        raise argparse.ArgumentTypeError(f"{text} is a folder, not a file: give the file's path")
    return path


def fraction(text: str) -> float:
    """``--val-fraction``: in [0, 1), as the index step requires."""
    from maskpipe.data.split import check_val_fraction
    from maskpipe.errors import MaskpipeError

    value = number(at_least=0)(text)
    try:
        return check_val_fraction(value)
    except MaskpipeError as exc:
        raise argparse.ArgumentTypeError(f"{exc}: use e.g. 0.2") from None


# ---------------------------------------------------------------------------------------------
# run-local


# ---------------------------------------------------------------------------------------------
# flag groups shared by the subcommands


# How each run parameter is read from the command line, beyond its flag, default and help
# (pipeline_dag.RunParameters): the type that checks it, or another action.
_PARAM_FLAGS: Dict[str, Dict[str, Any]] = {
    "data_root": {"required": True, "type": data_root},
    "epochs": {"type": whole_number(0)},
    "batch_size": {"type": whole_number(0)},
    "learning_rate": {"type": number(at_least=0)},
    "val_fraction": {"type": fraction},
    "seed": {"type": int},
    # None: the preset's infer.tta (pipeline_arguments resolves it)
    "tta": {"action": argparse.BooleanOptionalAction, "default": None,
            "help": " Default: the preset's infer.tta."},
    "overrides": {"action": "append", "metavar": "KEY=VALUE", "help": " Repeatable."},
    "export": {"action": argparse.BooleanOptionalAction},
    "export_precision": {"choices": ["fp32", "int8"]},
    "infer_backend": {"choices": ["auto", "onnx", "torch"]},
    "deploy": {"action": "store_true",
               "help": " run-local: against $KUBECONFIG's API, the step in the serving environment."},
}


def param_args(p: argparse.ArgumentParser) -> None:
    """One flag per field of ``RunParameters``: its flag, default and help from there; the
    parsed value lands under the field's name (``--lr`` -> ``args.learning_rate``)."""
    g = p.add_argument_group("pipeline parameters")
    for f in fields(RunParameters):
        extra = dict(_PARAM_FLAGS.get(f.name, {}))
        default = f.default_factory() if f.default_factory is not MISSING else f.default
        kwargs: Dict[str, Any] = {"dest": f.name, "default": None if default is MISSING else default}
        kwargs["help"] = run_parameter_help(f.name) + extra.pop("help", "")
        kwargs.update(extra)
        g.add_argument(run_parameter_flag(f.name), **kwargs)


def cluster_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("cluster settings (compiled into the pipeline)")
    g.add_argument("--image", help=f"container image (default {IMAGE}: this checkout's commit, "
                   "as CI tags it; or $MASKPIPE_IMAGE)")
    g.add_argument("--pipeline-root", default="", type=artifact_root,
                   help="artifact root compiled in and sent with the run (default none: the "
                   "namespace's own, e.g. a Kubeflow profile's minio://mlpipeline/"
                   "private-artifacts/<ns>/v2/artifacts)")
    g.add_argument("--secret-name", default=DEFAULT_SECRET, help="Secret with MinIO keys")
    g.add_argument("--access-key-key", default="accesskey", help="its key -> MINIO_ACCESS_KEY")
    g.add_argument("--secret-key-key", default="secretkey", help="its key -> MINIO_SECRET_KEY")
    g.add_argument("--minio-endpoint", default=DEFAULT_MINIO_ENDPOINT, type=minio_endpoint,
                   help=f"MINIO_ENDPOINT host:port (plain env; default KFP 2.16+'s SeaweedFS, "
                   f"{DEFAULT_MINIO_ENDPOINT}; older installs: {LEGACY_MINIO_ENDPOINT}); "
                   "empty to leave unset")
    g.add_argument("--endpoint-secret-key", default="",
                   help="take MINIO_ENDPOINT from this key of the secret instead")
    g.add_argument("--minio-secure", action="store_true", help="MinIO speaks TLS")
    g.add_argument("--gpu-type", default="nvidia.com/gpu")
    g.add_argument("--gpus", type=whole_number(0), default=1, help="GPUs per training step and per checkpoint inference (export=false); 0: CPU")
    g.add_argument("--index-gpu", action="store_true", help="give index-data a GPU too")
    g.add_argument("--gpu-node-selector", help="KEY=VALUE node label for GPU steps")
    g.add_argument("--gpu-toleration", help="KEY[=VALUE][:EFFECT], e.g. nvidia.com/gpu:NoSchedule")
    g.add_argument("--image-pull-secret", default="")
    g.add_argument("--shm-size", default="8Gi", type=quantity, help="size of the memory-backed /dev/shm")
    g.add_argument("--retries", type=whole_number(0), default=2, help="retries of each training step")
    g.add_argument("--step-timeout", action="append", default=[], metavar="STEP=DURATION",
                   help=f"pod deadline of a step ({', '.join(STEPS)} or all), e.g. train=12h, "
                   "repeatable (defaults: index 2h, train 24h, export 1h, infer 6h, deploy 30m)")
    g.add_argument("--trainer", choices=TRAINERS, default="pod",
                   help="where each training step trains: pod (its own pod, --gpus GPUs) or kubeflow "
                   "(a Kubeflow Trainer TrainJob of --trainer-nodes nodes; needs Trainer v2 and "
                   "k8s/trainer's Role: docs/cluster.md)")
    g.add_argument("--trainer-nodes", type=whole_number(1), default=1,
                   help="with --trainer kubeflow: nodes of each TrainJob (its num_nodes)")
    g.add_argument("--trainer-gpus", type=whole_number(0), default=None,
                   help="with --trainer kubeflow: GPUs of each TrainJob node, one process each "
                   "(default: --gpus); cpu and memory per node are the train step's limits")


def client_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("Kubeflow connection")
    g.add_argument("--host", default=os.environ.get(ENDPOINT_ENV), type=http_url,
                   help="KFP API, e.g. https://kubeflow.example.com/pipeline "
                   "(default $KF_PIPELINES_ENDPOINT)")
    g.add_argument("--ui-host", type=http_url, help="UI address for printed links (default: --host)")
    g.add_argument("--namespace", default="kubeflow", help="profile namespace (multi-user)")
    g.add_argument("--token", help=f"bearer token (default ${TOKEN_ENV})")
    g.add_argument("--token-file", help=f"file holding a bearer token (or ${TOKEN_FILE_ENV})")
    g.add_argument("--cookie", help=f"session cookie, e.g. authservice_session=... (${COOKIE_ENV})")
    g.add_argument("--in-cluster", action="store_true",
                   help="use the pod's projected service-account token (from a notebook)")
    g.add_argument("--sa-token-path", help="token file for --in-cluster (kfp's default path)")
    g.add_argument("--insecure", action="store_true", help="skip TLS verification")


