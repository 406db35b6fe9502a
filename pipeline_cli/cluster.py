"""Talk to a Kubeflow Pipelines API: authenticate, start a run, register the pipeline."""

import argparse
import contextlib
import datetime
import os
import tempfile
import warnings
from pathlib import Path
from typing import Any, Iterator, Optional

from pipeline_dag import PIPELINE_NAME, compile_pipeline
from pipeline_cli.arguments import (
    COOKIE_ENV,
    TOKEN_ENV,
    TOKEN_FILE_ENV,
    options_from_args,
    pipeline_arguments,
)
from pipeline_cli.api_errors import ClusterError, check_api, explain_api_error
from pipeline_cli.profile_paths import check_profile_paths


def make_client(args: argparse.Namespace):
    """A kfp.Client with the auth a multi-user Kubeflow needs.

    Order: ``--token`` / $KF_PIPELINES_TOKEN / ``--token-file`` / $KF_PIPELINES_TOKEN_FILE
    (a bearer token, e.g. from ``kubectl create token``), then ``--in-cluster`` (the pod's
    projected service-account token), and ``--cookie`` / $KF_PIPELINES_COOKIE (e.g.
    ``authservice_session=...`` from a browser session behind Dex/oauth2-proxy).

    The API is asked once first (``check_api``), so a host that is down, wrong or behind a
    login fails within seconds with one line that says what to do.
    """
    import kfp

    token = args.token or os.environ.get(TOKEN_ENV) or _read_token_file(args)
    cookie = args.cookie or os.environ.get(COOKIE_ENV) or None
    credentials = None
    if not token and args.in_cluster:
        credentials = kfp.client.ServiceAccountTokenVolumeCredentials(path=args.sa_token_path)
    if args.host:  # in-cluster without --host: kfp finds the API itself
        check_api(args.host, token=token, cookie=cookie, insecure=args.insecure)
    with warnings.catch_warnings():
        # "This client only works with Kubeflow Pipeline v2.0.0-beta.2 and later versions."
        warnings.simplefilter("ignore", FutureWarning)
        return kfp.Client(
            host=args.host,
            namespace=args.namespace,
            existing_token=token or None,
            cookies=cookie,
            credentials=credentials,
            ui_host=args.ui_host,
            verify_ssl=False if args.insecure else None,
        )


@contextlib.contextmanager
def api_call(doing: str, namespace: Optional[str]) -> Iterator[None]:
    """Turn the API's HTTP errors during ``doing`` into a ClusterError that says what to fix."""
    from kfp_server_api.exceptions import ApiException

    try:
        yield
    except ApiException as exc:
        raise ClusterError(explain_api_error(exc, doing, namespace)) from None


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
    arguments = pipeline_arguments(args)  # a usage error before any request
    refusal = check_profile_paths(
        [("--data", arguments["data_root"], ""), ("--resume-bucket", arguments["resume_bucket"], "runs"),
         ("--pipeline-root", args.pipeline_root, "")],
        _profile_namespace(args),
    )  # fmt: skip
    if refusal:
        raise ClusterError(refusal)
    serving_namespace = arguments["deploy_namespace"] or args.namespace or "kubeflow"
    if arguments["deploy"] and serving_namespace == "kubeflow":
        raise ClusterError(
            "--deploy would create the InferenceService in namespace kubeflow, which KServe "
            "skips (its control-plane label: the model never reaches /mnt/models); pass "
            "--deploy-namespace maskpipe-serving after `kubectl apply -k k8s/overlays/standalone`, "
            "or run in your profile namespace (--namespace)"
        )
    client = make_client(args)
    with tempfile.TemporaryDirectory() as tmp:
        package = Path(args.package) if args.package else compile_pipeline(
            options_from_args(args), Path(tmp) / "pipeline.yaml"
        )
        run_name = args.run_name or f"{PIPELINE_NAME} {arguments['preset']} " + (
            datetime.datetime.now().strftime("%Y-%m-%d %H:%M:%S")
        )
        with api_call(f"starting a run in experiment {args.experiment!r}", _profile_namespace(args)):
            result = client.create_run_from_pipeline_package(
                str(package),
                arguments=arguments,
                run_name=run_name,
                experiment_name=args.experiment,
                namespace=_profile_namespace(args),
                # None unless asked: a root sent with the run overrides the namespace's own.
                pipeline_root=args.pipeline_root or None,
                service_account=args.service_account,
            )
    print(f"run id: {result.run_id}")
    print(f"run link: {client._get_url_prefix()}/#/runs/details/{result.run_id}")
    if args.wait:
        with api_call(f"waiting for run {result.run_id}", _profile_namespace(args)):
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
        with api_call(f"registering pipeline {args.name!r}", _profile_namespace(args)):
            return _upload_package(client, args, package, version)


def _upload_package(client: Any, args: argparse.Namespace, package: Path, version: str) -> Any:
    """Upload ``package`` as a new pipeline, or as a new version of the one with that name."""
    pipeline_id = client.get_pipeline_id(args.name)
    if pipeline_id is None:
        result = client.upload_pipeline(
            str(package), pipeline_name=args.name, description=args.description,
            namespace=_profile_namespace(args) if args.private else None,
        )
        print(f"pipeline id: {result.pipeline_id}")
        return result
    result = client.upload_pipeline_version(
        str(package), pipeline_version_name=version, pipeline_id=pipeline_id,
        description=args.description,
    )
    print(f"pipeline id: {pipeline_id}, version id: {result.pipeline_version_id}")
    return result
