"""API-contract test of ``pipeline.py submit`` and ``upload`` (NOT a cluster test).

A small HTTP server on 127.0.0.1 speaks the part of the KFP v2beta1 REST API that kfp.Client
uses (healthz, list/create experiment, create/get run, list pipelines, upload pipeline and
version), with paths and payloads taken from kfp_server_api 2.17. It records every request, so
the tests assert what the real client sent: the compiled spec, the run parameters, the
pipeline root and the auth header or cookie. It says nothing about how a real backend reacts.
"""

from __future__ import annotations

import json
import socket
import threading
import time
import urllib.parse
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, Iterator

import pytest

import pipeline_cli
from pipeline_cli import arguments

API = "/apis/v2beta1"


@dataclass
class Request:
    method: str
    path: str
    query: dict[str, list[str]]
    headers: dict[str, str]
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)


@dataclass
class FakeKfp:
    """State of the fake backend and what it received."""

    url: str = ""
    requests: list[Request] = field(default_factory=list)
    experiments: dict[str, dict] = field(default_factory=dict)
    runs: dict[str, dict] = field(default_factory=dict)
    pipelines: dict[str, dict] = field(default_factory=dict)
    run_state: str = "SUCCEEDED"
    # (method, path) -> (status, body, extra headers): what an auth proxy or a broken backend
    # answers instead of the API
    forced: dict[tuple[str, str], tuple[int, Any, dict[str, str]]] = field(default_factory=dict)

    def find(self, method: str, path: str) -> list[Request]:
        return [r for r in self.requests if r.method == method and r.path == path]

    def respond(self, request: Request) -> tuple[int, Any]:
        route = (request.method, request.path)
        if route == ("GET", f"{API}/healthz"):
            return 200, {"multi_user": True, "pipeline_store": "database"}
        if route == ("GET", f"{API}/experiments"):
            wanted = _filter_value(request)
            found = [e for e in self.experiments.values() if e["display_name"] == wanted]
            return 200, {"experiments": found, "total_size": len(found)}
        if route == ("POST", f"{API}/experiments"):
            experiment = {**request.json(), "experiment_id": f"exp-{len(self.experiments) + 1}"}
            self.experiments[experiment["experiment_id"]] = experiment
            return 200, experiment
        if route == ("POST", f"{API}/runs"):
            run = {**request.json(), "run_id": f"run-{len(self.runs) + 1}", "state": "PENDING"}
            self.runs[run["run_id"]] = run
            return 200, run
        if request.method == "GET" and request.path.startswith(f"{API}/runs/"):
            run = self.runs.get(request.path.rsplit("/", 1)[1])
            if run is None:
                return 404, {"error": "run not found"}
            return 200, {**run, "state": self.run_state}
        if route == ("GET", f"{API}/pipelines"):
            wanted = _filter_value(request)
            found = [p for p in self.pipelines.values() if p["display_name"] == wanted]
            return 200, {"pipelines": found, "total_size": len(found)}
        if route == ("POST", f"{API}/pipelines/upload"):
            name = request.query["name"][0]
            found = {"pipeline_id": f"pipe-{len(self.pipelines) + 1}", "display_name": name}
            self.pipelines[found["pipeline_id"]] = found
            return 200, found
        if route == ("POST", f"{API}/pipelines/upload_version"):
            return 200, {
                "pipeline_id": request.query["pipelineid"][0],
                "pipeline_version_id": "version-2",
                "display_name": request.query["name"][0],
            }
        return 404, {"error": f"no route {route}"}


def _filter_value(request: Request) -> str | None:
    raw = request.query.get("filter", [None])[0]
    if raw is None:
        return None
    predicate = json.loads(raw)["predicates"][0]
    return predicate.get("stringValue", predicate.get("string_value"))


@pytest.fixture
def fake_kfp(tmp_path, monkeypatch) -> Iterator[FakeKfp]:
    import kfp

    # kfp.Client remembers a namespace in ~/.config/kfp/context.json: keep it out of $HOME.
    monkeypatch.setattr(kfp.Client, "_LOCAL_KFP_CONTEXT", str(tmp_path / "kfp-context.json"))
    for name in (arguments.TOKEN_ENV, arguments.TOKEN_FILE_ENV, arguments.COOKIE_ENV,
                 "KF_PIPELINES_ENDPOINT", "KF_PIPELINES_UI_ENDPOINT"):  # fmt: skip
        monkeypatch.delenv(name, raising=False)
    state = FakeKfp()

    class Handler(BaseHTTPRequestHandler):
        def _handle(self) -> None:
            parsed = urllib.parse.urlsplit(self.path)
            length = int(self.headers.get("Content-Length") or 0)
            request = Request(
                method=self.command,
                path=parsed.path,
                query=urllib.parse.parse_qs(parsed.query),
                headers={k.lower(): v for k, v in self.headers.items()},
                body=self.rfile.read(length),
            )
            state.requests.append(request)
            headers: dict[str, str] = {"Content-Type": "application/json"}
            if (request.method, request.path) in state.forced:
                status, payload, extra = state.forced[(request.method, request.path)]
                headers.update(extra)
            else:
                status, payload = state.respond(request)
            data = payload.encode() if isinstance(payload, str) else json.dumps(payload).encode()
            self.send_response(status)
            for name, value in headers.items():
                self.send_header(name, value)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        do_GET = do_POST = _handle

        def log_message(self, *args: Any) -> None:  # keep test output clean
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    state.url = f"http://127.0.0.1:{server.server_address[1]}"
    try:
        yield state
    finally:
        server.shutdown()
        server.server_close()


def submit_args(fake: FakeKfp, *extra: str) -> list[str]:
    return [
        "submit", "--host", fake.url, "--namespace", "team-vision",
        "--data", "s3://maskpipe-data/competition", "--preset", "smoke",
        "--epochs", "3", "--set", "train.optimizer=adamw", "--set", "data.input_size=96,72",
        "--resume-bucket", "maskpipe-resume", "--experiment", "mask-exp", "--run-name", "nightly",
        *extra,
    ]  # fmt: skip


def test_submit_sends_spec_parameters_root_and_bearer_token(fake_kfp, capsys):
    assert pipeline_cli.main(submit_args(fake_kfp, "--token", "tok-123", "--pipeline-root", "minio://team-bucket/runs")) == 0

    (create,) = fake_kfp.find("POST", f"{API}/runs")
    body = create.json()
    assert create.headers["authorization"] == "Bearer tok-123"
    assert body["display_name"] == "nightly"
    assert body["experiment_id"] == "exp-1"
    assert body["runtime_config"]["pipeline_root"] == "minio://team-bucket/runs"
    params = body["runtime_config"]["parameters"]
    assert params["data_root"] == "s3://maskpipe-data/competition"
    assert params["preset"] == "smoke"
    assert params["epochs"] == 3
    assert params["overrides"] == ["train.optimizer=adamw", "data.input_size=96,72"]
    assert params["resume_bucket"] == "maskpipe-resume"
    assert params["tta"] is False  # the smoke preset's infer.tta
    # the compiled spec travels inline, with the Kubernetes platform spec beside it
    spec = body["pipeline_spec"]
    assert spec["pipeline_spec"]["pipelineInfo"]["name"] == "maskpipe"
    assert {t["taskInfo"]["name"] for t in spec["pipeline_spec"]["root"]["dag"]["tasks"].values()} == {
        "index-data", "train-mask", "train-gender", "train-age", "condition-branches-1",
    }  # fmt: skip
    assert params["infer_backend"] == "auto" and params["export"] is True
    assert "secretAsEnv" in json.dumps(spec["platform_spec"])
    out = capsys.readouterr().out
    assert f"{fake_kfp.url}/#/runs/details/run-1" in out
    assert "tok-123" not in out


def test_submit_creates_the_experiment_in_the_namespace(fake_kfp):
    pipeline_cli.main(submit_args(fake_kfp, "--token", "t"))
    (lookup,) = fake_kfp.find("GET", f"{API}/experiments")
    assert lookup.query["namespace"] == ["team-vision"]
    (created,) = fake_kfp.find("POST", f"{API}/experiments")
    assert created.json() == {"display_name": "mask-exp", "namespace": "team-vision"}


def test_submit_reuses_an_existing_experiment(fake_kfp):
    fake_kfp.experiments["exp-9"] = {"experiment_id": "exp-9", "display_name": "mask-exp"}
    pipeline_cli.main(submit_args(fake_kfp, "--token", "t"))
    assert not fake_kfp.find("POST", f"{API}/experiments")
    assert fake_kfp.find("POST", f"{API}/runs")[0].json()["experiment_id"] == "exp-9"


def test_token_comes_from_the_environment(fake_kfp, monkeypatch):
    monkeypatch.setenv(arguments.TOKEN_ENV, "env-token-456")
    pipeline_cli.main(submit_args(fake_kfp))
    assert {r.headers.get("authorization") for r in fake_kfp.requests} == {"Bearer env-token-456"}


def test_token_comes_from_a_file(fake_kfp, tmp_path):
    token_file = tmp_path / "token"
    token_file.write_text("file-token-789\n")
    pipeline_cli.main(submit_args(fake_kfp, "--token-file", str(token_file)))
    assert fake_kfp.find("POST", f"{API}/runs")[0].headers["authorization"] == "Bearer file-token-789"


def test_in_cluster_uses_the_service_account_token(fake_kfp, tmp_path):
    sa_token = tmp_path / "sa-token"
    sa_token.write_text("projected-sa-token")
    pipeline_cli.main(submit_args(fake_kfp, "--in-cluster", "--sa-token-path", str(sa_token)))
    assert fake_kfp.find("POST", f"{API}/runs")[0].headers["authorization"] == "Bearer projected-sa-token"


def test_session_cookie_is_sent(fake_kfp):
    pipeline_cli.main(submit_args(fake_kfp, "--cookie", "authservice_session=abc123"))
    create = fake_kfp.find("POST", f"{API}/runs")[0]
    assert create.headers["cookie"] == "authservice_session=abc123"
    assert "authorization" not in create.headers


def test_no_pipeline_root_is_sent_unless_given(fake_kfp):
    """The run's root overrides the namespace's own (a Kubeflow profile's kfp-launcher
    defaultPipelineRoot, the one prefix its keys may write artifacts to): leave it out."""
    assert pipeline_cli.main(submit_args(fake_kfp, "--token", "t")) == 0
    body = fake_kfp.find("POST", f"{API}/runs")[0].json()
    assert not body.get("runtime_config", {}).get("pipeline_root")
    assert "defaultPipelineRoot" not in json.dumps(body["pipeline_spec"])


# ---------------------------------------------------------------------------------------------
# paths a Kubeflow profile namespace's own keys cannot reach, refused before any request

NS = "team-vision"  # submit_args' --namespace


@pytest.mark.parametrize(
    "flag, value",
    [
        ("--data", "s3://mlpipeline/competition"),
        ("--data", "s3://mlpipeline/private/team-other/competition"),
        ("--data", "s3://mlpipeline/private/team-vision-2/competition"),
        ("--data", "s3://mlpipeline"),
        ("--resume-bucket", "mlpipeline"),
        ("--resume-bucket", "mlpipeline/private-artifacts"),
        ("--pipeline-root", "minio://mlpipeline/v2/artifacts"),
    ],
)  # fmt: skip
def test_path_outside_the_namespace_prefixes_is_refused_before_sending(flag, value, fake_kfp, capsys):
    argv = submit_args(fake_kfp, "--token", "t")
    if flag in argv:
        argv[argv.index(flag) + 1] = value
    else:
        argv += [flag, value]
    err = run_failing(argv, capsys)
    (line,) = err.strip().splitlines()
    assert f"{flag} {value} is outside what namespace {NS}'s keys" in line
    for prefix in ("artifacts/", f"private-artifacts/{NS}/", f"private/{NS}/", "shared/"):
        assert f"s3://mlpipeline/{prefix}" in line
    assert not fake_kfp.requests


@pytest.mark.parametrize(
    "flag, value",
    [
        ("--data", f"s3://mlpipeline/private/{NS}/competition"),
        ("--data", f"s3://mlpipeline/private/{NS}"),
        ("--data", "s3://mlpipeline/shared/competition"),
        ("--data", "s3://maskpipe-data/competition"),  # another bucket: its own policy decides
        ("--resume-bucket", f"mlpipeline/private/{NS}/resume"),
        ("--pipeline-root", f"minio://mlpipeline/private-artifacts/{NS}/v2/artifacts"),
    ],
)  # fmt: skip
def test_path_the_namespace_may_reach_is_sent(flag, value, fake_kfp):
    argv = submit_args(fake_kfp, "--token", "t")
    if flag in argv:
        argv[argv.index(flag) + 1] = value
    else:
        argv += [flag, value]
    assert pipeline_cli.main(argv) == 0
    assert fake_kfp.find("POST", f"{API}/runs")


def test_without_a_profile_namespace_no_path_is_judged(fake_kfp):
    argv = submit_args(fake_kfp, "--token", "t", "--data", "s3://mlpipeline/competition")
    argv[argv.index("--namespace") + 1] = "kubeflow"  # standalone KFP: one namespace, admin keys
    assert pipeline_cli.main(argv) == 0
    params = fake_kfp.find("POST", f"{API}/runs")[0].json()["runtime_config"]["parameters"]
    assert params["data_root"] == "s3://mlpipeline/competition"


def test_healthz_is_asked_when_no_namespace_is_given(fake_kfp):
    args = submit_args(fake_kfp, "--token", "t")
    args[args.index("--namespace") + 1] = "kubeflow"  # kfp.Client's "not given" value
    assert pipeline_cli.main(args) == 0
    assert fake_kfp.find("GET", f"{API}/healthz")


def test_wait_polls_the_run_and_fails_on_a_failed_run(fake_kfp, capsys):
    assert pipeline_cli.main(submit_args(fake_kfp, "--token", "t", "--wait")) == 0
    assert fake_kfp.find("GET", f"{API}/runs/run-1")
    assert "run finished: SUCCEEDED" in capsys.readouterr().out
    fake_kfp.run_state = "FAILED"
    with pytest.raises(SystemExit) as failed:
        pipeline_cli.main(submit_args(fake_kfp, "--token", "t", "--wait"))
    assert failed.value.code == 1


def test_upload_registers_then_adds_versions(fake_kfp, capsys):
    base = ["upload", "--host", fake_kfp.url, "--token", "t", "--name", "maskpipe-team"]
    assert pipeline_cli.main(base) == 0
    (first,) = fake_kfp.find("POST", f"{API}/pipelines/upload")
    assert first.query["name"] == ["maskpipe-team"]
    assert b"pipelineInfo" in first.body  # the compiled YAML is the multipart payload
    assert first.headers["authorization"] == "Bearer t"

    assert pipeline_cli.main([*base, "--version", "v2"]) == 0
    (version,) = fake_kfp.find("POST", f"{API}/pipelines/upload_version")
    assert version.query["pipelineid"] == ["pipe-1"] and version.query["name"] == ["v2"]
    assert "version id: version-2" in capsys.readouterr().out


def test_submit_without_host_says_how_to_get_one(monkeypatch):
    monkeypatch.delenv("KF_PIPELINES_ENDPOINT", raising=False)
    with pytest.raises(SystemExit) as exc:
        pipeline_cli.main(["submit", "--data", "s3://bucket/p"])
    assert "--host" in str(exc.value.code) and "port-forward" in str(exc.value.code)


# ---------------------------------------------------------------------------------------------
# user errors: one or two lines that name the cause and the fix, within seconds


def run_failing(argv: list[str], capsys) -> str:
    """Run the CLI, expect exit status 2 within seconds, return stderr (two lines at most)."""
    started = time.monotonic()
    assert pipeline_cli.main(argv) == 2
    assert time.monotonic() - started < 10
    captured = capsys.readouterr()
    lines = [line for line in captured.err.splitlines() if line.strip()]
    assert 1 <= len(lines) <= 2, captured.err
    assert "Traceback" not in captured.err + captured.out
    return captured.err


def closed_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]  # closed again when the block ends: nothing listens


@pytest.mark.parametrize("command", ["submit", "upload"])
def test_host_not_port_forwarded_says_to_port_forward(command, fake_kfp, capsys):
    host = f"http://127.0.0.1:{closed_port()}"
    argv = [command, "--host", host, "--token", "t"] + (["--data", "s3://bucket/p"] if command == "submit" else [])
    err = run_failing(argv, capsys)
    assert f"pipeline.py {command}: error: cannot reach the Kubeflow Pipelines API at {host}" in err
    assert "connection refused" in err and "port-forward svc/ml-pipeline-ui" in err


def test_unknown_host_name_says_to_check_the_spelling(fake_kfp, capsys):
    err = run_failing(submit_args(fake_kfp, "--host", "http://no-such-host.invalid:8080"), capsys)
    assert "cannot resolve the host name" in err and "no-such-host.invalid" in err


def test_https_to_a_plain_http_port_says_to_use_http(fake_kfp, capsys):
    host = fake_kfp.url.replace("http://", "https://")
    err = run_failing(submit_args(fake_kfp, "--host", host, "--token", "t"), capsys)
    assert f"TLS handshake with {host} failed" in err and "use http://" in err


@pytest.mark.parametrize("status", [401, 403])
def test_auth_proxy_refusal_says_how_to_authenticate(status, fake_kfp, capsys):
    fake_kfp.forced[("GET", f"{API}/healthz")] = (status, {"message": "Unauthenticated"}, {})
    err = run_failing(submit_args(fake_kfp), capsys)
    assert f"refused the request: {status}" in err
    assert "--token" in err and "--cookie authservice_session=" in err


def test_login_redirect_says_how_to_authenticate(fake_kfp, capsys):
    fake_kfp.forced[("GET", f"{API}/healthz")] = (302, "", {"Location": "/dex/auth?client_id=kubeflow"})
    err = run_failing(submit_args(fake_kfp), capsys)
    assert "redirects to /dex/auth" in err and "--cookie" in err


def test_login_page_instead_of_json_says_how_to_authenticate(fake_kfp, capsys):
    page = "<html><body>Log in to Kubeflow</body></html>"
    fake_kfp.forced[("GET", f"{API}/healthz")] = (200, page, {"Content-Type": "text/html"})
    err = run_failing(submit_args(fake_kfp), capsys)
    assert "text/html" in err and "not the KFP API" in err and "--token" in err


def test_wrong_url_says_to_use_the_api_base_url(fake_kfp, capsys):
    err = run_failing(submit_args(fake_kfp, "--host", fake_kfp.url + "/wrong/prefix", "--token", "t"), capsys)
    assert "answered 404" in err and "not the Kubeflow Pipelines API" in err


def test_unknown_namespace_says_to_check_the_profile(fake_kfp, capsys):
    forbidden = {"error": "denied", "code": 7, "message": "User is not authorized for namespace team-nope"}
    fake_kfp.forced[("GET", f"{API}/experiments")] = (403, forbidden, {})
    fake_kfp.forced[("POST", f"{API}/experiments")] = (403, forbidden, {})
    err = run_failing(submit_args(fake_kfp, "--token", "t", "--namespace", "team-nope"), capsys)
    assert "403 Forbidden" in err and "namespace team-nope" in err and "kubectl get profiles" in err
    assert not fake_kfp.find("POST", f"{API}/runs")


def test_upload_refused_by_the_api_names_what_it_was_doing(fake_kfp, capsys):
    fake_kfp.forced[("GET", f"{API}/pipelines")] = (401, {"message": "token expired"}, {})
    err = run_failing(["upload", "--host", fake_kfp.url, "--token", "old"], capsys)
    assert "registering pipeline 'maskpipe'" in err and "401" in err and "token expired" in err


@pytest.mark.parametrize("blocker", ["a-file", "proc"])
def test_compile_into_an_unwritable_place_names_the_path(blocker, tmp_path, capsys):
    if blocker == "a-file":
        (tmp_path / "plain-file").write_text("x")
        target = tmp_path / "plain-file" / "pipeline.yaml"
    else:
        target = Path("/proc/maskpipe-no-such-folder/pipeline.yaml")  # not writable, even as root
    err = run_failing(["compile", "-o", str(target)], capsys)
    assert f"cannot write {target}" in err and "-o" in err


def test_onnx_inference_without_the_export_is_refused_before_any_request(fake_kfp, capsys):
    err = run_failing(submit_args(fake_kfp, "--no-export", "--infer-backend", "onnx"), capsys)
    assert "--infer-backend onnx" in err and "--no-export" in err
    assert not fake_kfp.requests


@pytest.mark.parametrize("extra", [["--namespace", "kubeflow"], ["--deploy-namespace", "kubeflow"]])
def test_deploy_into_the_kubeflow_namespace_is_refused_before_sending(extra, fake_kfp, capsys):
    """KServe's pod mutator skips namespaces labelled control-plane, which kubeflow is."""
    err = run_failing(submit_args(fake_kfp, "--token", "t", "--deploy", *extra), capsys)
    assert "namespace kubeflow" in err and "--deploy-namespace maskpipe-serving" in err
    assert not fake_kfp.requests


def test_standalone_deploy_into_its_own_namespace_is_sent(fake_kfp):
    argv = submit_args(fake_kfp, "--token", "t", "--deploy", "--deploy-namespace", "maskpipe-serving")
    argv[argv.index("--namespace") + 1] = "kubeflow"
    assert pipeline_cli.main(argv) == 0
    params = fake_kfp.find("POST", f"{API}/runs")[0].json()["runtime_config"]["parameters"]
    assert params["deploy"] is True and params["deploy_namespace"] == "maskpipe-serving"
