"""GPU training and inference figures for EfficientNet-B4 (``pretrained=False``: no download).

Runs only where CUDA is present; without it the script says so on stderr and exits with
status 1 (it never prints a figure for a CPU fallback). In one run, at 512x384 (the original
recipe's input) and at the default preset's input size:

* training images/s, fp32 NCHW (the original) against bf16 autocast + channels-last (ours),
  same batch and optimizer (timm's AdamP), synthetic batches already on the GPU; with
  ``--compile`` also bf16 + channels-last + ``torch.compile`` (compile time printed apart);
* peak memory (``torch.cuda.max_memory_allocated``) of each;
* inference images/s (bf16 + channels-last, ``torch.inference_mode``);
* a batch-size sweep of bf16 training at the default preset's size (OOM is reported);
* GPU utilisation during a real epoch: synthetic photos -> ``maskpipe index`` -> the real
  input pipeline of ``maskpipe.train`` (decode-once cache, fast list in DataLoader workers,
  uint8 to the GPU, normalised there) feeding the same training step, sampled every 0.1 s
  with ``torch.cuda.utilization()`` (pynvml) or ``nvidia-smi``. Goal: at least 80% busy.

The last line is ``gpu speedup: R.Rx``: bf16 + channels-last over fp32 training at 512x384.

    python benchmarks/gpu.py              # a few minutes on one GPU
    python benchmarks/gpu.py --quick      # about a minute
    python benchmarks/gpu.py --cpu-smoke  # no GPU: every code path once, tiny, no figures

``--cpu-smoke`` exists so the script is proven before the scarce GPU time is spent on it: it
runs each measurement on the CPU with ``resnet10t`` at toy sizes, prints its table marked as
a smoke run, and ends with ``gpu smoke run: ...`` instead of a speedup.
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import threading
import time
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

from original_recipe import BenchmarkError, synthetic_photos
from results import add_results_argument, benchmark_main, results_path

from maskpipe.config import load_config
from maskpipe.labels import NUM_CLASSES
from maskpipe.models import create_model

ARCH = "efficientnet_b4"
SMOKE_ARCH = "resnet10t"
SMOKE_SIZES = ([64, 48], [56, 42])  # (h, w): stand-ins for 512x384 and the preset's size
TASK = "mask"
UTILISATION_GOAL = 80.0


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer steps, sizes and photos")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--steps", type=int, help="timed steps per measurement (10; --quick 4)")
    parser.add_argument("--sweep", type=lambda t: [int(v) for v in t.split(",")], help="batch sizes (16,32,64,128; --quick 32,64)")
    parser.add_argument("--people", type=int, help="synthetic people for the real epoch (300; --quick 40)")
    parser.add_argument("--workers", type=int, help="DataLoader workers of the real epoch (CPUs - 1, max 8)")
    parser.add_argument("--compile", action="store_true", help="also measure torch.compile")
    parser.add_argument(
        "--cpu-smoke", action="store_true",
        help="no GPU needed: run every code path once on the CPU, tiny model and sizes, no figures",
    )
    parser.add_argument("--work-dir", type=Path)
    add_results_argument(parser, "gpu", default=False)
    args = parser.parse_args(argv)
    if args.results is None and not args.cpu_smoke:  # a CPU smoke run has no figures to keep
        args.results = results_path("gpu")
    if args.cpu_smoke:
        args.batch_size, args.steps, args.sweep, args.people = 4, 1, [2, 4], args.people or 2
    args.steps = args.steps or (4 if args.quick else 10)
    args.sweep = args.sweep or ([32, 64] if args.quick else [16, 32, 64, 128])
    args.people = args.people or (40 if args.quick else 300)
    return args


@dataclass(frozen=True)
class Target:
    """Where the measurements run: the GPU, or the CPU of a smoke run (tiny, no figures)."""

    device: torch.device
    arch: str
    smoke: bool = False

    @property
    def cuda(self) -> bool:
        return self.device.type == "cuda"

    def name(self) -> str:
        return torch.cuda.get_device_name() if self.cuda else "CPU SMOKE RUN (not GPU figures)"

    def sync(self) -> None:
        if self.cuda:
            torch.cuda.synchronize()

    def reset_memory(self) -> None:
        if self.cuda:
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats()

    def peak_gib(self) -> float:
        return torch.cuda.max_memory_allocated() / 2**30 if self.cuda else float("nan")

    def autocast(self, amp: bool):
        return torch.autocast(self.device.type, dtype=torch.bfloat16) if amp else nullcontext()

    def sizes(self) -> tuple[list[int], list[int]]:
        """(h, w) of the original recipe's input and of the default preset's."""
        if self.smoke:
            return SMOKE_SIZES
        return load_config("original").data.input_size, load_config("default").data.input_size


def require_cuda() -> Target:
    if not torch.cuda.is_available():
        raise BenchmarkError(
            "no CUDA device is visible (torch.cuda.is_available() is False); this benchmark only "
            "measures GPUs. Run it on a machine with an NVIDIA GPU and a CUDA build of torch "
            "(--cpu-smoke only checks that the script runs)."
        )
    if not torch.cuda.is_bf16_supported():
        raise BenchmarkError(f"{torch.cuda.get_device_name()} does not support bf16; the ours mode needs it")
    torch.backends.cudnn.benchmark = True
    return Target(torch.device("cuda"), ARCH)


# ---------------------------------------------------------------------------------------------
# synthetic-batch measurements


MODES = {
    "fp32": {"amp": False, "channels_last": False, "compile": False},
    "bf16+cl": {"amp": True, "channels_last": True, "compile": False},
    "bf16+cl+compile": {"amp": True, "channels_last": True, "compile": True},
}


def build(mode: str, target: Target):
    from timm.optim import AdamP

    spec = MODES[mode]
    fmt = torch.channels_last if spec["channels_last"] else torch.contiguous_format
    torch.manual_seed(0)
    model = create_model(target.arch, NUM_CLASSES[TASK], pretrained=False).to(target.device, memory_format=fmt)
    step_model = torch.compile(model) if spec["compile"] else model
    optimizer = AdamP(model.parameters(), lr=1e-4, weight_decay=1e-5)
    return model, step_model, optimizer, fmt


def train_rate(mode: str, size: list[int], batch: int, steps: int, target: Target) -> dict:
    """Training images/s on one resident synthetic batch, peak memory, warm-up seconds."""
    target.reset_memory()
    spec = MODES[mode]
    model, step_model, optimizer, fmt = build(mode, target)
    images = torch.randn(batch, 3, *size, device=target.device).contiguous(memory_format=fmt)
    labels = torch.randint(0, NUM_CLASSES[TASK], (batch,), device=target.device)
    model.train()

    def step() -> None:
        with target.autocast(spec["amp"]):
            loss = F.cross_entropy(step_model(images).float(), labels)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    started = time.perf_counter()
    for _ in range(3):  # cudnn autotuning and compilation happen here
        step()
    target.sync()
    warmup = time.perf_counter() - started
    started = time.perf_counter()
    for _ in range(steps):
        step()
    target.sync()
    seconds = time.perf_counter() - started
    result = {
        "rate": batch * steps / seconds,
        "peak_gib": target.peak_gib(),
        "warmup_s": warmup,
    }
    del model, step_model, optimizer, images
    return result


@torch.inference_mode()
def inference_rate(size: list[int], batch: int, steps: int, target: Target) -> float:
    model = create_model(target.arch, NUM_CLASSES[TASK], pretrained=False)
    model = model.to(target.device, memory_format=torch.channels_last).eval()
    images = torch.randn(batch, 3, *size, device=target.device).contiguous(memory_format=torch.channels_last)
    with target.autocast(True):
        for _ in range(3):
            model(images)
        target.sync()
        started = time.perf_counter()
        for _ in range(steps):
            model(images).argmax(1)
        target.sync()
    return batch * steps / (time.perf_counter() - started)


def guarded(func, *args) -> dict | float | str:
    """Run a measurement; an out-of-memory becomes the string ``"OOM"``."""
    try:
        return func(*args)
    except torch.cuda.OutOfMemoryError:
        torch.cuda.empty_cache()
        return "OOM"


# ---------------------------------------------------------------------------------------------
# GPU utilisation during a real epoch


class UtilisationSampler(threading.Thread):
    """Samples GPU utilisation (%) every ``interval`` s until ``stop()``."""

    def __init__(self, target: Target, interval: float = 0.1) -> None:
        super().__init__(daemon=True)
        self.interval, self.samples, self.source = interval, [], None
        self._done = threading.Event()
        if target.smoke:  # nothing to read; the smoke run prints no utilisation figure
            self.source, self._read = "none (CPU smoke run)", lambda: 0.0
        else:
            self._read = self._choose_reader()

    def _choose_reader(self):
        try:
            torch.cuda.utilization()
            self.source = "torch.cuda.utilization (NVML)"
            return torch.cuda.utilization
        except Exception:  # pynvml absent or NVML unusable: try the CLI
            pass
        if shutil.which("nvidia-smi"):
            self.source = "nvidia-smi"
            index = torch.cuda.current_device()

            def read() -> int:
                out = subprocess.run(
                    ["nvidia-smi", f"--id={index}", "--query-gpu=utilization.gpu", "--format=csv,noheader,nounits"],
                    capture_output=True, text=True, timeout=5, check=True,
                )
                return int(out.stdout.strip().splitlines()[0])

            return read
        raise BenchmarkError("cannot read GPU utilisation: neither pynvml (pip install nvidia-ml-py) nor nvidia-smi is available")

    def run(self) -> None:
        while not self._done.wait(self.interval):
            try:
                self.samples.append(float(self._read()))
            except Exception:
                continue

    def stop(self) -> float:
        self._done.set()
        self.join()
        if not self.samples:
            raise BenchmarkError(f"no GPU utilisation sample could be read from {self.source}")
        return sum(self.samples) / len(self.samples)


def real_epoch(args: argparse.Namespace, work_dir: Path, target: Target) -> dict:
    """One epoch of the default preset's real input pipeline feeding bf16 + channels-last
    training; returns images/s, mean GPU utilisation and the loader's wait share."""
    from timm.optim import AdamP

    from maskpipe.data.index import build_index
    from maskpipe.data.transforms import BatchNormalizer
    from maskpipe.task_data import build_task_data

    photos = work_dir / "photos"
    synthetic_photos(photos, args.people * 7, (384, 512))
    index_path = work_dir / "index.parquet"
    build_index(str(photos), index_path, val_fraction=0.0)
    overrides = [
        "model.pretrained=false", "data.use_val_split=false", "train.select_by=train_acc",
        f"train.batch_size={args.batch_size}",
    ]
    if args.workers is not None:
        overrides.append(f"data.num_workers={args.workers}")
    if target.smoke:
        size = target.sizes()[1]
        overrides.append(f"data.input_size=[{size[0]},{size[1]}]")
    config = load_config("default", overrides)
    device = target.device
    generator = torch.Generator().manual_seed(0)
    started = time.perf_counter()
    data = build_task_data(config, TASK, index_path, device, generator, work_dir / "cache")
    setup_s = time.perf_counter() - started
    if not list((work_dir / "cache" / "decoded").glob("*.u8")):
        raise BenchmarkError("the decoded-image cache fell back to disk reads; not the real fast path")
    model = create_model(target.arch, NUM_CLASSES[TASK], pretrained=False).to(device, memory_format=torch.channels_last)
    optimizer = AdamP(model.parameters(), lr=1e-4, weight_decay=1e-5)
    model.train()
    # What the training loop does to each uint8 batch: normalise, then the batched noise.
    normalize = BatchNormalizer(config.data.mean, config.data.std, channels_last=True, noise="noise" in config.data.augs)

    def epoch(sampler: UtilisationSampler | None) -> tuple[int, float, float]:
        images_seen, wait, began = 0, 0.0, time.perf_counter()
        fetched = time.perf_counter()
        if sampler is not None:
            sampler.start()
        for images, labels in data.train_loader:
            wait += time.perf_counter() - fetched
            images = normalize(images.to(device, non_blocking=True), train=True)
            labels = labels.to(device, non_blocking=True)
            with target.autocast(True):
                loss = F.cross_entropy(model(images).float(), labels)
            loss.backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            images_seen += len(labels)
            fetched = time.perf_counter()
        target.sync()
        return images_seen, time.perf_counter() - began, wait

    epoch(None)  # warm-up epoch: workers start, cudnn tunes
    sampler = UtilisationSampler(target)
    images_seen, seconds, wait = epoch(sampler)
    utilisation = sampler.stop()
    return {
        "images": images_seen, "rate": images_seen / seconds, "utilisation": utilisation,
        "wait_share": wait / seconds, "setup_s": setup_s, "source": sampler.source,
        "workers": data.train_loader.num_workers, "size": config.data.input_size,
    }


# ---------------------------------------------------------------------------------------------


def run(args: argparse.Namespace, work_dir: Path) -> float:
    target = Target(torch.device("cpu"), SMOKE_ARCH, smoke=True) if args.cpu_smoke else require_cuda()
    original_size, preset_size = target.sizes()
    modes = ["fp32", "bf16+cl"] + (["bf16+cl+compile"] if args.compile else [])
    print(f"{target.name()}, torch {torch.__version__}, {target.arch} (untrained), batch {args.batch_size}, {args.steps} timed steps")
    print(f"{'input (HxW)':<12} {'mode':<16} {'train img/s':>11} {'peak GiB':>9} {'warm-up s':>9}")
    rates: dict[tuple[str, str], float] = {}
    for size in (original_size, preset_size):
        label = f"{size[0]}x{size[1]}"
        for mode in modes:
            result = guarded(train_rate, mode, size, args.batch_size, args.steps, target)
            if result == "OOM":
                print(f"{label:<12} {mode:<16} {'OOM':>11}")
                continue
            rates[(label, mode)] = result["rate"]
            print(f"{label:<12} {mode:<16} {result['rate']:11.1f} {result['peak_gib']:9.2f} {result['warmup_s']:9.1f}")
        infer_batch = args.batch_size if target.smoke else 64
        infer = guarded(inference_rate, size, infer_batch, args.steps, target)
        shown = infer if isinstance(infer, str) else f"{infer:.1f}"
        print(f"{label:<12} {'inference bf16':<16} {shown:>11}   (batch {infer_batch}, channels-last)")

    label = f"{preset_size[0]}x{preset_size[1]}"
    print(f"\nbatch-size sweep, bf16+cl training at {label}:")
    print(f"{'batch':>6} {'img/s':>9} {'peak GiB':>9}")
    for batch in args.sweep:
        result = guarded(train_rate, "bf16+cl", preset_size, batch, args.steps, target)
        if result == "OOM":
            print(f"{batch:>6} {'OOM':>9}")
        else:
            print(f"{batch:>6} {result['rate']:9.1f} {result['peak_gib']:9.2f}")

    epoch = real_epoch(args, work_dir, target)
    verdict = "met" if epoch["utilisation"] >= UTILISATION_GOAL else "NOT met"
    if target.smoke:
        verdict = "not measured (CPU smoke run)"
    print(
        f"\nreal epoch (default preset input {epoch['size'][0]}x{epoch['size'][1]} (HxW), {epoch['images']} "
        f"images, {epoch['workers']} workers): {epoch['rate']:.1f} images/s, GPU busy "
        f"{epoch['utilisation']:.0f}% ({epoch['source']}), waiting for data "
        f"{epoch['wait_share']:.0%} of the epoch; cache fill and setup {epoch['setup_s']:.1f} s"
    )
    print(f"goal: GPU >= {UTILISATION_GOAL:.0f}% busy: {verdict}")
    reference = f"{original_size[0]}x{original_size[1]}"
    if (reference, "fp32") not in rates or (reference, "bf16+cl") not in rates:
        raise BenchmarkError(f"fp32 or bf16 training at {reference} ran out of memory; lower --batch-size")
    speedup = rates[(reference, "bf16+cl")] / rates[(reference, "fp32")]
    if target.smoke:
        print("gpu smoke run: every measurement ran once on the CPU; these are not GPU figures")
        return speedup
    print(f"gpu speedup: {speedup:.1f}x")
    return speedup


main = benchmark_main(__file__, parse_args, run)


if __name__ == "__main__":
    sys.exit(main())
