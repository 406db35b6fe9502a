"""Decode-once image cache: same pixels as decoding, shared per key, graceful fallback."""

from __future__ import annotations

import logging
import pickle

import numpy as np
import pytest
from PIL import Image

from maskpipe.data import cache as cache_mod
from maskpipe.data.cache import CachedImages, DiskImages, decoded_images
from maskpipe.data.images import load_rgb
from maskpipe.data.transforms import crop_resize


@pytest.fixture(autouse=True)
def _fresh_registry():
    cache_mod.clear_open_caches()
    yield
    cache_mod.clear_open_caches()


@pytest.fixture
def png_files(tmp_path):
    """Six noise PNGs, 64 pixels high and 48 wide."""
    rng = np.random.default_rng(0)
    paths = []
    for i in range(6):
        path = tmp_path / "img" / f"{i}.png"
        path.parent.mkdir(exist_ok=True)
        Image.fromarray(rng.integers(0, 255, (64, 48, 3), dtype=np.uint8)).save(path)
        paths.append(path)
    return paths


def test_cache_holds_exactly_the_decoded_crop_resized_images(png_files, tmp_path):
    images = decoded_images(png_files, [56, 40], [32, 24], budget_gb=1, cache_dir=tmp_path / "c")
    assert isinstance(images, CachedImages) and len(images) == 6
    for i, path in enumerate(png_files):
        assert np.array_equal(images[i], crop_resize(load_rgb(path), [56, 40], [32, 24]))


def test_same_key_is_shared_in_process_and_reused_from_disk(png_files, tmp_path):
    first = decoded_images(png_files, None, [32, 24], budget_gb=1, cache_dir=tmp_path / "c")
    assert decoded_images(png_files, None, [32, 24], budget_gb=1, cache_dir=tmp_path / "c") is first
    other_size = decoded_images(png_files, None, [16, 12], budget_gb=1, cache_dir=tmp_path / "c")
    assert other_size is not first and other_size[0].shape == (16, 12, 3)
    cache_mod.clear_open_caches()
    again = decoded_images(png_files, None, [32, 24], budget_gb=1, cache_dir=tmp_path / "c")
    assert again.data_path == first.data_path  # the filled file is found, not rebuilt


def test_changed_file_changes_the_key(png_files, tmp_path):
    key = cache_mod.cache_key(png_files, None, [32, 24])
    Image.fromarray(np.zeros((64, 48, 3), np.uint8)).save(png_files[0])
    assert cache_mod.cache_key(png_files, None, [32, 24]) != key


def test_cached_images_pickle_small_and_reopen(png_files, tmp_path):
    images = decoded_images(png_files, None, [32, 24], budget_gb=1, cache_dir=tmp_path / "c")
    images[0]  # open the map
    blob = pickle.dumps(images)
    assert len(blob) < 1000
    assert np.array_equal(pickle.loads(blob)[3], images[3])


def test_over_budget_falls_back_to_disk_with_a_warning(png_files, tmp_path, caplog):
    with caplog.at_level(logging.WARNING):
        images = decoded_images(png_files, None, [32, 24], budget_gb=1e-9, cache_dir=tmp_path / "c")
    assert isinstance(images, DiskImages)
    assert "over data.cache_gb" in caplog.text
    assert np.array_equal(images[2], crop_resize(load_rgb(png_files[2]), None, [32, 24]))


def test_too_little_disk_falls_back_to_disk_with_a_warning(png_files, tmp_path, caplog, monkeypatch):
    class Usage:
        free = 10

    monkeypatch.setattr(cache_mod.shutil, "disk_usage", lambda _: Usage())
    with caplog.at_level(logging.WARNING):
        images = decoded_images(png_files, None, [32, 24], budget_gb=1, cache_dir=tmp_path / "c")
    assert isinstance(images, DiskImages) and "free" in caplog.text
    assert not list((tmp_path / "c").glob("*.u8"))


def test_zero_budget_disables_the_cache(png_files, tmp_path):
    assert isinstance(decoded_images(png_files, None, [32, 24], budget_gb=0, cache_dir=tmp_path), DiskImages)


def test_write_failure_falls_back_and_leaves_no_temp_file(png_files, tmp_path, caplog, monkeypatch):
    def broken(*_args, **_kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(cache_mod, "_decode_into", broken)
    with caplog.at_level(logging.WARNING):
        images = decoded_images(png_files, None, [32, 24], budget_gb=1, cache_dir=tmp_path / "c")
    assert isinstance(images, DiskImages) and "No space left" in caplog.text
    assert not list((tmp_path / "c").iterdir())
