"""Command-line flags -> the pipeline's run parameters and compile-time options."""

import argparse
import os
from typing import Any, Dict, List, Optional, Tuple

from components import IMAGE
from components.image import DEFAULT_IMAGE, DEFAULT_IMAGE_PINNED
from pipeline import (
    DEFAULT_MINIO_ENDPOINT,
    DEFAULT_SECRET,
    LEGACY_MINIO_ENDPOINT,
    STEPS,
    PipelineOptions,
)

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
        "export": bool(args.export or args.deploy),
        "export_precision": args.export_precision,
        "infer_backend": args.infer_backend,
        "deploy": bool(args.deploy),
        "deploy_name": args.deploy_name,
        "deploy_namespace": args.deploy_namespace,
    }


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
# run-local


# ---------------------------------------------------------------------------------------------
# flag groups shared by the subcommands


def param_args(p: argparse.ArgumentParser) -> None:
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
    g.add_argument("--export", action=argparse.BooleanOptionalAction, default=True,
                   help="export the ONNX model folder after training (default on)")
    g.add_argument("--export-precision", choices=["fp32", "int8"], default="fp32",
                   help="int8: add a quantized graph calibrated on training photos (the card "
                   "records its agreement with fp32); what is served and scored on a CPU")
    g.add_argument("--infer-backend", choices=["auto", "onnx", "torch"], default="auto",
                   help="how ensemble-infer runs the models: auto (default) runs the exported "
                   "model with ONNX Runtime on a CPU node, with torch on a GPU node, and the "
                   "checkpoints with --no-export")
    g.add_argument("--deploy", action="store_true",
                   help="serve the exported model as a KServe InferenceService (run-local: "
                   "against $KUBECONFIG's API, the step in the serving environment)")
    g.add_argument("--deploy-name", default="maskpipe", help="InferenceService name (a DNS label)")
    g.add_argument("--deploy-namespace", default="",
                   help="its namespace (default: the run's; run-local: the kubeconfig's)")


def cluster_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("cluster settings (compiled into the pipeline)")
    g.add_argument("--image", help=f"container image (default {IMAGE}: this checkout's commit, "
                   "as CI tags it; or $MASKPIPE_IMAGE)")
    g.add_argument("--pipeline-root", default="",
                   help="artifact root compiled in and sent with the run (default none: the "
                   "namespace's own, e.g. a Kubeflow profile's minio://mlpipeline/"
                   "private-artifacts/<ns>/v2/artifacts)")
    g.add_argument("--secret-name", default=DEFAULT_SECRET, help="Secret with MinIO keys")
    g.add_argument("--access-key-key", default="accesskey", help="its key -> MINIO_ACCESS_KEY")
    g.add_argument("--secret-key-key", default="secretkey", help="its key -> MINIO_SECRET_KEY")
    g.add_argument("--minio-endpoint", default=DEFAULT_MINIO_ENDPOINT,
                   help=f"MINIO_ENDPOINT host:port (plain env; default KFP 2.16+'s SeaweedFS, "
                   f"{DEFAULT_MINIO_ENDPOINT}; older installs: {LEGACY_MINIO_ENDPOINT}); "
                   "empty to leave unset")
    g.add_argument("--endpoint-secret-key", default="",
                   help="take MINIO_ENDPOINT from this key of the secret instead")
    g.add_argument("--minio-secure", action="store_true", help="MinIO speaks TLS")
    g.add_argument("--gpu-type", default="nvidia.com/gpu")
    g.add_argument("--gpus", type=int, default=1, help="GPUs per training step and per checkpoint inference (export=false); 0: CPU")
    g.add_argument("--index-gpu", action="store_true", help="give index-data a GPU too")
    g.add_argument("--gpu-node-selector", help="KEY=VALUE node label for GPU steps")
    g.add_argument("--gpu-toleration", help="KEY[=VALUE][:EFFECT], e.g. nvidia.com/gpu:NoSchedule")
    g.add_argument("--image-pull-secret", default="")
    g.add_argument("--shm-size", default="8Gi", help="size of the memory-backed /dev/shm")
    g.add_argument("--retries", type=int, default=2, help="retries of each training step")
    g.add_argument("--step-timeout", action="append", default=[], metavar="STEP=DURATION",
                   help=f"pod deadline of a step ({', '.join(STEPS)} or all), e.g. train=12h, "
                   "repeatable (defaults: index 2h, train 24h, export 1h, infer 6h, deploy 30m)")


def client_args(p: argparse.ArgumentParser) -> None:
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


