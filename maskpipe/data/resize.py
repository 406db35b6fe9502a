"""The deterministic image geometry every path shares: decode, centre-crop, resize to uint8.

Training's cache, ``maskpipe infer`` and the served model all turn a photo into model input
through :func:`decode_views` (or its two halves, :func:`~maskpipe.data.images.load_rgb` and
:func:`crop_resize`), so a served answer is computed on the same pixels as an offline one. (A JPEG above
:data:`REDUCE_ABOVE_PIXELS` is decoded reduced by :func:`decode_views`, for serving's and
inference's cost; the cache decodes every photo whole.)
This module imports no torch: the slim serving image runs it with ONNX Runtime alone.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import cv2
import numpy as np
from PIL import Image

from maskpipe.data.images import (
    MAX_PIXELS,
    SIXTEEN_BIT_MODES,
    ImageSource,
    _strict_pil,
    load_opened,
    open_header,
    rgb_array,
)

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



# A JPEG above this many pixels is decoded at a reduced DCT scale (PIL's ``draft``: 1/2, 1/4
# or 1/8) when its crop stays at least the model's input size; photos up to it (the
# competition's are 0.2 MP) decode at full size, exactly as training's cache decodes them.
REDUCE_ABOVE_PIXELS = 4_000_000

# Bytes PIL holds per decoded pixel, by mode (multi-band images take 4 bytes a pixel).
_STORAGE_BYTES = {"1": 1, "L": 1, "P": 1, "I;16": 2, "I;16B": 2, "I;16L": 2}
# Converting the crop to RGB and copying it out of PIL: at most this many bytes per pixel
# of the crop alive at once (convert 4, tobytes 3, the array 3, slack).
_CONVERT_BYTES = 12


@dataclass(frozen=True)
class DecodePlan:
    """What decoding one photo will cost, read from its header before any pixel is decoded."""

    width: int  # declared by the header
    height: int
    format: str
    mode: str
    scale: int  # the JPEG DCT reduction (1, 2, 4 or 8); 1 for PNG
    progressive: bool
    peak_bytes: int  # memory the decode holds at its peak (an upper bound)

    @property
    def decoded_pixels(self) -> int:
        return math.ceil(self.width / self.scale) * math.ceil(self.height / self.scale)


def reduction_scale(size: tuple[int, int], views: Sequence[View], image_format: str) -> int:
    """The largest JPEG DCT scale (1, 2, 4, 8) at which every view's crop of a ``size`` (w, h)
    photo still holds at least the view's input size; 1 for PNG and for photos up to
    :data:`REDUCE_ABOVE_PIXELS`."""
    width, height = size
    if image_format not in {"JPEG", "MPO"} or width * height <= REDUCE_ABOVE_PIXELS:
        return 1
    for scale in (8, 4, 2):
        fits = True
        for crop, (in_h, in_w) in views:
            crop_h, crop_w = (height, width) if crop is None else (min(crop[0], height), min(crop[1], width))
            fits &= crop_h // scale >= in_h and crop_w // scale >= in_w
        if fits:
            return scale
    return 1


def plan_decode(
    source: ImageSource, views: Sequence[View], name: str | None = None, max_pixels: int = MAX_PIXELS
) -> DecodePlan:
    """Read the header of a photo and say how it will be decoded and what that costs; the
    same ImageDecodeError as decoding for a photo that is not a JPEG/PNG or is too large."""
    with _strict_pil():
        image = open_header(source, name, max_pixels)
        try:
            return _plan(image, views)
        finally:
            image.close()


def _plan(image: Image.Image, views: Sequence[View]) -> DecodePlan:
    width, height = image.size
    scale = reduction_scale(image.size, views, image.format)
    progressive = bool(image.info.get("progressive") or image.info.get("progression"))
    pixels = math.ceil(width / scale) * math.ceil(height / scale)
    peak = pixels * _STORAGE_BYTES.get(image.mode, 4)
    if progressive:  # libjpeg keeps every DCT coefficient (2 bytes) of every band, full size
        peak += width * height * 2 * len(image.getbands())
    region = 0
    for crop, _ in views:
        crop_h, crop_w = (height, width) if crop is None else (min(crop[0], height), min(crop[1], width))
        region = max(region, math.ceil(crop_h / scale) * math.ceil(crop_w / scale))
    peak += region * _CONVERT_BYTES
    return DecodePlan(width, height, image.format, image.mode, scale, progressive, peak)


def decode_views(
    source: ImageSource, views: Sequence[View], name: str | None = None, max_pixels: int = MAX_PIXELS
) -> tuple[np.ndarray, ...]:
    """Decode a photo (file or encoded bytes) once and crop/resize it to every view.

    The crop is cut before the pixels are converted to RGB and copied out of PIL, so what is
    held beyond PIL's decoded image follows the crop, not the photo. A JPEG above
    :data:`REDUCE_ABOVE_PIXELS` is decoded at the reduced DCT scale of :func:`reduction_scale`
    (its crop box scaled with it); every other photo gives exactly
    ``crop_resize(load_rgb(source), crop, size)``.
    """
    with _strict_pil():
        image = open_header(source, name, max_pixels)
        try:
            full_w, full_h = image.size
            scale = reduction_scale(image.size, views, image.format)
            if scale > 1:
                image.draft(image.mode, (math.ceil(full_w / scale), math.ceil(full_h / scale)))
            load_opened(image, source, name)
            top = None
            if image.mode in SIXTEEN_BIT_MODES:  # the 8-bit scaling follows the whole photo
                top = int(image.getextrema()[1])
            outputs = []
            for crop, size in views:
                region = image.crop(_crop_box((full_h, full_w), crop, image.size, scale))
                try:
                    outputs.append(crop_resize(rgb_array(region, top), None, size))
                finally:
                    region.close()
        finally:
            image.close()
    return tuple(outputs)


def _crop_box(
    full_hw: tuple[int, int], crop: Sequence[int] | None, decoded_wh: tuple[int, int], scale: int
) -> tuple[int, int, int, int]:
    """:func:`center_crop`'s box (left, top, right, bottom) of the full-size photo, in the
    pixels of the image as decoded at ``scale``."""
    h, w = full_hw
    if crop is None:
        return (0, 0, *decoded_wh)
    ch, cw = min(int(crop[0]), h), min(int(crop[1]), w)
    top, left = (h - ch) // 2, (w - cw) // 2
    if scale == 1:
        return (left, top, left + cw, top + ch)
    dw, dh = decoded_wh
    x0, y0 = round(left / scale), round(top / scale)
    return (x0, y0, min(dw, x0 + max(1, round(cw / scale))), min(dh, y0 + max(1, round(ch / scale))))
