"""Labels from the index, datasets, samplers and loader settings."""

from __future__ import annotations

import numpy as np
import pandas as pd
import torch

from maskpipe.data.datasets import (
    ImageDataset,
    Subset,
    default_num_workers,
    make_loader,
    official_labels,
    train_labels,
)
from maskpipe.data.samplers import inverse_frequency_weights, make_sampler
from maskpipe.data.transforms import fast_train_transform


def _frame() -> pd.DataFrame:
    return pd.DataFrame(
        {
            "age": [20, 35, 58, 59, 60, 70],
            "age_label": [0, 1, 1, 1, 2, 2],
            "mask_label": [0, 0, 1, 2, 0, 0],
            "gender_label": [1, 0, 1, 1, 0, 1],
        }
    )


def test_age_training_labels_move_the_boundary_but_evaluation_does_not():
    frame = _frame()
    assert train_labels(frame, "age", 58).tolist() == [0, 1, 2, 2, 2, 2]
    assert train_labels(frame, "age", 60).tolist() == [0, 1, 1, 1, 2, 2]
    assert official_labels(frame, "age").tolist() == [0, 1, 1, 1, 2, 2]
    assert train_labels(frame, "mask", 58).tolist() == [0, 0, 1, 2, 0, 0]


def test_inverse_frequency_weights_balance_the_classes():
    labels = np.array([0] * 8 + [1] * 2 + [2] * 2)
    weights = inverse_frequency_weights(labels, 3)
    per_class = [weights[labels == c].sum().item() for c in range(3)]
    assert np.allclose(per_class, [1, 1, 1])


def test_weighted_sampler_draws_classes_about_equally():
    labels = np.array([0] * 900 + [1] * 50 + [2] * 50)
    sampler = make_sampler(labels, 3, "weighted", torch.Generator().manual_seed(0))
    drawn = labels[list(sampler)]
    shares = np.bincount(drawn, minlength=3) / len(drawn)
    assert len(drawn) == len(labels) and np.all(np.abs(shares - 1 / 3) < 0.06)
    assert make_sampler(labels, 3, "shuffle", torch.Generator()) is None


def test_dataset_yields_uint8_hwc_for_the_fast_path_and_float_chw_otherwise():
    images = [np.full((8, 6, 3), i, np.uint8) for i in range(4)]
    fast = ImageDataset(Subset(images, [2, 3]), np.array([1, 0]))
    image, label = fast[0]
    assert image.dtype == torch.uint8 and image.shape == (8, 6, 3) and int(image[0, 0, 0]) == 2
    assert label == 1 and len(fast) == 2

    def to_float(image):
        return {"image": image.astype(np.float32) / 255}

    floats = ImageDataset(images, np.zeros(4), to_float)
    assert floats[1][0].dtype == torch.float32 and floats[1][0].shape == (3, 8, 6)


def test_loader_with_workers_is_reproducible_for_a_seed():
    images = [np.random.default_rng(i).integers(0, 255, (16, 12, 3), dtype=np.uint8) for i in range(12)]

    def batches(seed):
        dataset = ImageDataset(images, np.arange(12) % 3, fast_train_transform([16, 12], [0.5] * 3, [0.25] * 3))
        loader = make_loader(dataset, batch_size=4, train=True, num_workers=1, device=torch.device("cpu"),
                             generator=torch.Generator().manual_seed(seed))  # fmt: skip
        return [b[0] for b in loader]

    first, second = batches(1), batches(1)
    assert all(torch.equal(a, b) for a, b in zip(first, second))


def test_loader_settings_follow_device_and_workers():
    dataset = ImageDataset([np.zeros((4, 4, 3), np.uint8)] * 5, np.zeros(5))
    loader = make_loader(dataset, batch_size=2, train=True, num_workers=0, device=torch.device("cpu"))
    assert not loader.pin_memory and not loader.persistent_workers and loader.drop_last
    assert default_num_workers(3) == 3 and 0 <= default_num_workers() <= 8
