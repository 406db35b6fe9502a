"""Strict image decoding: every image is fully decoded or rejected with a reason.

The competition's photos are JPEG and PNG files. Two decoders in common use fail quietly:
OpenCV's ``imread`` returns a partly grey picture for a truncated JPEG (a warning only), and
PIL does the same when ``ImageFile.LOAD_TRUNCATED_IMAGES`` is on. Here PIL always decodes with
that switch off and calls ``load()``, which raises on truncation, so a damaged file is reported
instead of being trained on.

Images that are not RGB (grayscale, palette, RGBA, CMYK JPEG, 16-bit) are converted to RGB; the
alpha channel is dropped. EXIF orientation is not applied, as in the competition's baseline, so
training and inference see the pixels in stored order. Images above ``MAX_PIXELS`` are rejected
before decoding (a decompression bomb or a wrong file would take gigabytes).

The same checks decode the bytes of a request (:func:`load_rgb` takes a path or the encoded
bytes), so the served model sees exactly the pixels ``maskpipe infer`` sees.
"""

from __future__ import annotations

import contextlib
import io
import os
import threading
import warnings
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np
from PIL import Image, ImageFile, UnidentifiedImageError

from maskpipe.errors import DataLayoutError

# The competition's photos are 384x512 (0.2 MP); 40 MP leaves room for any camera photo while
# stopping a decompression bomb long before it exhausts memory.
MAX_PIXELS = 40_000_000

IMAGE_EXTENSIONS: frozenset[str] = frozenset({".jpg", ".jpeg", ".png"})

# Below this many files the process pool costs more to start than it saves.
_MIN_PARALLEL = 64


# A file on disk, or the encoded bytes of one (a request body), with a name for messages.
ImageSource = str | os.PathLike[str] | bytes

FILE_FIX = "replace the file with a readable JPEG or PNG, or remove it"
BYTES_FIX = "send the complete bytes of a JPEG or PNG photo"


class ImageDecodeError(DataLayoutError):
    """One image cannot be used; ``reason`` is the short cause (``truncated``, ``zero-byte``...)."""

    def __init__(
        self, path: str | os.PathLike[str], reason: str, detail: str = "", fix: str = FILE_FIX
    ) -> None:
        self.path = os.fspath(path)
        self.reason = reason
        self.cause = f"{reason} ({detail})" if detail else reason
        self._args = (self.path, reason, detail, fix)
        super().__init__(f"{self.path}: {self.cause}; {fix}")

    def __reduce__(self):  # survive pickling into and out of worker processes
        return (type(self), self._args)


def has_image_extension(name: str) -> bool:
    """True for ``.jpg``, ``.jpeg`` and ``.png`` in any letter case."""
    return os.path.splitext(name)[1].lower() in IMAGE_EXTENSIONS


# _strict_pil switches process-wide settings; decoding threads share one switch-over, made by
# the first to enter and undone by the last to leave.
_strict_lock = threading.Lock()
_strict_users = 0
_strict_saved: tuple[bool, warnings.catch_warnings] | None = None


@contextlib.contextmanager
def _strict_pil() -> Iterator[None]:
    # Another library in the process may have switched truncated loading on; force it off
    # while decoding and restore the caller's setting afterwards. We apply our own pixel limit
    # below; PIL's DecompressionBombWarning would only be noise.
    global _strict_users, _strict_saved
    with _strict_lock:
        if _strict_users == 0:
            caught = warnings.catch_warnings()
            caught.__enter__()
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            _strict_saved = (ImageFile.LOAD_TRUNCATED_IMAGES, caught)
            ImageFile.LOAD_TRUNCATED_IMAGES = False
        _strict_users += 1
    try:
        yield
    finally:
        with _strict_lock:
            _strict_users -= 1
            if _strict_users == 0 and _strict_saved is not None:
                previous, caught = _strict_saved
                _strict_saved = None
                ImageFile.LOAD_TRUNCATED_IMAGES = previous
                caught.__exit__(None, None, None)


def _labelled(source: ImageSource, name: str | None) -> tuple[str | Path, str, Path | io.BytesIO]:
    """What messages call the image, the fix they suggest, and what PIL opens."""
    if isinstance(source, (bytes, bytearray, memoryview)):
        return name or "image bytes", BYTES_FIX, io.BytesIO(source)
    return Path(source), FILE_FIX, Path(source)


def open_header(source: ImageSource, name: str | None = None, max_pixels: int = MAX_PIXELS) -> Image.Image:
    """Open a file or encoded bytes and check its header only (format, declared size); nothing
    is decoded yet. ImageDecodeError with a short reason otherwise. ``name`` labels bytes in
    messages (a file is named by its path)."""
    path, fix, opener = _labelled(source, name)
    if isinstance(opener, io.BytesIO):
        size = opener.getbuffer().nbytes
    else:
        try:
            size = opener.stat().st_size
        except FileNotFoundError:
            raise ImageDecodeError(path, "missing file") from None
        except OSError as exc:
            raise ImageDecodeError(path, "unreadable file", exc.strerror or str(exc)) from None
    if size == 0:
        raise ImageDecodeError(path, "zero-byte file" if fix is FILE_FIX else "empty image bytes", fix=fix)
    try:
        image = Image.open(opener)
    except Image.DecompressionBombError as exc:
        raise ImageDecodeError(path, "image too large", str(exc), fix) from None
    except UnidentifiedImageError:
        raise ImageDecodeError(path, "not an image", "no JPEG or PNG header", fix) from None
    except OSError as exc:
        raise ImageDecodeError(path, _reason(exc, "unreadable file"), str(exc), fix) from None
    if image.format not in {"JPEG", "PNG", "MPO"}:
        image.close()
        raise ImageDecodeError(
            path, "unsupported image format", f"{image.format}, expected JPEG or PNG", fix
        )
    width, height = image.size
    if width * height > max_pixels:
        image.close()
        raise ImageDecodeError(
            path, "image too large", f"{width}x{height} is over the {max_pixels:,}-pixel limit", fix
        )
    if width == 0 or height == 0:
        image.close()
        raise ImageDecodeError(path, "empty image", f"{width}x{height}", fix)
    return image


def load_opened(image: Image.Image, source: ImageSource, name: str | None = None) -> Image.Image:
    """Decode an image from :func:`open_header` fully (after any ``draft``), or raise
    ImageDecodeError (truncated, corrupt) and close it."""
    try:
        image.load()
    except (OSError, SyntaxError, ValueError) as exc:
        image.close()
        path, fix, _ = _labelled(source, name)
        raise ImageDecodeError(path, _reason(exc, "corrupt image"), str(exc), fix) from None
    return image


def _open_checked(source: ImageSource, name: str | None = None) -> Image.Image:
    """Open a file or encoded bytes and decode it fully; ImageDecodeError with a short reason
    otherwise. ``name`` labels bytes in messages (a file is named by its path)."""
    return load_opened(open_header(source, name), source, name)


def _reason(exc: Exception, default: str) -> str:
    return "truncated image" if "truncat" in str(exc).lower() else default


def load_rgb(source: ImageSource, name: str | None = None) -> np.ndarray:
    """Decode a file (or the encoded bytes of one) into an HxWx3 uint8 RGB array.

    Raises ImageDecodeError (a DataLayoutError) naming the file (or ``name``, for bytes) when
    it is empty, truncated, not an image, larger than ``MAX_PIXELS`` or otherwise undecodable.
    """
    with _strict_pil():
        image = _open_checked(source, name)
        try:
            array = rgb_array(image)
        finally:
            image.close()
    return array


SIXTEEN_BIT_MODES = frozenset({"I;16", "I;16B", "I;16L", "I"})

# 16-bit grey -> 8 bits without a float64 copy of the image: the table gives, for every 16-bit
# value, what ``clip(value * 255 / 65535, 0, 255)`` truncated to uint8 gives (value // 257);
# a photo whose values all fit in 8 bits keeps them (clipped to 0..255).
_SCALE_16_TO_8 = (np.arange(65536) // 257).astype(np.uint8)
_CLIP_TO_8 = np.clip(np.arange(65536), 0, 255).astype(np.uint8)


def rgb_array(image: Image.Image, top: int | None = None) -> np.ndarray:
    """A decoded PIL image as a writable C-contiguous HxWx3 uint8 RGB array.

    16-bit grey is scaled to 8 bits (when any value is above 255) instead of letting PIL clip
    at 255; ``top`` is the largest value of the whole photo when ``image`` is a crop of it.
    Other modes go through PIL's ``convert("RGB")`` (alpha dropped).
    """
    if image.mode in SIXTEEN_BIT_MODES:
        if top is None:
            top = int(image.getextrema()[1]) if image.width and image.height else 0
        values = np.asarray(image)
        if values.dtype != np.uint16:  # mode "I" is int32: values outside 0..65535 clip
            values = np.clip(values, 0, 65535).astype(np.uint16)
        gray = (_SCALE_16_TO_8 if top > 255 else _CLIP_TO_8)[values]
        return np.repeat(gray[:, :, None], 3, axis=2)
    rgb = image if image.mode == "RGB" else image.convert("RGB")
    # np.array, not np.asarray: PIL's buffer view is read-only, and augmentations (and
    # torch.from_numpy) need an array they may write to.
    return np.ascontiguousarray(np.array(rgb, dtype=np.uint8))


def check_image(path: str | os.PathLike[str]) -> str | None:
    """Fully decode ``path``; return None when usable, else the reason with its detail."""
    try:
        with _strict_pil():
            _open_checked(Path(path)).close()
    except ImageDecodeError as exc:
        return exc.cause
    return None


def check_images(paths: Sequence[str | os.PathLike[str]], workers: int | None = None) -> list[str | None]:
    """``check_image`` over many files, in a process pool; results in input order."""
    from maskpipe.progress import progress

    workers = default_workers() if workers is None else max(1, int(workers))
    if workers == 1 or len(paths) < _MIN_PARALLEL:
        return list(progress((check_image(p) for p in paths), total=len(paths), desc="decode-check", unit="img"))
    chunksize = max(1, len(paths) // (workers * 8))
    with ProcessPoolExecutor(max_workers=workers) as pool:
        results = pool.map(check_image, [os.fspath(p) for p in paths], chunksize=chunksize)
        return list(progress(results, total=len(paths), desc="decode-check", unit="img"))


def default_workers() -> int:
    """CPU cores this process may use (cgroup/affinity aware where the OS tells us)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # pragma: no cover - not Linux
        return max(1, os.cpu_count() or 1)
