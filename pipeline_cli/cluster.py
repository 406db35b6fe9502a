"""Talk to a Kubeflow Pipelines API: authenticate, start a run, register the pipeline."""

import argparse
import datetime
import os
import tempfile
from pathlib import Path
from typing import Any, Optional

from pipeline import PIPELINE_NAME, compile_pipeline
from pipeline_cli.arguments import (
    COOKIE_ENV,
    TOKEN_ENV,
    TOKEN_FILE_ENV,
    options_from_args,
    pipeline_arguments,
)


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


