"""Image transforms: the deterministic crop/resize, normalisation, and the two augmentation paths.

* ``original``: the competition's albumentations list on the decoded photo, crop and resize
  inside, Normalize in the middle of the list (so CoarseDropout, Cutout and GaussNoise act on
  the normalised float image, as they did there).
* ``fast``: the crop/resize is done once (:mod:`maskpipe.data.cache`); per epoch only the random
  augmentations run, on uint8, with the same probabilities; normalisation happens last, batched
  on tensors (:func:`normalize_to_tensor`), and the Gaussian noise after it, batched on the
  training device (:func:`add_batch_noise_`).

docs/presets.md maps every albumentations 1.x transform of the original to its 2.x form.
"""

from __future__ import annotations

from functools import partial
from typing import Collection, Sequence

import cv2
import numpy as np
import torch

# The deterministic crop/resize lives with the decoder (torch-free, shared with serving); it is
# re-exported here, and importing it sets OpenCV to run sequentially before any cv2 call.
from maskpipe.data.resize import center_crop, crop_resize  # noqa: E402,F401

# The original recipe worked on 512x384 (h, w) photos; pixel sizes below are relative to it so
# they scale with a smaller input size.
REFERENCE_SIZE = (512, 384)
# albumentations 1.x CoarseDropout / Cutout defaults: 8 holes of exactly 8x8 pixels, fill 0.
DROPOUT_HOLES = 8
DROPOUT_HOLE_PX = 8
# albumentations 1.x ShiftScaleRotate defaults (the original used them with p=0.3).
SHIFT_LIMIT = 0.0625
SCALE_LIMIT = 0.1
ROTATE_LIMIT = 45
# GaussNoise: albumentations 2.x default std range, as a fraction of the image's max value.
NOISE_STD_RANGE = (0.2, 0.44)
AUG_P = 0.3
AUG_NAMES = (
    "flip", "affine", "hue_sat_val", "brightness_contrast", "coarse_dropout", "cutout", "noise",
)  # fmt: skip
# The original listed Cutout without a probability we can recover; the neighbours use 0.3.
CUTOUT_P = 0.3
# Augmentations the fast path applies to the normalised batch (add_batch_noise_), not per image.
BATCH_AUGS = ("noise",)


def normalize_to_tensor(
    batch_uint8: torch.Tensor | np.ndarray,
    mean: Sequence[float],
    std: Sequence[float],
    *,
    channels_last: bool = False,
    out: torch.Tensor | None = None,
) -> torch.Tensor:
    """uint8 (N,H,W,3) -> float32 (N,3,H,W), or (H,W,3) -> (3,H,W): ``(x/255 - mean) / std``.

    Works on whatever device the tensor is on, so a batch can be normalised on the GPU after a
    cheap uint8 transfer. ``channels_last`` keeps the NHWC memory layout (a free permute).
    Each element is read and written once: on the CPU as a per-channel table lookup
    (``cv2.LUT``), on other devices as one strided copy plus two in-place ops. ``out`` (batches only): a float32
    (N,3,H,W) tensor on the same device, in the memory format ``channels_last`` asks for, to
    write into instead of allocating (see :class:`BatchNormalizer`).
    """
    x = torch.as_tensor(batch_uint8)
    if x.dtype != torch.uint8 or x.shape[-1] != 3 or x.ndim not in (3, 4):
        raise ValueError(f"expected uint8 (N,H,W,3) or (H,W,3), got {x.dtype} {tuple(x.shape)}")
    single = x.ndim == 3
    if single:
        if out is not None:
            raise ValueError("out= is for (N,H,W,3) batches, not a single image")
        x = x.unsqueeze(0)
    nhwc = channels_last and not single
    if out is None:
        fmt = torch.channels_last if nhwc else torch.contiguous_format
        n, h, w, _ = x.shape
        out = torch.empty((n, 3, h, w), dtype=torch.float32, device=x.device, memory_format=fmt)
    else:
        _check_out(out, x, nhwc)
    if x.device.type == "cpu":
        _normalize_cpu(x, mean, std, nhwc, out)
    else:
        _normalize_torch(x, mean, std, out)
    return out[0] if single else out


def _check_out(out: torch.Tensor, x: torch.Tensor, channels_last: bool) -> None:
    n, h, w, _ = x.shape
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    if (
        out.dtype != torch.float32
        or tuple(out.shape) != (n, 3, h, w)
        or out.device != x.device
        or not out.is_contiguous(memory_format=fmt)
    ):
        raise ValueError(
            f"out= must be float32 {(n, 3, h, w)} on {x.device}, "
            f"{'channels-last' if channels_last else 'contiguous'}; got {out.dtype} "
            f"{tuple(out.shape)} on {out.device}"
        )


def _scale_shift(mean: Sequence[float], std: Sequence[float]) -> tuple[list[float], list[float]]:
    # (x/255 - m) / s  ==  x * (1 / (255 s)) + (-m / s): one multiply-add per element.
    if len(mean) != 3 or len(std) != 3:
        raise ValueError(f"mean and std need 3 values each, got {list(mean)} and {list(std)}")
    scale = [1.0 / (255.0 * float(s)) for s in std]
    shift = [-float(m) / float(s) for m, s in zip(mean, std)]
    return scale, shift


def _normalize_cpu(x: torch.Tensor, mean, std, channels_last: bool, out: torch.Tensor) -> None:
    # A uint8 channel has 256 values: look up each one's normalised float in a per-channel
    # table (cv2.LUT), so each element is read once and written once, with no arithmetic.
    scale, shift = _scale_shift(mean, std)
    table = np.arange(256, dtype=np.float32)[:, None] * np.float32(scale) + np.float32(shift)  # (256, 3)
    images = x.numpy()
    if channels_last:
        # NHWC memory: one 3-channel lookup per image.
        lut = np.ascontiguousarray(table.reshape(1, 256, 3))
        dst = out.permute(0, 2, 3, 1).numpy()
        for i in range(len(images)):
            cv2.LUT(np.ascontiguousarray(images[i]), lut, dst=dst[i])
        return
    # Planar NCHW: de-interleave the uint8 image, then one lookup per plane.
    luts = [np.ascontiguousarray(table[:, c].reshape(1, 256)) for c in range(3)]
    dst = out.numpy()
    for i in range(len(images)):
        for c, plane in enumerate(cv2.split(np.ascontiguousarray(images[i]))):
            cv2.LUT(plane, luts[c], dst=dst[i, c])


def _normalize_torch(x: torch.Tensor, mean, std, out: torch.Tensor) -> None:
    scale, shift = _scale_shift(mean, std)
    out.copy_(x.permute(0, 3, 1, 2))
    out.mul_(torch.tensor(scale, device=x.device).view(1, 3, 1, 1))
    out.add_(torch.tensor(shift, device=x.device).view(1, 3, 1, 1))


class BatchNormalizer:
    """The last step of the fast input path, shared by training and the benchmarks:
    uint8 (N,H,W,3) batch -> normalised float32 (N,3,H,W) on its device, plus the batched
    Gaussian noise (:func:`add_batch_noise_`) for training batches when ``noise`` is on.

    On the CPU the float batch is written into one buffer kept across calls: allocating a fresh
    one each step cost more than the normalisation itself (the kernel zero-fills every page of
    a large new allocation; measured in ``benchmarks/input.py``). **The tensor returned by a
    call is overwritten by the next one**: the caller must be done with it, which a training
    step is once its backward has run. On other devices the caching allocator already reuses
    memory and nothing is kept.
    """

    def __init__(
        self,
        mean: Sequence[float],
        std: Sequence[float],
        *,
        channels_last: bool = False,
        noise: bool = False,
        generator: torch.Generator | None = None,
    ):
        _scale_shift(mean, std)  # validate early
        self.mean, self.std = tuple(mean), tuple(std)
        self.channels_last = channels_last
        self.noise = noise
        self.generator = generator
        self._buffer: torch.Tensor | None = None

    def __call__(self, batch_uint8: torch.Tensor, *, train: bool = False) -> torch.Tensor:
        x = torch.as_tensor(batch_uint8)
        out = self._out(x) if x.ndim == 4 and x.device.type == "cpu" else None
        images = normalize_to_tensor(x, self.mean, self.std, channels_last=self.channels_last, out=out)
        if train and self.noise:
            add_batch_noise_(images, generator=self.generator)
        return images

    def _out(self, x: torch.Tensor) -> torch.Tensor:
        n, h, w, _ = x.shape
        buffer = self._buffer
        if buffer is None or buffer.shape[0] < n or tuple(buffer.shape[2:]) != (h, w):
            fmt = torch.channels_last if self.channels_last else torch.contiguous_format
            buffer = torch.empty((n, 3, h, w), dtype=torch.float32, memory_format=fmt)
            self._buffer = buffer
        # A leading slice keeps the memory format of either layout (a shorter last batch).
        return buffer[:n]


def add_batch_noise_(
    images: torch.Tensor,
    *,
    p: float = AUG_P,
    std_range: Sequence[float] = NOISE_STD_RANGE,
    generator: torch.Generator | None = None,
    fresh: bool | None = None,
) -> torch.Tensor:
    """The ``noise`` augmentation of the fast path, batched, in place on a *normalised* float
    (N,3,H,W) batch; returns it.

    Each image independently, with probability ``p``, gets zero-mean Gaussian noise of a std
    drawn uniformly from ``std_range`` (in normalised units, what albumentations' GaussNoise
    gave the original's normalised float image), independent per pixel and channel.
    ``fresh`` (default: on any device but the CPU) draws a new sample per noisy image. On the
    CPU, where drawing 3*H*W normals costs more than all other augmentations together, the
    batch draws one field a little larger than an image and each noisy image adds a window of
    it at a random offset, with a random sign: per image the same distribution, between the
    images of one batch shifted copies of one field.
    """
    if images.ndim != 4 or not images.is_floating_point():
        raise ValueError(f"expected a float (N,3,H,W) batch, got {images.dtype} {tuple(images.shape)}")
    n, c, h, w = images.shape
    device = images.device
    chosen = torch.nonzero(torch.rand(n, generator=generator, device=device) < p).flatten()
    k = len(chosen)
    if k == 0:
        return images
    low, high = float(std_range[0]), float(std_range[1])
    sigmas = low + (high - low) * torch.rand(k, generator=generator, device=device)
    if fresh is None:
        fresh = device.type != "cpu"
    if fresh:
        noise = torch.randn((k, c, h, w), generator=generator, device=device, dtype=images.dtype)
        images.index_add_(0, chosen, noise.mul_(sigmas.view(k, 1, 1, 1).to(images.dtype)))
        return images
    pad_h, pad_w = max(1, h // 8), max(1, w // 8)
    field = torch.randn((c, h + pad_h, w + pad_w), generator=generator, device=device, dtype=images.dtype)
    signs = torch.randint(0, 2, (k,), generator=generator, device=device) * 2 - 1
    tops = torch.randint(0, pad_h + 1, (k,), generator=generator, device=device)
    lefts = torch.randint(0, pad_w + 1, (k,), generator=generator, device=device)
    for i, sigma, sign, top, left in zip(
        chosen.tolist(), sigmas.tolist(), signs.tolist(), tops.tolist(), lefts.tolist()
    ):
        images[i].add_(field[:, top : top + h, left : left + w], alpha=sign * sigma)
    return images


# ---------------------------------------------------------------------------------------------
# augmentation pipelines


def _affine(p: float):
    import albumentations as A

    # ShiftScaleRotate is deprecated in albumentations 2.x ("a special case of Affine"); this is
    # its 1.x default behaviour, including the 1.x default border (reflect_101, not black).
    return A.Affine(
        translate_percent={"x": (-SHIFT_LIMIT, SHIFT_LIMIT), "y": (-SHIFT_LIMIT, SHIFT_LIMIT)},
        scale=(1 - SCALE_LIMIT, 1 + SCALE_LIMIT),
        rotate=(-ROTATE_LIMIT, ROTATE_LIMIT),
        interpolation=cv2.INTER_LINEAR,
        border_mode=cv2.BORDER_REFLECT_101,
        p=p,
    )


def _dropout(input_size: Sequence[int], fill, p: float):
    import albumentations as A

    # Fractions of the image: 8x8 px at the original 512x384, proportionally smaller below it.
    hole_h = DROPOUT_HOLE_PX / REFERENCE_SIZE[0]
    hole_w = DROPOUT_HOLE_PX / REFERENCE_SIZE[1]
    return A.CoarseDropout(
        num_holes_range=(DROPOUT_HOLES, DROPOUT_HOLES),
        hole_height_range=(hole_h, hole_h),
        hole_width_range=(hole_w, hole_w),
        fill=fill,
        p=p,
    )


def _color_augs(augs: Collection[str]) -> list:
    import albumentations as A

    chosen = {
        "flip": lambda: A.HorizontalFlip(p=0.5),
        "affine": lambda: _affine(AUG_P),
        "hue_sat_val": lambda: A.HueSaturationValue(
            hue_shift_limit=0.2, sat_shift_limit=0.2, val_shift_limit=0.2, p=AUG_P
        ),
        "brightness_contrast": lambda: A.RandomBrightnessContrast(
            brightness_limit=0.1, contrast_limit=0.1, p=AUG_P
        ),
    }
    return [make() for name, make in chosen.items() if name in augs]


def _late_augs(augs: Collection[str], input_size: Sequence[int], fill, noise_std) -> list:
    import albumentations as A

    chosen = {
        "coarse_dropout": lambda: _dropout(input_size, fill=fill, p=AUG_P),
        "cutout": lambda: _dropout(input_size, fill=fill, p=CUTOUT_P),
        "noise": lambda: A.GaussNoise(std_range=noise_std, p=AUG_P),
    }
    return [make() for name, make in chosen.items() if name in augs]


def original_train_transform(
    crop_size: Sequence[int] | None,
    input_size: Sequence[int],
    mean: Sequence[float],
    std: Sequence[float],
    augs: Collection[str] = AUG_NAMES,
):
    """The competition's training list on the full decoded photo -> float HWC image."""
    import albumentations as A

    return A.Compose(
        [
            A.Lambda(image=partial(_crop_resize_aug, crop_size=crop_size, input_size=input_size), p=1.0),
            *_color_augs(augs),
            A.Normalize(mean=tuple(mean), std=tuple(std), max_pixel_value=255.0),
            # After Normalize, fill 0 is the mean colour; GaussNoise on the float image clips it
            # to [0, 1] as albumentations 1.x did (kept: it is what the original trained on).
            *_late_augs(augs, input_size, 0, NOISE_STD_RANGE),
        ]
    )


def fast_train_transform(
    input_size: Sequence[int],
    mean: Sequence[float],
    std: Sequence[float],
    augs: Collection[str] = AUG_NAMES,
):
    """The per-image random part of the original list on a cached uint8 crop -> uint8 HxWx3.

    Same transforms and probabilities; dropout fills with the mean colour (what fill 0 meant
    after Normalize). ``noise`` is not in this list: it is a batched op on the normalised
    batch (:func:`add_batch_noise_`, applied by the training loop for :data:`BATCH_AUGS`),
    where it acts on the same values as the original's GaussNoise, without the [0, 1]
    clipping albumentations applied to the normalised float image.
    """
    import albumentations as A

    mean_fill = tuple(float(round(m * 255)) for m in mean)
    per_image = [name for name in augs if name not in BATCH_AUGS]
    return A.Compose([*_color_augs(per_image), *_late_augs(per_image, input_size, mean_fill, NOISE_STD_RANGE)])


def original_eval_transform(
    crop_size: Sequence[int] | None,
    input_size: Sequence[int],
    mean: Sequence[float],
    std: Sequence[float],
):
    """Deterministic crop/resize + Normalize -> float HWC (the original's validation list)."""
    import albumentations as A

    return A.Compose(
        [
            A.Lambda(image=partial(_crop_resize_aug, crop_size=crop_size, input_size=input_size), p=1.0),
            A.Normalize(mean=tuple(mean), std=tuple(std), max_pixel_value=255.0),
        ]
    )


def _crop_resize_aug(image: np.ndarray, crop_size, input_size, **_params) -> np.ndarray:
    # A module-level function (not a lambda) so the pipeline pickles into DataLoader workers.
    return crop_resize(image, crop_size, input_size)


def hwc_float_to_chw(image: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(image.transpose(2, 0, 1), dtype=np.float32))
