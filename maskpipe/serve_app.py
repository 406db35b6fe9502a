"""The HTTP surface of `maskpipe serve`, put on KServe's FastAPI app through public hooks only.

:func:`install` adds, before KServe registers its own routes (so these answer first, routes
matching in the order they were added):

* the predictor's routes: v1 predict, v2 infer (with and without a version), readiness that is
  false whenever the model cannot answer (KServe 0.21's ``/v2/health/ready`` says ready with no
  model at all), v2 server and model metadata with versions and platform, and the OpenAPI
  document (:mod:`maskpipe.serve_openapi`) in place of the one FastAPI derives from KServe's
  generic models;
* :class:`EndpointGuard`, an ASGI middleware answering 404 for every path that is not one of
  :data:`PREDICTOR_ENDPOINTS` (KServe's model repository load/unload, ``:explain``, whatever a
  later KServe adds), and 401 without the bearer token when one is configured.

Request bodies are read by :mod:`maskpipe.serve_protocol`; a rejected request is answered
``{"error": "<one line>"}`` with its 4xx and logged as one line, never a traceback.
"""

from __future__ import annotations

import hmac
import json
import logging
import re
import uuid
from typing import TYPE_CHECKING

from fastapi import Request
from fastapi.responses import JSONResponse, Response
from starlette.requests import ClientDisconnect
from kserve.errors import InvalidInput

from maskpipe.serve_openapi import openapi_document
from maskpipe.serve_limits import Refused
from maskpipe.serve_protocol import RequestError, decode_body, encode_v2, header, parse_v2, v1_photos

if TYPE_CHECKING:
    from kserve.model_repository import ModelRepository

    from maskpipe.serve import EnsembleModel, ServeOptions

log = logging.getLogger("maskpipe.serve")

# (method, path pattern) of everything a predictor needs; {name} and {version} are one segment.
PREDICTOR_ENDPOINTS = [
    ("GET", "/"),
    ("GET", "/metrics"),
    ("GET", "/openapi.json"),
    ("GET", "/v1/models"),
    ("GET", "/v1/models/{name}"),
    ("POST", "/v1/models/{name}:predict"),
    ("GET", "/v2"),
    ("GET", "/v2/health/live"),
    ("GET", "/v2/health/ready"),
    ("GET", "/v2/models"),
    ("GET", "/v2/models/{name}"),
    ("GET", "/v2/models/{name}/versions/{version}"),
    ("GET", "/v2/models/{name}/ready"),
    ("GET", "/v2/models/{name}/versions/{version}/ready"),
    ("POST", "/v2/models/{name}/infer"),
    ("POST", "/v2/models/{name}/versions/{version}/infer"),
]
REPOSITORY_ENDPOINTS = [
    ("POST", "/v2/repository/index"),
    ("POST", "/v2/repository/models/{name}/load"),
    ("POST", "/v2/repository/models/{name}/unload"),
]
# Kubelet and KServe probes carry no token.
PROBE_PATHS = {"/", "/v2/health/live", "/v2/health/ready"}


def _pattern(template: str) -> re.Pattern:
    segment = r"[^/:]+"
    return re.compile("^" + re.escape(template).replace(r"\{name\}", segment).replace(r"\{version\}", segment) + "$")


class EndpointGuard:
    """ASGI middleware: only the listed endpoints exist; the rest are 404 (405 for a wrong method)."""

    def __init__(self, app, endpoints: list[tuple[str, str]], token: str | None, repository_enabled: bool) -> None:
        self.app, self.token, self.repository_enabled = app, token, repository_enabled
        self.endpoints = [(method, _pattern(path)) for method, path in endpoints]

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        path, method = scope["path"], scope["method"]
        methods = {m for m, pattern in self.endpoints if pattern.match(path)}
        if not methods:
            hint = ""
            if path.startswith("/v2/repository") and not self.repository_enabled:
                hint = " (the model repository extension is off; start the server with --enable-model-repository to load/unload models)"
            message = f"no endpoint {path}{hint}; this server answers /v1/models/NAME:predict and /v2/models/NAME/infer"
            log.warning("rejected %s %s: 404 %s", method, path, message)
            await _send_error(send, 404, message)
            return
        if method not in methods and not (method == "HEAD" and "GET" in methods):
            message = f"{method} is not allowed on {path}; use {' or '.join(sorted(methods))}"
            log.warning("rejected %s %s: 405 %s", method, path, message)
            await _send_error(send, 405, message, allow=sorted(methods))
            return
        if self.token is not None and path not in PROBE_PATHS and not self._authorized(scope):
            log.warning("rejected %s %s: 401 missing or wrong bearer token", method, path)
            await _send_error(send, 401, "this server needs an Authorization: Bearer <token> header (the token given to --auth-token-file)",
                              extra=[(b"www-authenticate", b"Bearer")])  # fmt: skip
            return
        await self.app(scope, receive, send)

    def _authorized(self, scope) -> bool:
        value = dict(scope.get("headers") or []).get(b"authorization", b"").decode("latin-1")
        scheme, _, given = value.partition(" ")
        return scheme.lower() == "bearer" and hmac.compare_digest(given.strip().encode(), self.token.encode())


async def _send_error(send, status: int, message: str, allow: list[str] | None = None, extra: list | None = None) -> None:
    body = json.dumps({"error": message}).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()), *(extra or [])]
    if allow:
        headers.append((b"allow", ", ".join(allow).encode()))
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


class PredictorRoutes:
    """The route handlers; one model, served under ``options.name``."""

    def __init__(self, model: EnsembleModel, repository: ModelRepository, options: ServeOptions) -> None:
        self.model, self.repository, self.options = model, repository, options

    def add_to(self, app) -> None:
        add = app.add_api_route
        add("/v1/models/{model_name}:predict", self.v1_predict, methods=["POST"])
        add("/v1/models/{model_name}", self.v1_ready, methods=["GET"])
        add("/v2", self.server_metadata, methods=["GET"])
        add("/v2/health/ready", self.server_ready, methods=["GET"])
        add("/v2/models/{model_name}/infer", self.v2_infer, methods=["POST"])
        add("/v2/models/{model_name}/versions/{model_version}/infer", self.v2_infer, methods=["POST"])
        add("/v2/models/{model_name}/ready", self.v2_ready, methods=["GET"])
        add("/v2/models/{model_name}/versions/{model_version}/ready", self.v2_ready, methods=["GET"])
        add("/v2/models/{model_name}", self.model_metadata, methods=["GET"])
        add("/v2/models/{model_name}/versions/{model_version}", self.model_metadata, methods=["GET"])
        names = [o["name"] for o in self.model.get_output_types()]
        document = openapi_document(self.options.name, self.model.version, names, token=self.options.auth_token is not None)
        app.openapi = lambda: document  # FastAPI's documented way to replace the derived document

    def _model(self, name: str, version: str | None) -> EnsembleModel:
        if name != self.options.name or self.repository.get_model(name) is None:
            raise RequestError(f"model {name!r} is not served here; this server serves {self.options.name!r}", 404)
        if version is not None and version != self.model.version:
            raise RequestError(f"model {name!r} has no version {version!r}; its version is {self.model.version!r}", 404)
        return self.model

    async def _answerable(self, name: str, version: str | None) -> EnsembleModel:
        model = self._model(name, version)
        if not await model.healthy():
            raise RequestError(f"model {name!r} is not ready to answer; try again once /v2/health/ready says ready", 503)
        return model

    async def v1_predict(self, request: Request, model_name: str) -> Response:
        try:
            model = await self._answerable(model_name, None)
            photos = v1_photos(await self._body(request), header(request.headers, "content-type"))
            outputs, headers = await self._run(model, photos, request)
            return JSONResponse(model.v1_answers(outputs), headers=headers)
        except RequestError as exc:
            return _reject(request, exc)

    async def v2_infer(self, request: Request, model_name: str, model_version: str | None = None) -> Response:
        try:
            model = await self._answerable(model_name, model_version)
            output_names = [o["name"] for o in model.get_output_types()]
            parsed = parse_v2(await self._body(request), request.headers, output_names)
            outputs, headers = await self._run(model, parsed.photos, request)
            body, body_headers = encode_v2(
                parsed, model.name, model.version, model.v2_tensors(outputs), parsed.id or str(uuid.uuid4())
            )  # fmt: skip
            return Response(body, headers={**headers, **body_headers})
        except RequestError as exc:
            return _reject(request, exc)

    async def _body(self, request: Request) -> bytes:
        try:
            body = await request.body()
        except ClientDisconnect:
            raise RequestError("the client closed the connection before the whole body arrived") from None
        return decode_body(body, header(request.headers, "content-encoding"), self.options.max_body_bytes)

    async def _run(self, model: EnsembleModel, photos: list[bytes], request: Request):
        try:
            return await model(photos, dict(request.headers))
        except InvalidInput as exc:
            raise RequestError(str(exc).splitlines()[0] if str(exc) else "invalid input") from None
        except Refused as exc:  # the cost limits (maskpipe.serve_limits): 413, or 503 with Retry-After
            headers = {"retry-after": str(exc.retry_after_s)} if exc.retry_after_s else None
            raise RequestError(exc.message, exc.status, headers=headers) from None

    async def v1_ready(self, request: Request, model_name: str) -> Response:
        return await self.v2_ready(request, model_name)  # v1 has no versions; the same answer

    async def v2_ready(self, request: Request, model_name: str, model_version: str | None = None) -> Response:
        try:
            self._model(model_name, model_version)
        except RequestError as exc:
            return _reject(request, exc)
        ready = await self.model.healthy()
        return JSONResponse({"name": model_name, "ready": ready}, status_code=200 if ready else 503)

    async def server_ready(self) -> JSONResponse:
        model = self.repository.get_model(self.options.name)
        ready = model is not None and await model.healthy()
        return JSONResponse({"ready": ready}, status_code=200 if ready else 503)

    async def server_metadata(self) -> JSONResponse:
        from importlib.metadata import version

        extensions = ["binary_tensor_data"] + (["model_repository"] if self.options.enable_model_repository else [])
        return JSONResponse({"name": "maskpipe", "version": version("kserve"), "extensions": extensions})

    async def model_metadata(self, request: Request, model_name: str, model_version: str | None = None) -> Response:
        try:
            model = self._model(model_name, model_version)
        except RequestError as exc:
            return _reject(request, exc)
        return JSONResponse({
            "name": model.name, "versions": [model.version], "platform": model.platform,
            "inputs": model.get_input_types(), "outputs": model.get_output_types(),
        })  # fmt: skip


def _reject(request: Request, error: RequestError) -> JSONResponse:
    log.warning("rejected %s %s: %d %s", request.method, request.url.path, error.status, error.message)
    headers = {"retry-after": "1", **error.headers} if error.status == 503 else error.headers
    return JSONResponse({"error": error.message}, status_code=error.status, headers=headers)


def install(app, model: EnsembleModel, repository: ModelRepository, options: ServeOptions) -> None:
    """The predictor's routes and guard on KServe's ``app``; call before the server starts."""
    PredictorRoutes(model, repository, options).add_to(app)
    endpoints = PREDICTOR_ENDPOINTS + (REPOSITORY_ENDPOINTS if options.enable_model_repository else [])
    app.add_middleware(EndpointGuard, endpoints=endpoints, token=options.auth_token,
                       repository_enabled=options.enable_model_repository)  # fmt: skip
