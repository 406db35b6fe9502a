"""Training-input throughput per CPU core: the original Dataset against maskpipe's fast path.

Both paths deliver what the model consumes, a float32 (N, 3, H, W) normalised batch with the
random augmentations applied, from the same synthetic 512x384 (HxW) JPEGs, in one process pinned to
one CPU (torch and OpenCV single-threaded, ``num_workers=0``):

* original: :class:`original_recipe.OriginalTrainDataset`: decode the JPEG at every access,
  then the original list (crop, resize to 512x384, augmentations, Normalize, dropout and noise
  on the float image);
* ours: the decode-once uint8 cache (:func:`maskpipe.data.cache.decoded_images`, filled once
  before timing, its fill time reported separately), the fast list on uint8
  (:func:`~maskpipe.data.transforms.fast_train_transform`) in
  :class:`~maskpipe.data.datasets.ImageDataset`, batches from
  :func:`~maskpipe.data.datasets.make_loader`, normalised last with
  :class:`~maskpipe.data.transforms.BatchNormalizer` (normalisation into a float buffer kept
  across steps, then the batched Gaussian noise in its CPU form) as the training loop applies
  it: both run here, on the same core, and are counted.

The ratio compares both at the same 512x384 input (same augmentation semantics); ours at the
default preset's input size is an extra line. The two paths run alternately ``--rounds``
times and each keeps its best pass (the machine is shared). ``--breakdown`` prints what each
transform costs per image. The last line is ``input speedup: R.Rx``.

    python benchmarks/input.py                 # 256 photos, 3 rounds
    python benchmarks/input.py --quick         # 32 photos, 1 round
    python benchmarks/input.py --breakdown     # plus the per-transform costs
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from original_recipe import (
    BenchmarkError,
    OriginalTrainDataset,
    mask_labels,
    original_config,
    original_loader,
    pin_to_one_core,
    synthetic_photos,
)
from results import add_results_argument, benchmark_main

from maskpipe.cli_args import height_by_width
from maskpipe.config import load_config
from maskpipe.data import transforms
from maskpipe.data.cache import CachedImages, clear_open_caches, decoded_images
from maskpipe.data.datasets import ImageDataset, make_loader
from maskpipe.data.samplers import make_sampler

GOAL = 3.0


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    default = load_config("default")
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a small smoke run")
    parser.add_argument("--images", type=int, help="photos per pass (256; --quick 32)")
    parser.add_argument("--rounds", type=int, help="alternating passes per path (3; --quick 1)")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--image-size", type=height_by_width, default=(384, 512), help="photo HEIGHTxWIDTH (default 512x384)")
    parser.add_argument("--cpu", type=int, help="the CPU to pin to (default: the first allowed)")
    parser.add_argument(
        "--epochs", type=int, default=default.train.epochs,
        help="epochs the cache fill is amortised over (default preset: %(default)s)",
    )
    parser.add_argument("--cache-gb", type=float, default=default.data.cache_gb)
    parser.add_argument("--breakdown", action="store_true", help="print per-transform costs")
    parser.add_argument("--work-dir", type=Path, help="where photos and caches go (temp dir)")
    add_results_argument(parser, "input")
    args = parser.parse_args(argv)
    args.images = args.images or (32 if args.quick else 256)
    args.rounds = args.rounds or (1 if args.quick else 3)
    if min(args.images, args.rounds, args.batch_size, args.epochs) < 1:
        parser.error("--images, --rounds, --batch-size and --epochs must be >= 1")
    return args


# ---------------------------------------------------------------------------------------------
# the two paths


@dataclass
class Measured:
    """One input path at one geometry; ``passes`` holds (seconds, images) of each timed pass."""

    name: str
    crop_size: list[int] | None  # (h, w)
    input_size: list[int]  # (h, w)
    passes: list[tuple[float, int]] = field(default_factory=list)
    normalise_s: list[float] = field(default_factory=list)
    fill_s: float = 0.0

    def rates(self) -> list[float]:
        return [images / seconds for seconds, images in self.passes]

    @property
    def best(self) -> int:
        return int(np.argmax(self.rates()))

    def rate(self) -> float:
        return self.rates()[self.best]

    def spread(self) -> str:
        rates = sorted(self.rates())
        if len(rates) == 1:
            return ""
        return f"; rounds {rates[0]:.0f}-{rates[-1]:.0f}, median {statistics.median(rates):.0f}"


def original_pass(paths: list[Path], labels: np.ndarray, size: list[int], batch: int) -> tuple[float, int]:
    """(seconds, images) of one full pass of the original Dataset (its crop, ``size`` input)."""
    config = original_config([f"data.input_size=[{size[0]},{size[1]}]"])
    loader = original_loader(OriginalTrainDataset(paths, labels, config), batch, num_workers=0)
    delivered = 0
    started = time.perf_counter()
    for images, _ in loader:
        _check_batch(images, size, "original")
        delivered += len(images)
    return time.perf_counter() - started, _delivered(delivered, "original")


def fill_cache(paths: list[Path], crop: list[int] | None, size: list[int], args: argparse.Namespace, folder: Path):
    """Decode every photo once into a fresh cache file; fail if the cache steps aside."""
    shutil.rmtree(folder, ignore_errors=True)
    clear_open_caches()
    started = time.perf_counter()
    source = decoded_images(paths, crop, size, budget_gb=args.cache_gb, cache_dir=folder, workers=1)
    seconds = time.perf_counter() - started
    if not isinstance(source, CachedImages):
        raise BenchmarkError(
            f"the decoded-image cache fell back to disk reads for {len(paths)} images at "
            f"{size[0]}x{size[1]} (HxW; budget --cache-gb {args.cache_gb}, folder {folder}); the fast "
            "path would be measured without its cache. Raise --cache-gb or free disk space."
        )
    return source, seconds


def fast_pass(source, labels: np.ndarray, size: list[int], batch: int, seed: int) -> tuple[float, int, float]:
    """(seconds, images) of one full pass, and the seconds of it spent on the batched work
    (normalisation and noise), which a GPU run moves to the device."""
    data = load_config("default").data
    transform = transforms.fast_train_transform(size, data.mean, data.std)
    transform.set_random_seed(seed)
    dataset = ImageDataset(source, labels, transform)
    generator = torch.Generator().manual_seed(seed)
    noise_generator = torch.Generator().manual_seed(seed)
    loader = make_loader(
        dataset, batch_size=batch, train=True, num_workers=0, device=torch.device("cpu"),
        generator=generator, sampler=make_sampler(labels, 3, "weighted", generator),
    )
    normalize = transforms.BatchNormalizer(data.mean, data.std, noise=True, generator=noise_generator)
    normalise, delivered = 0.0, 0
    started = time.perf_counter()
    for images, _ in loader:
        began = time.perf_counter()
        images = normalize(images, train=True)
        normalise += time.perf_counter() - began
        _check_batch(images, size, "ours")
        delivered += len(images)
    return time.perf_counter() - started, _delivered(delivered, "ours"), normalise


def _delivered(images: int, name: str) -> int:
    if images == 0:
        raise BenchmarkError(f"the {name} loader delivered no batch; use more --images than --batch-size")
    return images


def _check_batch(images: torch.Tensor, size: list[int], name: str) -> None:
    # Both paths must hand the model the same thing, or the ratio compares different work.
    if images.dtype != torch.float32 or tuple(images.shape[1:]) != (3, size[0], size[1]):
        raise BenchmarkError(
            f"the {name} path delivered {images.dtype} {tuple(images.shape)}, expected float32 "
            f"(N, 3, {size[0]}, {size[1]})"
        )


# ---------------------------------------------------------------------------------------------
# per-transform costs (--breakdown)


def transform_costs(pipeline, images: list[np.ndarray]) -> list[tuple[str, float, float]]:
    """(name, p, ms per image when applied) of each transform, fed what it sees in the list."""
    rows = []
    current = [img.copy() for img in images]
    for t in pipeline.transforms:
        p, t.p = t.p, 1.0
        outputs = []
        started = time.perf_counter()
        for image in current:
            outputs.append(t(image=image)["image"])
        rows.append((type(t).__name__, p, (time.perf_counter() - started) * 1e3 / len(current)))
        t.p = p
        current = outputs
    return rows


def print_breakdown(paths: list[Path], source, size: list[int]) -> None:
    import cv2

    data = load_config("default").data
    sample = paths[: min(len(paths), 32)]
    started = time.perf_counter()
    decoded = [cv2.cvtColor(cv2.imread(str(p)), cv2.COLOR_BGR2RGB) for p in sample]
    decode_ms = (time.perf_counter() - started) * 1e3 / len(sample)
    original = original_config([f"data.input_size=[{size[0]},{size[1]}]"]).data
    original_list = transforms.original_train_transform(original.crop_size, size, original.mean, original.std)
    fast_list = transforms.fast_train_transform(size, data.mean, data.std)
    cached = [source[i] for i in range(len(sample))]
    batch = torch.from_numpy(np.stack(cached))
    normalize = transforms.BatchNormalizer(data.mean, data.std)
    normalize(batch)  # the training loop's steady state: its buffer already exists
    started = time.perf_counter()
    normalised = normalize(batch)
    normalise_ms = (time.perf_counter() - started) * 1e3 / len(sample)
    started = time.perf_counter()
    transforms.add_batch_noise_(normalised, p=1.0)
    noise_ms = (time.perf_counter() - started) * 1e3 / len(sample)

    print(f"\nper-image cost at {size[0]}x{size[1]} HxW (ms; expected = p x applied):")
    for title, first, rows in (
        ("original", ("decode (cv2)", 1.0, decode_ms), transform_costs(original_list, decoded)),
        ("ours", ("normalise (batched)", 1.0, normalise_ms), transform_costs(fast_list, cached)),
    ):
        rows = [first, *rows] if title == "original" else [*rows, first, ("noise (batched)", transforms.AUG_P, noise_ms)]
        total = sum(p * ms for _, p, ms in rows)
        print(f"  {title}: expected total {total:.2f} ms/img")
        for name, p, ms in rows:
            print(f"    {name:<26} p={p:<4.2f} applied {ms:6.2f}  expected {p * ms:6.2f}")
    print()


# ---------------------------------------------------------------------------------------------


def run(args: argparse.Namespace, work_dir: Path) -> float:
    cpu = pin_to_one_core(args.cpu)
    paths = synthetic_photos(work_dir / "photos", args.images, args.image_size)
    labels = mask_labels(paths)
    reference, default = load_config("original").data, load_config("default").data
    n = len(paths)

    original = Measured("original: decode every access, original list on float", reference.crop_size, reference.input_size)
    ours = Measured("ours: uint8 cache, fast list, normalise + noise last", reference.crop_size, reference.input_size)
    ours_preset = Measured("ours at the default preset's size", default.crop_size, default.input_size)
    sources = {}
    for path in (ours, ours_preset):
        folder = work_dir / f"cache-{path.input_size[1]}x{path.input_size[0]}-{len(sources)}"
        sources[path.name], path.fill_s = fill_cache(paths, path.crop_size, path.input_size, args, folder)

    # One untimed pass each: imports, allocator and page-cache warm-up count for neither side.
    warm = slice(0, args.batch_size)
    original_pass(paths[warm], labels[warm], original.input_size, args.batch_size)
    fast_pass(sources[ours.name], labels, ours.input_size, args.batch_size, seed=0)
    for round_ in range(args.rounds):
        original.passes.append(original_pass(paths, labels, original.input_size, args.batch_size))
        for path in (ours, ours_preset):
            seconds, images, normalise = fast_pass(
                sources[path.name], labels, path.input_size, args.batch_size, seed=round_ + 1
            )
            path.passes.append((seconds, images))
            path.normalise_s.append(normalise)

    if args.breakdown:
        print_breakdown(paths, sources[ours.name], ours.input_size)
    return report(args, cpu, n, original, ours, ours_preset)


def report(args, cpu: int, n: int, original: Measured, ours: Measured, ours_preset: Measured) -> float:
    w, h = args.image_size
    print(
        f"training input per CPU core (pinned to CPU {cpu}, torch/OpenCV 1 thread, num_workers=0): "
        f"{n} synthetic {h}x{w} (HxW) JPEGs, batch {args.batch_size}, best of {args.rounds} "
        "round(s); input sizes HxW"
    )
    for path in (original, ours, ours_preset):
        seconds, images = path.passes[path.best]
        size = f"{path.input_size[0]}x{path.input_size[1]}"
        extra = f", normalise+noise {path.normalise_s[path.best] * 1e3 / images:.2f} ms/img" if path.normalise_s else ""
        print(
            f"  {path.name} @{size}: {path.rate():7.1f} images/s "
            f"({images} images in {seconds:.2f} s{extra}{path.spread()})"
        )
    base = original.rate()
    seconds, images = ours.passes[ours.best]
    uint8_rate = images / (seconds - ours.normalise_s[ours.best])
    print(
        f"  ours without the batched normalisation and noise (on the GPU when training there): "
        f"{uint8_rate:.1f} images/s ({uint8_rate / base:.1f}x)"
    )
    for path in (ours, ours_preset):
        seconds, images = path.passes[path.best]
        size = f"{path.input_size[0]}x{path.input_size[1]}"
        amortised = images / (seconds + path.fill_s * images / n / args.epochs)
        print(
            f"  cache fill @{size}: {path.fill_s:.2f} s once ({n / path.fill_s:.0f} images/s, 1 thread); "
            f"amortised over {args.epochs} epochs ours delivers {amortised:.1f} images/s "
            f"({amortised / base:.1f}x the original)"
        )
    print(
        f"  ours at the default preset's size: {ours_preset.rate() / base:.1f}x the original at "
        f"{original.input_size[0]}x{original.input_size[1]} (a smaller input, not the same work)"
    )
    speedup = ours.rate() / base
    print(f"  goal >= {GOAL:.0f}x per core at the same size: {'met' if speedup >= GOAL else 'NOT met'}")
    print(f"input speedup: {speedup:.1f}x")
    return speedup


main = benchmark_main(__file__, parse_args, run)


if __name__ == "__main__":
    sys.exit(main())
