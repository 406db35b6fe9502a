"""Decode-once image cache: every photo decoded, cropped and resized once, then read as uint8.

Decoding a JPEG costs far more than the whole augmentation list at model size, and the original
recipe decoded every photo every epoch. Here the deterministic part (decode, center crop,
resize) runs once, in parallel, into one uint8 array ``(N, H, W, 3)`` stored as a memory-mapped
file. The mapping lives in the page cache, so DataLoader workers (forked or spawned) and the
three task trainings of one process share it instead of copying it, and a rerun after a crash
finds it filled.

The file is keyed by the image paths (with size and mtime) and the crop/input size. When the
memory budget (``data.cache_gb``) or the free disk space is too small the cache steps aside with
a warning and images are read from disk each access: slower, never a crash.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import tempfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Sequence

import numpy as np

from maskpipe.atomic import write_json
from maskpipe.data.images import load_rgb
from maskpipe.data.transforms import crop_resize

log = logging.getLogger(__name__)

GIB = 1 << 30
# Keep this much disk free beside the cache file for everything else.
DISK_HEADROOM = 256 << 20
DATA_SUFFIX = ".u8"
META_SUFFIX = ".json"

# One open cache per key in this process: the three tasks of one process share it.
_OPEN: dict[str, "CachedImages"] = {}


class DiskImages:
    """Images read from disk at each access; cropped/resized when ``input_size`` is given."""

    def __init__(
        self,
        paths: Sequence[str | os.PathLike[str]],
        crop_size: Sequence[int] | None = None,
        input_size: Sequence[int] | None = None,
    ) -> None:
        self.paths = [Path(p) for p in paths]
        self.crop_size = None if crop_size is None else tuple(crop_size)
        self.input_size = None if input_size is None else tuple(input_size)

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int) -> np.ndarray:
        image = load_rgb(self.paths[i])
        if self.input_size is None:
            return image
        return crop_resize(image, self.crop_size, self.input_size)


class CachedImages:
    """Read-only view of a filled cache file; reopened lazily in each process (pickles small)."""

    def __init__(self, data_path: Path, shape: tuple[int, int, int, int]) -> None:
        self.data_path = Path(data_path)
        self.shape = tuple(shape)
        self._array: np.memmap | None = None

    @property
    def array(self) -> np.memmap:
        if self._array is None:
            self._array = np.memmap(self.data_path, dtype=np.uint8, mode="r", shape=self.shape)
        return self._array

    def __len__(self) -> int:
        return self.shape[0]

    def __getitem__(self, i: int) -> np.ndarray:
        # A private copy: augmentations may write into their input.
        return np.array(self.array[i])

    def __getstate__(self) -> dict:
        return {"data_path": self.data_path, "shape": self.shape, "_array": None}

    @property
    def nbytes(self) -> int:
        return int(np.prod(self.shape))


def decoded_images(
    paths: Sequence[str | os.PathLike[str]],
    crop_size: Sequence[int] | None,
    input_size: Sequence[int],
    *,
    budget_gb: float,
    cache_dir: str | os.PathLike[str] | None = None,
    workers: int | None = None,
) -> CachedImages | DiskImages:
    """Cropped/resized uint8 images of ``paths``: a filled cache, or disk reads as fallback.

    Args:
        paths: local image files (see :func:`maskpipe.storage.localize`).
        crop_size, input_size: as in :func:`maskpipe.data.transforms.crop_resize`.
        budget_gb: largest cache allowed; 0 disables the cache.
        cache_dir: folder for the cache file (default: the system temp folder).
        workers: decode threads (default: CPU count, at most 8).
    """
    paths = [Path(p) for p in paths]
    disk = DiskImages(paths, crop_size, input_size)
    height, width = int(input_size[0]), int(input_size[1])
    shape = (len(paths), height, width, 3)
    needed = int(np.prod(shape))
    if budget_gb <= 0:
        log.info("image cache disabled (data.cache_gb=0): decoding every image at each access")
        return disk
    if needed > budget_gb * GIB:
        log.warning(
            "image cache needs %.2f GiB for %d images at %dx%d, over data.cache_gb=%g; reading "
            "from disk instead (slower). Raise data.cache_gb to cache.",
            needed / GIB, len(paths), height, width, budget_gb,
        )
        return disk

    key = cache_key(paths, crop_size, input_size)
    if key in _OPEN:
        return _OPEN[key]
    folder = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    try:
        folder.mkdir(parents=True, exist_ok=True)
        cached = _open_filled(folder, key, shape) or _fill(folder, key, disk, shape, workers)
    except OSError as exc:
        log.warning("image cache in %s failed (%s); reading images from disk instead", folder, exc)
        return disk
    if cached is None:
        return disk
    _OPEN[key] = cached
    return cached


def default_cache_dir() -> Path:
    return Path(tempfile.gettempdir()) / "maskpipe-image-cache"


def cache_key(
    paths: Sequence[Path], crop_size: Sequence[int] | None, input_size: Sequence[int]
) -> str:
    """Digest of the files (path, size, mtime) and the geometry; a changed file is a new key."""
    digest = hashlib.sha256()
    digest.update(json.dumps([None if crop_size is None else list(crop_size), list(input_size)]).encode())
    for path in paths:
        stat = path.stat()
        digest.update(f"\0{path.resolve()}\0{stat.st_size}\0{stat.st_mtime_ns}".encode())
    return digest.hexdigest()[:32]


def _open_filled(folder: Path, key: str, shape: tuple[int, ...]) -> CachedImages | None:
    data_path, meta_path = folder / f"{key}{DATA_SUFFIX}", folder / f"{key}{META_SUFFIX}"
    if not (data_path.is_file() and meta_path.is_file()):
        return None
    try:
        meta = json.loads(meta_path.read_text())
    except (OSError, json.JSONDecodeError):
        return None
    if tuple(meta.get("shape", ())) != shape or data_path.stat().st_size != int(np.prod(shape)):
        return None
    log.info("image cache: reusing %s (%d images)", data_path, shape[0])
    return CachedImages(data_path, shape)  # type: ignore[arg-type]


def _fill(
    folder: Path, key: str, disk: DiskImages, shape: tuple[int, int, int, int], workers: int | None
) -> CachedImages | None:
    needed = int(np.prod(shape))
    free = shutil.disk_usage(folder).free
    if free < needed + DISK_HEADROOM:
        log.warning(
            "image cache needs %.2f GiB in %s but only %.2f GiB are free; reading images from "
            "disk instead (slower). Free space or pass another --cache-dir.",
            needed / GIB, folder, free / GIB,
        )
        return None
    data_path = folder / f"{key}{DATA_SUFFIX}"
    tmp_path = folder / f".{key}.{os.getpid()}{DATA_SUFFIX}.tmp"
    try:
        array = np.memmap(tmp_path, dtype=np.uint8, mode="w+", shape=shape)
        _decode_into(array, disk, workers)
        array.flush()
        del array
        os.replace(tmp_path, data_path)
    finally:
        tmp_path.unlink(missing_ok=True)
    # The metadata file marks the data file complete; it is written last.
    write_json(folder / f"{key}{META_SUFFIX}", {"shape": list(shape), "images": shape[0]})
    log.info("image cache: decoded %d images into %s (%.1f MiB)", shape[0], data_path, needed / 2**20)
    return CachedImages(data_path, shape)


def _decode_into(array: np.memmap, disk: DiskImages, workers: int | None) -> None:
    from maskpipe.progress import progress

    workers = workers or min(8, os.cpu_count() or 1)

    def one(i: int) -> None:
        array[i] = disk[i]

    # Threads suffice: PIL decoding and cv2.resize release the GIL.
    with ThreadPoolExecutor(max_workers=workers) as pool:
        results = pool.map(one, range(len(disk)))
        for _ in progress(results, total=len(disk), desc="image cache", unit="img"):
            pass


def clear_open_caches() -> None:
    """Forget the caches opened by this process (tests; the files stay)."""
    _OPEN.clear()
