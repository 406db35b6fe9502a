"""What one request and the whole serving process may cost, in one config, and its enforcement.

:class:`ServeLimits` holds every limit that bounds ``maskpipe serve``'s memory; its
:meth:`~ServeLimits.pod_memory_bytes` is the memory the deploy step requests for the predictor,
and :meth:`~ServeLimits.resolve` sizes the process's decoding budget from the memory limit it
actually runs under (the cgroup's ``memory.max`` in a pod, ``--memory-limit-mb``, or else the
pod figure). The worst case of the configured limits is

    resident model (measured at start, at most ``model_bytes``)
    + ``BODY_FACTOR`` x ``body_bytes_in_flight``          (request bodies being parsed)
    + ``light_threads`` x ``light_image_bytes``          (ordinary photos decoding)
    + the heavy decode budget                             (large photos decoding)

and :meth:`~ServeLimits.resolve` makes that at most ``(1 - HEADROOM)`` of the limit.

Enforcement, used by :mod:`maskpipe.serve`:

* :class:`Admission` (ASGI middleware): the declared bodies of the requests in progress stay
  under ``body_bytes_in_flight``; a request that cannot start within ``queue_wait_s`` is
  answered 503 with ``Retry-After``.
* :class:`DecodeGate`: every photo's header is read first (:func:`maskpipe.data.resize.plan_decode`);
  a request over ``request_pixels`` decoded pixels, or one photo whose decode would not fit
  the heavy budget at all, is answered 413 before any pixel is decoded. Ordinary photos decode
  in ``light_threads`` threads; a request with a photo above ``light_image_bytes`` waits (at
  most ``queue_wait_s``, else 503 with ``Retry-After``) for its share of the heavy budget and
  decodes in ``heavy_threads`` lower-priority threads, so large photos do not hold up the
  ordinary ones.

Importing this module needs nothing beyond numpy and PIL (the deploy step uses the config).
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import os
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np

from maskpipe.data.images import MAX_PIXELS, ImageDecodeError
from maskpipe.errors import MaskpipeError

log = logging.getLogger(__name__)

MIB = 1024 * 1024
# A request body is held as bytes, as the JSON's strings and as the decoded photos at once.
BODY_FACTOR = 4
# Share of the memory limit left unplanned (allocator slack, the forward pass's batch).
HEADROOM = 0.1
CGROUP_V2 = Path("/sys/fs/cgroup/memory.max")
CGROUP_V1 = Path("/sys/fs/cgroup/memory/memory.limit_in_bytes")


class LimitsError(MaskpipeError):
    """The limits cannot hold under the memory this process has."""


@dataclass(frozen=True)
class ServeLimits:
    """Every limit on what ``maskpipe serve`` holds in memory (sizes in bytes)."""

    max_batch: int = 32  # photos in one request
    max_body_bytes: int = 20 * MIB  # one request body
    max_image_pixels: int = MAX_PIXELS  # one photo, as its header declares it
    request_pixels: int = 48_000_000  # pixels one request decodes (after JPEG reduction)
    body_bytes_in_flight: int = 64 * MIB  # declared bodies of the requests in progress
    light_threads: int = 4  # threads decoding ordinary photos
    light_image_bytes: int = 24 * MIB  # the most one ordinary photo's decode holds
    heavy_threads: int = 1  # threads decoding large photos (lower CPU priority)
    heavy_decode_bytes: int = 640 * MIB  # memory for large photos decoding at once
    model_bytes: int = 768 * MIB  # the process with its model loaded, serving batches
    queue_wait_s: float = 2.0  # longest wait for a share of a budget before 503
    retry_after_s: int = 1  # the Retry-After of a 503
    memory_limit_bytes: int | None = None  # None: the cgroup's, else pod_memory_bytes()

    def __post_init__(self) -> None:
        for name in ("max_batch", "max_body_bytes", "max_image_pixels", "request_pixels", "body_bytes_in_flight",
                     "light_threads", "light_image_bytes", "heavy_threads", "heavy_decode_bytes", "model_bytes"):  # fmt: skip
            if getattr(self, name) < 1:
                raise LimitsError(f"serve limit {name} must be >= 1, got {getattr(self, name)}")
        if self.queue_wait_s < 0 or self.retry_after_s < 1:
            raise LimitsError("serve limits: queue_wait_s must be >= 0 and retry_after_s >= 1")
        if self.body_bytes_in_flight < self.max_body_bytes:
            raise LimitsError(
                f"serve limits: body_bytes_in_flight ({self.body_bytes_in_flight:,}) is below max_body_bytes "
                f"({self.max_body_bytes:,}), so a request of the largest size could never start; raise it"
            )

    @property
    def planned_bytes(self) -> int:
        """The worst case of these limits, before the headroom."""
        return (
            self.model_bytes + BODY_FACTOR * self.body_bytes_in_flight
            + self.light_threads * self.light_image_bytes + self.heavy_decode_bytes
        )  # fmt: skip

    def pod_memory_bytes(self) -> int:
        """The memory request and limit of a predictor running these limits (whole MiB)."""
        return math.ceil(self.planned_bytes / (1 - HEADROOM) / MIB) * MIB

    def pod_memory(self) -> str:
        """:meth:`pod_memory_bytes` as a Kubernetes quantity (``"2560Mi"``)."""
        return f"{self.pod_memory_bytes() // MIB}Mi"

    def resolve(self, resident_bytes: int, cgroup: tuple[int | None, str] | None = None) -> "Budgets":
        """The budgets of a process whose model holds ``resident_bytes`` already, under its
        memory limit; LimitsError when not even the ordinary lanes fit."""
        limit, source = (self.memory_limit_bytes, "--memory-limit-mb") if self.memory_limit_bytes else (None, "")
        if limit is None:
            limit, source = cgroup if cgroup is not None else cgroup_memory_limit()
        if limit is None:
            limit, source = self.pod_memory_bytes(), "the deploy step's pod memory (no cgroup limit here)"
        model = max(resident_bytes, self.model_bytes)
        fixed = model + BODY_FACTOR * self.body_bytes_in_flight + self.light_threads * self.light_image_bytes
        heavy = min(self.heavy_decode_bytes, int(limit * (1 - HEADROOM)) - fixed)
        if heavy < self.light_image_bytes:
            raise LimitsError(
                f"the memory limit of {limit / MIB:,.0f} MiB ({source}) leaves {max(heavy, 0) / MIB:,.0f} MiB for "
                f"decoding large photos after the model ({model / MIB:,.0f} MiB), request bodies "
                f"({BODY_FACTOR * self.body_bytes_in_flight / MIB:,.0f} MiB) and ordinary photos; give the "
                f"predictor at least {self.pod_memory_bytes() / MIB:,.0f} MiB or lower the limits "
                "(maskpipe.serve_limits.ServeLimits)"
            )
        return Budgets(self, limit, source, heavy, fixed + heavy)


@dataclass(frozen=True)
class Budgets:
    """:class:`ServeLimits` resolved against the memory this process has."""

    limits: ServeLimits
    memory_limit_bytes: int
    source: str  # where the memory limit came from
    heavy_decode_bytes: int
    worst_case_bytes: int

    def summary(self) -> str:
        return (
            f"memory limit {self.memory_limit_bytes / MIB:,.0f} MiB ({self.source}); worst case of the limits "
            f"{self.worst_case_bytes / MIB:,.0f} MiB; large-photo decode budget {self.heavy_decode_bytes / MIB:,.0f} MiB; "
            f"{self.limits.request_pixels / 1e6:g} MP per request"
        )


def cgroup_memory_limit() -> tuple[int | None, str]:
    """The memory limit of this process's cgroup (v2, then v1) and its file; None without one."""
    for path in (CGROUP_V2, CGROUP_V1):
        try:
            text = path.read_text().strip()
        except OSError:
            continue
        if text.isdigit() and int(text) < 1 << 60:  # v1 reports "no limit" as a huge number
            return int(text), str(path)
    return None, ""


def resident_bytes() -> int:
    """This process's resident memory now (0 where /proc is absent)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


class Refused(Exception):
    """A request the limits turn away: ``status`` 413 (too costly ever) or 503 (busy now)."""

    def __init__(self, status: int, message: str, retry_after_s: int | None = None) -> None:
        super().__init__(message)
        self.status, self.message, self.retry_after_s = status, message, retry_after_s

    def headers(self) -> list[tuple[bytes, bytes]]:
        extra = [] if self.retry_after_s is None else [(b"retry-after", str(self.retry_after_s).encode())]
        return [(b"content-type", b"application/json"), *extra]

    def body(self) -> bytes:
        return json.dumps({"error": self.message}).encode()


async def refused_handler(_request, exc: Refused):
    """FastAPI exception handler: the refusal as JSON with its status (and Retry-After)."""
    from fastapi.responses import Response

    headers = {k.decode(): v.decode() for k, v in exc.headers()}
    return Response(exc.body(), status_code=exc.status, headers=headers)


class ByteBudget:
    """An asyncio budget of bytes: take a share (waiting at most ``timeout`` s), give it back."""

    def __init__(self, total: int) -> None:
        self.total, self.used = total, 0
        self._changed: asyncio.Condition | None = None

    async def acquire(self, amount: int, timeout: float) -> bool:
        if self._changed is None:
            self._changed = asyncio.Condition()
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        async with self._changed:
            while self.used + amount > self.total:
                remaining = deadline - loop.time()
                if remaining <= 0:
                    return False
                try:
                    await asyncio.wait_for(self._changed.wait(), remaining)
                except asyncio.TimeoutError:
                    return False
            self.used += amount
            return True

    def release(self, amount: int) -> None:
        """Give ``amount`` back; callable from a done-callback or a cancelled task's cleanup."""
        self.used -= amount
        if self._changed is not None:
            asyncio.get_running_loop().create_task(self._wake())

    async def _wake(self) -> None:
        assert self._changed is not None
        async with self._changed:
            self._changed.notify_all()


class Admission:
    """ASGI middleware: POST requests start while their declared bodies fit ``body_bytes_in_flight``.

    A body without a Content-Length counts as ``max_body_bytes``. A request that cannot start
    within ``queue_wait_s`` is answered 503 with ``Retry-After`` (its body read and dropped
    first, so the client sees the answer and not a broken pipe).
    """

    def __init__(self, app, limits: ServeLimits) -> None:
        self.app, self.limits = app, limits
        self.budget = ByteBudget(limits.body_bytes_in_flight)
        self.refused = 0

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http" or scope.get("method") != "POST":
            await self.app(scope, receive, send)
            return
        declared = dict(scope.get("headers") or []).get(b"content-length")
        size = int(declared) if declared is not None and declared.isdigit() else self.limits.max_body_bytes
        size = max(1, min(size, self.limits.max_body_bytes))  # larger bodies are refused 413 before this
        if not await self.budget.acquire(size, self.limits.queue_wait_s):
            self.refused += 1
            refusal = Refused(
                503, f"the server is busy: {self.limits.body_bytes_in_flight:,} bytes of requests are in progress; "
                f"retry after {self.limits.retry_after_s} s", self.limits.retry_after_s,
            )  # fmt: skip
            await _drain(receive, self.limits.max_body_bytes)
            await _send(send, refusal)
            return
        try:
            await self.app(scope, receive, send)
        finally:
            self.budget.release(size)


async def _drain(receive, most: int) -> None:
    received = 0
    while received <= most:
        message = await receive()
        received += len(message.get("body", b""))
        if message["type"] != "http.request" or not message.get("more_body"):
            break


async def _send(send, refusal: Refused) -> None:
    body = refusal.body()
    headers = [*refusal.headers(), (b"content-length", str(len(body)).encode())]
    await send({"type": "http.response.start", "status": refusal.status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


def _lower_priority() -> None:
    """Thread initializer: this decoding thread yields the CPU to the ordinary ones (Linux
    gives each thread its own nice value)."""
    try:
        os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), 10)
    except (AttributeError, OSError):  # pragma: no cover - not Linux, or not permitted
        pass


class DecodeGate:
    """Photos -> the model's input batch, within the request and process budgets."""

    def __init__(self, budgets: Budgets, view) -> None:
        from maskpipe.data.resize import decode_views, plan_decode

        self._plan, self._decode_views = plan_decode, decode_views
        self.limits, self.view = budgets.limits, view
        self.heavy_budget = ByteBudget(budgets.heavy_decode_bytes)
        self._light = ThreadPoolExecutor(self.limits.light_threads, thread_name_prefix="decode")
        self._heavy = ThreadPoolExecutor(
            self.limits.heavy_threads, thread_name_prefix="decode-large", initializer=_lower_priority
        )
        self.heavy_requests = 0

    async def decode(self, photos: Sequence[bytes]) -> np.ndarray:
        """The uint8 NHWC batch; ImageDecodeError for a bad photo, Refused over a budget."""
        loop = asyncio.get_running_loop()
        plans = await loop.run_in_executor(self._light, self._plans, photos)
        pixels = sum(plan.decoded_pixels for plan in plans)
        if pixels > self.limits.request_pixels:
            raise Refused(
                413, f"the request's {len(photos)} photo(s) decode to {pixels:,} pixels, over this server's "
                f"{self.limits.request_pixels:,} per request; send fewer or smaller photos per request",
            )  # fmt: skip
        peak, worst = max((plan.peak_bytes, i) for i, plan in enumerate(plans))
        if peak <= self.limits.light_image_bytes:
            return await loop.run_in_executor(self._light, self._decode_all, photos)
        if peak > self.heavy_budget.total:
            plan = plans[worst]
            raise Refused(
                413, f"image {worst}: decoding its {plan.width}x{plan.height} {plan.format} ({plan.mode}"
                f"{', progressive' if plan.progressive else ''}) takes {peak / MIB:,.0f} MiB, over this server's "
                f"{self.heavy_budget.total / MIB:,.0f} MiB for large photos; send a smaller photo",
            )  # fmt: skip
        if not await self.heavy_budget.acquire(peak, self.limits.queue_wait_s):
            raise Refused(
                503, f"the server is busy decoding large photos; retry after {self.limits.retry_after_s} s "
                "(or send smaller photos)", self.limits.retry_after_s,
            )  # fmt: skip
        self.heavy_requests += 1
        # Given back when the thread is done, not when the request is: a client that goes away
        # does not stop a decode already running.
        decoding = loop.run_in_executor(self._heavy, self._decode_all, photos)
        decoding.add_done_callback(lambda _: self.heavy_budget.release(peak))
        return await decoding

    def _plans(self, photos: Sequence[bytes]) -> list:
        return [self._plan(p, [self.view], f"image {i}", self.limits.max_image_pixels) for i, p in enumerate(photos)]

    def _decode_all(self, photos: Sequence[bytes]) -> np.ndarray:
        view, most = self.view, self.limits.max_image_pixels
        return np.stack([self._decode_views(p, [view], f"image {i}", most)[0] for i, p in enumerate(photos)])


def install(app, limits: ServeLimits) -> None:
    """Admission control and the refusal handler on KServe's FastAPI app (public hooks only)."""
    app.add_middleware(Admission, limits=limits)
    app.add_exception_handler(Refused, refused_handler)


__all__ = ["ServeLimits", "Budgets", "DecodeGate", "Admission", "Refused", "install", "ImageDecodeError"]
