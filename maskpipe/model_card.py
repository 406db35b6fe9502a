"""The exported model folder: what ``maskpipe export`` writes and ``maskpipe serve`` trusts.

A model folder holds

* ``model.onnx`` - the whole ensemble as one graph: a uint8 NHWC image batch at the models'
  input size in; normalisation, the three task models and (optionally) flip TTA inside; out
  the 18-class id, the three task probability vectors and the 18-class probabilities;
* ``model.int8.onnx`` (only after ``maskpipe export --quantize int8``) - the same graph with
  int8 weights and activations (:mod:`maskpipe.quantize`); the card's ``onnx_file`` then names
  it, ``precision`` says ``int8`` and ``quantization`` records how it was made and how often it
  agrees with ``model.onnx``, which stays as the fp32 reference;
* ``int8_check.npz`` (with the int8 graph) - a few of the held-out photos the agreement was
  measured on, decoded as the graph takes them, so ``maskpipe serve`` can measure it again on
  the CPU it serves from (:func:`maskpipe.quantize.int8_or_fp32_here`);
* ``checkpoints/{mask,gender,age}/`` - the three source checkpoints, for the torch backend
  (a GPU node) and for provenance;
* ``model.json`` - the card: class names, input size and resize rule, the source checkpoints
  with their sha256, opset, package versions, and the sha256 of every other file in the folder.
  It is written last, so its presence marks a complete folder.

:func:`read_model_dir` re-hashes every file the card lists before anything is served: a
missing or altered file stops the server at start with the file's name, never at the first
request. This module imports no torch (the slim serving image has none).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from maskpipe.atomic import sha256_file
from maskpipe.errors import MaskpipeError

CARD_FILE = "model.json"
ONNX_FILE = "model.onnx"
# The int8 graph `maskpipe export --quantize int8` writes beside the fp32 one (maskpipe.quantize).
INT8_ONNX_FILE = "model.int8.onnx"
# Held-out photos (uint8 NHWC, key "images") the int8 agreement is re-measured on at serve time.
INT8_CHECK_FILE = "int8_check.npz"
PRECISIONS = ("fp32", "int8")
CHECKPOINTS_DIR = "checkpoints"
CARD_FORMAT = 1
# Graph inputs and outputs, by name (the serving protocols and the card use the same names).
INPUT_NAME = "images"
OUTPUT_NAMES = ("class", "mask_probs", "gender_probs", "age_probs", "class_probs")

_EXPORT_HINT = "export it again with `maskpipe export --mask DIR --gender DIR --age DIR -o OUT`"


class ModelDirError(MaskpipeError):
    """A model folder is incomplete, altered, or of an unknown card format."""


@dataclass(frozen=True)
class ModelCard:
    """The parsed ``model.json`` of a verified model folder."""

    folder: Path
    data: dict[str, Any]

    @property
    def input_size(self) -> tuple[int, int]:
        """(height, width) of the graph's input."""
        height, width = self.data["input"]["size"]
        return int(height), int(width)

    @property
    def crop_size(self) -> tuple[int, int] | None:
        crop = self.data["input"]["crop_size"]
        return None if crop is None else (int(crop[0]), int(crop[1]))

    @property
    def view(self) -> tuple[tuple[int, int] | None, tuple[int, int]]:
        """The one (crop_size, input_size) view every image is decoded to."""
        return self.crop_size, self.input_size

    @property
    def tta(self) -> bool:
        return bool(self.data["tta"])

    @property
    def onnx_file(self) -> str:
        """The graph the onnx backend runs: ``model.onnx``, or ``model.int8.onnx`` for an int8
        folder (whose ``model.onnx`` stays as the fp32 reference). Older cards name none."""
        return str(self.data.get("onnx_file", ONNX_FILE))

    @property
    def onnx_path(self) -> Path:
        return self.folder / self.onnx_file

    @property
    def precision(self) -> str:
        """``fp32`` or ``int8`` (the graph ``onnx_file`` names); cards before int8 say none."""
        return str(self.data.get("precision", "fp32"))

    def checkpoint_dir(self, task: str) -> Path:
        return self.folder / CHECKPOINTS_DIR / task

    @property
    def task_class_names(self) -> dict[str, list[str]]:
        return {task: list(names) for task, names in self.data["task_class_names"].items()}

    @property
    def class_names(self) -> list[str]:
        return list(self.data["class_names"])


def list_files(folder: Path) -> dict[str, str]:
    """``{relative posix path: sha256}`` of every file under ``folder`` except the card."""
    return {
        path.relative_to(folder).as_posix(): sha256_file(path)
        for path in sorted(folder.rglob("*"))
        if path.is_file() and path.relative_to(folder).as_posix() != CARD_FILE
    }


def read_model_dir(model_dir: str | Path, *, verify: bool = True) -> ModelCard:
    """Read ``model.json`` and (``verify``) check the sha256 of every file it lists.

    Raises:
        ModelDirError: the folder or card is missing, the card is not JSON or of another
            format, a listed file is missing, or a file's sha256 differs from the card's.
    """
    folder = Path(model_dir)
    if not folder.is_dir():
        raise ModelDirError(f"model folder {folder} does not exist or is not a folder; {_EXPORT_HINT}")
    card_path = folder / CARD_FILE
    if not card_path.is_file():
        raise ModelDirError(
            f"{card_path} is missing, so {folder} is not a complete exported model (an export "
            f"may have been interrupted); {_EXPORT_HINT}"
        )
    try:
        data = json.loads(card_path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ModelDirError(f"{card_path} is not valid JSON ({exc}); {_EXPORT_HINT}") from None
    if not isinstance(data, dict) or data.get("format") != CARD_FORMAT:
        found = data.get("format") if isinstance(data, dict) else type(data).__name__
        raise ModelDirError(
            f"{card_path} has card format {found!r}; this maskpipe reads format {CARD_FORMAT}; "
            f"{_EXPORT_HINT}"
        )
    for key in ("input", "tta", "files", "class_names", "task_class_names", "sources"):
        if key not in data:
            raise ModelDirError(f"{card_path} lacks the key {key!r}; {_EXPORT_HINT}")
    card = ModelCard(folder=folder, data=data)
    _check_graph_fields(card, card_path)
    if verify:
        _verify_files(folder, data["files"])
    return card


def _check_graph_fields(card: ModelCard, card_path: Path) -> None:
    if card.precision not in PRECISIONS:
        raise ModelDirError(
            f"{card_path} has precision {card.precision!r}; this maskpipe runs {' or '.join(PRECISIONS)}; "
            f"{_EXPORT_HINT}"
        )
    # The graph to run must be one of the hashed files, named as a plain file in the folder.
    if "/" in card.onnx_file or "\\" in card.onnx_file or card.onnx_file not in card.data["files"]:
        raise ModelDirError(
            f"{card_path} names the graph {card.onnx_file!r}, which is not a file its list covers; "
            f"{_EXPORT_HINT}"
        )


def _verify_files(folder: Path, files: dict[str, str]) -> None:
    if ONNX_FILE not in files:
        raise ModelDirError(f"{folder / CARD_FILE} lists no {ONNX_FILE}; {_EXPORT_HINT}")
    for name, expected in files.items():
        path = folder / name
        if not path.is_file():
            raise ModelDirError(
                f"{path} is missing from the model folder (its card lists it); copy the whole "
                f"folder again or {_EXPORT_HINT}"
            )
        actual = sha256_file(path)
        if actual != expected:
            raise ModelDirError(
                f"{path} was altered: its sha256 is {actual[:16]}..., the card says "
                f"{expected[:16]}... (a partial copy or a changed file); copy the folder again "
                f"or {_EXPORT_HINT}"
            )
