"""A Kubernetes API on loopback that answers the calls the deploy step makes, for tests.

It serves KServe's ``serving.kserve.io/v1beta1`` InferenceServices in any namespace: GET one
(``get``), POST (``create``) and PUT (``replace``, which the kubernetes client sends as
``update``), with the API server's rules for what they touch: ``metadata.uid``,
``resourceVersion`` (a PUT must carry the current one: missing is 422, stale is 409),
``generation`` (1 on create, +1 when a PUT changes the spec), ``status`` kept on PUT (KServe's
CRD has a status subresource), the namespace of the URL matching the object's, a bearer token
(401 without it). Refusals are the API server's ``Status`` objects: 404 NotFound for a missing
object (``details.name`` set) or, with ``kserve_installed=False``, for the resource itself,
409 AlreadyExists / Conflict, 403 Forbidden for a verb listed in ``forbidden`` (with the
RBAC authorizer's message). Any other method or path is 405 / 404, so an unexpected call
fails the test instead of passing unseen.

No controller runs: the test plays KServe's, through ``on_write`` (called after each create
or replace with the stored object) and ``set_status`` / ``mark_ready``.
"""

from __future__ import annotations

import copy
import json
import re
import threading
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, Callable, Optional

GROUP, VERSION, PLURAL = "serving.kserve.io", "v1beta1", "inferenceservices"
_PATH = re.compile(rf"^/apis/{GROUP}/{VERSION}/namespaces/(?P<ns>[^/]+)/{PLURAL}(?:/(?P<name>[^/?]+))?/?(?:\?.*)?$")
_VERBS = {"GET": "get", "POST": "create", "PUT": "update"}


class FakeKubeAPI:
    """``with FakeKubeAPI() as api:`` a server on 127.0.0.1; ``api.write_kubeconfig(path)``."""

    def __init__(self, *, token: str = "fake-token-for-tests", user: str = "system:serviceaccount:team-a:default-editor",
                 kserve_installed: bool = True) -> None:  # fmt: skip
        self.token, self.user, self.kserve_installed = token, user, kserve_installed
        self.objects: dict[tuple[str, str], dict] = {}
        self.requests: list[tuple[str, str]] = []  # (verb, path) of every request, in order
        self.forbidden: set[str] = set()  # verbs (get, create, update) answered 403
        self.on_write: Optional[Callable[[dict], None]] = None
        self._lock = threading.Lock()
        self._version = 100
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), _handler_for(self))
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    def __enter__(self) -> "FakeKubeAPI":
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.shutdown()
        self._server.server_close()

    def write_kubeconfig(self, path: Path, namespace: Optional[str] = "team-a") -> Path:
        """A kubeconfig (JSON is YAML) whose current context points at this server."""
        context: dict[str, Any] = {"cluster": "fake", "user": "tester"}
        if namespace:
            context["namespace"] = namespace
        config = {
            "apiVersion": "v1", "kind": "Config", "current-context": "fake",
            "clusters": [{"name": "fake", "cluster": {"server": self.url}}],
            "users": [{"name": "tester", "user": {"token": self.token}}],
            "contexts": [{"name": "fake", "context": context}],
        }  # fmt: skip
        Path(path).write_text(json.dumps(config))
        return Path(path)

    # -- the test's side (KServe's controller) ---------------------------------------------------

    def put_object(self, namespace: str, obj: dict) -> dict:
        """Store ``obj`` as if created earlier (generation 1), without calling ``on_write``."""
        with self._lock:
            stored = self._new_object(namespace, copy.deepcopy(obj))
            self.objects[(namespace, stored["metadata"]["name"])] = stored
            return copy.deepcopy(stored)

    def set_status(self, namespace: str, name: str, status: dict) -> None:
        with self._lock:
            stored = self.objects[(namespace, name)]
            stored["status"] = copy.deepcopy(status)
            stored["metadata"]["resourceVersion"] = self._next_version()

    def mark_ready(self, namespace: str, name: str, url: str, generation: Optional[int] = None) -> None:
        """Ready=True at ``generation`` (default: the object's current one), serving ``url``."""
        with self._lock:
            generation = generation or self.objects[(namespace, name)]["metadata"]["generation"]
        ready = {"type": "Ready", "status": "True", "lastTransitionTime": "2026-12-01T00:00:00Z"}
        self.set_status(namespace, name, {
            "observedGeneration": generation, "url": url, "address": {"url": url},
            "conditions": [{**ready, "type": "PredictorReady"}, ready],
        })  # fmt: skip

    def get_object(self, namespace: str, name: str) -> dict:
        with self._lock:
            return copy.deepcopy(self.objects[(namespace, name)])

    # -- the API's side ---------------------------------------------------------------------------

    def handle(self, method: str, path: str, headers: Any, body: bytes) -> tuple[int, dict]:
        verb = _VERBS.get(method)
        self.requests.append((verb or method, path))
        if headers.get("Authorization") != f"Bearer {self.token}":
            return _status(401, "Unauthorized", "Unauthorized")
        match = _PATH.match(path)
        if not match or not self.kserve_installed:
            return _status(404, "NotFound", "the server could not find the requested resource")
        namespace, name = match["ns"], match["name"]
        if verb is None or (verb == "create") != (name is None):
            return _status(405, "MethodNotAllowed", f"{method} is not supported here by the fake API")
        obj = None
        if body:
            obj = json.loads(body)
            name = name or (obj.get("metadata") or {}).get("name")
        if verb in self.forbidden:
            subject = f'{PLURAL}.{GROUP} "{name}"' if verb != "create" else f"{PLURAL}.{GROUP}"
            return _status(403, "Forbidden", (
                f'{subject} is forbidden: User "{self.user}" cannot {verb} resource "{PLURAL}" in API group '
                f'"{GROUP}" in the namespace "{namespace}"'
            ), name=name)  # fmt: skip
        with self._lock:
            if verb == "get":
                return self._get(namespace, name)
            if verb == "create":
                answer = self._create(namespace, obj)
            else:
                answer = self._replace(namespace, name, obj)
        if answer[0] < 300 and self.on_write is not None:
            self.on_write(copy.deepcopy(answer[1]))
        return answer

    def _get(self, namespace: str, name: str) -> tuple[int, dict]:
        if (namespace, name) not in self.objects:
            return _not_found(name)
        return 200, copy.deepcopy(self.objects[(namespace, name)])

    def _create(self, namespace: str, obj: dict) -> tuple[int, dict]:
        meta = obj.setdefault("metadata", {})
        if meta.get("namespace", namespace) != namespace:
            return _status(400, "BadRequest", "the namespace of the provided object does not match the namespace sent on the request")
        if (namespace, meta.get("name")) in self.objects:
            return _status(409, "AlreadyExists", f'{PLURAL}.{GROUP} "{meta["name"]}" already exists', name=meta["name"])
        stored = self._new_object(namespace, obj)
        self.objects[(namespace, meta["name"])] = stored
        return 201, copy.deepcopy(stored)

    def _replace(self, namespace: str, name: str, obj: dict) -> tuple[int, dict]:
        if (namespace, name) not in self.objects:
            return _not_found(name)
        stored = self.objects[(namespace, name)]
        sent_version = (obj.get("metadata") or {}).get("resourceVersion")
        if not sent_version:
            return _status(422, "Invalid", f'{PLURAL}.{GROUP} "{name}" is invalid: metadata.resourceVersion: '
                           "Invalid value: 0x0: must be specified for an update", name=name)  # fmt: skip
        if sent_version != stored["metadata"]["resourceVersion"]:
            return _status(409, "Conflict", f'Operation cannot be fulfilled on {PLURAL}.{GROUP} "{name}": the object '
                           "has been modified; please apply your changes to the latest version and try again", name=name)  # fmt: skip
        replaced = copy.deepcopy(obj)
        replaced["metadata"] = {**replaced["metadata"], **{k: stored["metadata"][k] for k in ("uid", "creationTimestamp")}}
        replaced["metadata"]["namespace"] = namespace
        changed = replaced.get("spec") != stored.get("spec")
        replaced["metadata"]["generation"] = stored["metadata"]["generation"] + (1 if changed else 0)
        replaced["metadata"]["resourceVersion"] = self._next_version()
        replaced.pop("status", None)
        if "status" in stored:
            replaced["status"] = stored["status"]
        self.objects[(namespace, name)] = replaced
        return 200, copy.deepcopy(replaced)

    def _new_object(self, namespace: str, obj: dict) -> dict:
        obj.pop("status", None)
        obj["metadata"].update(
            namespace=namespace, uid=str(uuid.uuid4()), generation=1, resourceVersion=self._next_version(),
            creationTimestamp="2026-12-01T00:00:00Z",
        )  # fmt: skip
        return obj

    def _next_version(self) -> str:
        self._version += 1
        return str(self._version)


def _status(code: int, reason: str, message: str, *, name: Optional[str] = None) -> tuple[int, dict]:
    details = {"name": name, "group": GROUP, "kind": PLURAL} if name else {}
    return code, {
        "kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
        "message": message, "reason": reason, "details": details, "code": code,
    }  # fmt: skip


def _not_found(name: str) -> tuple[int, dict]:
    return _status(404, "NotFound", f'{PLURAL}.{GROUP} "{name}" not found', name=name)


def _handler_for(api: FakeKubeAPI) -> type:
    class Handler(BaseHTTPRequestHandler):
        def _answer(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            body = self.rfile.read(length) if length else b""
            code, payload = api.handle(self.command, self.path, self.headers, body)
            raw = json.dumps(payload).encode()
            self.send_response(code)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(raw)))
            self.end_headers()
            self.wfile.write(raw)

        do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = _answer

        def log_message(self, *args: Any) -> None:  # requests are in api.requests
            pass

    return Handler
