"""Open the three models behind :class:`maskpipe.backend.Backend`: ONNX Runtime on an exported
folder, or torch on that folder's checkpoints or on three bare checkpoints (:func:`open_backend`).

An exported folder's backends take what :func:`maskpipe.data.resize.decode_views` gives for the
folder's one view, stacked into a uint8 NHWC batch, and return the graph's outputs by name
(:data:`maskpipe.model_card.OUTPUT_NAMES`). ``onnx`` (ONNX Runtime, CPU) is the default, runs
the graph the card's ``onnx_file`` names (fp32, or int8 after ``--quantize int8``) and needs no
torch; ``torch`` runs the folder's copies of the checkpoints (:mod:`maskpipe.torch_backend`, a
GPU node), with the same TTA setting the graph was exported with.
"""

from __future__ import annotations

import logging
import os
from typing import Any, Mapping, Sequence

import numpy as np

from maskpipe.backend import Backend, check_batch
from maskpipe.errors import MaskpipeError
from maskpipe.labels import TASKS
from maskpipe.model_card import INPUT_NAME, OUTPUT_NAMES, ModelCard, read_model_dir

log = logging.getLogger(__name__)


class OnnxBackend:
    """The exported graph under ONNX Runtime (CPU)."""

    device = "cpu"

    def __init__(self, card: ModelCard, threads: int | None = None) -> None:
        self.card = card
        # The name logs and summaries carry, so an int8 run is never mistaken for an fp32 one.
        self.name = "onnx" if card.precision == "fp32" else f"onnx {card.precision}"
        self.tta = card.tta
        self.views = (card.view,)
        self.session = open_session(card.onnx_path, threads)

    def predict(self, images: np.ndarray) -> dict[str, np.ndarray]:
        check_batch(images, self.card.input_size)
        outputs = self.session.run(list(OUTPUT_NAMES), {INPUT_NAME: images})
        return dict(zip(OUTPUT_NAMES, outputs))

    def probs(self, batches: Sequence[np.ndarray]) -> dict[str, np.ndarray]:
        (images,) = batches
        outputs = self.predict(images)
        return {task: outputs[f"{task}_probs"] for task in TASKS}


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


def resolve_backend(backend: str, *, exported: bool) -> str:
    """``auto`` -> for an exported folder ONNX Runtime on a CPU-only machine and torch where
    CUDA is available; for the three checkpoints torch. ``onnx`` needs an exported folder."""
    if backend not in ("auto", "onnx", "torch"):
        raise MaskpipeError(f"unknown backend {backend!r}; use auto, onnx or torch")
    if not exported:
        if backend == "onnx":
            raise MaskpipeError(
                "backend 'onnx' runs the exported model folder, and there is none: export the "
                "three checkpoints first (`maskpipe export`; in the pipeline export=true), or "
                "use backend torch"
            )
        return "torch"
    if backend == "auto":
        return "torch" if _cuda_available() else "onnx"
    return backend


def _cuda_available() -> bool:
    try:
        import torch
    except ImportError:  # the slim serving environment: ONNX Runtime only
        return False
    return torch.cuda.is_available()


def open_backend(
    source: str | os.PathLike[str] | Mapping[str, Any],
    backend: str | None = None,
    *,
    device: str = "auto",
    tta: bool = False,
    amp: bool | None = None,
    threads: int | None = None,
) -> Backend:
    """The one way to open models for inference.

    Args:
        source: the folder ``maskpipe export`` wrote (every file's sha256 is verified first; its
            card decides TTA, so ``tta`` must agree or be off), or ``{"mask": DIR, "gender":
            DIR, "age": DIR}`` (folders or :class:`maskpipe.checkpoint.LoadedCheckpoint`).
        backend: ``onnx``, ``torch`` or ``auto`` (:func:`resolve_backend`); None: ``onnx`` for a
            folder, ``torch`` for checkpoints.
        device: ``auto`` (CUDA when available), ``cpu`` or ``cuda`` (torch only).
        tta: average each image's probabilities with its horizontal flip's (checkpoints).
        amp: bf16 autocast; None means on for CUDA, off for CPU (torch only).
        threads: ONNX Runtime intra-op threads; None: its default.
    """
    exported = not isinstance(source, Mapping)
    name = resolve_backend(backend or ("onnx" if exported else "torch"), exported=exported)
    if not exported:
        return _torch_backend(source, device=device, tta=tta, amp=amp)
    card = read_model_dir(source)
    if tta and not card.tta:
        raise MaskpipeError(
            f"--tta was asked for, but {source} was exported without flip TTA; "
            "export it again without --no-tta, or drop --tta"
        )
    if name == "onnx":
        if device not in ("auto", "cpu"):
            raise MaskpipeError(f"the onnx backend runs on the CPU; device {device!r} needs --backend torch")
        return OnnxBackend(card, threads=threads)
    if card.precision != "fp32":
        log.info(
            "%s holds an %s graph; the torch backend runs the fp32 checkpoints beside it "
            "(--backend onnx runs %s)", card.folder, card.precision, card.onnx_file,
        )  # fmt: skip
    return _torch_backend({t: card.checkpoint_dir(t) for t in TASKS}, device=device, tta=card.tta, amp=amp, card=card)


def _torch_backend(checkpoints: Mapping[str, Any], **options: Any) -> Backend:
    try:
        from maskpipe.torch_backend import TorchBackend
    except ImportError as exc:  # the slim serving environment has no torch
        raise MaskpipeError(
            f"the torch backend needs torch, timm and the training dependencies ({exc}); use "
            "--backend onnx here, or run it where maskpipe's full dependencies are installed"
        ) from None
    return TorchBackend(checkpoints, **options)


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
