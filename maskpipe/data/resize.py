"""The deterministic image geometry every path shares: decode, centre-crop, resize to uint8.

Training's cache, ``maskpipe infer`` and the served model all turn a photo into model input
through :func:`decode_views` (or its two halves, :func:`~maskpipe.data.images.load_rgb` and
:func:`crop_resize`), so a served answer is computed on the same pixels as an offline one.
This module imports no torch: the slim serving image runs it with ONNX Runtime alone.
"""

from __future__ import annotations

from typing import Sequence

import cv2
import numpy as np

from maskpipe.data.images import ImageSource, load_rgb

# OpenCV's thread pool is not fork-safe: a DataLoader worker forked after the pool has started
# hangs in its first cv2 call (seen: the normalisation in transforms ran cv2 in the main
# process, then a worker's cv2.setNumThreads never returned). maskpipe parallelises with
# processes and threads of its own, so OpenCV runs sequentially everywhere; set at import,
# before any cv2 call.
cv2.setNumThreads(0)

# (crop_size, input_size), both (h, w): one decoded image is cropped/resized once per view.
View = tuple[tuple[int, int] | None, tuple[int, int]]

RESIZE_RULE = (
    "centre crop to crop_size (h, w; a smaller photo keeps its full extent), then resize to "
    "input_size (h, w): OpenCV INTER_AREA when shrinking, INTER_LINEAR when enlarging; RGB uint8"
)


def crop_resize(
    image: np.ndarray, crop_size: Sequence[int] | None, input_size: Sequence[int]
) -> np.ndarray:
    """Center-crop ``crop_size`` (h, w), then resize to ``input_size`` (h, w); uint8 HxWx3.

    A photo smaller than the crop in a dimension keeps its full extent there (the crop never
    pads). Shrinking uses INTER_AREA (no aliasing), enlarging INTER_LINEAR.
    """
    if image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(f"expected an HxWx3 image, got shape {image.shape}")
    image = center_crop(image, crop_size)
    out_h, out_w = int(input_size[0]), int(input_size[1])
    h, w = image.shape[:2]
    if (h, w) != (out_h, out_w):
        shrinking = out_h * out_w < h * w
        interpolation = cv2.INTER_AREA if shrinking else cv2.INTER_LINEAR
        image = cv2.resize(image, (out_w, out_h), interpolation=interpolation)
    return np.ascontiguousarray(image, dtype=np.uint8)


def center_crop(image: np.ndarray, crop_size: Sequence[int] | None) -> np.ndarray:
    if crop_size is None:
        return image
    h, w = image.shape[:2]
    ch, cw = min(int(crop_size[0]), h), min(int(crop_size[1]), w)
    top, left = (h - ch) // 2, (w - cw) // 2
    return image[top : top + ch, left : left + cw]



def decode_views(source: ImageSource, views: Sequence[View], name: str | None = None) -> tuple[np.ndarray, ...]:
    """Decode a photo (file or encoded bytes) once and crop/resize it to every view."""
    image = load_rgb(source, name)
    return tuple(crop_resize(image, crop, size) for crop, size in views)
