"""Checkpoint folders: save and load trained task models, and refuse anything suspicious.

A checkpoint folder (the contract between training and inference) holds

* ``model.safetensors`` - the weights: tensors only, so loading one never runs code;
* ``checkpoint.json`` - everything inference needs (task, classes, architecture, preprocessing)
  plus the sha256 of the weights file, written last so its presence marks a complete folder;
  its rename is the one commit point of a save (the new weights wait beside it as
  ``model.safetensors.pending`` until then), so a process killed at any moment leaves a folder
  that loads: the old checkpoint, or the new one;
* ``config.yaml`` - the whole resolved config the model was trained with.

Resume state (``state/last.pt``) is a ``torch.save`` file read back with
``torch.load(weights_only=True)``: tensors and plain containers only, never arbitrary pickles.
Every rejection is a :class:`~maskpipe.errors.CheckpointError` naming the file, the problem
and what to do.
"""

from __future__ import annotations

import json
import logging
import os
import pickle
import zipfile
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from maskpipe import __version__
from maskpipe.atomic import atomic_path, sha256_file, write_json, write_text
from maskpipe.config import Config, ConfigError, load_config_file
from maskpipe.errors import CheckpointError, MaskpipeError
from maskpipe.labels import NUM_CLASSES, TASK_CLASS_NAMES, TASKS

log = logging.getLogger(__name__)

FORMAT_VERSION = 1
WEIGHTS_FILE = "model.safetensors"
# New weights wait under this name until checkpoint.json (the commit point) names their sha256.
PENDING_WEIGHTS_FILE = WEIGHTS_FILE + ".pending"
META_FILE = "checkpoint.json"
CONFIG_FILE = "config.yaml"

_REQUIRED_META: dict[str, type | tuple[type, ...]] = {
    "format": int,
    "task": str,
    "num_classes": int,
    "class_names": list,
    "arch": str,
    "input_size": list,
    "crop_size": (list, type(None)),
    "mean": list,
    "std": list,
    "weights_sha256": str,
}

_RETRAIN_HINT = "retrain with `maskpipe train` or point to the folder `maskpipe train --out` wrote"


@dataclass
class LoadedCheckpoint:
    """A validated checkpoint: the model (eval mode, on the requested device) and its metadata."""

    model: torch.nn.Module
    meta: dict[str, Any]
    config: Config
    path: Path

    @property
    def task(self) -> str:
        return self.meta["task"]

    @property
    def input_size(self) -> tuple[int, int]:
        return tuple(self.meta["input_size"])  # type: ignore[return-value]

    @property
    def crop_size(self) -> tuple[int, int] | None:
        crop = self.meta["crop_size"]
        return None if crop is None else tuple(crop)  # type: ignore[return-value]

    @property
    def mean(self) -> list[float]:
        return list(self.meta["mean"])

    @property
    def std(self) -> list[float]:
        return list(self.meta["std"])


# ---------------------------------------------------------------------------------------------
# saving


def save_checkpoint(
    out_dir: str | Path,
    model: torch.nn.Module,
    *,
    task: str,
    config: Config,
    epoch: int,
    metrics: dict[str, Any],
    config_note: str = "",
) -> None:
    """Write ``model.safetensors``, ``config.yaml`` and ``checkpoint.json`` into ``out_dir``;
    ``config_note`` (YAML comment lines) ends ``config.yaml``.

    Each file is written atomically. The weights go first to ``model.safetensors.pending``;
    ``checkpoint.json``, which records their sha256, is the commit point; then the pending
    weights are renamed into place. A kill before the commit leaves the previous checkpoint,
    a kill after it leaves the new one (``load_checkpoint`` finishes the rename).
    """
    if task not in TASKS:
        raise ValueError(f"unknown task {task!r}; valid tasks: {', '.join(TASKS)}")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    model = unwrap_model(model)
    _check_model_outputs(model, task)

    from safetensors.torch import save_file

    pending = out_dir / PENDING_WEIGHTS_FILE
    with atomic_path(pending) as tmp:
        save_file(cpu_state_dict(model), str(tmp), metadata={"format": "pt", "task": task})
    write_text(out_dir / CONFIG_FILE, config.to_yaml() + config_note)
    write_json(out_dir / META_FILE, _build_meta(task, config, epoch, metrics, pending))
    os.replace(pending, out_dir / WEIGHTS_FILE)


def unwrap_model(model: torch.nn.Module) -> torch.nn.Module:
    """The plain module inside ``torch.compile`` / ``DataParallel`` wrappers, so saved keys
    carry no ``_orig_mod.`` or ``module.`` prefix."""
    while True:
        if hasattr(model, "_orig_mod"):
            model = model._orig_mod
        elif isinstance(
            model, (torch.nn.DataParallel, torch.nn.parallel.DistributedDataParallel)
        ):
            model = model.module
        else:
            return model


def cpu_state_dict(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """Detached, contiguous CPU copies (safetensors refuses channels-last or shared views)."""
    return {
        name: tensor.detach().to("cpu").contiguous().clone()
        for name, tensor in model.state_dict().items()
    }


def _check_model_outputs(model: torch.nn.Module, task: str) -> None:
    outputs = getattr(model, "num_classes", None)
    if outputs is not None and outputs != NUM_CLASSES[task]:
        raise ValueError(
            f"model has {outputs} outputs but task {task!r} has {NUM_CLASSES[task]} classes"
        )


def _build_meta(
    task: str, config: Config, epoch: int, metrics: dict[str, Any], weights_path: Path
) -> dict[str, Any]:
    data = config.data
    return {
        "format": FORMAT_VERSION,
        "task": task,
        "num_classes": NUM_CLASSES[task],
        "class_names": list(TASK_CLASS_NAMES[task]),
        "arch": config.model.arch,
        "input_size": list(data.input_size),
        "crop_size": None if data.crop_size is None else list(data.crop_size),
        "mean": list(data.mean),
        "std": list(data.std),
        "age_old_min": data.age_old_min,
        "epoch": int(epoch),
        "metrics": metrics,
        "maskpipe_version": __version__,
        "weights_file": WEIGHTS_FILE,
        "weights_sha256": sha256_file(weights_path),
    }


# ---------------------------------------------------------------------------------------------
# loading


def load_checkpoint(
    checkpoint_dir: str | Path,
    *,
    expected_task: str | None = None,
    device: str | torch.device = "cpu",
) -> LoadedCheckpoint:
    """Validate a checkpoint folder and build its model (eval mode) on ``device``.

    Raises:
        CheckpointError: missing folder or file, unknown format version, another task than
            ``expected_task``, a class count that disagrees with the labels or the weights,
            weights that do not fit the architecture, or a corrupt / truncated / tampered
            weights file.
    """
    folder = Path(checkpoint_dir)
    if not folder.is_dir():
        raise CheckpointError(
            f"checkpoint folder {folder} does not exist or is not a folder; {_RETRAIN_HINT}"
        )
    meta = read_meta(folder)
    _check_task(folder, meta, expected_task)
    config = _read_config(folder)
    state = _read_weights(folder, meta)
    model = _build_model(folder, meta)
    _check_state_fits(folder, meta, model, state)
    model.load_state_dict(state, strict=True)
    if str(device) == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    model.to(torch.device(device)).eval()
    return LoadedCheckpoint(model=model, meta=meta, config=config, path=folder)


def read_meta(checkpoint_dir: str | Path) -> dict[str, Any]:
    """``checkpoint.json`` of a folder, checked for format version, keys and class names."""
    folder = Path(checkpoint_dir)
    path = folder / META_FILE
    if not path.is_file():
        raise CheckpointError(
            f"{path} is missing, so {folder} is not a complete checkpoint (training may have "
            f"been interrupted before the first save); {_RETRAIN_HINT}"
        )
    try:
        meta = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise CheckpointError(f"{path} is not valid JSON ({exc}); {_RETRAIN_HINT}") from None
    if not isinstance(meta, dict):
        raise CheckpointError(f"{path} must hold a JSON object; {_RETRAIN_HINT}")
    version = meta.get("format")
    if version != FORMAT_VERSION:
        raise CheckpointError(
            f"{path} has checkpoint format {version!r} but maskpipe {__version__} reads format "
            f"{FORMAT_VERSION}; use the maskpipe version that wrote it or retrain"
        )
    for key, kind in _REQUIRED_META.items():
        if key not in meta:
            raise CheckpointError(f"{path} lacks the key {key!r}; {_RETRAIN_HINT}")
        if not isinstance(meta[key], kind) or isinstance(meta[key], bool):
            raise CheckpointError(f"{path}: {key!r} has the wrong type ({meta[key]!r})")
    _check_classes(path, meta)
    return meta


def _check_classes(path: Path, meta: dict[str, Any]) -> None:
    task = meta["task"]
    if task not in TASKS:
        raise CheckpointError(f"{path}: unknown task {task!r}; valid tasks: {', '.join(TASKS)}")
    expected = NUM_CLASSES[task]
    if meta["num_classes"] != expected:
        raise CheckpointError(
            f"{path}: wrong class count for task {task!r}: num_classes is {meta['num_classes']}, "
            f"the labels define {expected}; retrain this task with the current maskpipe"
        )
    if list(meta["class_names"]) != list(TASK_CLASS_NAMES[task]):
        raise CheckpointError(
            f"{path}: class names {meta['class_names']} differ from the {task} labels "
            f"{list(TASK_CLASS_NAMES[task])}; the class order would be misread - retrain"
        )


def _check_task(folder: Path, meta: dict[str, Any], expected_task: str | None) -> None:
    if expected_task is not None and meta["task"] != expected_task:
        raise CheckpointError(
            f"checkpoint {folder} was trained for task {meta['task']!r}, not {expected_task!r}; "
            f"pass the {expected_task} checkpoint folder (e.g. `--{expected_task} DIR`)"
        )


def _read_config(folder: Path) -> Config:
    path = folder / CONFIG_FILE
    if not path.is_file():
        raise CheckpointError(f"{path} is missing from the checkpoint; {_RETRAIN_HINT}")
    try:
        return load_config_file(path)
    except (ConfigError, MaskpipeError) as exc:
        raise CheckpointError(f"{path} is not a valid config: {exc}") from None


def _finish_interrupted_save(folder: Path, meta: dict[str, Any]) -> Path | None:
    """The pending weights of a save killed between its commit and its last rename, when
    ``checkpoint.json`` names them; the rename is completed where the folder is writable."""
    pending = folder / PENDING_WEIGHTS_FILE
    if not pending.is_file() or sha256_file(pending) != meta["weights_sha256"]:
        return None
    try:
        os.replace(pending, folder / WEIGHTS_FILE)
    except OSError:  # a read-only copy of the folder: read the pending file where it is
        return pending
    log.info("completed an interrupted checkpoint save in %s", folder)
    return folder / WEIGHTS_FILE


def _read_weights(folder: Path, meta: dict[str, Any]) -> dict[str, torch.Tensor]:
    path = folder / WEIGHTS_FILE
    recovered = _finish_interrupted_save(folder, meta)
    if recovered is not None:
        path = recovered
    if not path.is_file():
        raise CheckpointError(f"{path} is missing from the checkpoint; {_RETRAIN_HINT}")
    actual = sha256_file(path)
    if actual != meta["weights_sha256"]:
        raise CheckpointError(
            f"{path} is corrupt, truncated or was replaced: its sha256 {actual[:12]}... differs "
            f"from {meta['weights_sha256'][:12]}... recorded in {META_FILE}; copy the folder "
            f"again or retrain"
        )
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    try:
        return load_file(str(path), device="cpu")
    except (SafetensorError, OSError, ValueError, RuntimeError) as exc:
        raise CheckpointError(
            f"{path} is not a readable safetensors file ({exc}); copy the folder again or retrain"
        ) from None


def _build_model(folder: Path, meta: dict[str, Any]) -> torch.nn.Module:
    from maskpipe.models import create_model

    try:
        return create_model(meta["arch"], meta["num_classes"], pretrained=False)
    except MaskpipeError:
        raise
    except (RuntimeError, ValueError, KeyError) as exc:
        raise CheckpointError(
            f"{folder / META_FILE}: cannot build architecture {meta['arch']!r} ({exc}); "
            f"install the timm version that knows it or retrain"
        ) from None


def _check_state_fits(
    folder: Path, meta: dict[str, Any], model: torch.nn.Module, state: dict[str, torch.Tensor]
) -> None:
    path = folder / WEIGHTS_FILE
    expected = {name: tuple(t.shape) for name, t in model.state_dict().items()}
    found = {name: tuple(t.shape) for name, t in state.items()}
    classifier = _classifier_prefix(model)
    wrong_shape = [n for n in expected.keys() & found.keys() if expected[n] != found[n]]
    if classifier and wrong_shape and all(n.startswith(classifier) for n in wrong_shape):
        outputs = found[sorted(wrong_shape)[0]][0]
        raise CheckpointError(
            f"{path}: wrong class count: the weights have {outputs} outputs but task "
            f"{meta['task']!r} has {meta['num_classes']} classes; retrain this task"
        )
    missing = sorted(expected.keys() - found.keys())
    unexpected = sorted(found.keys() - expected.keys())
    if missing or unexpected or wrong_shape:
        details = []
        if missing:
            details.append(f"{len(missing)} missing (e.g. {', '.join(missing[:3])})")
        if unexpected:
            details.append(f"{len(unexpected)} unexpected (e.g. {', '.join(unexpected[:3])})")
        if wrong_shape:
            examples = ", ".join(
                f"{n} {found[n]} vs {expected[n]}" for n in sorted(wrong_shape)[:3]
            )
            details.append(f"{len(wrong_shape)} with other shapes (e.g. {examples})")
        raise CheckpointError(
            f"{path} does not fit architecture {meta['arch']!r} named in {META_FILE}: "
            f"{'; '.join(details)}; the weights come from another model - fix 'arch' or retrain"
        )


def _classifier_prefix(model: torch.nn.Module) -> tuple[str, ...]:
    cfg = getattr(model, "pretrained_cfg", None) or {}
    names = cfg.get("classifier") if isinstance(cfg, dict) else None
    if isinstance(names, str):
        names = (names,)
    return tuple(f"{name}." for name in names or ())


# ---------------------------------------------------------------------------------------------
# resume state

# Exact types: subclasses such as numpy.float64 (a float) pickle through numpy and would be
# refused by weights_only loading.
_PLAIN_SCALARS = (int, float, bool, str, bytes, type(None))
_PLAIN_TORCH = (torch.Tensor, torch.dtype, torch.device, torch.Size)


def save_state(path: str | Path, state: dict[str, Any]) -> None:
    """Atomically ``torch.save`` resume state (model, optimizer, scheduler, epoch, RNG, ...).

    Only tensors, numbers, strings and lists/tuples/dicts of them are accepted, because
    :func:`load_state` reads with ``weights_only=True``; anything else would save fine and then
    fail at resume time, so it is refused here, naming the offending key.
    """
    if not isinstance(state, dict):
        raise TypeError(f"resume state must be a dict, got {type(state).__name__}")
    _check_plain(state, "state")
    with atomic_path(path) as tmp:
        torch.save(state, tmp)


def load_state(path: str | Path) -> dict[str, Any]:
    """Read resume state written by :func:`save_state`, refusing pickled objects."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"resume state {path} does not exist")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise CheckpointError(
            f"refused to load resume state {path}: it holds pickled objects other than tensors "
            f"and plain containers (possibly a malicious pickle payload), or is corrupt "
            f"({first}); delete it to start the task afresh"
        ) from None
    except (RuntimeError, EOFError, OSError, ValueError, zipfile.BadZipFile) as exc:
        raise CheckpointError(
            f"resume state {path} is corrupt or truncated ({type(exc).__name__}: "
            f"{str(exc).splitlines()[0] if str(exc) else ''}); delete it to start afresh"
        ) from None
    if not isinstance(state, dict):
        raise CheckpointError(
            f"resume state {path} holds a {type(state).__name__}, not a dict; delete it"
        )
    return state


def _check_plain(value: Any, where: str) -> None:
    if type(value) in _PLAIN_SCALARS or isinstance(value, _PLAIN_TORCH):
        return
    if type(value) in (dict, OrderedDict):
        for key, item in value.items():
            if type(key) not in _PLAIN_SCALARS:
                raise TypeError(f"{where} has a key of type {type(key).__name__}")
            _check_plain(item, f"{where}[{key!r}]")
        return
    if type(value) in (list, tuple, set):
        for i, item in enumerate(value):
            _check_plain(item, f"{where}[{i}]")
        return
    raise TypeError(
        f"{where} is a {type(value).__module__}.{type(value).__name__}; resume state may hold "
        f"only tensors, numbers, strings and lists/tuples/dicts of them (convert numpy arrays "
        f"with torch.from_numpy, numpy scalars with .item(), objects to their state_dict())"
    )
