"""Run an exported model folder: the same answers from ONNX Runtime or from the torch checkpoints.

Both backends take what :func:`maskpipe.data.resize.decode_views` gives for the folder's one
view, stacked into a uint8 NHWC batch, and return the graph's outputs by name
(:data:`maskpipe.model_card.OUTPUT_NAMES`). ``onnx`` (ONNX Runtime, CPU) is the default, runs
the graph the card's ``onnx_file`` names (fp32, or int8 after ``--quantize int8``) and needs no
torch; ``torch`` runs the folder's copies of the checkpoints through
:mod:`maskpipe.ensemble` (a GPU node), with the same TTA setting the graph was exported with.
"""

from __future__ import annotations

import logging
import os
from typing import Any, Protocol

import numpy as np

from maskpipe.errors import MaskpipeError
from maskpipe.model_card import INPUT_NAME, OUTPUT_NAMES, ModelCard, read_model_dir

log = logging.getLogger(__name__)

BACKENDS = ("onnx", "torch")


class EnsembleBackend(Protocol):
    card: ModelCard
    name: str

    def predict(self, images: np.ndarray) -> dict[str, np.ndarray]:
        """uint8 (N, H, W, 3) at the card's input size -> the outputs by name."""


class OnnxEnsemble:
    """The exported graph under ONNX Runtime (CPU)."""

    def __init__(self, card: ModelCard, threads: int | None = None) -> None:
        self.card = card
        # The name logs and summaries carry, so an int8 run is never mistaken for an fp32 one.
        self.name = "onnx" if card.precision == "fp32" else f"onnx {card.precision}"
        self.session = open_session(card.onnx_path, threads)

    def predict(self, images: np.ndarray) -> dict[str, np.ndarray]:
        check_batch(images, self.card)
        outputs = self.session.run(list(OUTPUT_NAMES), {INPUT_NAME: images})
        return dict(zip(OUTPUT_NAMES, outputs))


def open_session(onnx_path: str | os.PathLike[str], threads: int | None = None) -> Any:
    """An ONNX Runtime CPU session on ``onnx_path`` with every graph optimisation on."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    if threads:
        options.intra_op_num_threads = threads
    try:
        return ort.InferenceSession(str(onnx_path), sess_options=options, providers=["CPUExecutionProvider"])
    except Exception as exc:  # ORT raises its own Fail/InvalidGraph types
        raise MaskpipeError(
            f"ONNX Runtime cannot load {onnx_path} ({type(exc).__name__}: {exc}); "
            "export the model again with this maskpipe"
        ) from None


class TorchEnsemble:
    """The folder's three checkpoints through :mod:`maskpipe.ensemble` (CPU or CUDA)."""

    name = "torch"

    def __init__(self, card: ModelCard, device: str = "auto") -> None:
        import torch

        from maskpipe.ensemble import inference_model, load_task_models, resolve_device
        from maskpipe.labels import TASKS

        self.card = card
        self.device = resolve_device(device)
        self.loaded = load_task_models({t: card.checkpoint_dir(t) for t in TASKS}, self.device)
        self.models = {t: inference_model(c.model) for t, c in self.loaded.items()}
        self.amp = self.device.type == "cuda"
        self._torch = torch

    def predict(self, images: np.ndarray) -> dict[str, np.ndarray]:
        from maskpipe.ensemble import forward_probs, prepare_batch

        check_batch(images, self.card)
        batch = self._torch.from_numpy(np.ascontiguousarray(images)).to(self.device)
        probs = {
            task: forward_probs(
                self.models[task],
                prepare_batch(batch, checkpoint.mean, checkpoint.std, self.card.tta),
                tta=self.card.tta,
                amp=self.amp,
            ).cpu().numpy()
            for task, checkpoint in self.loaded.items()
        }
        return outputs_from_probs(probs)


def outputs_from_probs(probs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """The graph's outputs computed from per-task probabilities (the torch backend's path)."""
    from maskpipe.ensemble import classes_from_probs

    mask, gender, age = probs["mask"], probs["gender"], probs["age"]
    n = len(mask)
    class_probs = (mask[:, :, None, None] * gender[:, None, :, None] * age[:, None, None, :]).reshape(n, 18)
    return {
        "class": classes_from_probs(probs),
        "mask_probs": mask,
        "gender_probs": gender,
        "age_probs": age,
        "class_probs": class_probs.astype(np.float32),
    }


def check_batch(images: np.ndarray, card: ModelCard) -> None:
    height, width = card.input_size
    if images.dtype != np.uint8 or images.ndim != 4 or images.shape[1:] != (height, width, 3):
        raise MaskpipeError(
            f"the model takes uint8 (N, {height}, {width}, 3) batches, got {images.dtype} "
            f"{tuple(images.shape)}; decode with maskpipe.data.resize.decode_views"
        )


def open_backend(
    model_dir: str | os.PathLike[str], backend: str = "onnx", *, device: str = "auto", threads: int | None = None
) -> EnsembleBackend:
    """Verify the model folder (every file's sha256) and open it with ``backend``."""
    if backend not in BACKENDS:
        raise MaskpipeError(f"unknown backend {backend!r}; use one of {', '.join(BACKENDS)}")
    card = read_model_dir(model_dir)
    if backend == "onnx":
        if device not in ("auto", "cpu"):
            raise MaskpipeError(f"the onnx backend runs on the CPU; device {device!r} needs --backend torch")
        return OnnxEnsemble(card, threads=threads)
    if card.precision != "fp32":
        log.info(
            "%s holds an %s graph; the torch backend runs the fp32 checkpoints beside it "
            "(--backend onnx runs %s)", card.folder, card.precision, card.onnx_file,
        )  # fmt: skip
    try:
        return TorchEnsemble(card, device=device)
    except ImportError as exc:  # the slim serving environment has no torch
        raise MaskpipeError(
            f"the torch backend needs torch, timm and the training dependencies ({exc}); use "
            "--backend onnx here, or run it where maskpipe's full dependencies are installed"
        ) from None


def answers(outputs: dict[str, Any], card: ModelCard) -> list[dict[str, Any]]:
    """One JSON-ready answer per image: the class id and name, and per task the label in words,
    its probability and the whole probability vector."""
    names = card.task_class_names
    rows = []
    for i, cls in enumerate(np.asarray(outputs["class"]).tolist()):
        row: dict[str, Any] = {"class": int(cls), "class_name": card.class_names[int(cls)]}
        for task in ("mask", "gender", "age"):
            probs = np.asarray(outputs[f"{task}_probs"][i], dtype=np.float64)
            label = int(probs.argmax())
            row[task] = {
                "label": names[task][label],
                "probability": round(float(probs[label]), 6),
                "probabilities": {n: round(float(p), 6) for n, p in zip(names[task], probs)},
            }
        rows.append(row)
    return rows
