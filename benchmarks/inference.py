"""Inference speed: the competition's per-image ensemble loop against maskpipe's batched paths.

Same three models (untrained ``resnet10t`` checkpoints at the smoke preset's input size, built
with ``create_model`` and saved as real checkpoint folders; or trained ones given with
``--mask/--gender/--age``), same JPEGs (generated, or ``--data``'s eval photos), same machine,
one run:

* original: for each image, decode it, then for each model run the albumentations eval
  transform, forward that one image and take ``.argmax().item()``;
* batched: :func:`maskpipe.ensemble.predict_probs` - each image decoded once and
  cropped/resized to uint8 (on the CPU by a thread pool taking turns with the forward passes,
  on CUDA by DataLoader worker processes), batches of ``--batch-size``, BatchNorm folded into
  the convolutions, channels-last, ``torch.inference_mode``, bf16 autocast with ``--bf16``;
* onnx (CPU only): the same three checkpoints exported by ``maskpipe export --no-tta`` (export
  time not counted, once per run like training) and run by ONNX Runtime through
  :func:`maskpipe.ensemble.predict_probs` on the ``onnx`` backend, the path of ``maskpipe infer --backend onnx``;
* onnx int8 (CPU only): that folder quantized as ``maskpipe export --quantize int8`` does
  (:func:`maskpipe.quantize.quantize_model_dir`), calibrated on other photos of the same kind
  (``--calibration-images`` per half, a different seed from the timed ones), run the same way.

Both paths run with the same torch thread count: by default torch's own, one per core, as
each path would run on its own (``--threads 1`` compares them per core). Each timed call
loads its three checkpoints, as a real run does. The paths alternate ``--rounds`` times and
each keeps its best round (the machine is shared).

Every exact path (fp32, or bf16 on CUDA) must agree with the original on the predicted classes,
and a path that cannot run as asked (CUDA or bf16 unavailable) stops the script with a non-zero
exit instead of measuring a fallback. int8 is an approximation: its agreement is reported, not
required. The last line is ``inference speedup: R.Rx``: the fastest path ``maskpipe infer``
offers on this device whose classes agree with the original's on at least 98% of the images
(a line above names any path left out and why); every path stays in the table above it.

    python benchmarks/inference.py            # 512 images of 512x384 (HxW) on the CPU, 2 rounds
    python benchmarks/inference.py --quick    # 32 images, one round, a smoke run
    python benchmarks/inference.py --threads 1
    python benchmarks/inference.py --data DATA_ROOT --mask DIR --gender DIR --age DIR
    python benchmarks/inference.py --device cuda --bf16 --images 2048
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch
from original_recipe import BenchmarkError
from results import add_results_argument, benchmark_main
from PIL import Image

from maskpipe.checkpoint import load_checkpoint, save_checkpoint
from maskpipe.cli_args import height_by_width
from maskpipe.config import load_config
from maskpipe.data.images import has_image_extension
from maskpipe.data.layout import is_hidden
from maskpipe.data.transforms import hwc_float_to_chw, original_eval_transform
from maskpipe.ensemble import classes_from_probs, predict_probs
from maskpipe.labels import NUM_CLASSES, TASKS, encode_class
from maskpipe.model_card import read_model_dir
from maskpipe.models import create_model, recalibrate_batchnorm
from maskpipe.runtime import open_backend
from maskpipe.torch_backend import resolve_device

MIN_AGREEMENT = {False: 0.99, True: 0.95}  # fp32 / bf16: only near-ties may flip
# A path's speed counts for the last line only if its answers are (nearly) the original's.
ELIGIBLE_AGREEMENT = 0.98
INT8_PATH = "exported graph int8 (onnx)"


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--quick", action="store_true", help="a smoke run: 32 images, no warm-up pass"
    )
    parser.add_argument("--images", type=int, help="number of eval images (512; --quick 32)")
    parser.add_argument("--rounds", type=int, help="alternating timed calls per path (2; --quick 1)")
    parser.add_argument("--image-size", type=height_by_width, default=(384, 512), help="photo HEIGHTxWIDTH (default 512x384)")
    parser.add_argument(
        "--input-size", type=height_by_width, help="model input HEIGHTxWIDTH (default: the smoke preset's)"
    )
    parser.add_argument("--arch", default="resnet10t")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument(
        "--workers", type=int,
        help="decoding threads on the CPU, worker processes on CUDA (default: the CPU count)",
    )
    parser.add_argument(
        "--threads", type=int, default=0,
        help="torch intra-op threads, the same for both paths (default: 0, torch's own: the "
        "CPU count)",
    )
    parser.add_argument("--device", default="cpu", choices=["auto", "cpu", "cuda"])
    parser.add_argument("--bf16", action="store_true", help="bf16 autocast (CUDA only)")
    parser.add_argument("--work-dir", type=Path, help="where images and checkpoints go (temp dir)")
    add_results_argument(parser, "inference")
    parser.add_argument(
        "--data", type=Path,
        help="a data root in the competition layout: time its eval/images (the first --images, "
        "sorted) and calibrate int8 on its train/images, instead of generated photos",
    )
    for task in ("mask", "gender", "age"):
        parser.add_argument(
            f"--{task}", type=Path,
            help=f"a trained {task} checkpoint folder (all three, or none: untrained resnet10t)",
        )
    parser.add_argument(
        "--calibration-images", type=int,
        help="int8 calibration photos per half, as maskpipe export's flag (128; --quick 4)",
    )
    args = parser.parse_args(argv)
    if args.images is None:
        args.images = 32 if args.quick else 512
    if args.rounds is None:
        args.rounds = 1 if args.quick else 2
    if args.calibration_images is None:
        args.calibration_images = 4 if args.quick else 128
    given = [task for task in ("mask", "gender", "age") if getattr(args, task) is not None]
    if given and len(given) != 3:
        parser.error("give all three of --mask, --gender and --age, or none")
    if min(args.images, args.batch_size, args.rounds) < 1:
        parser.error("--images, --batch-size and --rounds must be >= 1")
    return args


# ---------------------------------------------------------------------------------------------
# fixtures: images and checkpoints


def write_images(folder: Path, count: int, size: tuple[int, int], seed: int = 0) -> list[Path]:
    """Photo-like JPEGs (smooth shading, a face-sized blob, mild noise), quality 95."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    width, height = size
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    paths = []
    for i in range(count):
        base = rng.uniform(40, 200, 3)
        slope = rng.uniform(-0.3, 0.3, 3)
        cy, cx = rng.uniform(0.3, 0.7) * height, rng.uniform(0.3, 0.7) * width
        blob = np.exp(-(((yy - cy) / (0.2 * height)) ** 2 + ((xx - cx) / (0.2 * width)) ** 2))
        pixels = base + slope * xx[..., None] + 80 * blob[..., None] * rng.uniform(-1, 1, 3)
        pixels += rng.normal(0, 6, pixels.shape)
        path = folder / f"{i:05d}.jpg"
        Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8)).save(path, quality=95)
        paths.append(path)
    return paths


def eval_photos(data_root: Path, count: int) -> list[Path]:
    """The first ``count`` photos of ``data_root/eval/images`` (sorted by name)."""
    folder = data_root / "eval" / "images"
    photos = sorted(p for p in folder.glob("*") if has_image_extension(p.name) and not is_hidden(p.name))
    if not photos:
        raise BenchmarkError(f"{folder} holds no .jpg/.jpeg/.png photos; --data needs a data root with eval/images")
    return photos[:count]


def photos_label(args: argparse.Namespace) -> str:
    if args.data is not None:
        return f"eval photos of {args.data}"
    return f"JPEGs of {args.image_size[1]}x{args.image_size[0]} (HxW)"


def write_checkpoints(folder: Path, arch: str, input_size: tuple[int, int] | None) -> dict[str, Path]:
    """One untrained checkpoint per task, with BatchNorm statistics measured on noise so the
    models give varied answers (fresh statistics make every image the same class)."""
    overrides = [f"model.arch={arch}"]
    if input_size is not None:
        overrides.append(f"data.input_size=[{input_size[1]},{input_size[0]}]")
    config = load_config("smoke", overrides)
    out = {}
    for seed, task in enumerate(TASKS):
        torch.manual_seed(seed)
        model = create_model(arch, NUM_CLASSES[task], pretrained=False)
        recalibrate_batchnorm(model, torch.rand(16, 3, *config.data.input_size) * 4 - 2)
        save_checkpoint(folder / task, model, task=task, config=config, epoch=0, metrics={})
        out[task] = folder / task
    return out


# ---------------------------------------------------------------------------------------------
# the paths


def original_loop(checkpoints: dict[str, Path], paths: list[Path], device: torch.device) -> np.ndarray:
    """The competition's inference: one image, one model, one ``.item()`` at a time."""
    models, transforms = {}, {}
    for task in TASKS:
        checkpoint = load_checkpoint(checkpoints[task], expected_task=task, device=device)
        models[task] = checkpoint.model
        transforms[task] = original_eval_transform(
            checkpoint.crop_size, checkpoint.input_size, checkpoint.mean, checkpoint.std
        )
    answers = []
    for path in paths:
        image = np.array(Image.open(path).convert("RGB"))
        labels = []
        for task in TASKS:
            x = hwc_float_to_chw(transforms[task](image=image)["image"]).unsqueeze(0).to(device)
            with torch.no_grad():
                labels.append(models[task](x).argmax(dim=-1).item())
        answers.append(encode_class(*labels))
    return np.array(answers)


def batched(
    checkpoints: dict[str, Path], paths: list[Path], device: torch.device, args: argparse.Namespace
) -> np.ndarray:
    backend = open_backend(checkpoints, device=str(device), amp=bool(args.bf16))
    for task, checkpoint in backend.loaded.items():
        actual = next(checkpoint.model.parameters()).device
        if actual.type != device.type:
            raise BenchmarkError(f"the {task} model is on {actual}, not the requested {device}")
    return classes_from_probs(predict_probs(backend, paths, batch_size=args.batch_size, num_workers=args.workers))


def exported(model_dir: Path, paths: list[Path], args: argparse.Namespace) -> np.ndarray:
    backend = open_backend(model_dir, "onnx", threads=args.threads or None)
    return classes_from_probs(predict_probs(backend, paths, batch_size=args.batch_size, num_workers=args.workers))


def timed(func, *func_args) -> tuple[np.ndarray, float]:
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    start = time.perf_counter()
    result = func(*func_args)
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    return result, time.perf_counter() - start


# ---------------------------------------------------------------------------------------------


def run(args: argparse.Namespace, work_dir: Path) -> float:
    device = resolve_device(args.device)  # MaskpipeError when CUDA was asked for and is absent
    if args.bf16 and device.type != "cuda":
        raise BenchmarkError(f"--bf16 needs CUDA; the device is {device}")
    if args.bf16 and not torch.cuda.is_bf16_supported():
        raise BenchmarkError("--bf16 was asked for but this GPU does not support bf16")
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.data is not None:
        paths = eval_photos(args.data, args.images)
    else:
        paths = write_images(work_dir / "images", args.images, args.image_size)
    if args.mask is not None:
        checkpoints = {task: getattr(args, task) for task in ("mask", "gender", "age")}
    else:
        checkpoints = write_checkpoints(work_dir / "checkpoints", args.arch, args.input_size)
    first = load_checkpoint(checkpoints["mask"])
    input_size, arch = first.input_size, first.config.model.arch

    # ONNX Runtime runs on the CPU; on CUDA the torch paths are what maskpipe infer offers.
    model_dir = int8_dir = None
    if device.type == "cpu":
        from maskpipe.export import export_model

        from maskpipe.quantize import find_calibration_images, quantize_model_dir

        model_dir = export_model(checkpoints, work_dir / "exported", tta=False)
        # Calibration photos of the same kind but not the timed ones (another seed, or the
        # training photos of --data), as a real export calibrates on training photos and is
        # judged on others.
        if args.data is not None:
            calibration = find_calibration_images(args.data)  # train/images of a data root
        else:
            calibration = write_images(
                work_dir / "calibration", 2 * args.calibration_images, args.image_size, seed=1
            )
        int8_dir = quantize_model_dir(
            model_dir, calibration, out_dir=work_dir / "exported-int8", images=args.calibration_images
        )
    paths_by_name = {
        "original per-image loop": lambda: original_loop(checkpoints, paths, device),
        "batched ensemble (torch)": lambda: batched(checkpoints, paths, device, args),
    }
    if model_dir is not None:
        paths_by_name["exported graph (onnx)"] = lambda: exported(model_dir, paths, args)
        paths_by_name[INT8_PATH] = lambda: exported(int8_dir, paths, args)

    if not args.quick:
        # Warm-up on a few images: one-time kernel selection should not count for any side.
        warm = paths[: min(len(paths), 4)]
        original_loop(checkpoints, warm, device)
        batched(checkpoints, warm, device, args)
        if model_dir is not None:
            exported(model_dir, warm, args)
            exported(int8_dir, warm, args)

    seconds: dict[str, list[float]] = {name: [] for name in paths_by_name}
    classes: dict[str, np.ndarray] = {}
    for _ in range(args.rounds):
        for name, path_run in paths_by_name.items():
            classes[name], elapsed = timed(path_run)
            seconds[name].append(elapsed)

    n = len(paths)
    workers = "auto" if args.workers is None else args.workers
    print(
        f"{n} {photos_label(args)}; 3 x {arch}{' (--mask/--gender/--age)' if args.mask else ' (untrained)'} at "
        f"{input_size[0]}x{input_size[1]} (HxW); device {device}"
        f"{' bf16' if args.bf16 else ''}; torch threads {torch.get_num_threads()}; "
        f"batch {args.batch_size}; workers {workers}"
    )
    original_name = "original per-image loop"
    for name, times in seconds.items():
        print(f"{name + ':':30s}{n / min(times):8.1f} images/s ({_rounds(times)})")
    agreements = {}
    for name in list(paths_by_name)[1:]:
        agreements[name] = float((classes[original_name] == classes[name]).mean())
        print(f"{name}: predicted classes agree with the original on {agreements[name]:.1%} of images")
        if name != INT8_PATH and agreements[name] < MIN_AGREEMENT[bool(args.bf16)]:
            raise BenchmarkError(
                f"{name} and the original disagree on {1 - agreements[name]:.1%} of images; a "
                f"speed ratio between different computations means nothing"
            )
    if model_dir is not None:
        measured = read_model_dir(int8_dir).data["quantization"]
        print(
            f"{INT8_PATH}: its card measured {measured['agreement']['class']:.1%} class agreement "
            f"with fp32 on {measured['check_images']} held-out calibration photos"
        )
    for name in list(paths_by_name)[1:]:
        print(f"{name}: {min(seconds[original_name]) / min(seconds[name]):.1f}x the original")
    eligible = [name for name in list(paths_by_name)[1:] if agreements[name] >= ELIGIBLE_AGREEMENT]
    left_out = [f"{name} ({agreements[name]:.1%} agreement)" for name in agreements if name not in eligible]
    if left_out:
        print(
            f"not eligible for the speedup (classes agree with the original on < "
            f"{ELIGIBLE_AGREEMENT:.0%} of images): {', '.join(left_out)}"
        )
    if not eligible:
        raise BenchmarkError(f"no path agrees with the original on >= {ELIGIBLE_AGREEMENT:.0%} of images")
    fastest = min(eligible, key=lambda name: min(seconds[name]))
    speedup = min(seconds[original_name]) / min(seconds[fastest])
    print(f"fastest path: {fastest}")
    print(f"inference speedup: {speedup:.1f}x")
    return speedup


def _rounds(seconds: list[float]) -> str:
    return "best of " + ", ".join(f"{s:.2f}" for s in seconds) + " s"


main = benchmark_main(__file__, parse_args, run)


if __name__ == "__main__":
    sys.exit(main())
