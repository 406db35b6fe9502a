"""Post-training static int8 quantization of an exported model folder's graph.

``model.onnx`` (fp32) is quantized with ONNX Runtime's static quantizer into
``model.int8.onnx``: int8 weights per output channel in 7 bits (``reduce_range``), uint8
activations whose ranges are measured (MinMax) on calibration photos, Conv/MatMul/Gemm only,
QDQ format, after ORT's pre-processing (shape inference and graph clean-up). Calibration
photos are decoded with :func:`maskpipe.data.resize.decode_views` at the card's view, exactly
as the served graph's input is.

Why 7-bit weights: on an x86 CPU without VNNI (AVX2, or AVX-512 without VNNI) ONNX Runtime
sums pairs of uint8 x int8 products in saturating 16 bits (``VPMADDUBSW``); 255 x 127 x 2
overflows it, 255 x 63 x 2 does not. With full-range weights the same int8 graph gave other
answers on such a CPU than on a VNNI one; with 7-bit weights its integer arithmetic, and so
its answers, are the same on both (docs/serving.md has the measurements).

The photos are a seeded sample split in two halves: one half calibrates, the other, unseen by
the calibration, measures how often the int8 graph gives the fp32 graph's answers. The card
records that measurement beside the method and the CPU features it was measured with
(:func:`maskpipe.cpu.cpu_features`), so a reader can judge the trade before serving it, and
keeps up to :data:`CHECK_SAMPLE_IMAGES` of the held-out photos (``int8_check.npz``, hashed like
every file) on which :func:`int8_or_fp32_here` measures it again on the serving CPU before
``maskpipe serve`` reports ready.
``model.onnx`` stays in the folder as the reference; the card's ``onnx_file`` names the int8
graph, which is what ``maskpipe infer --backend onnx`` and ``maskpipe serve`` then run.

Quantizing happens at export time; running the int8 graph needs only ONNX Runtime. This module
imports no torch (the ``onnx`` package is needed to quantize, not to serve).
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from importlib.metadata import version
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from maskpipe.atomic import atomic_dir, write_json
from maskpipe.cpu import cpu_features, describe
from maskpipe.data.images import default_workers, has_image_extension
from maskpipe.data.layout import detect_layout, is_hidden
from maskpipe.data.resize import View, decode_views
from maskpipe.errors import DataLayoutError, MaskpipeError
from maskpipe.labels import TASKS
from maskpipe.model_card import (
    CARD_FILE,
    INPUT_NAME,
    INT8_CHECK_FILE,
    INT8_ONNX_FILE,
    ONNX_FILE,
    OUTPUT_NAMES,
    ModelCard,
    list_files,
    read_model_dir,
)

log = logging.getLogger(__name__)

# Photos per half of the sample: this many calibrate, as many more measure the agreement.
CALIBRATION_IMAGES = 128
CALIBRATION_SEED = 0
# Fewer held-out photos than this and the card says the agreement is a rough figure.
FEW_CHECK_IMAGES = 100
BATCH_SIZE = 32
QUANTIZED_OP_TYPES = ("Conv", "MatMul", "Gemm")
METHOD = (
    "onnxruntime.quantization.quantize_static after quant_pre_process: QDQ format, MinMax "
    "calibration, int8 weights (symmetric, per output channel, 7-bit range: reduce_range, so "
    "x86 kernels without VNNI do not saturate), uint8 activations (asymmetric, per tensor), "
    "Conv/MatMul/Gemm quantized, every other op in fp32"
)
# Held-out photos kept in the folder for the serve-time check: each costs one fp32 and one
# int8 forward pass at server start.
CHECK_SAMPLE_IMAGES = 32
# By default the serve-time check wants the card's figure on those photos, less this much.
CHECK_TOLERANCE = 0.02
MIN_AGREEMENT_ENV = "MASKPIPE_INT8_MIN_AGREEMENT"
ON_FAILURE_ENV = "MASKPIPE_INT8_ON_FAILURE"
ON_FAILURE_CHOICES = ("fp32", "refuse")
CALIBRATION_HELP = (
    "pass a data root in the competition layout (train/images/<id>_<gender>_<race>_<age>/*.jpg) "
    "or a folder of .jpg/.jpeg/.png photos like the ones the model will see"
)


class CalibrationError(MaskpipeError):
    """The calibration photos cannot be found, read or split."""


class Int8CheckError(MaskpipeError):
    """The int8 graph does not hold its agreement on this CPU, and fp32 was not allowed."""


def find_calibration_images(path: str | os.PathLike[str]) -> list[Path]:
    """The photos under ``path``, sorted: a data root's training photos (the layouts
    :func:`maskpipe.data.layout.detect_layout` knows; an eval-only root gives its eval photos),
    else every ``.jpg``/``.jpeg``/``.png`` under a plain folder. Hidden files are ignored."""
    root = Path(path)
    if not root.is_dir():
        raise CalibrationError(f"calibration folder {root} does not exist or is not a folder; {CALIBRATION_HELP}")
    if not os.access(root, os.R_OK | os.X_OK):
        raise CalibrationError(f"calibration folder {root} cannot be read (permissions); {CALIBRATION_HELP}")
    files = sorted(p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file())
    photos = [f for f in files if not is_hidden(f) and has_image_extension(f)]
    try:
        layout = detect_layout(str(root), files)
    except DataLayoutError:
        layout = None  # not a data root: a plain folder of photos
    if layout is not None and layout.images_prefix:
        photos = [f for f in photos if f.startswith(layout.images_prefix + "/")]
    if not photos:
        raise CalibrationError(
            f"calibration folder {root} holds no .jpg/.jpeg/.png photos (hidden files are "
            f"ignored); {CALIBRATION_HELP}"
        )
    return [root / f for f in photos]


def calibration_images_from_index(
    index_path: str | os.PathLike[str],
    images: int = CALIBRATION_IMAGES,
    seed: int = CALIBRATION_SEED,
    cache_dir: str | os.PathLike[str] | None = None,
) -> tuple[list[Path], str]:
    """A pipeline step's calibration photos: a seeded sample of ``2 * images`` training photos
    of the index ``maskpipe index`` wrote (the ``split == "train"`` people, never the validation
    ones the ensemble scores), made local (an ``s3://`` data root is fetched into
    ``cache_dir``, only the sampled photos). Returns the paths and where they came from."""
    from maskpipe.data.index import read_index
    from maskpipe.storage import localize

    frame, data_root = read_index(Path(index_path))
    train = sorted(frame.loc[frame["split"] == "train", "path"].astype(str))
    if len(train) < 2:
        raise CalibrationError(
            f"{index_path} lists {len(train)} training photo(s); int8 calibration needs at least 2 "
            "(half calibrate, half check the int8 graph against fp32); index more training data"
        )
    picked = np.random.default_rng(seed).permutation(len(train))[: 2 * images]
    rel_paths = [train[i] for i in sorted(picked)]
    local = localize(data_root, rel_paths, Path(cache_dir) if cache_dir is not None else None)
    return local, f"{len(rel_paths)} training photos of {data_root} (index {Path(index_path).name})"


def split_calibration(
    paths: Sequence[str | os.PathLike[str]], images: int = CALIBRATION_IMAGES, seed: int = CALIBRATION_SEED
) -> tuple[list[Path], list[Path]]:
    """A seeded sample of up to ``2 * images`` of ``paths`` (order-independent), split into the
    photos that calibrate and the held-out photos that measure the agreement."""
    ordered = sorted({Path(p) for p in paths}, key=str)
    if len(ordered) < 2:
        raise CalibrationError(
            f"int8 calibration needs at least 2 photos (half calibrate, half check the int8 "
            f"graph against fp32), got {len(ordered)}; {CALIBRATION_HELP}"
        )
    if images < 1:
        raise CalibrationError(f"calibration images per half must be >= 1, got {images}")
    chosen = np.random.default_rng(seed).permutation(len(ordered))[: 2 * images]
    half = (len(chosen) + 1) // 2
    return [ordered[i] for i in chosen[:half]], [ordered[i] for i in chosen[half:]]


def decode_batch(paths: Sequence[Path], view: View) -> np.ndarray:
    """uint8 (N, H, W, 3): each photo as the graph takes it (the serving path's decoder)."""
    with ThreadPoolExecutor(max(1, min(default_workers(), len(paths)))) as pool:
        return np.stack(list(pool.map(lambda path: decode_views(path, [view])[0], paths)))


def quantize_graph(fp32_path: Path, int8_path: Path, calibration: np.ndarray, batch_size: int = BATCH_SIZE) -> None:
    """Write the static int8 quantization of ``fp32_path`` to ``int8_path``, with activation
    ranges measured on the uint8 image batch ``calibration``."""
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    class Batches(CalibrationDataReader):
        def __init__(self) -> None:
            self.batches = iter(
                [{INPUT_NAME: calibration[i : i + batch_size]} for i in range(0, len(calibration), batch_size)]
            )

        def get_next(self) -> dict[str, np.ndarray] | None:
            return next(self.batches, None)

    with tempfile.TemporaryDirectory(prefix="maskpipe-quantize-") as scratch:
        prepared = Path(scratch) / "prepared.onnx"
        quant_pre_process(str(fp32_path), str(prepared), skip_symbolic_shape=False)
        quantize_static(
            str(prepared),
            str(int8_path),
            Batches(),
            quant_format=QuantFormat.QDQ,
            per_channel=True,
            reduce_range=True,
            activation_type=QuantType.QUInt8,
            weight_type=QuantType.QInt8,
            op_types_to_quantize=list(QUANTIZED_OP_TYPES),
        )


def run_graph(onnx_path: Path, images: np.ndarray, batch_size: int = BATCH_SIZE) -> dict[str, np.ndarray]:
    """All outputs of the graph at ``onnx_path`` for ``images``, by name."""
    from maskpipe.runtime import open_session

    session = open_session(onnx_path)
    batches = [
        session.run(list(OUTPUT_NAMES), {INPUT_NAME: images[i : i + batch_size]})
        for i in range(0, len(images), batch_size)
    ]
    return {name: np.concatenate([batch[k] for batch in batches]) for k, name in enumerate(OUTPUT_NAMES)}


def compare_outputs(reference: dict[str, np.ndarray], quantized: dict[str, np.ndarray]) -> dict[str, Any]:
    """How often the quantized graph gives the reference's answers: the 18-class id and each
    task's label (fractions of images), and the largest probability difference per output."""
    agreement = {"class": float(np.mean(reference["class"] == quantized["class"]))}
    for task in TASKS:
        name = f"{task}_probs"
        agreement[task] = float(np.mean(reference[name].argmax(1) == quantized[name].argmax(1)))
    difference = {
        name: float(np.abs(reference[name] - quantized[name]).max())
        for name in OUTPUT_NAMES
        if name.endswith("_probs")
    }
    return {"agreement": agreement, "max_abs_prob_difference": difference}


def add_int8_graph(
    folder: str | os.PathLike[str],
    calibration_paths: Sequence[str | os.PathLike[str]],
    *,
    images: int = CALIBRATION_IMAGES,
    seed: int = CALIBRATION_SEED,
    calibration_source: str | None = None,
) -> dict[str, Any]:
    """Quantize an exported folder in place: write ``model.int8.onnx``, measure it against
    ``model.onnx`` and rewrite the card to run it. Returns the card's ``quantization`` block.

    Meant for a folder nobody reads yet (export's build folder, or a copy); for a published
    folder use :func:`quantize_model_dir`, which swaps the finished folder in.
    """
    start = time.perf_counter()
    card = read_model_dir(folder)
    calibrate_on, check_on = split_calibration(calibration_paths, images, seed)
    reference_path, int8_path = card.folder / ONNX_FILE, card.folder / INT8_ONNX_FILE
    quantize_graph(reference_path, int8_path, decode_batch(calibrate_on, card.view))
    check_images = decode_batch(check_on, card.view)
    reference, quantized = run_graph(reference_path, check_images), run_graph(int8_path, check_images)
    measured = compare_outputs(reference, quantized)
    sample = min(len(check_images), CHECK_SAMPLE_IMAGES)
    np.savez_compressed(card.folder / INT8_CHECK_FILE, images=check_images[:sample])
    on_sample = compare_outputs(
        {name: value[:sample] for name, value in reference.items()},
        {name: value[:sample] for name, value in quantized.items()},
    )
    quantization = {
        "method": METHOD,
        "op_types": list(QUANTIZED_OP_TYPES),
        "reference_file": ONNX_FILE,
        "onnxruntime": version("onnxruntime"),
        "calibration_source": calibration_source,
        "calibration_images": len(calibrate_on),
        "check_images": len(check_on),
        "seed": seed,
        **measured,
        "cpu": cpu_features(),
        "check_sample": {"file": INT8_CHECK_FILE, "images": sample, "agreement": on_sample["agreement"]["class"]},
        "seconds": round(time.perf_counter() - start, 1),
    }
    if len(check_on) < FEW_CHECK_IMAGES:
        quantization["note"] = (
            f"the agreement was measured on only {len(check_on)} held-out photos (each is "
            f"{1 / len(check_on):.1%} of it): a rough figure; quantize with a few hundred photos "
            "for one to rely on"
        )
    data = {
        **card.data,
        "onnx_file": INT8_ONNX_FILE,
        "precision": "int8",
        "quantization": quantization,
        "files": list_files(card.folder),
    }
    write_json(card.folder / CARD_FILE, data)
    log.info(
        "int8 graph: the 18-class answer agrees with fp32 on %.1f%% of %d held-out photos "
        "(calibrated on %d) on this CPU (%s) in %.1f s",
        100 * measured["agreement"]["class"], len(check_on), len(calibrate_on), describe(quantization["cpu"]),
        quantization["seconds"],
    )  # fmt: skip
    return quantization


def quantize_model_dir(
    model_dir: str | os.PathLike[str],
    calibration_paths: Sequence[str | os.PathLike[str]],
    *,
    out_dir: str | os.PathLike[str] | None = None,
    images: int = CALIBRATION_IMAGES,
    seed: int = CALIBRATION_SEED,
    calibration_source: str | None = None,
) -> Path:
    """Add the int8 graph to the exported folder ``model_dir`` (or to a copy at ``out_dir``).

    The folder is copied beside the target, quantized there and renamed into place, so a
    reader (a server starting) finds the old folder or the finished new one, never half.

    Args:
        model_dir: a folder ``maskpipe export`` wrote; it is verified first.
        calibration_paths: photos (a pipeline step passes its index's paths); see
            :func:`find_calibration_images` for a folder.
        out_dir: where the int8 folder goes; None replaces ``model_dir``.
        images: photos per half: up to this many calibrate, as many more are held out.
        seed: the sample's seed.
        calibration_source: where the photos came from, for the card.

    Raises:
        ModelDirError: ``model_dir`` is incomplete or altered.
        CalibrationError: fewer than 2 photos.
        ImageDecodeError: a sampled photo cannot be decoded (named).
    """
    source = read_model_dir(model_dir)
    target = Path(out_dir) if out_dir is not None else source.folder
    with atomic_dir(target) as building:
        shutil.copytree(source.folder, building, dirs_exist_ok=True, copy_function=shutil.copyfile)
        add_int8_graph(building, calibration_paths, images=images, seed=seed, calibration_source=calibration_source)
    return target


def int8_or_fp32_here(
    backend: Any, *, min_agreement: float | None = None, on_failure: str | None = None
) -> Any:
    """The backend to serve: ``backend`` itself, unless it runs an int8 graph that does not
    hold its agreement with fp32 on this CPU; then the folder's fp32 graph (or an error).

    ``maskpipe serve`` calls it once, before it reports ready. The int8 and fp32 graphs run on
    the held-out photos the card keeps (``int8_check.npz``), and int8 is served when it gives
    fp32's class on at least ``min_agreement`` of them. One log line says what was measured and
    what is served. A folder without those photos (exported before this check) is served fp32.

    Args:
        backend: an opened backend (:func:`maskpipe.runtime.open_backend`); anything but the
            onnx backend on an int8 folder is returned as it is.
        min_agreement: a fraction; None reads ``$MASKPIPE_INT8_MIN_AGREEMENT``, else the card's
            own figure on those photos less :data:`CHECK_TOLERANCE`. Above 1 int8 is never served.
        on_failure: ``"fp32"`` (serve the fp32 graph) or ``"refuse"`` (raise); None reads
            ``$MASKPIPE_INT8_ON_FAILURE``, else ``"fp32"``.

    Raises:
        Int8CheckError: the check failed and ``on_failure`` is ``"refuse"``.
        MaskpipeError: a setting is not a fraction / not one of the choices.
    """
    card: ModelCard = backend.card
    if card.precision != "int8" or not backend.name.startswith("onnx"):
        return backend
    min_agreement = _min_agreement_setting(min_agreement)
    on_failure = _on_failure_setting(on_failure)
    from maskpipe.runtime import OnnxBackend

    fp32 = OnnxBackend(ModelCard(card.folder, {**card.data, "onnx_file": ONNX_FILE, "precision": "fp32"}))
    here = describe(cpu_features())
    quantization = card.data.get("quantization", {})
    sample = quantization.get("check_sample")
    if sample is None or sample.get("file") != INT8_CHECK_FILE or INT8_CHECK_FILE not in card.data["files"]:
        problem = (
            f"{card.folder / CARD_FILE} keeps no held-out photos ({INT8_CHECK_FILE}) to check its int8 "
            f"graph on this CPU ({here}); export it again with this maskpipe"
        )
        return _fallback(problem, fp32, on_failure)
    with np.load(card.folder / INT8_CHECK_FILE, allow_pickle=False) as stored:
        images = stored["images"]
    agreement = compare_outputs(fp32.predict(images), backend.predict(images))["agreement"]["class"]
    exported = float(sample["agreement"])
    threshold = exported - CHECK_TOLERANCE if min_agreement is None else min_agreement
    measured = (
        f"int8 gives fp32's class on {agreement:.1%} of the card's {len(images)} held-out photos on this CPU "
        f"({here}); {exported:.1%} where it was exported ({describe(quantization.get('cpu') or {})}); "
        f"threshold {threshold:.1%}"
    )
    if agreement >= threshold:
        log.info("%s: serving int8 (%s)", measured, card.onnx_file)
        return backend
    return _fallback(measured, fp32, on_failure)


def _fallback(problem: str, fp32: Any, on_failure: str) -> Any:
    if on_failure == "refuse":
        raise Int8CheckError(
            f"{problem}: refusing to serve int8 ({ON_FAILURE_ENV}=refuse); unset it to serve the fp32 "
            f"graph {ONNX_FILE} instead, or serve an export without --quantize"
        )
    log.warning("%s: serving the fp32 graph %s instead of int8", problem, ONNX_FILE)
    return fp32


def _min_agreement_setting(value: float | None) -> float | None:
    text = os.environ.get(MIN_AGREEMENT_ENV) if value is None else str(value)
    if text is None or text.strip() == "":
        return None
    try:
        number = float(text)
    except ValueError:
        number = float("nan")
    if not number >= 0:  # also NaN
        raise MaskpipeError(
            f"{MIN_AGREEMENT_ENV}={text!r} is not a fraction; set a number such as 0.95 (int8 must give "
            "fp32's class on that share of the card's held-out photos), or unset it to use the card's figure"
        )
    return number


def _on_failure_setting(value: str | None) -> str:
    text = (os.environ.get(ON_FAILURE_ENV) or "fp32") if value is None else value
    if text not in ON_FAILURE_CHOICES:
        raise MaskpipeError(
            f"{ON_FAILURE_ENV}={text!r} is not one of {', '.join(ON_FAILURE_CHOICES)}; use fp32 (serve the "
            "fp32 graph when int8 fails its check on this CPU) or refuse (stop with an error)"
        )
    return text
