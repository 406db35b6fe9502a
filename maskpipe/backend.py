"""The one inference seam: :class:`Backend`, what every way of running the three models offers.

A backend takes uint8 (N, H, W, 3) batches, one per view it lists (a view is the
``(crop_size, input_size)`` pair of :mod:`maskpipe.data.resize`), and returns per-task softmax
probabilities. :mod:`maskpipe.runtime` opens one (``open_backend``: ONNX Runtime on an exported
folder, or torch on it or on three checkpoints, :mod:`maskpipe.torch_backend`);
:mod:`maskpipe.ensemble` batches images through any of them. No torch and no onnxruntime here.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Mapping, Protocol, Sequence

import numpy as np

from maskpipe.errors import MaskpipeError
from maskpipe.labels import NUM_CLASSES, TASKS
from maskpipe.model_card import ModelCard

if TYPE_CHECKING:
    from maskpipe.data.resize import View


class Backend(Protocol):
    """The three task models, opened: ONNX Runtime on an exported graph or torch on checkpoints."""

    # "onnx", "onnx int8" or "torch": logs and summaries carry it, so an int8 run is never
    # mistaken for an fp32 one
    name: str
    # where it runs ("cpu", "cuda:0")
    device: str
    # horizontal-flip TTA inside probs()/predict()
    tta: bool
    # the (crop_size, input_size) views probs() takes, one batch each, in this order
    views: tuple[View, ...]
    # the exported folder's card; None for three bare checkpoints
    card: ModelCard | None

    def probs(self, batches: Sequence[np.ndarray]) -> dict[str, np.ndarray]:
        """One uint8 (N, H, W, 3) batch per view -> ``{task: float32 (N, classes)}``."""

    def predict(self, images: np.ndarray) -> dict[str, np.ndarray]:
        """One-view backends: a uint8 (N, H, W, 3) batch -> the exported graph's outputs by name
        (:data:`maskpipe.model_card.OUTPUT_NAMES`), what ``maskpipe serve`` answers with."""


def check_batch(images: np.ndarray, input_size: tuple[int, int]) -> None:
    """A clear error unless ``images`` is a uint8 (N, height, width, 3) batch."""
    height, width = input_size
    if images.dtype != np.uint8 or images.ndim != 4 or images.shape[1:] != (height, width, 3):
        raise MaskpipeError(
            f"the model takes uint8 (N, {height}, {width}, 3) batches, got {images.dtype} "
            f"{tuple(images.shape)}; decode with maskpipe.data.resize.decode_views"
        )


def combine_classes(mask: Any, gender: Any, age: Any) -> np.ndarray:
    """Vectorised :func:`maskpipe.labels.encode_class`: ``mask * 6 + gender * 3 + age``."""
    arrays = [np.asarray(v, dtype=np.int64) for v in (mask, gender, age)]
    for task, values in zip(TASKS, arrays):
        if values.size and (values.min() < 0 or values.max() >= NUM_CLASSES[task]):
            raise ValueError(f"{task} labels must be in 0..{NUM_CLASSES[task] - 1}")
    if not arrays[0].shape == arrays[1].shape == arrays[2].shape:
        raise ValueError(f"label arrays differ in shape: {[a.shape for a in arrays]}")
    mask_l, gender_l, age_l = arrays
    return mask_l * 6 + gender_l * 3 + age_l


def classes_from_probs(probs: Mapping[str, np.ndarray]) -> np.ndarray:
    """18-class ids from per-task probabilities: the argmax of each task, combined."""
    return combine_classes(*(probs[task].argmax(axis=1) for task in TASKS))


def outputs_from_probs(probs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """The graph's outputs computed from per-task probabilities (the torch backend's path)."""
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
