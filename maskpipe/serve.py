"""`maskpipe serve`: an exported model behind a KServe ``ModelServer`` (v1 and v2 REST).

* v1: ``POST /v1/models/NAME:predict`` with ``{"instances": [{"b64": "<base64 photo>"}, ...]}``
  (the binary convention KServe shares with TF Serving) answers
  ``{"predictions": [{"class": 7, "class_name": ..., "mask": {"label", "probability",
  "probabilities"}, "gender": {...}, "age": {...}}, ...]}``.
* v2 (Open Inference Protocol): ``POST /v2/models/NAME/infer`` with one ``BYTES`` input of
  encoded photos (base64 strings in JSON, or raw bytes with the binary-data extension);
  outputs ``class``, ``class_name``, ``labels`` (mask, gender, age in words),
  ``probabilities`` (of those labels) and the four probability tensors of the graph.
* KServe's own liveness (``/``, ``/v2/health/live``), readiness (``/v1/models/NAME``,
  ``/v2/health/ready``, ``/v2/models/NAME/ready``) and metadata (``/v2/models/NAME``).

Photos are decoded and resized by :func:`maskpipe.data.resize.decode_views`, the function
``maskpipe infer`` uses, in a thread pool. The photos of requests that arrive together go
through the model as one batch (:class:`MicroBatcher`). Every bad request is answered 4xx with
what was wrong (KServe's ``InvalidInput`` -> 400, a body over the limit -> 413, an unknown
model -> 404, a malformed v2 body -> 422) and the next request is served as usual.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import json
import logging
import uuid
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from kserve import Model, ModelServer
from fastapi.responses import JSONResponse
from kserve.errors import InferenceError, InvalidInput
from kserve.protocol.infer_type import InferOutput, InferRequest, InferResponse

from maskpipe.data.images import ImageDecodeError
from maskpipe.data.resize import decode_views
from maskpipe.model_card import OUTPUT_NAMES
from maskpipe.quantize import int8_or_fp32_here
from maskpipe.runtime import EnsembleBackend, answers, open_backend

log = logging.getLogger(__name__)

# Response header: how many images the forward pass that answered this request held.
BATCH_HEADER = "x-maskpipe-batch-images"
V1_SHAPE = '{"instances": [{"b64": "<base64 of a JPEG or PNG file>"}, ...]}'


@dataclass(frozen=True)
class ServeOptions:
    name: str = "maskpipe"
    host: str = "0.0.0.0"
    port: int = 8080
    backend: str = "onnx"
    device: str = "auto"
    max_batch: int = 32
    max_body_bytes: int = 20 * 1024 * 1024
    batch_wait_s: float = 0.002
    decode_threads: int = 4


class MicroBatcher:
    """One forward pass for the photos of all requests waiting together.

    A request puts its decoded batch on a queue and awaits its slice of the answer. The one
    worker takes whatever is queued (waiting up to ``wait_s`` for more while the batch is
    under ``max_batch`` images), runs the model once in its own thread, and hands each request
    its rows. While a forward pass runs, new requests queue up and form the next batch, so
    the batch grows with the load without a fixed delay.
    """

    def __init__(self, backend: EnsembleBackend, max_batch: int, wait_s: float) -> None:
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
            batch = np.concatenate([images for images, _ in pending])
            try:
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
    """The KServe predictor: request -> photos -> decoded batch -> micro-batched model -> answers."""

    def __init__(self, backend: EnsembleBackend, options: ServeOptions) -> None:
        super().__init__(options.name, return_response_headers=True)
        self.backend, self.options = backend, options
        self.card = backend.card
        self.batcher = MicroBatcher(backend, options.max_batch, options.batch_wait_s)
        self._decoders = ThreadPoolExecutor(options.decode_threads, thread_name_prefix="decode")

    def load(self) -> bool:
        self.ready = True  # the backend was opened (and every file verified) before this
        return self.ready

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

    async def predict(self, payload: dict | InferRequest, headers: dict | None = None, response_headers=None):
        if isinstance(payload, InferRequest):
            photos = v2_photos(payload)
        else:
            photos = v1_photos(payload)
        check_count(len(photos), self.options.max_batch)
        images = await asyncio.get_running_loop().run_in_executor(self._decoders, self._decode, photos)
        outputs, batch_size = await self.batcher.predict(images)
        if response_headers is not None:  # how well concurrent requests were batched
            response_headers[BATCH_HEADER] = str(batch_size)
        if isinstance(payload, InferRequest):
            return v2_response(payload, self.name, outputs, self.card)
        return {"predictions": answers(outputs, self.card)}

    def _decode(self, photos: list[bytes]) -> np.ndarray:
        view = self.card.view
        try:
            return np.stack([decode_views(photo, [view], name=f"image {i}")[0] for i, photo in enumerate(photos)])
        except ImageDecodeError as exc:
            raise InvalidInput(str(exc)) from None


def check_count(count: int, max_batch: int) -> None:
    if count == 0:
        raise InvalidInput("the request holds no images; send at least one")
    if count > max_batch:
        raise InvalidInput(
            f"the request holds {count} images, more than this server's maximum of {max_batch}; "
            "split it into smaller requests (or start the server with a larger --max-batch)"
        )


def v1_photos(payload: Any) -> list[bytes]:
    """The encoded photos of a v1 request body, or InvalidInput saying what shape was expected."""
    if isinstance(payload, (bytes, str)):
        raise InvalidInput(f"the v1 body must be JSON (Content-Type: application/json) shaped {V1_SHAPE}")
    if not isinstance(payload, dict) or "instances" not in payload:
        keys = sorted(payload) if isinstance(payload, dict) else type(payload).__name__
        raise InvalidInput(f'expected a JSON object with "instances", got {keys}; send {V1_SHAPE}')
    instances = payload["instances"]
    if not isinstance(instances, list):
        raise InvalidInput(f'"instances" must be a list; send {V1_SHAPE}')
    photos = []
    for i, instance in enumerate(instances):
        if not isinstance(instance, dict) or not isinstance(instance.get("b64"), str):
            raise InvalidInput(f'instances[{i}] must be an object {{"b64": "<base64 photo>"}}; send {V1_SHAPE}')
        photos.append(_b64decode(instance["b64"], f"instances[{i}].b64"))
    return photos


def v2_photos(request: InferRequest) -> list[bytes]:
    """The encoded photos of a v2 request: one BYTES input, base64 strings or raw bytes."""
    if len(request.inputs) != 1:
        names = [i.name for i in request.inputs]
        raise InvalidInput(f"expected exactly one input (BYTES, the encoded photos), got {len(names)}: {names}")
    tensor = request.inputs[0]
    if tensor.datatype != "BYTES":
        raise InvalidInput(
            f"input {tensor.name!r} has datatype {tensor.datatype}; send the encoded JPEG/PNG photos "
            "as BYTES (base64 strings in JSON, or raw bytes with the binary data extension)"
        )
    if tensor._raw_data is not None:  # binary data extension: length-prefixed bytes
        items = list(tensor.as_numpy().reshape(-1))
    else:
        items = list(np.asarray(tensor.data, dtype=object).reshape(-1)) if tensor.data is not None else []
    shape = list(tensor.shape)
    if len(shape) != 1 or shape[0] != len(items):
        raise InvalidInput(f"input {tensor.name!r} has shape {shape} but holds {len(items)} elements; use shape [N]")
    photos = []
    for i, item in enumerate(items):
        if isinstance(item, (bytes, bytearray)):
            photos.append(bytes(item))
        elif isinstance(item, str):
            photos.append(_b64decode(item, f"{tensor.name}[{i}]"))
        else:
            raise InvalidInput(f"{tensor.name}[{i}] is a {type(item).__name__}; send a base64 string or bytes")
    return photos


def _b64decode(text: str, where: str) -> bytes:
    try:
        return base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise InvalidInput(f"{where} is not valid base64; send the photo file's bytes base64-encoded") from None


def v2_response(request: InferRequest, model_name: str, outputs: dict[str, np.ndarray], card) -> InferResponse:
    rows = answers(outputs, card)
    n = len(rows)
    tasks = ("mask", "gender", "age")
    tensors = {
        "class": np.asarray(outputs["class"], dtype=np.int64),
        "class_name": np.array([row["class_name"] for row in rows], dtype=object),
        "labels": np.array([[row[t]["label"] for t in tasks] for row in rows], dtype=object).reshape(n, 3),
        "probabilities": np.array([[row[t]["probability"] for t in tasks] for row in rows], dtype=np.float32).reshape(n, 3),
        **{name: np.asarray(outputs[name], dtype=np.float32) for name in OUTPUT_NAMES if name != "class"},
    }
    infer_outputs = []
    for name, value in tensors.items():
        datatype = {np.dtype(np.int64): "INT64", np.dtype(np.float32): "FP32"}.get(value.dtype, "BYTES")
        output = InferOutput(name=name, shape=list(value.shape), datatype=datatype)
        output.set_data_from_numpy(value, binary_data=False)
        infer_outputs.append(output)
    return InferResponse(response_id=request.id or str(uuid.uuid4()), model_name=model_name, infer_outputs=infer_outputs)


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
            await self._too_large(send, int(declared))
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
                await self._too_large(send, received)

    async def _drain(self, receive, received: int) -> int:
        while received <= self.DRAIN_FACTOR * self.max_bytes:
            message = await receive()
            received += len(message.get("body", b""))
            if message["type"] != "http.request" or not message.get("more_body"):
                break
        return received

    async def _too_large(self, send, size: int) -> None:
        body = json.dumps({
            "error": f"request body of {size:,} bytes is over this server's limit of "
            f"{self.max_bytes:,} bytes; send fewer or smaller photos per request"
        }).encode()
        headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
        await send({"type": "http.response.start", "status": 413, "headers": headers})
        await send({"type": "http.response.body", "body": body})


class _BodyTooLarge(Exception):
    pass


class _Server(ModelServer):
    """KServe's ModelServer listening on ``host`` (it binds 0.0.0.0 on its own)."""

    def __init__(self, host: str, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._host = host

    def setup_event_loop(self) -> None:
        # Called after the REST server is built and before it binds or registers its handlers.
        rest = self._rest_server
        if rest is not None:
            rest.config.host = self._host
            add_kserve_handlers = rest._add_exception_handlers

            def add_handlers(app) -> None:
                add_kserve_handlers(app)
                app.add_exception_handler(InferenceError, inference_error_handler)

            rest._add_exception_handlers = add_handlers
        super().setup_event_loop()


async def inference_error_handler(_request, exc: InferenceError) -> JSONResponse:
    """KServe answers its InferenceError with 500; one of them is the client's doing: KServe
    0.21 decodes the BYTES elements of the v2 binary data extension as UTF-8 text
    (``InferRequest.from_bytes``), so raw photo bytes fail there, before maskpipe sees them."""
    if "using UTF-8" in str(exc):
        return JSONResponse(
            status_code=400,
            content={"error": "a BYTES element of the binary data is not UTF-8 text: this server "
                     "(KServe 0.21) reads BYTES as text, so send each photo base64-encoded"},
        )  # fmt: skip
    return JSONResponse(status_code=500, content={"error": str(exc)})


def serve(model_dir: str | Path, options: ServeOptions) -> None:
    """Verify the model folder, open the backend and serve until SIGTERM/SIGINT."""
    backend = open_backend(model_dir, options.backend, device=options.device)
    backend = int8_or_fp32_here(backend)  # int8 only where it holds its agreement on this CPU
    from kserve.model_server import app

    app.add_middleware(BodyLimit, max_bytes=options.max_body_bytes)
    model = EnsembleModel(backend, options)
    model.load()
    log.info(
        "serving %s (%s backend, input %s, TTA %s) as %r on %s:%d",
        backend.card.folder, backend.name, backend.card.input_size, backend.card.tta,
        options.name, options.host, options.port,
    )  # fmt: skip
    _Server(options.host, http_port=options.port, enable_grpc=False, workers=1).start([model])

