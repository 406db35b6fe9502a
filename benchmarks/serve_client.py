"""A test and benchmark client for ``maskpipe serve``: start a server process, send photos, drive load.

Not part of the maskpipe package (a user's client is any HTTP client, or KServe's
``InferenceRESTClient``): the serving tests (``from benchmarks.serve_client import ...``, run
from the repository root) and ``benchmarks/serve.py`` (its neighbour) use it to talk to a real
server over loopback HTTP. Standard library, numpy and maskpipe's errors only, so it runs in
the training and the serving environment alike.
"""

from __future__ import annotations

import base64
import http.client
import json
import os
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from maskpipe.errors import MaskpipeError


SERVE_PYTHON_ENV = "MASKPIPE_SERVE_PYTHON"
SERVE_VENV = ".venv"


def serving_python(repo: str | os.PathLike[str], given: str | None = None) -> Path:
    """Where the interpreter that runs ``maskpipe serve`` should be: ``given``, else
    ``$MASKPIPE_SERVE_PYTHON``, else ``.venv`` of ``repo`` (``make venv``: the one development
    environment, with the serve extra)."""
    return Path(given or os.environ.get(SERVE_PYTHON_ENV) or Path(repo) / SERVE_VENV / "bin" / "python")


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as probe:
        probe.bind((host, 0))
        return probe.getsockname()[1]


def v1_body(photos: Sequence[bytes]) -> bytes:
    """``{"instances": [{"b64": ...}, ...]}`` for the encoded photos."""
    return json.dumps({"instances": [{"b64": base64.b64encode(p).decode()} for p in photos]}).encode()


def v2_body(photos: Sequence[bytes], name: str = "images") -> bytes:
    """An Open Inference Protocol request with one BYTES input of base64 photos."""
    data = [base64.b64encode(p).decode() for p in photos]
    return json.dumps({"inputs": [{"name": name, "datatype": "BYTES", "shape": [len(data)], "data": data}]}).encode()


@dataclass
class Reply:
    status: int
    body: Any
    headers: dict[str, str] = field(default_factory=dict)


def request(url: str, body: bytes | None = None, *, timeout: float = 60, headers: dict | None = None) -> Reply:
    """GET (no body) or POST ``body``; the reply's JSON (or text) whatever the status."""
    sent = urllib.request.Request(url, data=body, headers={"Content-Type": "application/json", **(headers or {})})
    try:
        with urllib.request.urlopen(sent, timeout=timeout) as answer:
            status, raw, answer_headers = answer.status, answer.read(), dict(answer.headers)
    except urllib.error.HTTPError as exc:
        status, raw, answer_headers = exc.code, exc.read(), dict(exc.headers)
    try:
        parsed: Any = json.loads(raw)
    except ValueError:
        parsed = raw.decode(errors="replace")
    return Reply(status, parsed, {k.lower(): v for k, v in answer_headers.items()})


class ServerProcess:
    """``maskpipe serve MODEL_DIR`` in a child process on a free loopback port.

    ``python`` is the interpreter of the serving environment (kserve installed); the server's
    output goes to ``log_path``. Use as a context manager: ready on entry, stopped on exit.
    """

    def __init__(self, model_dir: str | os.PathLike[str], *, python: str = sys.executable, log_path: str | os.PathLike[str],
                 extra_args: Sequence[str] = (), ready_timeout_s: float = 120) -> None:  # fmt: skip
        self.model_dir, self.python, self.log_path = Path(model_dir), python, Path(log_path)
        self.extra_args, self.ready_timeout_s = list(extra_args), ready_timeout_s
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.process: subprocess.Popen | None = None

    def command(self) -> list[str]:
        return [self.python, "-m", "maskpipe", "serve", str(self.model_dir), "--host", "127.0.0.1",
                "--http_port", str(self.port), *self.extra_args]  # fmt: skip

    def __enter__(self) -> "ServerProcess":
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def start(self) -> None:
        with open(self.log_path, "wb") as log:
            self.process = subprocess.Popen(self.command(), stdout=log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + self.ready_timeout_s
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise MaskpipeError(f"maskpipe serve exited with {self.process.returncode}: {self.log_tail()}")
            try:
                if request(f"{self.url}/v2/health/ready", timeout=2).status == 200:
                    return
            except (urllib.error.URLError, ConnectionError, socket.timeout):
                pass
            time.sleep(0.2)
        self.stop()
        raise MaskpipeError(f"maskpipe serve was not ready within {self.ready_timeout_s:.0f} s: {self.log_tail()}")

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()

    def log_tail(self, chars: int = 3000) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-chars:]
        except OSError:
            return "(no log)"


@dataclass
class LoadResult:
    """What :func:`drive` saw: per request (client, index) the status, class ids and latency."""

    seconds: float
    latencies_s: list[float]
    answers: dict[tuple[int, int], Reply]
    images_per_request: int

    @property
    def requests(self) -> int:
        return len(self.answers)

    @property
    def images_per_s(self) -> float:
        return self.requests * self.images_per_request / self.seconds

    def percentile_ms(self, q: float) -> float:
        """The ``q``-th percentile of the latencies in milliseconds (numpy's, interpolated)."""
        return 1000 * float(np.percentile(self.latencies_s, q))


def drive(url: str, bodies: Sequence[bytes], *, clients: int, requests_per_client: int,
          path: str = "/v1/models/maskpipe:predict", images_per_request: int = 1) -> LoadResult:  # fmt: skip
    """``clients`` threads, each with its own keep-alive connection, send
    ``requests_per_client`` requests one after another; client ``c``'s request ``i`` sends
    ``bodies[(c + i) % len(bodies)]``."""
    host_port = url.removeprefix("http://")
    answers: dict[tuple[int, int], Reply] = {}
    latencies: list[float] = []
    lock = threading.Lock()
    barrier = threading.Barrier(clients + 1)

    def client(c: int) -> None:
        connection = http.client.HTTPConnection(host_port, timeout=120)
        barrier.wait()
        try:
            for i in range(requests_per_client):
                body = bodies[(c + i) % len(bodies)]
                start = time.perf_counter()
                try:
                    connection.request("POST", path, body=body, headers={"Content-Type": "application/json"})
                    response = connection.getresponse()
                    raw = response.read()
                    reply = Reply(response.status, json.loads(raw) if raw else None, dict(response.getheaders()))
                except (OSError, http.client.HTTPException, ValueError) as exc:
                    reply = Reply(-1, f"{type(exc).__name__}: {exc}")
                    connection.close()
                    connection = http.client.HTTPConnection(host_port, timeout=120)
                elapsed = time.perf_counter() - start
                with lock:
                    answers[(c, i)] = reply
                    latencies.append(elapsed)
        finally:
            connection.close()

    threads = [threading.Thread(target=client, args=(c,), daemon=True) for c in range(clients)]
    for thread in threads:
        thread.start()
    barrier.wait()
    start = time.perf_counter()
    for thread in threads:
        thread.join()
    return LoadResult(time.perf_counter() - start, latencies, answers, images_per_request)
