"""The HTTP surface of `maskpipe serve` (maskpipe.serve_app): only a predictor's endpoints are
reachable, readiness follows whether the model can answer, the optional bearer token, KServe's
own flags, and the reaches past KServe's public API held to one module and to the
kserve release they were checked against."""

from __future__ import annotations

import ast
import json
import re
import socket
import subprocess
import time
from pathlib import Path

import pytest

from benchmarks.serve_client import free_port, request, v1_body, v2_body
from fixtures.serving import jpeg, serve_python

# every test runs the serving environment, most start maskpipe serve
pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[1]


def _serve_env_json(code: str) -> object:
    result = subprocess.run([serve_python(), "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads(result.stdout.strip().splitlines()[-1])


def test_the_installed_kserve_is_the_release_the_reaches_past_its_api_were_checked_against():
    # maskpipe.serve_server hides sys.argv from kserve.model_server's import-time parse and writes
    # the parsed flags into model_server.args (which ModelServer's constructor reads), and _Server
    # sets the listen address on the private _rest_server.config. A new kserve may change either:
    # check them, then update KSERVE_CHECKED.
    found = _serve_env_json(
        "import json, inspect\n"
        "from importlib.metadata import version\n"
        "from maskpipe.serve_server import KSERVE_CHECKED\n"
        "import kserve.model_server as ms\n"
        "module, server = inspect.getsource(ms), inspect.getsource(ms.ModelServer)\n"
        "print(json.dumps([version('kserve'), KSERVE_CHECKED, 'args, _ = parser.parse_known_args()' in module,"
        " [n for n in ('configure_logging', 'log_config_file', 'predictor_host') if f'args.{n}' not in server],"
        " 'self._rest_server = RESTServer(' in server, 'self.setup_event_loop()' in server]))"
    )
    assert found[0] == found[1], f"kserve {found[0]} installed, maskpipe.serve_server checked against {found[1]}"
    assert found[2], "kserve.model_server no longer parses sys.argv when imported"
    assert found[3] == [], f"ModelServer no longer reads these from model_server.args: {found[3]}"
    assert found[4] and found[5]


def _private_reaches(path: Path, base_privates: dict[str, set[str]]) -> list[str]:
    """Where ``path`` reaches a private name that is not its own: ``x._name`` or
    ``getattr(x, "_name")`` on anything but ``self``/``cls``, and ``self._name`` in a class
    where ``_name`` is a private name of its KServe base (``base_privates``: class -> names)."""
    found = []
    tree = ast.parse(path.read_text(), str(path))
    for cls in [None, *(n for n in ast.walk(tree) if isinstance(n, ast.ClassDef))]:
        inherited = base_privates.get(cls.name, set()) if cls else set()
        for node in ast.walk(cls or tree):
            if isinstance(node, ast.Attribute) and re.fullmatch(r"_[A-Za-z]\w*", node.attr):
                own = isinstance(node.value, ast.Name) and node.value.id in ("self", "cls")
                if (not own and cls is None) or (own and node.attr in inherited):
                    found.append(f"{path.name}:{node.lineno} {ast.unparse(node)}")
            elif isinstance(node, ast.Call) and getattr(node.func, "id", None) in ("getattr", "setattr", "hasattr"):
                name = node.args[1] if len(node.args) > 1 else None
                if cls is None and isinstance(name, ast.Constant) and re.fullmatch(r"_[A-Za-z]\w*", str(name.value)):
                    found.append(f"{path.name}:{node.lineno} {ast.unparse(node)}")
    return sorted(set(found))


def test_only_serve_server_reaches_past_kserves_public_api():
    # The private names of the KServe classes maskpipe's classes subclass (methods, class and
    # instance attributes), from the serving environment.
    base_privates = _serve_env_json(
        "import inspect, json, re, sys\n"
        "import maskpipe.serve_server, maskpipe.serve, maskpipe.serve_app, maskpipe.serve_limits\n"
        "out = {}\n"
        "for module in [m for n, m in list(sys.modules.items()) if n.startswith('maskpipe.')]:\n"
        "    for cls in [c for c in vars(module).values() if inspect.isclass(c) and c.__module__ == module.__name__]:\n"
        "        for base in [b for b in cls.__mro__ if b.__module__.startswith('kserve')]:\n"
        "            names = {n for n in dir(base) if n.startswith('_') and not n.startswith('__')}\n"
        "            names |= set(re.findall(r'self\\.(_[A-Za-z]\\w*)\\s*=', inspect.getsource(base)))\n"
        "            out.setdefault(cls.__name__, []).extend(sorted(names))\n"
        "print(json.dumps(out))"
    )
    base_privates = {name: set(names) for name, names in base_privates.items()}
    assert "_rest_server" in base_privates["_Server"] and "_http_client" in base_privates["EnsembleModel"]
    package = REPO / "maskpipe"
    # The scan finds the one place's reach, so finding none elsewhere means something.
    assert any("_rest_server" in r for r in _private_reaches(package / "serve_server.py", base_privates))
    elsewhere = [r for path in sorted(package.rglob("*.py")) if path.name != "serve_server.py"
                 for r in _private_reaches(path, base_privates) if "kserve" in path.read_text()]  # fmt: skip
    assert elsewhere == [], f"reaches past KServe's public API outside maskpipe/serve_server.py: {elsewhere}"


def test_kserve_flags_reach_its_model_server(start_server):
    # --http_port (ServerProcess listens with it), --model_name and --timeout-keep-alive are
    # KServe's own flags, taken as KServe's predictors take them.
    with start_server("--model_name", "gate", "--timeout-keep-alive", "1") as server:
        assert request(f"{server.url}/v1/models/gate:predict", v1_body([jpeg()])).status == 200
        assert request(f"{server.url}/v1/models/maskpipe:predict", v1_body([jpeg()])).status == 404
        with socket.create_connection(("127.0.0.1", server.port), timeout=10) as connection:
            connection.sendall(b"GET /v2/health/live HTTP/1.1\r\nHost: x\r\n\r\n")
            assert _read_response(connection).startswith(b"HTTP/1.1 200")
            time.sleep(2.5)  # past the 1 s keep-alive: the server has closed the idle connection
            assert connection.recv(1) == b"", "the connection is still open: --timeout-keep-alive did not reach KServe"


def _read_response(connection: socket.socket) -> bytes:
    """One whole HTTP/1.1 response (headers and its Content-Length body), however TCP splits it,
    so that what the socket gives next is only what comes after it (here: the close)."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = connection.recv(4096)
        assert chunk, f"the server closed the connection mid-response: {data!r}"
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    length = next(int(line.split(b":", 1)[1]) for line in head.split(b"\r\n") if line.lower().startswith(b"content-length:"))
    while len(body) < length:
        chunk = connection.recv(4096)
        assert chunk, f"the server closed the connection mid-body: {data!r}"
        body += chunk
    return data


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
