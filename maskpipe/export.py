"""Export the three task checkpoints as one ONNX graph plus a card: the served model.

The graph takes what the decoder gives: a uint8 RGB batch, NHWC ``(N, H, W, 3)``, every image
already centre-cropped and resized with :func:`maskpipe.data.resize.crop_resize` to the
checkpoints' input size. Inside it, each model's own normalisation, the flip TTA (the batch
and its horizontal flips averaged, as ``maskpipe infer --tta`` does) and the softmax; out come

* ``class``        int64 ``(N,)``: the 18-class id, ``mask * 6 + gender * 3 + age`` of the
  task arg-maxes (exactly :func:`maskpipe.backend.classes_from_probs`);
* ``mask_probs`` ``(N, 3)``, ``gender_probs`` ``(N, 2)``, ``age_probs`` ``(N, 3)``: float32;
* ``class_probs``  float32 ``(N, 18)``: the product of the three task probabilities (the
  tasks are predicted independently), whose arg-max is ``class``.

The batch dimension is dynamic. The exporter is torch's ``torch.export``-based one
(``dynamo=True``, needs ``onnxscript``): the TorchScript-based exporter is deprecated since
torch 2.9. The weights are stored inside the ``.onnx`` file (one file to hash and to copy).
"""

from __future__ import annotations

import contextlib
import logging
import platform
import shutil
import time
import warnings
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Iterator, Mapping, Sequence

import torch

from maskpipe import __version__
from maskpipe.atomic import atomic_dir, write_json
from maskpipe.checkpoint import CONFIG_FILE, META_FILE, WEIGHTS_FILE, LoadedCheckpoint
from maskpipe.data.resize import RESIZE_RULE
from maskpipe.errors import MaskpipeError
from maskpipe.quantize import CALIBRATION_HELP, CALIBRATION_IMAGES, CalibrationError, add_int8_graph
from maskpipe.labels import CLASS_NAMES, NUM_CLASSES, TASK_CLASS_NAMES, TASKS
from maskpipe.model_card import (
    CARD_FILE,
    CARD_FORMAT,
    CHECKPOINTS_DIR,
    INPUT_NAME,
    ONNX_FILE,
    OUTPUT_NAMES,
    list_files,
)

log = logging.getLogger(__name__)

OPSET = 18
# Batch size of the example input the graph is traced with (the batch stays dynamic).
TRACE_BATCH = 2
_VERSIONED_PACKAGES = ("maskpipe", "torch", "timm", "onnx", "onnxscript", "onnxruntime", "numpy")


class EnsembleGraph(torch.nn.Module):
    """uint8 NHWC batch -> (class, mask_probs, gender_probs, age_probs, class_probs)."""

    def __init__(self, loaded: Mapping[str, LoadedCheckpoint], tta: bool) -> None:
        super().__init__()
        self.tta = tta
        # for messages: the timm architectures inside, e.g. "efficientnet_b4"
        self.architectures = ", ".join(sorted({loaded[task].config.model.arch for task in TASKS}))
        self.models = torch.nn.ModuleDict({task: loaded[task].model.eval() for task in TASKS})
        for task in TASKS:
            mean = torch.tensor(loaded[task].mean, dtype=torch.float32).view(1, 3, 1, 1)
            std = torch.tensor(loaded[task].std, dtype=torch.float32).view(1, 3, 1, 1)
            # (x/255 - mean)/std as one multiply-add, the formula normalize_to_tensor uses.
            self.register_buffer(f"{task}_scale", 1.0 / (255.0 * std))
            self.register_buffer(f"{task}_shift", -mean / std)

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, ...]:
        x = images.permute(0, 3, 1, 2).to(torch.float32)
        probs = [self._task_probs(task, x) for task in TASKS]
        mask, gender, age = probs
        n = images.shape[0]
        class_probs = (mask[:, :, None, None] * gender[:, None, :, None] * age[:, None, None, :]).reshape(n, 18)
        classes = mask.argmax(dim=1) * 6 + gender.argmax(dim=1) * 3 + age.argmax(dim=1)
        return classes, mask, gender, age, class_probs

    def _task_probs(self, task: str, x: torch.Tensor) -> torch.Tensor:
        x = x * getattr(self, f"{task}_scale") + getattr(self, f"{task}_shift")
        if not self.tta:
            return self.models[task](x).softmax(dim=1)
        n = x.shape[0]
        probs = self.models[task](torch.cat([x, x.flip(3)])).softmax(dim=1)
        return (probs[:n] + probs[n:]) / 2


def export_model(
    checkpoints: Mapping[str, str | Path],
    out_dir: str | Path,
    *,
    tta: bool = True,
    opset: int = OPSET,
    quantize: str | None = None,
    calibration_paths: Sequence[str | Path] = (),
    calibration_images: int = CALIBRATION_IMAGES,
    calibration_source: str | None = None,
) -> Path:
    """Write ``model.onnx``, copies of the three checkpoints and ``model.json`` to ``out_dir``.

    The folder is built beside ``out_dir`` and renamed into place at the end, so an
    interrupted export leaves the previous model folder (or none), never half of one.

    Args:
        quantize: ``"int8"`` also writes ``model.int8.onnx`` (:mod:`maskpipe.quantize`) and
            makes it the graph the folder runs; ``model.onnx`` stays as the fp32 reference.
        calibration_paths: photos to calibrate and check the int8 graph with (``quantize``).
        calibration_images: photos per half of the calibration sample.
        calibration_source: where the calibration photos came from, for the card.

    Raises:
        CheckpointError: a checkpoint is missing, corrupt or of another task.
        MaskpipeError: the checkpoints disagree on the input geometry, or the export fails.
        CalibrationError: ``quantize`` without at least 2 calibration photos.
    """
    from maskpipe.torch_backend import load_task_models

    if quantize not in (None, "int8"):
        raise MaskpipeError(f"quantize must be 'int8' or None, got {quantize!r}")
    if quantize and len(calibration_paths) < 2:
        raise CalibrationError(
            f"int8 export needs calibration photos (at least 2), got {len(calibration_paths)}; {CALIBRATION_HELP}"
        )
    start = time.perf_counter()
    loaded = load_task_models(checkpoints, torch.device("cpu"))
    crop, size = _common_view(loaded)
    out_dir = Path(out_dir)
    with atomic_dir(out_dir) as building:
        graph = EnsembleGraph(loaded, tta).eval()
        _export_onnx(graph, building / ONNX_FILE, size, opset)
        for task in TASKS:
            _copy_checkpoint(loaded[task].path, building / CHECKPOINTS_DIR / task)
        card = _card(loaded, crop, size, tta, opset, list_files(building))
        write_json(building / CARD_FILE, card)
        if quantize:
            add_int8_graph(
                building, calibration_paths, images=calibration_images, calibration_source=calibration_source
            )
    log.info("exported %s in %.1f s", out_dir, time.perf_counter() - start)
    return out_dir


def _common_view(loaded: Mapping[str, LoadedCheckpoint]) -> tuple[tuple[int, int] | None, tuple[int, int]]:
    views = {task: (c.crop_size, c.input_size) for task, c in loaded.items()}
    if len(set(views.values())) != 1:
        found = ", ".join(f"{task}: crop {v[0]} input {v[1]}" for task, v in views.items())
        raise MaskpipeError(
            f"one exported graph takes one image size, but the checkpoints differ ({found}); "
            "train the three tasks with the same data.crop_size and data.input_size"
        )
    return next(iter(views.values()))


def _export_onnx(graph: EnsembleGraph, path: Path, size: tuple[int, int], opset: int) -> None:
    example = torch.randint(0, 256, (TRACE_BATCH, size[0], size[1], 3), dtype=torch.uint8)
    batch = torch.export.Dim("batch", min=1, max=4096)
    try:
        with warnings.catch_warnings(), _quiet_loggers("onnx_ir", "onnxscript", "torch.onnx", "torch.export"):
            # The exporter's own progress chatter (hundreds of lines); real failures raise.
            warnings.simplefilter("ignore")
            program = torch.onnx.export(
                graph,
                (example,),
                dynamo=True,
                input_names=[INPUT_NAME],
                output_names=list(OUTPUT_NAMES),
                opset_version=opset,
                dynamic_shapes={"images": {0: batch}},
                optimize=True,
                verbose=False,
            )
    except Exception as exc:  # the exporter raises many types; name the model and the cause
        cause = str(exc).splitlines()[0] if str(exc) else ""
        raise MaskpipeError(
            f"ONNX export of the ensemble ({graph.architectures}) failed ({type(exc).__name__}: {cause}); "
            "some timm architectures use operations torch's ONNX exporter cannot express. The "
            "checkpoints are fine: run the pipeline with export=false (--no-export), where "
            "ensemble-infer runs them with torch, or `maskpipe infer --mask DIR --gender DIR --age DIR`"
        ) from exc
    program.save(str(path), external_data=False)


@contextlib.contextmanager
def _quiet_loggers(*names: str) -> Iterator[None]:
    loggers = [logging.getLogger(name) for name in names]
    levels = [logger.level for logger in loggers]
    for logger in loggers:
        logger.setLevel(logging.WARNING)
    try:
        yield
    finally:
        for logger, level in zip(loggers, levels):
            logger.setLevel(level)


def _copy_checkpoint(source: Path, target: Path) -> None:
    target.mkdir(parents=True, exist_ok=True)
    for name in (WEIGHTS_FILE, META_FILE, CONFIG_FILE):
        shutil.copyfile(source / name, target / name)  # the umask's mode, not the source's


def _card(
    loaded: Mapping[str, LoadedCheckpoint],
    crop: tuple[int, int] | None,
    size: tuple[int, int],
    tta: bool,
    opset: int,
    files: dict[str, str],
) -> dict:
    return {
        "format": CARD_FORMAT,
        "name": "maskpipe",
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "onnx_file": ONNX_FILE,
        "precision": "fp32",
        "opset": opset,
        "input": {
            "name": INPUT_NAME,
            "dtype": "uint8",
            "layout": "NHWC",
            "channels": "RGB",
            "size": list(size),
            "crop_size": None if crop is None else list(crop),
            "resize_rule": RESIZE_RULE,
            "batch": "dynamic",
        },
        "outputs": list(OUTPUT_NAMES),
        "tta": tta,
        "class_rule": "class = mask * 6 + gender * 3 + age (task arg-maxes)",
        "class_names": list(CLASS_NAMES),
        "task_class_names": {task: list(TASK_CLASS_NAMES[task]) for task in TASKS},
        "num_classes": dict(NUM_CLASSES),
        "sources": {
            task: {
                "path": str(loaded[task].path),
                "arch": loaded[task].meta["arch"],
                "weights_sha256": loaded[task].meta["weights_sha256"],
                "checkpoint_json_sha256": files[f"{CHECKPOINTS_DIR}/{task}/{META_FILE}"],
                "mean": loaded[task].mean,
                "std": loaded[task].std,
                "epoch": loaded[task].meta.get("epoch"),
            }
            for task in TASKS
        },
        "packages": {"python": platform.python_version(), **_package_versions()},
        "files": files,
    }


def _package_versions() -> dict[str, str]:
    versions = {}
    for name in _VERSIONED_PACKAGES:
        try:
            versions[name] = version(name)
        except PackageNotFoundError:
            versions[name] = __version__ if name == "maskpipe" else "not installed"
    return versions
