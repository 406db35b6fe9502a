"""Strict decoding: every image is fully decoded, converted to RGB, or rejected with a reason."""

from __future__ import annotations

import numpy as np
import pytest
from datafactory import (
    truncate,
    write_huge_png_header,
    write_image,
    write_not_an_image,
    write_zero_byte,
)
from PIL import ImageFile

from maskpipe.data.images import ImageDecodeError, check_image, check_images, has_image_extension, load_rgb
from maskpipe.errors import DataLayoutError


def test_load_rgb_returns_height_width_3_uint8(tmp_path):
    image = load_rgb(write_image(tmp_path / "a.jpg", size=(24, 32)))
    assert image.shape == (32, 24, 3)
    assert image.dtype == np.uint8
    assert image.flags["C_CONTIGUOUS"]


@pytest.mark.parametrize(
    ("mode", "name"),
    [("L", "gray.jpg"), ("RGBA", "rgba.png"), ("P", "palette.png"), ("CMYK", "cmyk.jpg"), ("I;16", "deep.png"), ("LA", "la.png")],
)
def test_non_rgb_images_are_converted_to_rgb(tmp_path, mode, name):
    image = load_rgb(write_image(tmp_path / name, mode=mode))
    assert image.shape == (32, 24, 3)
    assert image.dtype == np.uint8
    assert image.max() > 0


def test_sixteen_bit_png_is_scaled_not_clipped(tmp_path):
    image = load_rgb(write_image(tmp_path / "deep.png", mode="I;16"))
    assert len(np.unique(image)) > 2  # clipping at 255 would leave almost only white


@pytest.mark.parametrize(
    ("writer", "reason"),
    [
        (write_zero_byte, "zero-byte file"),
        (write_not_an_image, "not an image"),
        (write_huge_png_header, "image too large"),
    ],
)
def test_broken_files_raise_an_error_naming_the_file(tmp_path, writer, reason):
    path = writer(tmp_path / "mask1.jpg")
    with pytest.raises(ImageDecodeError, match=reason) as info:
        load_rgb(path)
    assert str(path) in str(info.value)
    assert "replace the file" in str(info.value)
    assert isinstance(info.value, DataLayoutError)


@pytest.mark.parametrize(("name", "keep"), [("cut.jpg", 0.5), ("cut.jpg", 0.98), ("cut.png", 0.6)])
def test_truncated_images_are_rejected(tmp_path, name, keep):
    path = truncate(write_image(tmp_path / name, size=(64, 64)), keep=keep)
    with pytest.raises(ImageDecodeError) as info:
        load_rgb(path)
    assert info.value.reason in {"truncated image", "corrupt image"}


def test_truncated_jpeg_is_rejected_even_when_another_library_allows_truncation(tmp_path, monkeypatch):
    monkeypatch.setattr(ImageFile, "LOAD_TRUNCATED_IMAGES", True)
    path = truncate(write_image(tmp_path / "cut.jpg", size=(64, 64)), keep=0.7)
    with pytest.raises(ImageDecodeError, match="truncated"):
        load_rgb(path)
    assert ImageFile.LOAD_TRUNCATED_IMAGES is True  # the caller's setting is restored


def test_truncated_jpegs_are_rejected_by_every_decoding_thread(tmp_path, monkeypatch):
    # Inference and the image cache decode in threads: one thread leaving the strict section
    # must not switch truncated loading back on under another one still decoding.
    from concurrent.futures import ThreadPoolExecutor

    monkeypatch.setattr(ImageFile, "LOAD_TRUNCATED_IMAGES", True)
    good = write_image(tmp_path / "good.jpg", size=(256, 256))
    cut = truncate(write_image(tmp_path / "cut.jpg", size=(256, 256)), keep=0.7)

    def outcome(path):
        try:
            load_rgb(path)
            return "ok"
        except ImageDecodeError:
            return "rejected"

    with ThreadPoolExecutor(4) as pool:
        results = list(pool.map(outcome, [good, cut] * 40))
    assert results == ["ok", "rejected"] * 40
    assert ImageFile.LOAD_TRUNCATED_IMAGES is True


def test_decode_errors_survive_pickling_across_processes(tmp_path):
    import pickle

    with pytest.raises(ImageDecodeError) as info:
        load_rgb(write_zero_byte(tmp_path / "z.jpg"))
    exc = info.value
    copy = pickle.loads(pickle.dumps(exc))
    assert (copy.path, copy.reason, str(copy)) == (exc.path, exc.reason, str(exc))


def test_missing_file_is_reported(tmp_path):
    assert check_image(tmp_path / "nope.jpg") == "missing file"


def test_gif_with_jpg_extension_is_rejected(tmp_path):
    path = write_image(tmp_path / "mask1.jpg", fmt="GIF")
    assert check_image(path).startswith("unsupported image format")


def test_check_image_returns_none_for_good_files_and_a_reason_otherwise(tmp_path):
    good = write_image(tmp_path / "good.png")
    bad = write_zero_byte(tmp_path / "bad.jpg")
    assert check_image(good) is None
    assert check_image(bad) == "zero-byte file"


def test_check_images_in_a_process_pool_keeps_the_input_order(tmp_path):
    paths = []
    for i in range(70):  # above the size where the pool is used
        path = write_image(tmp_path / f"{i}.jpg", size=(8, 8))
        paths.append(write_zero_byte(path) if i % 7 == 3 else path)
    results = check_images(paths, workers=2)
    assert [r is not None for r in results] == [i % 7 == 3 for i in range(70)]


@pytest.mark.parametrize(("name", "expected"), [("a.jpg", True), ("a.JPEG", True), ("a.Png", True), ("a.gif", False), ("a", False)])
def test_image_extensions_in_any_case(name, expected):
    assert has_image_extension(name) is expected
