"""The torch backend: three task checkpoints on the CPU or a CUDA GPU, behind :class:`maskpipe.backend.Backend`.

Each checkpoint runs with its *own* saved preprocessing (crop, input size, mean/std from
``checkpoint.json``), normalised after the uint8 transfer, channels-last, BatchNorm folded into
the convolutions, under ``torch.inference_mode`` and, on CUDA, bf16 autocast; horizontal-flip
TTA rides in the same forward pass (originals and flips concatenated) and averages the softmax
probabilities. Opened through :func:`maskpipe.runtime.open_backend`.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import torch

from maskpipe.backend import check_batch, outputs_from_probs
from maskpipe.checkpoint import LoadedCheckpoint, load_checkpoint
from maskpipe.data.resize import View
from maskpipe.device import resolve_device  # noqa: F401  (also imported from here)
from maskpipe.errors import MaskpipeError
from maskpipe.labels import TASKS
from maskpipe.model_card import ModelCard

log = logging.getLogger(__name__)

# Images per forward pass on the CPU: past ~32 the activations fall out of the caches and the
# per-image cost rises again (resnet10t at 96x72, one thread: 2.9 ms at 32, 3.4 ms at 64).
CPU_FORWARD_CHUNK = 32


class TorchBackend:
    """One checkpoint per task, loaded on ``device``; models that share a view share its batch."""

    name = "torch"

    def __init__(
        self,
        checkpoints: Mapping[str, Path | str | LoadedCheckpoint],
        *,
        device: str | torch.device = "auto",
        tta: bool = False,
        amp: bool | None = None,
        card: ModelCard | None = None,
    ) -> None:
        self.torch_device = resolve_device(device)
        self.device = str(self.torch_device)
        self.amp = _check_amp(amp, self.torch_device)
        self.tta = tta
        self.card = card
        self.loaded = load_task_models(checkpoints, self.torch_device)
        self.views: tuple[View, ...] = tuple(sorted({checkpoint_view(c) for c in self.loaded.values()}, key=str))
        self.models = {task: inference_model(checkpoint.model) for task, checkpoint in self.loaded.items()}

    def probs(self, batches: Sequence[np.ndarray]) -> dict[str, np.ndarray]:
        if len(batches) != len(self.views):
            raise MaskpipeError(f"the torch backend takes {len(self.views)} view batch(es), got {len(batches)}")
        on_device = []
        for batch, (_, input_size) in zip(batches, self.views):
            check_batch(batch, input_size)
            on_device.append(torch.as_tensor(batch).to(self.torch_device, non_blocking=True))
        normalised: dict[Any, torch.Tensor] = {}
        out = {}
        for task, checkpoint in self.loaded.items():
            view = self.views.index(checkpoint_view(checkpoint))
            key = (view, tuple(checkpoint.mean), tuple(checkpoint.std))
            if key not in normalised:
                normalised[key] = prepare_batch(on_device[view], checkpoint.mean, checkpoint.std, self.tta)
            out[task] = forward_probs(self.models[task], normalised[key], tta=self.tta, amp=self.amp).cpu().numpy()
        return out

    def predict(self, images: np.ndarray) -> dict[str, np.ndarray]:
        if len(self.views) != 1:
            raise MaskpipeError(f"predict() takes one view; these checkpoints need {len(self.views)}: use probs()")
        return outputs_from_probs(self.probs([np.ascontiguousarray(images)]))


def load_task_models(
    checkpoints: Mapping[str, Path | str | LoadedCheckpoint], device: torch.device
) -> dict[str, LoadedCheckpoint]:
    """Load one checkpoint per task (each checked to be of that task), channels-last."""
    unknown = sorted(set(checkpoints) - set(TASKS))
    missing = [task for task in TASKS if task not in checkpoints]
    if unknown or missing:
        raise MaskpipeError(
            f"inference needs exactly one checkpoint per task {', '.join(TASKS)}; "
            f"missing: {missing or 'none'}, unknown: {unknown or 'none'}"
        )
    loaded = {}
    for task in TASKS:
        source = checkpoints[task]
        if isinstance(source, LoadedCheckpoint):
            if source.task != task:
                raise MaskpipeError(
                    f"checkpoint {source.path} is for task {source.task!r}, given as {task!r}"
                )
            checkpoint = source
            checkpoint.model.to(device).eval()
        else:
            checkpoint = load_checkpoint(source, expected_task=task, device=device)
        checkpoint.model.to(memory_format=torch.channels_last)
        loaded[task] = checkpoint
    return loaded


def checkpoint_view(checkpoint: LoadedCheckpoint) -> View:
    return checkpoint.crop_size, checkpoint.input_size


def prepare_batch(
    batch_uint8: torch.Tensor, mean: Sequence[float], std: Sequence[float], tta: bool
) -> torch.Tensor:
    """uint8 (N,H,W,3) -> normalised float NCHW (channels-last); with TTA, the N horizontal
    flips appended, so one forward pass sees both."""
    from maskpipe.data.transforms import normalize_to_tensor

    x = normalize_to_tensor(batch_uint8, mean, std, channels_last=True)
    if tta:
        x = torch.cat([x, x.flip(3)]).contiguous(memory_format=torch.channels_last)
    return x


def inference_model(model: torch.nn.Module) -> torch.nn.Module:
    """``model`` (in eval mode) with each BatchNorm folded into the convolution before it,
    channels-last: one op fewer per layer, same outputs to float rounding.

    The fold needs a ``torch.fx`` trace; a model that cannot be traced is used as it is.
    Only exact ``Conv2d -> BatchNorm2d`` pairs are folded (timm's fused BatchNormAct layers
    are left alone), on a copy: the checkpoint's own model is not changed.
    """
    from torch.fx.experimental.optimization import fuse

    model.eval()
    try:
        fused = fuse(model)
    except Exception as exc:  # fx tracing fails on data-dependent control flow
        log.debug("no BatchNorm folding for %s (%s); running it unfused", type(model).__name__, exc)
        fused = model
    return fused.to(memory_format=torch.channels_last)


@torch.inference_mode()
def forward_probs(model: torch.nn.Module, x: torch.Tensor, *, tta: bool, amp: bool) -> torch.Tensor:
    """Softmax probabilities (float32) of a prepared batch; with TTA the batch holds the
    originals then their flips, and each image gets the mean of its two probabilities.
    On the CPU the batch goes through in chunks of :data:`CPU_FORWARD_CHUNK`."""
    chunk = CPU_FORWARD_CHUNK if x.device.type == "cpu" else len(x)
    with torch.autocast(device_type=x.device.type, dtype=torch.bfloat16, enabled=amp):
        logits = torch.cat([model(part) for part in x.split(max(1, chunk))])
    probs = logits.float().softmax(dim=1)
    if tta:
        half = probs.shape[0] // 2
        probs = (probs[:half] + probs[half:]) / 2
    return probs


def _check_amp(amp: bool | None, device: torch.device) -> bool:
    if amp is None:
        return device.type == "cuda"
    if amp and device.type != "cuda":
        raise MaskpipeError(f"bf16 autocast was requested on {device}; it is only used on CUDA")
    return amp
