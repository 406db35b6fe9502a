"""``python pipeline.py SUBCOMMAND ...``: the parser and what each subcommand does."""

import argparse
import dataclasses
import sys
from pathlib import Path
from typing import List, Optional

from maskpipe.errors import MaskpipeError
from pipeline import LOCAL_OPTIONS, PIPELINE_NAME, compile_pipeline
from pipeline_cli.arguments import (
    client_args,
    cluster_args,
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
    parser = argparse.ArgumentParser(
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
    p.add_argument("--truth", type=Path, help="eval truth CSV (default: DATA/eval_truth.csv)")
    p.add_argument("--retries", type=int, default=0, help="retries of each training step")
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
    p.add_argument("--package", type=Path, help="submit this compiled YAML instead of compiling")
    p.add_argument("--service-account", help="Kubernetes service account of the run's pods")
    p.add_argument("--wait", action="store_true", help="wait for the run to finish")
    p.add_argument("--timeout", type=int, default=24 * 3600, help="seconds --wait waits")
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
    image = (args.image or LOCAL_IMAGE) if args.runner == "docker" else None
    options = dataclasses.replace(LOCAL_OPTIONS, retries=args.retries)
    run = run_local(pipeline_arguments(args), args.output_dir, options=options, truth=args.truth,
                    image=image)
    print()
    print(run.summary())


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

