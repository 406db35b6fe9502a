"""crop_resize, normalize_to_tensor and the two augmentation pipelines."""

from __future__ import annotations

import pickle

import numpy as np
import pytest
import torch

from maskpipe.data import transforms as T

MEAN, STD = [0.548, 0.504, 0.479], [0.237, 0.247, 0.246]


def _gradient_image(h: int, w: int) -> np.ndarray:
    y, x = np.mgrid[0:h, 0:w]
    return np.stack([y * 255 // max(1, h - 1), x * 255 // max(1, w - 1), (x + y) % 256], -1).astype(np.uint8)


def test_crop_resize_takes_the_center_then_resizes():
    image = np.zeros((512, 384, 3), np.uint8)
    image[32:480, 24:360] = 200  # exactly the 448x336 center
    out = T.crop_resize(image, [448, 336], [96, 72])
    assert out.shape == (96, 72, 3) and out.dtype == np.uint8
    assert (out == 200).all()


def test_crop_resize_keeps_full_extent_when_image_is_smaller_than_crop():
    image = _gradient_image(128, 96)
    out = T.crop_resize(image, [448, 336], [128, 96])
    assert np.array_equal(out, image)


def test_crop_resize_crops_only_the_dimension_that_is_large_enough():
    image = _gradient_image(600, 300)
    out = T.crop_resize(image, [448, 336], [448, 300])
    assert np.array_equal(out, image[76:524, :])


def test_crop_resize_enlarges_with_linear_and_shrinks_with_area():
    image = _gradient_image(64, 48)
    up = T.crop_resize(image, None, [128, 96])
    down = T.crop_resize(image, None, [32, 24])
    assert up.shape == (128, 96, 3) and down.shape == (32, 24, 3)
    # INTER_AREA of a 2x shrink is the mean of each 2x2 block.
    block = image[:2, :2].astype(float).mean(axis=(0, 1))
    assert np.allclose(down[0, 0], block, atol=1)


def test_crop_resize_rejects_non_rgb():
    with pytest.raises(ValueError, match="HxWx3"):
        T.crop_resize(np.zeros((10, 10), np.uint8), None, [16, 16])


def test_normalize_to_tensor_matches_the_formula_for_batches_and_single_images():
    batch = torch.from_numpy(np.stack([_gradient_image(8, 6), _gradient_image(8, 6)[::-1].copy()]))
    out = T.normalize_to_tensor(batch, MEAN, STD)
    assert out.shape == (2, 3, 8, 6) and out.dtype == torch.float32
    expected = (batch[1, 3, 2].float() / 255 - torch.tensor(MEAN)) / torch.tensor(STD)
    assert torch.allclose(out[1, :, 3, 2], expected, atol=1e-5)
    single = T.normalize_to_tensor(batch[0], MEAN, STD)
    assert single.shape == (3, 8, 6) and torch.allclose(single, out[0])
    assert T.normalize_to_tensor(batch, MEAN, STD, channels_last=True).is_contiguous(
        memory_format=torch.channels_last
    )


def test_normalize_to_tensor_rejects_float_input():
    with pytest.raises(ValueError, match="uint8"):
        T.normalize_to_tensor(torch.zeros(2, 8, 6, 3), MEAN, STD)


def test_original_eval_transform_equals_crop_resize_then_normalize():
    image = _gradient_image(512, 384)
    via_albu = T.original_eval_transform([448, 336], [96, 72], MEAN, STD)(image=image)["image"]
    ours = T.normalize_to_tensor(torch.from_numpy(T.crop_resize(image, [448, 336], [96, 72])), MEAN, STD)
    assert np.allclose(via_albu.transpose(2, 0, 1), ours.numpy(), atol=1e-4)


def test_original_train_transform_outputs_normalised_float_at_input_size_and_pickles():
    transform = T.original_train_transform([448, 336], [96, 72], MEAN, STD)
    transform = pickle.loads(pickle.dumps(transform))  # DataLoader workers may receive it pickled
    out = transform(image=_gradient_image(512, 384))["image"]
    assert out.shape == (96, 72, 3) and out.dtype == np.float32


def test_fast_train_transform_keeps_uint8_and_size_and_is_seedable():
    image = _gradient_image(96, 72)
    first = T.fast_train_transform([96, 72], MEAN, STD)
    second = T.fast_train_transform([96, 72], MEAN, STD)
    first.set_random_seed(7)
    second.set_random_seed(7)
    outs_a = [first(image=image)["image"] for _ in range(10)]
    outs_b = [second(image=image)["image"] for _ in range(10)]
    assert all(o.shape == (96, 72, 3) and o.dtype == np.uint8 for o in outs_a)
    assert all(np.array_equal(a, b) for a, b in zip(outs_a, outs_b))
    assert any(not np.array_equal(a, image) for a in outs_a)


def test_augmentation_list_follows_the_names_given():
    names = [type(t).__name__ for t in T.fast_train_transform([96, 72], MEAN, STD, ["flip", "noise"])]
    assert names == ["HorizontalFlip"]  # noise is batched: add_batch_noise_
    every = [type(t).__name__ for t in T.fast_train_transform([96, 72], MEAN, STD)]
    assert every == [
        "HorizontalFlip", "Affine", "HueSaturationValue", "RandomBrightnessContrast",
        "CoarseDropout", "CoarseDropout",
    ]  # fmt: skip
    full = [type(t).__name__ for t in T.original_train_transform([448, 336], [512, 384], MEAN, STD)]
    assert full == [
        "Lambda", "HorizontalFlip", "Affine", "HueSaturationValue", "RandomBrightnessContrast",
        "Normalize", "CoarseDropout", "CoarseDropout", "GaussNoise",
    ]  # fmt: skip


def _reference_normalised(batch: torch.Tensor) -> torch.Tensor:
    x = batch.double().permute(0, 3, 1, 2) / 255
    mean = torch.tensor(MEAN, dtype=torch.float64).view(1, 3, 1, 1)
    std = torch.tensor(STD, dtype=torch.float64).view(1, 3, 1, 1)
    return ((x - mean) / std).float()


@pytest.mark.parametrize("channels_last", [False, True])
def test_normalize_to_tensor_cpu_and_torch_kernels_equal_the_formula(channels_last):
    batch = torch.randint(0, 256, (3, 17, 11, 3), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    batch[0, 0, 0] = torch.tensor([0, 255, 128], dtype=torch.uint8)  # both ends of the range
    expected = _reference_normalised(batch)
    layout = torch.channels_last if channels_last else torch.contiguous_format
    torch_out = torch.full((3, 3, 17, 11), float("nan")).contiguous(memory_format=layout)
    T._normalize_torch(batch, MEAN, STD, torch_out)  # the kernel used off the CPU
    for out in (T.normalize_to_tensor(batch, MEAN, STD, channels_last=channels_last), torch_out):
        assert out.shape == (3, 3, 17, 11) and out.dtype == torch.float32
        assert torch.allclose(out, expected, atol=1e-5, rtol=0)
        assert out.is_contiguous(memory_format=layout)


@pytest.mark.parametrize("channels_last", [False, True])
def test_normalize_to_tensor_writes_into_out(channels_last):
    batch = torch.randint(0, 256, (4, 9, 7, 3), dtype=torch.uint8, generator=torch.Generator().manual_seed(2))
    layout = torch.channels_last if channels_last else torch.contiguous_format
    out = torch.full((4, 3, 9, 7), float("nan")).contiguous(memory_format=layout)
    result = T.normalize_to_tensor(batch, MEAN, STD, channels_last=channels_last, out=out)
    assert result.data_ptr() == out.data_ptr()
    assert torch.allclose(out, _reference_normalised(batch), atol=1e-5, rtol=0)


@pytest.mark.parametrize(
    "out",
    [
        torch.empty(4, 3, 9, 8),  # wrong shape
        torch.empty(4, 3, 9, 7, dtype=torch.float64),  # wrong dtype
        torch.empty(4, 3, 9, 7).contiguous(memory_format=torch.channels_last),  # wrong layout
    ],
)
def test_normalize_to_tensor_rejects_an_out_it_cannot_fill(out):
    with pytest.raises(ValueError, match="out= must be float32"):
        T.normalize_to_tensor(torch.zeros(4, 9, 7, 3, dtype=torch.uint8), MEAN, STD, out=out)


@pytest.mark.parametrize("channels_last", [False, True])
def test_batch_normalizer_reuses_one_cpu_buffer_across_batches(channels_last):
    gen = torch.Generator().manual_seed(3)
    normalize = T.BatchNormalizer(MEAN, STD, channels_last=channels_last)
    layout = torch.channels_last if channels_last else torch.contiguous_format
    first = torch.randint(0, 256, (5, 8, 6, 3), dtype=torch.uint8, generator=gen)
    last = torch.randint(0, 256, (2, 8, 6, 3), dtype=torch.uint8, generator=gen)  # a short last batch
    a = normalize(first)
    assert torch.allclose(a, _reference_normalised(first), atol=1e-5, rtol=0)
    b = normalize(last)
    assert b.data_ptr() == a.data_ptr() and b.shape == (2, 3, 8, 6)
    assert b.is_contiguous(memory_format=layout)
    assert torch.allclose(b, _reference_normalised(last), atol=1e-5, rtol=0)
    bigger = normalize(torch.zeros(6, 8, 6, 3, dtype=torch.uint8))  # more rows: a new buffer
    assert bigger.shape == (6, 3, 8, 6)
    resized = normalize(torch.zeros(2, 4, 6, 3, dtype=torch.uint8))  # another size: a new buffer
    assert resized.shape == (2, 3, 4, 6)
    assert normalize(first[0]).shape == (3, 8, 6)  # single images are not buffered


def test_batch_normalizer_adds_noise_to_training_batches_only():
    batch = torch.full((64, 8, 6, 3), 128, dtype=torch.uint8)
    clean = T.normalize_to_tensor(batch, MEAN, STD)
    noisy = T.BatchNormalizer(MEAN, STD, noise=True, generator=torch.Generator().manual_seed(0))
    assert torch.equal(noisy(batch, train=False), clean)
    changed = (noisy(batch, train=True) != clean).flatten(1).any(1)
    assert 0 < int(changed.sum()) < 64  # each image with probability AUG_P
    quiet = T.BatchNormalizer(MEAN, STD, noise=False)
    assert torch.equal(quiet(batch, train=True), clean)


def test_normalize_to_tensor_accepts_a_strided_view_and_numpy():
    batch = torch.randint(0, 256, (2, 10, 16, 3), dtype=torch.uint8)
    view = batch[:, :, ::2]  # not contiguous
    assert torch.allclose(T.normalize_to_tensor(view, MEAN, STD), _reference_normalised(view), atol=1e-5)
    assert torch.allclose(T.normalize_to_tensor(batch.numpy(), MEAN, STD), _reference_normalised(batch), atol=1e-5)


def _noisy_fraction(fresh: bool, p: float, n: int = 400) -> tuple[torch.Tensor, torch.Tensor]:
    images = torch.zeros(n, 3, 24, 16)
    out = T.add_batch_noise_(images, p=p, generator=torch.Generator().manual_seed(1), fresh=fresh)
    assert out is images  # in place
    return images, images.flatten(1).std(dim=1)


@pytest.mark.parametrize("fresh", [True, False])
def test_batch_noise_hits_about_p_of_the_images_with_stds_in_range(fresh):
    _, stds = _noisy_fraction(fresh, p=0.3)
    noisy = stds > 0
    assert 0.22 < noisy.float().mean() < 0.38
    low, high = T.NOISE_STD_RANGE
    assert (stds[noisy] > low * 0.85).all() and (stds[noisy] < high * 1.15).all()
    assert stds[noisy].min() < 0.27 and stds[noisy].max() > 0.37  # the range is sampled, not one value


def test_batch_noise_is_zero_mean_and_differs_between_images():
    images, stds = _noisy_fraction(False, p=1.0, n=16)
    assert abs(images.mean().item()) < 0.01
    flat = images.flatten(1)
    assert not any(torch.allclose(flat[i], flat[j]) for i in range(16) for j in range(i + 1, 16))


def test_batch_noise_p_zero_leaves_the_batch_alone_and_rejects_uint8():
    images = torch.ones(4, 3, 8, 6)
    T.add_batch_noise_(images, p=0.0)
    assert (images == 1).all()
    with pytest.raises(ValueError, match="float"):
        T.add_batch_noise_(torch.zeros(2, 3, 8, 6, dtype=torch.uint8))
