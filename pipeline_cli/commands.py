"""``python pipeline.py SUBCOMMAND ...``: the parser and what each subcommand does."""

import argparse
import dataclasses
import os
import sys
from pathlib import Path
from typing import List, Optional

from maskpipe.cli_args import OneLineParser, whole_number
from maskpipe.errors import MaskpipeError
from pipeline_dag import LOCAL_OPTIONS, PIPELINE_NAME, compile_pipeline
from pipeline_cli.arguments import (
    TOKEN_ENV,
    TOKEN_FILE_ENV,
    client_args,
    cluster_args,
    existing_file,
    gpus_per_task_arg,
    options_from_args,
    param_args,
    pipeline_arguments,
)
from pipeline_cli.api_errors import ClusterError
from pipeline_cli.cluster import submit, upload
from pipeline_cli.local_run import PipelineRunError, run_local

# What `make image` builds; run-local --runner docker uses it unless --image says otherwise.
LOCAL_IMAGE = "maskpipe:dev"
DESCRIPTION = "The maskpipe Kubeflow pipeline: compile it, run it here, or send it to a cluster."


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineParser(
        prog="pipeline.py", description=DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("compile", help="compile the pipeline to YAML")
    p.add_argument("-o", "--output", type=Path, default=Path("pipeline.yaml"))
    cluster_args(p)
    p.set_defaults(func=_cmd_compile)

    p = sub.add_parser("run-local", help="run the whole pipeline here through kfp.local")
    param_args(p)
    p.add_argument("--output-dir", type=Path, default=Path("local_outputs"))
    p.add_argument("--truth", type=existing_file, help="eval truth CSV (default: DATA/eval_truth.csv)")
    p.add_argument("--retries", type=whole_number(0), default=0, help="retries of each training step")
    gpus_per_task_arg(p, local=True)
    g = p.add_argument_group("containers")
    g.add_argument("--runner", choices=("subprocess", "docker"), default="subprocess",
                   help="subprocess: each step in this Python; docker: each step in --image "
                   "(Docker or podman, see docs/cluster.md)")
    g.add_argument("--image", help=f"image of --runner docker (default {LOCAL_IMAGE}, what "
                   "`make image` builds)")
    p.set_defaults(func=_cmd_run_local)

    p = sub.add_parser("submit", help="compile and start a run on a Kubeflow cluster")
    client_args(p)
    param_args(p)
    cluster_args(p)
    p.add_argument("--experiment", default=PIPELINE_NAME)
    p.add_argument("--run-name")
    p.add_argument("--package", type=existing_file, help="submit this compiled YAML instead of compiling")
    p.add_argument("--service-account", help="Kubernetes service account of the run's pods")
    p.add_argument("--wait", action="store_true", help="wait for the run to finish")
    p.add_argument("--timeout", type=whole_number(1), default=24 * 3600, help="seconds --wait waits")
    p.set_defaults(func=_cmd_submit)

    p = sub.add_parser("upload", help="register the pipeline (or a new version of it)")
    client_args(p)
    cluster_args(p)
    p.add_argument("--name", default=PIPELINE_NAME, help="pipeline name in the UI")
    p.add_argument("--version", help="version name (default: a timestamp)")
    p.add_argument("--description")
    p.add_argument(
        "--private", action="store_true", help="register in --namespace only (multi-user)"
    )
    p.set_defaults(func=_cmd_upload)
    return parser



def _cmd_compile(args: argparse.Namespace) -> None:
    try:
        path = compile_pipeline(options_from_args(args), args.output)
    except OSError as exc:
        blocked = Path(exc.filename or args.output)
        cause = f"{blocked} is a file, not a folder" if blocked.is_file() and blocked != args.output else (
            f"{blocked}: {exc.strerror}"
        )
        raise ClusterError(
            f"cannot write {args.output} ({cause}); choose a path you can write with -o, "
            "e.g. -o pipeline.yaml"
        ) from None
    print(f"compiled {path}")


def _cmd_run_local(args: argparse.Namespace) -> None:
    if args.image and args.runner != "docker":
        raise argparse.ArgumentTypeError("--image runs the steps in containers: add --runner docker")
    if args.output_dir.exists() and not args.output_dir.is_dir():
        raise argparse.ArgumentTypeError(
            f"--output-dir {args.output_dir} is a file: give a folder (it is created if missing)"
        )
    image = (args.image or LOCAL_IMAGE) if args.runner == "docker" else None
    options = dataclasses.replace(LOCAL_OPTIONS, retries=args.retries, gpus_per_task=args.gpus_per_task)
    arguments = pipeline_arguments(args)
    check_data_root(args.data_root)
    run = run_local(arguments, args.output_dir, options=options, truth=args.truth, image=image)
    print()
    print(run.summary())


def check_data_root(data_root: str) -> None:
    """What index-data and ensemble-infer will need of the data root, before kfp.local starts
    (a wrong root would otherwise fail in index-data, seconds later, inside a step's log): it
    exists or its bucket answers, it holds training photos in a layout ``maskpipe index``
    recognises, and eval/info.csv for ensemble-infer. The same functions index-data runs."""
    from maskpipe import storage
    from maskpipe.data import layout
    from maskpipe.data.index import normalize_root
    from maskpipe.errors import DataLayoutError

    root = normalize_root(data_root)
    found = layout.detect_layout(root, storage.list_files(root))
    if found.images_prefix is None:
        raise DataLayoutError(
            f"data root {root} has eval/info.csv but no training photos; {layout.EXPECTED_LAYOUTS}"
        )
    if found.eval_info is None:
        raise DataLayoutError(
            f"data root {root} ({found.kind} layout) has no {layout.EVAL_INFO}: the pipeline "
            f"predicts the eval photos ({layout.EVAL_INFO} and {layout.EVAL_IMAGES}/); add them "
            "(`maskpipe synth` writes an example) or use `maskpipe index` and `maskpipe train` directly"
        )


def _cmd_submit(args: argparse.Namespace) -> None:
    from maskpipe import storage

    if not storage.is_s3(args.data_root) and not Path(args.data_root).is_absolute():
        raise argparse.ArgumentTypeError(
            f"--data {args.data_root} is a relative path: the steps run in pods, where the data root is "
            "s3://bucket/prefix or an absolute path mounted in them; upload a local folder with "
            "`maskpipe data upload DIR s3://bucket/prefix`"
        )
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
    given_token = args.token or os.environ.get(TOKEN_ENV) or args.token_file or os.environ.get(TOKEN_FILE_ENV)
    if args.in_cluster and not given_token:
        from kfp import client as kfp_client

        token_path = (
            args.sa_token_path or os.environ.get(kfp_client.KF_PIPELINES_SA_TOKEN_ENV)
            or kfp_client.KF_PIPELINES_SA_TOKEN_PATH
        )
        if not Path(token_path).is_file():
            raise ClusterError(
                f"--in-cluster reads the pod's service-account token from {token_path}, which is "
                "not a file here: run it in a pod that mounts the token (a Kubeflow notebook), "
                "give --sa-token-path, or pass --host and --token from outside the cluster"
            )


def main(argv: Optional[List[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        args.func(args)
    except ClusterError as exc:
        print(f"pipeline.py {args.command}: error: {exc}", file=sys.stderr)
        return 2
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

