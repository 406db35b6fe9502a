"""Serving speed: `maskpipe serve` on loopback under 1, 8 and 32 concurrent clients.

One run, one machine: the three untrained ``resnet10t`` checkpoints of
``benchmarks/inference.py`` (smoke preset input size) are exported with ``maskpipe export``
(flip TTA in the graph, as served by default), then

* offline: ``maskpipe infer --backend onnx``'s path (:func:`maskpipe.ensemble.predict_probs_exported`)
  on the photos, best of ``--rounds``;
* served: ``maskpipe serve`` started as a child process in the serving environment
  (``--serve-python``, default ``.venv-serve/bin/python``), then for each client count a
  keep-alive connection per client sends one photo per v1 request, one request after
  another: throughput, p50 and p99 latency, and the mean number of images per forward pass
  (the server's ``x-maskpipe-batch-images`` header: how much concurrent requests were batched).

Every request must be answered 200 with the class ``maskpipe infer`` gives for that photo, or
the script stops with exit 1 and no figure. The clients run on the same cores as the server,
as a gate camera's requests would not, so the served figures are a lower bound. Goals: 32
clients >= 3x the throughput of one, served (32 clients) >= 60% of offline. The last line is
``serve speedup: R.Rx`` (32 clients against one).

    python benchmarks/serve.py            # 256 photos of 384x512, ~2 min
    python benchmarks/serve.py --quick    # a smoke run
    python benchmarks/serve.py --quantize int8   # the int8 graph, offline and served
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from pathlib import Path

import numpy as np
from inference import write_checkpoints, write_images
from original_recipe import BenchmarkError, parse_size, run_in_work_dir

from maskpipe.ensemble import classes_from_probs, predict_probs_exported
from maskpipe.export import export_model
from maskpipe.runtime import open_backend
from maskpipe.serve_client import ServerProcess, drive, serving_python, v1_body

REPO = Path(__file__).resolve().parents[1]
GOAL_SCALING = 3.0
GOAL_SERVED_SHARE = 0.6


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a smoke run: 16 photos, few requests")
    parser.add_argument("--images", type=int, help="distinct photos (256; --quick 16)")
    parser.add_argument("--requests", type=int, help="requests per client count (512; --quick 64)")
    parser.add_argument("--clients", default="1,8,32", help="client counts, comma-separated")
    parser.add_argument("--rounds", type=int, help="offline rounds, best kept (2; --quick 1)")
    parser.add_argument("--image-size", type=parse_size, default=(384, 512), help="photo WIDTHxHEIGHT")
    parser.add_argument("--input-size", type=parse_size, help="model input WIDTHxHEIGHT (default: the smoke preset's)")
    parser.add_argument("--arch", default="resnet10t")
    parser.add_argument("--batch-size", type=int, default=64, help="offline batch size")
    parser.add_argument("--max-batch", type=int, default=32, help="the server's --max-batch")
    parser.add_argument(
        "--quantize", choices=["int8"],
        help="serve (and run offline) the int8 graph, as `maskpipe export --quantize int8` "
        "writes it, calibrated on other generated photos",
    )
    parser.add_argument("--serve-python", help="the serving environment's python (default: .venv-serve, $MASKPIPE_SERVE_PYTHON)")
    parser.add_argument("--work-dir", type=Path, help="where photos, checkpoints and the model go (temp dir)")
    args = parser.parse_args(argv)
    args.images = args.images or (16 if args.quick else 256)
    args.requests = args.requests or (64 if args.quick else 512)
    args.rounds = args.rounds or (1 if args.quick else 2)
    args.clients = [int(c) for c in args.clients.split(",")]
    if min(args.images, args.requests, args.rounds, *args.clients) < 1:
        parser.error("--images, --requests, --rounds and --clients must be >= 1")
    return args


def serve_python(given: str | None) -> str:
    python = serving_python(REPO, given)
    if not python.exists():
        raise BenchmarkError(f"no serving environment at {python}: run `make venv-serve` or pass --serve-python")
    return str(python)


def offline(model_dir: Path, paths: list[Path], args: argparse.Namespace) -> tuple[np.ndarray, float]:
    best, classes = math.inf, None
    for _ in range(args.rounds):
        start = time.perf_counter()
        backend = open_backend(model_dir, "onnx")  # each call loads the model, as a run does
        classes = classes_from_probs(predict_probs_exported(backend, paths, batch_size=args.batch_size))
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
    print(
        f"{len(paths)} JPEGs of {args.image_size[0]}x{args.image_size[1]}; 3 x {args.arch}, flip TTA, "
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


def _check_answers(result, expected: np.ndarray, clients: int) -> None:
    for (client, index), reply in result.answers.items():
        if reply.status != 200:
            raise BenchmarkError(f"{clients} clients: request {client}/{index} got {reply.status}: {reply.body}")
    for (client, index), reply in result.answers.items():
        image = (client + index) % len(expected)
        got = reply.body["predictions"][0]["class"]
        if got != expected[image]:
            raise BenchmarkError(f"served class {got} for photo {image}, offline gave {expected[image]}")


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    return run_in_work_dir(lambda folder: run(args, folder), args.work_dir)


if __name__ == "__main__":
    sys.exit(main())
