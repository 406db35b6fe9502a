"""A smoke training epoch on the CPU: the original loop against ``maskpipe.train.train_task``.

Same synthetic photos (all of them train: no validation split on either side), same model
(``resnet10t``, untrained) at the smoke preset's input size, same task (mask), same number of
DataLoader workers, one run:

* original: :mod:`original_recipe`: decode + the original list at every access, batch 16,
  gradient accumulation 2, AdamP (adamp package), StepLR, ``.item()`` on every step;
* ours: :func:`maskpipe.train.train_task` with the ``smoke`` preset: decode-once uint8 cache,
  fast list, normalise last, the smoke preset's batch size, optimizer and schedule. Its epoch time is the
  one ``train_task`` records in ``history.json``; the cache fill, model creation and
  checkpoint writes are reported as setup.

Each path runs ``--epochs`` epochs and keeps its fastest. The last line is
``train speedup: R.Rx`` (images/s of ours over the original's).

    python benchmarks/train.py            # 448 photos, 2 epochs each
    python benchmarks/train.py --quick    # 70 photos, 2 epochs each
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
from pathlib import Path

import numpy as np
import torch

from original_recipe import (
    BenchmarkError,
    OriginalTrainDataset,
    make_training,
    original_config,
    original_loader,
    synthetic_photos,
    train_one_epoch,
)
from results import add_results_argument, benchmark_main

from maskpipe.cli_args import height_by_width
from maskpipe.config import load_config
from maskpipe.data.datasets import default_num_workers
from maskpipe.data.index import build_index, read_index
from maskpipe.labels import NUM_CLASSES
from maskpipe.train import train_task

TASK = "mask"
ARCH = "resnet10t"


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a small smoke run")
    parser.add_argument("--images", type=int, help="training photos (448; --quick 70)")
    parser.add_argument("--epochs", type=int, help="epochs per path, fastest kept (2)")
    parser.add_argument("--image-size", type=height_by_width, default=(384, 512), help="photo HEIGHTxWIDTH (default 512x384)")
    parser.add_argument("--workers", type=int, help="DataLoader workers for both (CPUs - 1)")
    parser.add_argument(
        "--threads", type=int, default=1,
        help="torch threads of the training process, both paths (default 1: on a shared machine "
        "OpenMP threads wait on each other and measure the neighbours, not the loop)",
    )
    parser.add_argument(
        "--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
        help="extra config override for ours (repeatable), e.g. train.scheduler=cosine",
    )
    parser.add_argument("--work-dir", type=Path, help="where photos, index and checkpoints go")
    add_results_argument(parser, "train")
    args = parser.parse_args(argv)
    # The smoke preset's one-cycle schedule needs at least 4 optimizer steps in all.
    args.images = args.images or (70 if args.quick else 448)
    args.epochs = args.epochs or 2
    args.workers = default_num_workers(args.workers)
    if min(args.images, args.epochs, args.threads) < 1:
        parser.error("--images, --epochs and --threads must be >= 1")
    return args


def make_index(work_dir: Path, args: argparse.Namespace) -> tuple[Path, list[Path], np.ndarray]:
    """Synthetic photos (7 a person, so ``--images`` rounds up) and their index; returns
    (index path, photo paths, mask labels), all rows of the index."""
    photos = work_dir / "photos"
    synthetic_photos(photos, args.images, args.image_size)
    index_path = work_dir / "index.parquet"
    build_index(str(photos), index_path, val_fraction=0.0)
    frame, root = read_index(index_path)
    args.images = len(frame)
    paths = [Path(root) / p for p in frame["path"]]
    return index_path, paths, frame["mask_label"].to_numpy(dtype=np.int64)


# ---------------------------------------------------------------------------------------------
# the two paths


def smoke_input_size() -> list[int]:
    return load_config("smoke").data.input_size


def run_original(paths: list[Path], labels: np.ndarray, args: argparse.Namespace) -> dict:
    size = smoke_input_size()
    config = original_config([f"model.arch={ARCH}", f"data.input_size=[{size[0]},{size[1]}]"])
    torch.manual_seed(config.train.seed)
    started = time.perf_counter()
    run = make_training(config, NUM_CLASSES[TASK], torch.device("cpu"))
    dataset = OriginalTrainDataset(paths, labels, config)
    loader = original_loader(dataset, config.train.batch_size, args.workers)
    setup = time.perf_counter() - started
    epochs = [train_one_epoch(run, loader) for _ in range(args.epochs)]
    if not epochs[0]["images"]:
        raise BenchmarkError(f"the original loader yielded no batch of {config.train.batch_size} from {len(paths)} photos; use more --images")
    return {
        "seconds": [e["seconds"] for e in epochs],
        "images": epochs[0]["images"],
        "setup": setup,
        "batch": config.train.batch_size,
    }


def run_ours(index_path: Path, work_dir: Path, args: argparse.Namespace) -> dict:
    config = load_config(
        "smoke",
        [
            f"model.arch={ARCH}",
            "model.pretrained=false",
            f"train.epochs={args.epochs}",
            "train.device=cpu",
            "data.use_val_split=false",
            "train.select_by=train_acc",
            f"data.num_workers={args.workers}",
            *args.overrides,
        ],
    )
    cache_dir = work_dir / "cache"
    started = time.perf_counter()
    result = train_task(config, TASK, index_path, work_dir / "checkpoint", cache_dir=cache_dir)
    total = time.perf_counter() - started
    if not list((cache_dir / "decoded").glob("*.u8")):
        raise BenchmarkError(
            f"train_task ran without its decoded-image cache (no cache file under {cache_dir}); "
            "the figure would be the disk-read fallback, not the fast path"
        )
    seconds = [row["seconds"] for row in result.history]
    if len(seconds) != args.epochs:
        raise BenchmarkError(f"train_task recorded {len(seconds)} epochs, expected {args.epochs}")
    batch = config.train.batch_size
    # make_loader drops the last partial batch when there is more than one batch.
    images = args.images if args.images <= batch else (args.images // batch) * batch
    return {"seconds": seconds, "images": images, "setup": total - sum(seconds), "batch": batch}


# ---------------------------------------------------------------------------------------------


def run(args: argparse.Namespace, work_dir: Path) -> float:
    logging.basicConfig(level=logging.WARNING)
    torch.set_num_threads(args.threads)
    index_path, paths, labels = make_index(work_dir, args)
    original = run_original(paths, labels, args)
    ours = run_ours(index_path, work_dir, args)

    size = smoke_input_size()
    w, h = args.image_size
    print(
        f"smoke training epoch, CPU ({torch.get_num_threads()} torch threads, {args.workers} "
        f"loader workers): {args.images} synthetic {h}x{w} (HxW) JPEGs, {ARCH} at {size[0]}x{size[1]} (HxW), "
        f"task {TASK}, fastest of {args.epochs} epoch(s)"
    )
    rates = {}
    for name, figures in (("original loop", original), ("ours (train_task)", ours)):
        best = min(figures["seconds"])
        rates[name] = figures["images"] / best
        print(
            f"  {name:<18} {best:6.2f} s/epoch  {rates[name]:7.1f} images/s  "
            f"({figures['images']} images, batch {figures['batch']}; setup {figures['setup']:.1f} s; "
            f"epochs {', '.join(f'{s:.2f}' for s in figures['seconds'])} s)"
        )
    speedup = rates["ours (train_task)"] / rates["original loop"]
    print(f"train speedup: {speedup:.1f}x")
    return speedup


main = benchmark_main(__file__, parse_args, run)


if __name__ == "__main__":
    sys.exit(main())
