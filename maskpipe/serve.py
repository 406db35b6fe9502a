"""`maskpipe serve`: an exported model behind a KServe ``ModelServer`` (v1 and v2 REST).

* v1: ``POST /v1/models/NAME:predict`` with ``{"instances": [{"b64": "<base64 photo>"}, ...]}``
  (the binary convention KServe shares with TF Serving) answers
  ``{"predictions": [{"class": 7, "class_name": ..., "mask": {"label", "probability",
  "probabilities"}, "gender": {...}, "age": {...}}, ...]}``.
* v2 (Open Inference Protocol, as tritonclient and KServe's ``InferenceRESTClient`` speak it):
  ``POST /v2/models/NAME/infer`` (or ``.../versions/VERSION/infer``) with one ``BYTES`` input
  of encoded photos (base64 strings in JSON, or the raw files with the binary data extension);
  outputs ``class``, ``class_name``, ``labels`` (mask, gender, age in words), ``probabilities``
  (of those labels) and the four probability tensors of the graph, as many as the request
  names, in JSON or binary (:mod:`maskpipe.serve_protocol`).
* Liveness (``/``, ``/v2/health/live``), readiness (``/v1/models/NAME``, ``/v2/health/ready``,
  ``/v2/models/NAME/ready``: false whenever the model cannot answer), metadata (``/v2``,
  ``/v2/models/NAME`` with versions and platform), ``/metrics`` and ``/openapi.json``; nothing
  else (:mod:`maskpipe.serve_app`: KServe's model repository load/unload only with
  ``--enable-model-repository``).

Photos are decoded and resized by :func:`maskpipe.data.resize.decode_views`, the function
``maskpipe infer`` uses, within the cost limits of :mod:`maskpipe.serve_limits` (413 or 503
with ``Retry-After`` past them). The photos of requests that arrive together go through the
model as one batch (:class:`MicroBatcher`). Every bad request is answered 4xx with one line
saying what was wrong (a body over the limit -> 413, an unknown model -> 404), logged as one
line, and the next request is served as usual.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

# First, before any other kserve import: kserve.model_server parses sys.argv when imported.
from maskpipe.serve_server import model_server  # isort: skip
from kserve import Model
from kserve.errors import InvalidInput
from kserve.model_repository import ModelRepository

from maskpipe.cli_args import check_can_listen
from maskpipe.data.images import ImageDecodeError
from maskpipe.model_card import OUTPUT_NAMES, read_model_dir
from maskpipe.quantize import int8_or_fp32_here
from maskpipe.backend import Backend
from maskpipe.runtime import answers, open_backend
from maskpipe.serve_limits import DecodeGate, ServeLimits, install as install_limits, resident_bytes

log = logging.getLogger(__name__)

# Response header: how many images the forward pass that answered this request held.
BATCH_HEADER = "x-maskpipe-batch-images"


@dataclass(frozen=True)
class ServeOptions:
    name: str = "maskpipe"
    host: str = "0.0.0.0"
    backend: str = "onnx"
    device: str = "auto"
    batch_wait_s: float = 0.002
    limits: ServeLimits = field(default_factory=ServeLimits)  # every cost limit (maskpipe.serve_limits)

    @property
    def max_batch(self) -> int:
        return self.limits.max_batch

    @property
    def max_body_bytes(self) -> int:
        return self.limits.max_body_bytes
    # KServe's model repository extension (POST /v2/repository/models/NAME/load|unload): off,
    # since anyone who reaches the port could unload the model.
    enable_model_repository: bool = False
    # A bearer token every request but the health probes must carry (None: no token).
    auth_token: str | None = None


class MicroBatcher:
    """One forward pass for the photos of all requests waiting together.

    A request puts its decoded batch on a queue and awaits its slice of the answer. The one
    worker takes whatever is queued (waiting up to ``wait_s`` for more while the batch is
    under ``max_batch`` images), runs the model once in its own thread, and hands each request
    its rows. While a forward pass runs, new requests queue up and form the next batch, so
    the batch grows with the load without a fixed delay.
    """

    def __init__(self, backend: Backend, max_batch: int, wait_s: float) -> None:
        self.backend, self.max_batch, self.wait_s = backend, max_batch, wait_s
        self._queue: asyncio.Queue | None = None
        self._worker: asyncio.Task | None = None
        self._model_thread = ThreadPoolExecutor(1, thread_name_prefix="forward")
        self.batches = 0
        self.images = 0

    async def predict(self, images: np.ndarray) -> tuple[dict[str, np.ndarray], int]:
        """The outputs for ``images`` and the size of the batch they went through in."""
        if self._queue is None:
            self._queue = asyncio.Queue()
            self._worker = asyncio.get_running_loop().create_task(self._run())
        future = asyncio.get_running_loop().create_future()
        await self._queue.put((images, future))
        return await future

    def healthy(self) -> bool:
        """False once the worker has stopped (nothing would answer the queued requests)."""
        return self._worker is None or not self._worker.done()

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        assert self._queue is not None
        while True:
            pending = [await self._queue.get()]
            size = len(pending[0][0])
            deadline = loop.time() + self.wait_s
            while size < self.max_batch:
                try:
                    item = self._queue.get_nowait()
                except asyncio.QueueEmpty:
                    remaining = deadline - loop.time()
                    if remaining <= 0:
                        break
                    try:
                        item = await asyncio.wait_for(self._queue.get(), remaining)
                    except asyncio.TimeoutError:
                        break
                pending.append(item)
                size += len(item[0])
            try:
                batch = np.concatenate([images for images, _ in pending])
                outputs = await loop.run_in_executor(self._model_thread, self.backend.predict, batch)
            except Exception as exc:  # noqa: BLE001 - every waiting request must hear of it
                for _, future in pending:
                    if not future.done():
                        future.set_exception(exc)
                continue
            self.batches += 1
            self.images += len(batch)
            start = 0
            for images, future in pending:
                stop = start + len(images)
                if not future.done():  # a client that went away leaves a cancelled future
                    future.set_result(({name: value[start:stop] for name, value in outputs.items()}, len(batch)))
                start = stop


class EnsembleModel(Model):
    """The KServe predictor: encoded photos -> decoded batch -> micro-batched model -> outputs.

    :mod:`maskpipe.serve_app` reads the request bodies (:mod:`maskpipe.serve_protocol`) and
    calls the model as KServe's own routes do (``await model(photos, headers)``, so KServe's
    latency metrics still count it); ``predict`` answers the model's output arrays.
    """

    def __init__(self, backend: Backend, options: ServeOptions, gate: DecodeGate) -> None:
        super().__init__(options.name, return_response_headers=True)
        self.backend, self.options, self.gate = backend, options, gate
        self.card = backend.card
        self.batcher = MicroBatcher(backend, options.max_batch, options.batch_wait_s)
        # The served graph's sha256 prefix: a v2 model version that changes with the weights.
        self.version = self.card.data["files"].get(self.card.onnx_file, "1")[:12]
        self.platform = "onnxruntime_onnx" if backend.name.startswith("onnx") else "pytorch"

    def load(self) -> bool:
        self.ready = True  # the backend was opened (and every file verified) before this
        return self.ready

    async def healthy(self) -> bool:
        """KServe's readiness hook: loaded, and the batching worker still able to answer."""
        return bool(self.ready) and self.batcher.healthy()

    def get_input_types(self) -> list[dict]:
        return [{"name": "images", "datatype": "BYTES", "shape": [-1]}]

    def get_output_types(self) -> list[dict]:
        n = self.card.data["num_classes"]
        return [
            {"name": "class", "datatype": "INT64", "shape": [-1]},
            {"name": "class_name", "datatype": "BYTES", "shape": [-1]},
            {"name": "labels", "datatype": "BYTES", "shape": [-1, 3]},
            {"name": "probabilities", "datatype": "FP32", "shape": [-1, 3]},
            *({"name": f"{t}_probs", "datatype": "FP32", "shape": [-1, n[t]]} for t in ("mask", "gender", "age")),
            {"name": "class_probs", "datatype": "FP32", "shape": [-1, 18]},
        ]

    async def predict(self, payload: list[bytes], headers: dict | None = None, response_headers=None):
        """The graph's outputs for the encoded photos ``payload``."""
        if not isinstance(payload, list):
            raise InvalidInput(f"expected a list of encoded photos, got a {type(payload).__name__}")
        check_count(len(payload), self.options.max_batch)
        images = await self._decode(payload)
        outputs, batch_size = await self.batcher.predict(images)
        if response_headers is not None:  # how well concurrent requests were batched
            response_headers[BATCH_HEADER] = str(batch_size)
        return outputs

    async def _decode(self, photos: list[bytes]) -> np.ndarray:
        try:  # within the request's and the process's budgets (413/503 past them)
            return await self.gate.decode(photos)
        except ImageDecodeError as exc:
            raise InvalidInput(str(exc)) from None

    def v1_answers(self, outputs: dict[str, np.ndarray]) -> dict:
        return {"predictions": answers(outputs, self.card)}

    def v2_tensors(self, outputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Every v2 output by name (the order of :meth:`get_output_types`)."""
        rows = answers(outputs, self.card)
        n = len(rows)
        tasks = ("mask", "gender", "age")
        return {
            "class": np.asarray(outputs["class"], dtype=np.int64),
            "class_name": np.array([row["class_name"] for row in rows], dtype=object),
            "labels": np.array([[row[t]["label"] for t in tasks] for row in rows], dtype=object).reshape(n, 3),
            "probabilities": np.array([[row[t]["probability"] for t in tasks] for row in rows], dtype=np.float32).reshape(n, 3),
            **{name: np.asarray(outputs[name], dtype=np.float32) for name in OUTPUT_NAMES if name != "class"},
        }


def check_count(count: int, max_batch: int) -> None:
    if count == 0:
        raise InvalidInput("the request holds no images; send at least one")
    if count > max_batch:
        raise InvalidInput(
            f"the request holds {count} images, more than this server's maximum of {max_batch}; "
            "split it into smaller requests (or start the server with a larger --max-batch)"
        )


class BodyLimit:
    """ASGI middleware: a request body over ``max_bytes`` is answered 413 before it is parsed.

    The rest of the body is read and dropped first (up to :data:`DRAIN_FACTOR` times the
    limit): a server that answers and closes while the client is still sending leaves the
    client with a broken pipe instead of the 413 and its message.
    """

    DRAIN_FACTOR = 16

    def __init__(self, app, max_bytes: int) -> None:
        self.app, self.max_bytes = app, max_bytes

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = dict(scope.get("headers") or []).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.max_bytes:
            await self._drain(receive, 0)
            await self._too_large(send, int(declared), scope)
            return
        received = 0
        started = False

        async def counting_receive():
            nonlocal received
            message = await receive()
            received += len(message.get("body", b""))
            if received > self.max_bytes:
                if message.get("more_body"):
                    received = await self._drain(receive, received)
                raise _BodyTooLarge()
            return message

        async def tracking_send(message):
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, counting_receive, tracking_send)
        except _BodyTooLarge:
            if not started:
                await self._too_large(send, received, scope)

    async def _drain(self, receive, received: int) -> int:
        while received <= self.DRAIN_FACTOR * self.max_bytes:
            message = await receive()
            received += len(message.get("body", b""))
            if message["type"] != "http.request" or not message.get("more_body"):
                break
        return received

    async def _too_large(self, send, size: int, scope) -> None:
        message = (
            f"request body of {size:,} bytes is over this server's limit of "
            f"{self.max_bytes:,} bytes; send fewer or smaller photos per request"
        )
        log.warning("rejected %s %s: 413 %s", scope.get("method"), scope.get("path"), message)
        body = json.dumps({"error": message}).encode()
        headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
        await send({"type": "http.response.start", "status": 413, "headers": headers})
        await send({"type": "http.response.body", "body": body})


class _BodyTooLarge(Exception):
    pass


def serve(model_dir: str | Path, options: ServeOptions, server_flags: argparse.Namespace) -> None:
    """Check the address and the model folder, open the backend and serve until SIGTERM/SIGINT.

    ``server_flags`` holds the values of KServe's own flags (:mod:`maskpipe.serve_server`).
    """
    from kserve.model_server import app

    from maskpipe.serve_app import install

    repository = ModelRepository()
    server = model_server(server_flags, options.host, registered_models=repository)
    # Before the model is opened and KServe starts (which would log "Application startup
    # complete" and then fail to bind): the address, then the folder and its card.
    check_can_listen(options.host, server.http_port)
    read_model_dir(model_dir, verify=False)  # open_backend verifies every file's sha256
    backend = open_backend(model_dir, options.backend, device=options.device)
    backend = int8_or_fp32_here(backend)  # int8 only where it holds its agreement on this CPU
    budgets = options.limits.resolve(resident_bytes())  # LimitsError (exit 2) when they cannot hold
    install_limits(app, options.limits)  # admission: innermost of the three middlewares
    model = EnsembleModel(backend, options, DecodeGate(budgets, backend.card.view))
    model.load()
    app.add_middleware(BodyLimit, max_bytes=options.max_body_bytes)  # 413 before admission
    install(app, model, repository, options)  # its guard goes outermost: refused before read
    log.info(
        "serving %s (%s backend, input %s, TTA %s) as %r on %s:%d",
        backend.card.folder, backend.name, backend.card.input_size, backend.card.tta,
        options.name, options.host, server.http_port,
    )  # fmt: skip
    log.info("limits: %s", budgets.summary())
    server.start([model])
