"""The HTTP surface of `maskpipe serve` (maskpipe.serve_app): only a predictor's endpoints are
reachable, readiness follows whether the model can answer, the optional bearer token, and the
one reach past KServe's public API held to the kserve release it was checked against."""

from __future__ import annotations

import json
import subprocess

import pytest

from maskpipe.serve_client import free_port, request, v1_body, v2_body
from fixtures.serving import jpeg, serve_python

# every test runs the serving environment, most start maskpipe serve
pytestmark = pytest.mark.integration


def _serve_env_json(code: str) -> object:
    result = subprocess.run([serve_python(), "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads(result.stdout.strip().splitlines()[-1])


def test_the_installed_kserve_is_the_release_the_private_reach_was_checked_against():
    # maskpipe.serve._Server sets the listen address on kserve's private _rest_server.config;
    # a new kserve may move it: check, then update KSERVE_CHECKED.
    found = _serve_env_json(
        "import sys, json; sys.argv = sys.argv[:1]\n"
        "from importlib.metadata import version\n"
        "import inspect, kserve.model_server as ms\n"
        "from maskpipe.serve import KSERVE_CHECKED\n"
        "source = inspect.getsource(ms.ModelServer)\n"
        "print(json.dumps([version('kserve'), KSERVE_CHECKED, 'self._rest_server = RESTServer(' in source,"
        " 'self.setup_event_loop()' in source]))"
    )
    assert found[0] == found[1], f"kserve {found[0]} installed, maskpipe.serve checked against {found[1]}"
    assert found[2] and found[3]


def test_every_route_kserve_registers_is_on_the_predictor_list_or_unreachable(start_server):
    # KServe's own route table (0.21: v1, v2 and the model repository extension).
    survey = _serve_env_json(
        "import sys, json; sys.argv = sys.argv[:1]\n"
        "from fastapi import FastAPI\n"
        "from kserve.protocol.rest.v1_endpoints import register_v1_endpoints\n"
        "from kserve.protocol.rest.v2_endpoints import register_v2_endpoints\n"
        "app = FastAPI(); register_v1_endpoints(app, None, None); register_v2_endpoints(app, None, None)\n"
        "def walk(routes):\n"  # FastAPI 0.165 keeps an included router whole
        "    for r in routes:\n"
        "        sub = getattr(r, 'original_router', None)\n"
        "        yield from walk(sub.routes) if sub is not None else ([r] if hasattr(r, 'methods') else [])\n"
        "from maskpipe.serve_app import PREDICTOR_ENDPOINTS\n"
        "print(json.dumps([[[m, r.path] for r in walk(app.routes) if r.path.startswith(('/v1', '/v2'))"
        " for m in sorted(r.methods) if m != 'HEAD'], PREDICTOR_ENDPOINTS]))"
    )
    routes, predictor_endpoints = survey
    assert ["POST", "/v2/repository/models/{model_name}/unload"] in routes
    allowed = {(m, p.replace("{name}", "{model_name}").replace("{version}", "{model_version}")) for m, p in predictor_endpoints}
    with start_server() as server:
        for method, path in routes:
            url = server.url + path.replace("{model_name}", "maskpipe").replace("{model_version}", "1")
            reply = request(url, b"{}" if method == "POST" else None)
            if (method, path) in allowed:
                assert reply.status != 404 or "version" in reply.body["error"], (method, path, reply.body)
            else:
                assert reply.status == 404 and "no endpoint" in reply.body["error"], (method, path, reply.body)
        assert request(f"{server.url}/v2/health/ready").body == {"ready": True}
        assert request(f"{server.url}/v2/models/maskpipe/infer", v2_body([jpeg()])).status == 200


def test_with_the_repository_flag_an_unloaded_model_makes_readiness_false(start_server):
    with start_server("--enable-model-repository") as server:
        assert "model_repository" in request(f"{server.url}/v2").body["extensions"]
        assert request(f"{server.url}/v2/repository/models/maskpipe/unload", b"").status == 200
        ready = request(f"{server.url}/v2/health/ready")
        assert ready.status == 503 and ready.body == {"ready": False}
        assert request(f"{server.url}/v2/models/maskpipe/ready").status == 404
        assert request(f"{server.url}/v1/models/maskpipe").status == 404
        assert request(f"{server.url}/v1/models/maskpipe:predict", v1_body([jpeg()])).status == 404
        assert request(f"{server.url}/v2/health/live").status == 200  # alive: the pod is not restarted for it


def test_a_bearer_token_guards_everything_but_the_probes(start_server, tmp_path):
    token_file = tmp_path / "token"
    token_file.write_text("s3cret-token\n")
    with start_server("--auth-token-file", str(token_file)) as server:
        predict = f"{server.url}/v1/models/maskpipe:predict"
        missing = request(predict, v1_body([jpeg()]))
        assert missing.status == 401 and missing.headers["www-authenticate"] == "Bearer"
        assert request(predict, v1_body([jpeg()]), headers={"Authorization": "Bearer wrong"}).status == 401
        assert request(predict, v1_body([jpeg()]), headers={"Authorization": "Bearer s3cret-token"}).status == 200
        assert request(f"{server.url}/v2/models/maskpipe").status == 401
        document = request(f"{server.url}/openapi.json", headers={"Authorization": "Bearer s3cret-token"}).body
        assert "401" in document["paths"]["/v2/models/{model_name}/infer"]["post"]["responses"]
        assert "401" not in document["paths"]["/v2/health/ready"]["get"]["responses"]
        for probe in ("/", "/v2/health/live", "/v2/health/ready"):
            assert request(server.url + probe).status == 200
    assert "s3cret-token" not in (tmp_path / "serve.log").read_text()


@pytest.mark.parametrize("content", ["", "two words\n"])
def test_an_unusable_token_file_is_one_line_and_no_server(exported_model, tmp_path, content):
    token_file = tmp_path / "token"
    token_file.write_text(content)
    result = subprocess.run(
        [serve_python(), "-m", "maskpipe", "serve", str(exported_model), "--port", str(free_port()), "--auth-token-file", str(token_file)],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert result.returncode == 2 and "--auth-token-file" in result.stderr and "Traceback" not in result.stderr
