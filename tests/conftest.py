"""Shared test fixtures.

``s3_server`` is a real S3 HTTP endpoint for the whole session: moto's S3 app served on a
loopback port, or the server named by ``MINIO_ENDPOINT`` (with its credentials from the
environment) when that is set when the session starts. ``s3_bucket`` gives each test a fresh
bucket as ``"s3://<bucket>"`` with the ``MINIO_*`` variables pointing at the server, so
``maskpipe.storage`` finds it the way a pipeline pod does.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import threading
import urllib.request
import uuid
from pathlib import Path
from dataclasses import dataclass, field
from typing import Callable, Iterator

import pytest

_ENV_VARS_TO_CLEAR = (
    "MINIO_ENDPOINT",
    "MINIO_ACCESS_KEY",
    "MINIO_SECRET_KEY",
    "MINIO_SECURE",
    "MINIO_REGION",
    "AWS_ENDPOINT_URL",
    "AWS_ENDPOINT_URL_S3",
    "AWS_ACCESS_KEY_ID",
    "AWS_SECRET_ACCESS_KEY",
    "AWS_SESSION_TOKEN",
    "AWS_DEFAULT_REGION",
    "AWS_REGION",
    "MASKPIPE_S3_RETRIES",
    "MASKPIPE_S3_BACKOFF",
    "MASKPIPE_S3_CONNECT_TIMEOUT",
    "MASKPIPE_S3_READ_TIMEOUT",
)


class LoopbackS3Server:
    """moto's S3 app on a loopback port that can go away and come back on the same port.

    ``moto.server.ThreadedMotoServer`` serves the same app, but its ``stop()`` leaves the
    listening socket and the keep-alive connections open, so a client would hang instead of
    seeing the endpoint vanish. ``stop()`` here closes both; ``start()`` binds the same port
    again; the objects survive (moto keeps them in process memory). ``request_hooks`` are
    called with each WSGI environ before moto handles it (fault tests use them to pick the
    moment of an outage).
    """

    def __init__(self, host: str = "127.0.0.1") -> None:
        from moto.moto_server.werkzeug_app import DomainDispatcherApplication, create_backend_app

        self.host = host
        self.port = 0
        self.request_hooks: list[Callable[[dict], None]] = []
        self._moto_app = DomainDispatcherApplication(create_backend_app)
        self._server = None
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()

    @property
    def endpoint(self) -> str:
        return f"{self.host}:{self.port}"

    @property
    def running(self) -> bool:
        return self._server is not None

    def start(self) -> None:
        from moto.moto_server.werkzeug_app import MotoRequestHandler

        with self._lock:
            if self._server is not None:
                return
            server = _make_tracking_server(self.host, self.port, self._app, MotoRequestHandler)
            self.port = server.server_address[1]
            self._thread = threading.Thread(target=server.serve_forever, name="moto-s3", daemon=True)
            self._thread.start()
            self._server = server

    def stop(self) -> None:
        with self._lock:
            server, self._server = self._server, None
            if server is None:
                return
            server.shutdown()
            server.server_close()
            server.cut_connections()
            if self._thread is not None:
                self._thread.join(timeout=5)

    def _app(self, environ, start_response):
        for hook in list(self.request_hooks):
            hook(environ)
        return self._moto_app(environ, start_response)


def _make_tracking_server(host: str, port: int, app, handler):
    # werkzeug comes with moto[server]; imported here so that conftest loads without it
    from werkzeug.serving import ThreadedWSGIServer

    class ConnectionTrackingServer(ThreadedWSGIServer):
        """Remembers open client sockets so that stop() can cut them like a dying server would."""

        def __init__(self, *args, **kwargs) -> None:
            self._connections: set[socket.socket] = set()
            self._connections_lock = threading.Lock()
            super().__init__(*args, **kwargs)

        def process_request(self, request, client_address) -> None:
            with self._connections_lock:
                self._connections.add(request)
            super().process_request(request, client_address)

        def shutdown_request(self, request) -> None:
            with self._connections_lock:
                self._connections.discard(request)
            super().shutdown_request(request)

        def cut_connections(self) -> None:
            with self._connections_lock:
                connections = list(self._connections)
            for connection in connections:
                try:
                    connection.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass

    return ConnectionTrackingServer(host, port, app, handler=handler)


@dataclass
class S3Endpoint:
    """The session's S3 server: where it is and which credentials the tests use."""

    endpoint: str  # host:port
    secure: bool
    access_key: str = field(repr=False)
    secret_key: str = field(repr=False)
    region: str | None = None
    server: LoopbackS3Server | None = None  # None: an external server, faults cannot be injected
    auth_enforced: bool = False

    @property
    def url(self) -> str:
        return f"{'https' if self.secure else 'http'}://{self.endpoint}"

    @property
    def is_moto(self) -> bool:
        return self.server is not None

    def env(self) -> dict[str, str]:
        env = {
            "MINIO_ENDPOINT": self.endpoint,
            "MINIO_SECURE": "true" if self.secure else "false",
            "MINIO_ACCESS_KEY": self.access_key,
            "MINIO_SECRET_KEY": self.secret_key,
        }
        if self.region:
            env["MINIO_REGION"] = self.region
        return env

    def client(self):
        """A plain minio client for test setup and inspection (not the code under test)."""
        from minio import Minio

        return Minio(
            self.endpoint,
            access_key=self.access_key,
            secret_key=self.secret_key,
            secure=self.secure,
            region=self.region,
        )

    def set_auth_enforced(self, enforced: bool) -> None:
        """moto accepts any keys unless told to authenticate every request (its reset-auth API)."""
        if not self.is_moto:
            raise RuntimeError("only the loopback moto server can switch authentication")
        count = b"0" if enforced else b"inf"
        request = urllib.request.Request(
            f"{self.url}/moto-api/reset-auth",
            data=count,
            method="POST",
            headers={"Content-Type": "text/plain"},  # a form type would leave moto an empty body
        )
        with urllib.request.urlopen(request, timeout=5) as response:
            json.load(response)
        self.auth_enforced = enforced


@pytest.fixture(scope="session")
def s3_server() -> Iterator[S3Endpoint]:
    """A real S3 endpoint for the session (loopback moto, or MINIO_ENDPOINT's server)."""
    if os.environ.get("MINIO_ENDPOINT", "").strip():
        from maskpipe.storage import S3Settings

        settings = S3Settings.from_env()
        yield S3Endpoint(
            endpoint=settings.endpoint,
            secure=settings.secure,
            access_key=settings.access_key,
            secret_key=settings.secret_key,
            region=settings.region,
        )
        return
    pytest.importorskip("moto", reason="moto[server] provides the loopback S3 endpoint")
    logging.getLogger("werkzeug").setLevel(logging.WARNING)  # one INFO line per request otherwise
    server = LoopbackS3Server()
    server.start()
    try:
        yield S3Endpoint(
            endpoint=server.endpoint,
            secure=False,
            access_key="maskpipe-test-access",
            secret_key="maskpipe-test-secret",
            region="us-east-1",
            server=server,
        )
    finally:
        server.stop()


@pytest.fixture
def s3_env(s3_server: S3Endpoint, monkeypatch: pytest.MonkeyPatch, tmp_path_factory) -> S3Endpoint:
    """MINIO_* set for the session server, other S3 settings cleared, cache under tmp."""
    for name in _ENV_VARS_TO_CLEAR:
        monkeypatch.delenv(name, raising=False)
    for name, value in s3_server.env().items():
        monkeypatch.setenv(name, value)
    monkeypatch.setenv("MASKPIPE_CACHE_DIR", str(tmp_path_factory.mktemp("s3-cache")))
    return s3_server


@pytest.fixture
def s3_bucket(s3_env: S3Endpoint) -> Iterator[str]:
    """A fresh, empty bucket as ``"s3://<bucket>"``, with the environment pointing at it."""
    name = f"maskpipe-test-{uuid.uuid4().hex[:12]}"
    client = s3_env.client()
    client.make_bucket(name)
    try:
        yield f"s3://{name}"
    finally:
        if s3_env.server is not None:
            s3_env.server.request_hooks.clear()
            s3_env.server.start()  # a fault test may have left it down
            if s3_env.auth_enforced:
                s3_env.set_auth_enforced(False)
        _remove_bucket(client, name)


def _remove_bucket(client, name: str) -> None:
    from minio.deleteobjects import DeleteObject

    try:
        objects = [DeleteObject(o.object_name) for o in client.list_objects(name, recursive=True)]
        for _ in client.remove_objects(name, objects):
            pass
        client.remove_bucket(name)
    except Exception:  # noqa: BLE001 - cleanup must not hide the test's own result
        pass


@pytest.fixture
def fresh_storage_clients():
    """Forget the per-process MinIO clients and verified buckets, so a test's own keys and
    endpoint are used (and checked) from its first call."""
    from maskpipe import storage

    storage._clients.clear()
    storage._verified_buckets.clear()
    yield
    storage._clients.clear()
    storage._verified_buckets.clear()


# ---------------------------------------------------------------------------------------------
# an exported model, shared by the export, serve and benchmark tests (an export takes ~20 s)


@pytest.fixture(scope="session")
def serving_eval_data(tmp_path_factory):
    """A synthetic eval set (14 photos of 2 people, 96x128) in the competition layout."""
    from maskpipe.data.synth import generate

    root = tmp_path_factory.mktemp("serving-data")
    generate(root, people=1, eval_people=2, size=(96, 128))
    return root


@pytest.fixture(scope="session")
def serving_checkpoints(tmp_path_factory):
    """Three untrained resnet10t checkpoints; a centre crop smaller than the photos, so the
    exported model's view includes a crop."""
    from tiny import write_task_checkpoints

    return write_task_checkpoints(
        tmp_path_factory.mktemp("serving-ckpt"), ["data.crop_size=[112,84]", "data.input_size=[48,36]"]
    )


@pytest.fixture(scope="session")
def exported_model(serving_checkpoints, tmp_path_factory):
    """The ``export-model`` component (what the pipeline runs; it wraps ``maskpipe export``)
    on :func:`serving_checkpoints`, flip TTA in the graph: the model folder."""
    from kfp import dsl

    from components.export_model import export_model

    out = tmp_path_factory.mktemp("serving-export")
    inputs = {f"{task}_model": dsl.Model(name="model", uri=str(serving_checkpoints[task]), metadata={}) for task in ("mask", "gender", "age")}
    model = dsl.Model(name="model", uri=str(out / "model"), metadata={})
    export_model.python_func(**inputs, model=model, tta=True)
    assert model.metadata["format"] == "onnx" and model.metadata["input_size"] == "48x36"
    return Path(model.path)
