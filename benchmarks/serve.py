"""Serving speed: `maskpipe serve` on loopback under 1, 8 and 32 concurrent clients.

One run, one machine: the three untrained ``resnet10t`` checkpoints of
``benchmarks/inference.py`` (smoke preset input size) are exported with ``maskpipe export``
(flip TTA in the graph, as served by default), then

* offline: ``maskpipe infer --backend onnx``'s path (:func:`maskpipe.ensemble.predict_probs` on the ``onnx`` backend)
  on the photos, best of ``--rounds``;
* served: ``maskpipe serve`` started as a child process in the serving environment
  (``--serve-python``, default ``.venv/bin/python``), then for each client count a
  keep-alive connection per client sends one photo per v1 request, one request after
  another: throughput, p50 and p99 latency, and the mean number of images per forward pass
  (the server's ``x-maskpipe-batch-images`` header: how much concurrent requests were batched).

Every request must be answered 200 with the class ``maskpipe infer`` gives for that photo, or
the script stops with exit 1 and no figure. The clients run on the same cores as the server,
as a gate camera's requests would not, so the served figures are a lower bound. Goals: 32
clients >= 3x the throughput of one, served (32 clients) >= 60% of offline. The last line is
``serve speedup: R.Rx`` (32 clients against one).

Then the hostile mix (``--hostile-clients``, 8; 0 skips it): the clients send the ordinary
photos alone (the quiet p99), then again with every fourth request an oversized photo made
on the fly (24 MP JPEGs, baseline and progressive; ~40 MP PNGs of ~100 KB, 8-bit RGB and
16-bit grey): the good requests' throughput and p99 beside the quiet ones, as a ratio (goal:
p99 within 2x), and every request accounted for: a good one must be answered 200 with the
offline class, an oversized one 200, 413 or 503 (with ``Retry-After``); anything else (a 5xx,
a dropped connection) is a lost request and stops the script. Each client waits for its
answer before sending again, so a client on an oversized photo sends no good ones meanwhile:
the good throughput of the mix counts that, the p99 does not.

    python benchmarks/serve.py            # 256 photos of 512x384 (HxW), ~2 min
    python benchmarks/serve.py --quick    # a smoke run
    python benchmarks/serve.py --quantize int8   # the int8 graph, offline and served
"""

from __future__ import annotations

import argparse
import io
import math
import struct
import sys
import time
import zlib
from pathlib import Path

import numpy as np
from inference import write_checkpoints, write_images
from original_recipe import BenchmarkError
from results import add_results_argument, benchmark_main
from serve_client import ServerProcess, drive, serving_python, v1_body

from PIL import Image

from maskpipe.cli_args import height_by_width
from maskpipe.ensemble import classes_from_probs, predict_probs
from maskpipe.export import export_model
from maskpipe.runtime import open_backend

REPO = Path(__file__).resolve().parents[1]
GOAL_SCALING = 3.0
GOAL_SERVED_SHARE = 0.6
GOAL_HOSTILE_P99 = 2.0


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a smoke run: 16 photos, few requests")
    parser.add_argument("--images", type=int, help="distinct photos (256; --quick 16)")
    parser.add_argument("--requests", type=int, help="requests per client count (512; --quick 64)")
    parser.add_argument("--clients", default="1,8,32", help="client counts, comma-separated")
    parser.add_argument("--rounds", type=int, help="offline rounds, best kept (2; --quick 1)")
    parser.add_argument("--image-size", type=height_by_width, default=(384, 512), help="photo HEIGHTxWIDTH (default 512x384)")
    parser.add_argument("--input-size", type=height_by_width, help="model input HEIGHTxWIDTH (default: the smoke preset's)")
    parser.add_argument("--arch", default="resnet10t")
    parser.add_argument("--batch-size", type=int, default=64, help="offline batch size")
    parser.add_argument("--max-batch", type=int, default=32, help="the server's --max-batch")
    parser.add_argument("--hostile-clients", type=int, default=8, help="clients of the hostile mix (0: skip it)")
    parser.add_argument(
        "--quantize", choices=["int8"],
        help="serve (and run offline) the int8 graph, as `maskpipe export --quantize int8` "
        "writes it, calibrated on other generated photos",
    )
    parser.add_argument("--serve-python", help="the python that runs maskpipe serve (default: $MASKPIPE_SERVE_PYTHON, else .venv)")
    parser.add_argument("--work-dir", type=Path, help="where photos, checkpoints and the model go (temp dir)")
    add_results_argument(parser, "serve")
    args = parser.parse_args(argv)
    args.images = args.images or (16 if args.quick else 256)
    args.requests = args.requests or (64 if args.quick else 512)
    args.rounds = args.rounds or (1 if args.quick else 2)
    args.clients = [int(c) for c in args.clients.split(",")]
    if min(args.images, args.requests, args.rounds, *args.clients) < 1:
        parser.error("--images, --requests, --rounds and --clients must be >= 1")
    if args.hostile_clients < 0:
        parser.error("--hostile-clients must be >= 0 (0 skips the hostile mix)")
    return args


def serve_python(given: str | None) -> str:
    python = serving_python(REPO, given)
    if not python.exists():
        raise BenchmarkError(f"no serving environment at {python}: run `make venv` or pass --serve-python")
    return str(python)


def offline(model_dir: Path, paths: list[Path], args: argparse.Namespace) -> tuple[np.ndarray, float]:
    best, classes = math.inf, None
    for _ in range(args.rounds):
        start = time.perf_counter()
        backend = open_backend(model_dir, "onnx")  # each call loads the model, as a run does
        classes = classes_from_probs(predict_probs(backend, paths, batch_size=args.batch_size))
        best = min(best, time.perf_counter() - start)
    return classes, best


def run(args: argparse.Namespace, work_dir: Path) -> float:
    python = serve_python(args.serve_python)
    paths = write_images(work_dir / "images", args.images, args.image_size)
    checkpoints = write_checkpoints(work_dir / "checkpoints", args.arch, args.input_size)
    calibration = []  # other photos than the timed ones, for --quantize
    if args.quantize:
        calibration = write_images(work_dir / "calibration", min(256, 2 * args.images), args.image_size, seed=1)
    model_dir = export_model(
        checkpoints, work_dir / "model", tta=True, quantize=args.quantize, calibration_paths=calibration
    )
    expected, offline_s = offline(model_dir, paths, args)
    offline_rate = len(paths) / offline_s

    bodies = [v1_body([path.read_bytes()]) for path in paths]
    levels = {}
    extra = ["--max-batch", str(args.max_batch)]
    with ServerProcess(model_dir, python=python, log_path=work_dir / "serve.log", extra_args=extra) as server:
        drive(server.url, bodies[:4], clients=1, requests_per_client=4)  # warm-up
        for clients in args.clients:
            per_client = max(1, math.ceil(args.requests / clients))
            result = drive(server.url, bodies, clients=clients, requests_per_client=per_client)
            _check_answers(result, expected, clients)
            batch = [int(r.headers.get("x-maskpipe-batch-images", 0)) for r in result.answers.values()]
            levels[clients] = result
            print(
                f"{clients:3d} client(s): {result.images_per_s:7.1f} images/s, p50 "
                f"{result.percentile_ms(50):7.1f} ms, p99 {result.percentile_ms(99):7.1f} ms, "
                f"{result.requests} requests, {np.mean(batch):.1f} images per forward pass"
            )
        if args.hostile_clients:
            hostile_mix(server.url, bodies, expected, args)
    print(
        f"{len(paths)} JPEGs of {args.image_size[1]}x{args.image_size[0]} (HxW); 3 x {args.arch}, flip TTA, "
        f"ONNX Runtime{' int8' if args.quantize else ''}; offline (maskpipe infer --backend onnx): {offline_rate:.1f} images/s "
        f"(best of {args.rounds})"
    )
    low, high = min(levels), max(levels)
    scaling = levels[high].images_per_s / levels[low].images_per_s
    share = levels[high].images_per_s / offline_rate
    print(f"served at {high} clients / offline: {share:.0%} (goal >= {GOAL_SERVED_SHARE:.0%})")
    print(f"{high} clients / {low} client throughput: {scaling:.1f}x (goal >= {GOAL_SCALING:.0f}x)")
    print(f"serve speedup: {scaling:.1f}x")
    return scaling


def oversized_photos(quick: bool) -> list[bytes]:
    """Photos far above the model's input: big JPEGs (baseline, progressive) and PNGs that
    declare ~40 MP in ~100 KB (8-bit RGB, 16-bit grey)."""
    width, height = (3000, 2000) if quick else (6000, 4000)
    small = np.random.default_rng(2).integers(0, 256, (height // 100, width // 100, 3), dtype=np.uint8)
    big = Image.fromarray(small).resize((width, height), Image.BILINEAR)
    jpegs = []
    for progressive in (False, True):
        buffer = io.BytesIO()
        big.save(buffer, "JPEG", quality=90, progressive=progressive)
        jpegs.append(buffer.getvalue())
    side = 4000 if quick else 6300
    return [jpegs[0], _constant_png(side, side, 8, colour=True), jpegs[1], _constant_png(side, side, 16, colour=False)]


def _constant_png(width: int, height: int, depth: int, *, colour: bool) -> bytes:
    row = b"\x00" + b"\x80" * (width * (3 if colour else 1) * depth // 8)
    compressor = zlib.compressobj(9)
    data = b"".join(compressor.compress(row) for _ in range(height)) + compressor.flush()

    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    ihdr = struct.pack(">IIBBBBB", width, height, depth, 2 if colour else 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", data) + chunk(b"IEND", b"")


def hostile_mix(url: str, bodies: list[bytes], expected: np.ndarray, args: argparse.Namespace) -> float:
    """Good-request throughput and p99 alone, then with every fourth request an oversized
    photo; the ratio of the p99s."""
    clients = args.hostile_clients
    per_client = max(1, math.ceil(args.requests / clients))
    quiet = drive(url, bodies, clients=clients, requests_per_client=per_client)
    _check_answers(quiet, expected, clients)
    oversized = [v1_body([photo]) for photo in oversized_photos(args.quick)]
    # Request i of client c sends mixed[(c + i) % len(mixed)]: positions 3, 7, 11... oversized.
    mixed_bodies, photo_of = [], []
    for k in range(max(len(bodies), 3 * len(oversized)) // 3 * 4):
        if k % 4 == 3:
            mixed_bodies.append(oversized[(k // 4) % len(oversized)])
            photo_of.append(None)
        else:
            index = (k - k // 4) % len(bodies)
            mixed_bodies.append(bodies[index])
            photo_of.append(index)
    mixed = drive(url, mixed_bodies, clients=clients, requests_per_client=per_client)
    # drive() records a request's reply and latency together, so they pair up in order.
    good_latencies, statuses = [], {}
    for ((client, index), reply), latency in zip(mixed.answers.items(), mixed.latencies_s):
        photo = photo_of[(client + index) % len(mixed_bodies)]
        if photo is None:
            retry = reply.status != 503 or any(k.lower() == "retry-after" for k in reply.headers)
            if reply.status not in (200, 413, 503) or not retry:
                raise BenchmarkError(f"oversized request {client}/{index} was lost: {reply.status} {str(reply.body)[:300]}")
            statuses[reply.status] = statuses.get(reply.status, 0) + 1
            continue
        if reply.status != 200:
            raise BenchmarkError(f"hostile mix: good request {client}/{index} got {reply.status}: {reply.body}")
        if reply.body["predictions"][0]["class"] != expected[photo]:
            raise BenchmarkError(f"hostile mix: served class for photo {photo} differs from offline")
        good_latencies.append(latency)
    good_p99 = 1000 * sorted(good_latencies)[min(len(good_latencies) - 1, round(0.99 * (len(good_latencies) - 1)))]
    ratio = good_p99 / quiet.percentile_ms(99)
    sent = sum(statuses.values())
    print(
        f"hostile mix, {clients} clients, every 4th request oversized: good {len(good_latencies) / mixed.seconds:.1f} "
        f"images/s (quiet {quiet.images_per_s:.1f}), p99 {good_p99:.1f} ms (quiet {quiet.percentile_ms(99):.1f} ms): "
        f"{ratio:.2f}x the quiet p99 (goal <= {GOAL_HOSTILE_P99:.0f}x)"
    )
    answered = ", ".join(f"{count} x {status}" for status, count in sorted(statuses.items()))
    print(
        f"hostile mix: {len(good_latencies)} good requests all answered 200 with the offline class; {sent} oversized "
        f"({sent / mixed.requests:.0%} of requests) answered {answered}; none lost"
    )
    return ratio


def _check_answers(result, expected: np.ndarray, clients: int) -> None:
    for (client, index), reply in result.answers.items():
        if reply.status != 200:
            raise BenchmarkError(f"{clients} clients: request {client}/{index} got {reply.status}: {reply.body}")
    for (client, index), reply in result.answers.items():
        image = (client + index) % len(expected)
        got = reply.body["predictions"][0]["class"]
        if got != expected[image]:
            raise BenchmarkError(f"served class {got} for photo {image}, offline gave {expected[image]}")


main = benchmark_main(__file__, parse_args, run)


if __name__ == "__main__":
    sys.exit(main())
