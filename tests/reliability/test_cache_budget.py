"""The decode-once image cache steps aside, with a warning, when it cannot be used: a memory
budget (``data.cache_gb``) too small, a cache folder that cannot be created or written, a write
that fails part-way; and a cache file left half-written by a killed process is never read as
complete. Training goes on reading images from disk in every case; it never crashes.

The budget and folder cases run a real one-epoch training through ``maskpipe train``; the
failed write is a real I/O error (a file-size limit set in a child process, so the OS refuses
the write with EFBIG), not a patched function.
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
from datafactory import make_dataset

from maskpipe.checkpoint import load_checkpoint
from maskpipe.cli import main
from maskpipe.data import cache as cache_mod
from maskpipe.data.cache import CachedImages, DiskImages, decoded_images
from maskpipe.data.images import load_rgb
from maskpipe.data.index import build_index
from maskpipe.data.transforms import crop_resize

REPO = Path(__file__).resolve().parents[2]
TINY = [
    "data.input_size=[32,24]", "data.crop_size=null", "data.num_workers=0",
    "train.epochs=1", "train.batch_size=16", "train.amp=false",
]  # fmt: skip


@pytest.fixture(autouse=True)
def _fresh_cache_registry():
    cache_mod.clear_open_caches()
    yield
    cache_mod.clear_open_caches()


@pytest.fixture(scope="module")
def tiny_index(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("cache-budget")
    data = make_dataset(root / "data", eval_images=0)
    build_index(str(data.root), root / "index.parquet", val_fraction=0.34, seed=1)
    return root / "index.parquet"


def _train(index: Path, out: Path, cache_dir: Path, *overrides: str) -> list[str]:
    argv = ["train", "--task", "gender", "--index", str(index), "--out", str(out), "--preset", "smoke"]
    for item in [*TINY, *overrides]:
        argv += ["--set", item]
    return [*argv, "--cache-dir", str(cache_dir)]


def _cache_warnings(caplog) -> list[str]:
    return [
        r.getMessage() for r in caplog.records
        if r.name == "maskpipe.data.cache" and r.levelno == logging.WARNING
    ]  # fmt: skip


def _assert_trained(out: Path) -> None:
    assert load_checkpoint(out, expected_task="gender").meta["epoch"] == 1
    assert [row["epoch"] for row in json.loads((out / "history.json").read_text())] == [1]


# ---------------------------------------------------------------------------- through training


@pytest.mark.slow
def test_memory_budget_too_small_trains_from_disk_with_a_warning(tiny_index, tmp_path, caplog, capsys):
    caplog.set_level(logging.INFO)
    cache_dir = tmp_path / "cache"
    code = main(_train(tiny_index, tmp_path / "out", cache_dir, "data.cache_gb=0.000001"))
    assert code == 0, capsys.readouterr().err
    [warning] = _cache_warnings(caplog)
    assert "over data.cache_gb=1e-06" in warning and "reading from disk instead" in warning
    assert "Raise data.cache_gb" in warning
    assert not list(tmp_path.rglob("*.u8"))
    _assert_trained(tmp_path / "out")


def _unwritable_cache_dir(tmp_path: Path, kind: str) -> Path:
    if kind == "file in the way":
        blocker = tmp_path / "cache"
        blocker.write_text("a file where the cache folder should go\n")
        return blocker
    if os.geteuid() == 0:
        pytest.skip("root ignores folder permissions; the 'file in the way' case covers an unwritable folder")
    folder = tmp_path / "cache"
    folder.mkdir()
    folder.chmod(0o500)
    return folder


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["file in the way", "read-only folder"])
def test_unwritable_cache_folder_trains_from_disk_with_a_warning(tiny_index, tmp_path, caplog, capsys, kind):
    caplog.set_level(logging.INFO)
    cache_dir = _unwritable_cache_dir(tmp_path, kind)
    try:
        code = main(_train(tiny_index, tmp_path / "out", cache_dir))
    finally:
        if cache_dir.is_dir():
            cache_dir.chmod(0o700)
    assert code == 0, capsys.readouterr().err
    [warning] = _cache_warnings(caplog)
    assert "image cache in" in warning and "reading images from disk instead" in warning
    assert str(cache_dir) in warning
    _assert_trained(tmp_path / "out")


# ---------------------------------------------------------------------------- a real failed write

_FILL_UNDER_A_SIZE_LIMIT = textwrap.dedent(
    """
    import json, logging, resource, signal, sys
    from maskpipe.data.cache import decoded_images

    # Over the limit, write() fails with EFBIG instead of the process being killed by SIGXFSZ.
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    resource.setrlimit(resource.RLIMIT_FSIZE, (4096, 4096))
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    paths, cache_dir = json.loads(sys.argv[1]), sys.argv[2]
    images = decoded_images(paths, None, [32, 24], budget_gb=1, cache_dir=cache_dir)
    print(type(images).__name__, images[1].tobytes().hex())
    """
)


@pytest.fixture
def jpeg_files(tmp_path) -> list[Path]:
    """The 14 JPEGs of two people in the competition layout, sorted."""
    data = make_dataset(tmp_path / "data", ["000001_female_Asian_45", "000002_male_Asian_20"], eval_images=0)
    return sorted(data.images_dir.rglob("*.jpg"))


def test_a_write_the_os_refuses_falls_back_to_disk_and_leaves_no_partial_file(jpeg_files, tmp_path):
    cache_dir = tmp_path / "cache"
    cache_dir.mkdir()
    result = subprocess.run(
        [sys.executable, "-c", _FILL_UNDER_A_SIZE_LIMIT, json.dumps([str(p) for p in jpeg_files]), str(cache_dir)],
        cwd=REPO, capture_output=True, text=True, timeout=120,
        env={**os.environ, "PYTHONPATH": str(REPO), "MASKPIPE_PROGRESS": "0"},
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    kind, pixels = result.stdout.split()
    assert kind == "DiskImages"
    assert "WARNING maskpipe.data.cache: image cache in" in result.stderr
    assert "File too large" in result.stderr and "reading images from disk instead" in result.stderr
    assert "Traceback" not in result.stderr
    expected = crop_resize(load_rgb(jpeg_files[1]), None, [32, 24])
    assert bytes.fromhex(pixels) == expected.tobytes()
    assert not list(cache_dir.iterdir())  # no temp file, no data file, no metadata


# ---------------------------------------------------------------------------- half-written cache


def _filled(jpeg_files: list[Path], cache_dir: Path) -> CachedImages:
    images = decoded_images(jpeg_files, None, [32, 24], budget_gb=1, cache_dir=cache_dir)
    assert isinstance(images, CachedImages)
    cache_mod.clear_open_caches()  # as a new process would see the folder
    return images


def _assert_pixels(images, jpeg_files: list[Path]) -> None:
    for i, path in enumerate(jpeg_files):
        assert np.array_equal(images[i], crop_resize(load_rgb(path), None, [32, 24])), path


def test_truncated_cache_file_is_rebuilt_not_read(jpeg_files, tmp_path):
    first = _filled(jpeg_files, tmp_path / "cache")
    with open(first.data_path, "r+b") as handle:
        handle.truncate(first.nbytes // 3)  # what a killed writer or a full disk leaves
    again = decoded_images(jpeg_files, None, [32, 24], budget_gb=1, cache_dir=tmp_path / "cache")
    assert isinstance(again, CachedImages) and again.data_path.stat().st_size == first.nbytes
    _assert_pixels(again, jpeg_files)


def test_cache_file_without_its_completion_marker_is_rebuilt(jpeg_files, tmp_path):
    first = _filled(jpeg_files, tmp_path / "cache")
    first.data_path.write_bytes(b"\0" * first.nbytes)  # right size, never finished
    first.data_path.with_suffix(cache_mod.META_SUFFIX).unlink()  # killed before the marker
    again = decoded_images(jpeg_files, None, [32, 24], budget_gb=1, cache_dir=tmp_path / "cache")
    _assert_pixels(again, jpeg_files)


def test_unreadable_completion_marker_is_rebuilt(jpeg_files, tmp_path):
    first = _filled(jpeg_files, tmp_path / "cache")
    first.data_path.write_bytes(b"\0" * first.nbytes)
    first.data_path.with_suffix(cache_mod.META_SUFFIX).write_text('{"shape": [')
    again = decoded_images(jpeg_files, None, [32, 24], budget_gb=1, cache_dir=tmp_path / "cache")
    _assert_pixels(again, jpeg_files)


def test_leftover_temp_file_of_a_killed_fill_is_not_used(jpeg_files, tmp_path):
    cache_dir = tmp_path / "cache"
    key = cache_mod.cache_key(jpeg_files, None, [32, 24])
    cache_dir.mkdir()
    leftover = cache_dir / f".{key}.99999{cache_mod.DATA_SUFFIX}.tmp"
    leftover.write_bytes(b"\0" * 100)
    images = decoded_images(jpeg_files, None, [32, 24], budget_gb=1, cache_dir=cache_dir)
    assert isinstance(images, CachedImages) and images.data_path != leftover
    _assert_pixels(images, jpeg_files)


@pytest.mark.parametrize("input_size", [[32, 24], [16, 12]])  # photo size (no resize), smaller
def test_disk_fallback_gives_writable_images_like_the_cache(jpeg_files, tmp_path, input_size):
    # Augmentations may write into their input; a read-only array from the fallback would
    # fail (or be silently shared) only when the cache steps aside.
    disk = DiskImages(jpeg_files, None, input_size)
    cached = decoded_images(jpeg_files, None, input_size, budget_gb=1, cache_dir=tmp_path / "cache")
    for images in (disk, cached):
        image = images[0]
        assert image.flags.writeable and image.flags.c_contiguous
        image[0, 0] = 0  # must not raise
    assert np.array_equal(disk[3], cached[3])
