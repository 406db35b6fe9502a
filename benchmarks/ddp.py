"""Training throughput under torchrun: images per second at 1 and 2 ranks on the CPU (gloo), or at 1, 2, 4, 8 GPUs (NCCL).

Every world size trains the same synthetic photos with the same per-rank batch (so the
effective batch grows with the world, as in a real scale-out), in one run of this script, side by side:

    torchrun --standalone --nproc_per_node=N -m maskpipe train --task mask ...

Each run's epoch times come from the ``history.json`` rank 0 writes (``train_task`` times the
epoch: training plus the gathered validation it does not have here, without setup); the
fastest epoch of each is kept. Images per second = images drawn per epoch (every rank's
share, without the sampler's padding) / that epoch's seconds. The last line is
``ddp scaling efficiency (1 -> N): E%`` = rate(N) / (N x rate(1)).

    python benchmarks/ddp.py                     # CPU: 1 and 2 ranks, resnet10t at 96x72
    python benchmarks/ddp.py --quick             # fewer photos
    python benchmarks/ddp.py --gpus 1,2,4,8      # GPUs: efficientnet_b4 at 448x336, decode-once cache
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import torch

from original_recipe import BenchmarkError, synthetic_photos
from results import add_results_argument, benchmark_main

from maskpipe.cli_args import height_by_width
from maskpipe.data.index import build_index, read_index

TASK = "mask"
REPO = Path(__file__).resolve().parents[1]


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a small smoke run")
    parser.add_argument("--gpus", help="GPU counts to compare, e.g. 1,2,4,8 (default: CPU, 1 and 2 ranks)")
    parser.add_argument("--images", type=int, help="training photos (CPU 448, --quick 140; GPU 4096)")
    parser.add_argument("--epochs", type=int, default=2, help="epochs per world size, fastest kept (2)")
    parser.add_argument("--image-size", type=height_by_width, default=(384, 512), help="photo HEIGHTxWIDTH (default 512x384)")
    parser.add_argument("--arch", help="model (CPU resnet10t; GPU efficientnet_b4)")
    parser.add_argument("--input-size", help="model input HxW (CPU 96x72; GPU 448x336)")
    parser.add_argument("--batch-size", type=int, help="per rank (CPU 16; GPU 32)")
    parser.add_argument("--timeout", type=float, default=1800, help="seconds one world size may take")
    parser.add_argument(
        "--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
        help="extra config override (repeatable)",
    )  # fmt: skip
    parser.add_argument("--work-dir", type=Path, help="where photos, index and checkpoints go")
    add_results_argument(parser, "ddp")
    args = parser.parse_args(argv)
    gpu = args.gpus is not None
    try:
        args.worlds = [int(n) for n in args.gpus.split(",")] if gpu else [1, 2]
    except ValueError:
        parser.error(f"--gpus {args.gpus!r}: give GPU counts separated by commas, e.g. 1,2,4,8")
    if gpu and not torch.cuda.is_available():
        parser.error("--gpus given but torch sees no CUDA GPU; run without --gpus for the CPU comparison")
    if gpu and max(args.worlds) > torch.cuda.device_count():
        print(f"note: this machine has {torch.cuda.device_count()} GPU(s); skipping larger worlds", file=sys.stderr)
        args.worlds = [n for n in args.worlds if n <= torch.cuda.device_count()]
    if 1 not in args.worlds:
        args.worlds.insert(0, 1)  # the efficiency's reference
    args.device = "cuda" if gpu else "cpu"
    args.images = args.images or (4096 if gpu else 140 if args.quick else 448)
    args.arch = args.arch or ("efficientnet_b4" if gpu else "resnet10t")
    args.input_size = args.input_size or ("448x336" if gpu else "96x72")
    args.batch_size = args.batch_size or (32 if gpu else 16)
    if min(args.images, args.epochs, args.batch_size) < 1:
        parser.error("--images, --epochs and --batch-size must be >= 1")
    return args


def make_index(work_dir: Path, args: argparse.Namespace) -> Path:
    """Synthetic photos (7 a person) and their index, every row training."""
    synthetic_photos(work_dir / "photos", args.images, args.image_size)
    index_path = work_dir / "index.parquet"
    build_index(str(work_dir / "photos"), index_path, val_fraction=0.0)
    args.images = len(read_index(index_path)[0])
    return index_path


def run_world(world: int, index_path: Path, work_dir: Path, args: argparse.Namespace) -> dict:
    out = work_dir / f"world-{world}"
    overrides = [
        f"model.arch={args.arch}", "model.pretrained=false", f"data.input_size={args.input_size}",
        f"train.batch_size={args.batch_size}", f"train.epochs={args.epochs}", f"train.device={args.device}",
        "data.use_val_split=false", "train.select_by=last", "train.scheduler=constant", *args.overrides,
    ]  # fmt: skip
    if args.device == "cpu":
        # The CPUs split between the ranks: one compute thread and no loader worker each
        # (the decode-once cache makes loading cheap), the same for every world size.
        overrides.append("data.num_workers=0")
    command = [
        sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={world}",
        "-m", "maskpipe", "train", "--task", TASK, "--index", str(index_path), "--out", str(out),
        "--cache-dir", str(work_dir / "cache"), "--preset", "smoke",
    ]  # fmt: skip
    for item in overrides:
        command += ["--set", item]
    env = dict(os.environ, MASKPIPE_PROGRESS="off", PYTHONPATH=os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])))
    if args.device == "cpu":
        env["OMP_NUM_THREADS"] = "1"
    started = time.perf_counter()
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=args.timeout)
    total = time.perf_counter() - started
    if done.returncode != 0:
        tail = "\n".join((done.stdout + done.stderr).splitlines()[-15:])
        raise BenchmarkError(f"torchrun with {world} process(es) failed (exit {done.returncode}):\n{tail}")
    seconds = [row["seconds"] for row in json.loads((out / "history.json").read_text())]
    if len(seconds) != args.epochs:
        raise BenchmarkError(f"{out}/history.json holds {len(seconds)} epochs, expected {args.epochs}")
    per_rank = -(-args.images // world)
    # make_loader drops each rank's last partial batch when it has more than one batch.
    batches = per_rank // args.batch_size if per_rank > args.batch_size else 1
    images = min(args.images, batches * args.batch_size * world)
    return {"seconds": seconds, "images": images, "setup": total - sum(seconds)}


def run(args: argparse.Namespace, work_dir: Path) -> float:
    index_path = make_index(work_dir, args)
    results = {world: run_world(world, index_path, work_dir, args) for world in args.worlds}
    where = (
        f"{torch.cuda.get_device_name(0)} x up to {max(args.worlds)}, NCCL"
        if args.device == "cuda" else f"CPU ({os.cpu_count()} cores), gloo, 1 thread per rank"
    )  # fmt: skip
    w, h = args.image_size
    print(
        f"training throughput under torchrun, {where}: {args.images} synthetic {h}x{w} (HxW) JPEGs, "
        f"{args.arch} at {args.input_size} (HxW), batch {args.batch_size} per rank, task {TASK}, "
        f"fastest of {args.epochs} epoch(s)"
    )
    rates = {}
    for world, figures in results.items():
        best = min(figures["seconds"])
        rates[world] = figures["images"] / best
        print(
            f"  {world} rank(s)  {best:7.2f} s/epoch  {rates[world]:8.1f} images/s  "
            f"(effective batch {args.batch_size * world}; setup {figures['setup']:.1f} s; "
            f"epochs {', '.join(f'{s:.2f}' for s in figures['seconds'])} s)"
        )
    largest = max(args.worlds)
    efficiency = rates[largest] / (largest * rates[1])
    print(f"ddp scaling efficiency (1 -> {largest}): {100 * efficiency:.0f}%")
    return efficiency


main = benchmark_main(__file__, parse_args, run)


if __name__ == "__main__":
    sys.exit(main())
