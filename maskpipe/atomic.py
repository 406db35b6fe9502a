"""Atomic file writes: write to a temporary file beside the target, fsync, rename.

A pod killed at any moment leaves either the old file or the new one, never half of one.
Files get the mode a plain ``open()`` would give them (0666 less the umask, e.g. 644), not
mkstemp's private 600: the images run as another user (uid 1001, group 0) that must read
what the host wrote, e.g. a synthetic data set bind-mounted into a container.
:func:`sha256_file` is the digest that checkpoints and exported models record to prove it.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, Iterator

from maskpipe.errors import MaskpipeError


@contextlib.contextmanager
def atomic_path(target: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a temporary path in the target's folder; on success fsync it and rename it
    over ``target``. On error the temporary file is removed and ``target`` is untouched."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = temporary_file_beside(target, suffix=".tmp")
    try:
        yield tmp
        with open(tmp, "rb+") as handle:
            # Again: a writer may have replaced the file (safetensors' save_file leaves 600).
            os.fchmod(handle.fileno(), 0o666 & ~current_umask())
            os.fsync(handle.fileno())
        os.replace(tmp, target)
        _fsync_dir(target.parent)
    finally:
        tmp.unlink(missing_ok=True)


def temporary_file_beside(target: Path, *, suffix: str) -> Path:
    """A new empty file in ``target``'s folder (hidden, unique name) with the umask's mode."""
    fd, tmp_name = tempfile.mkstemp(prefix=f".{target.name}.", suffix=suffix, dir=target.parent)
    try:
        os.fchmod(fd, 0o666 & ~current_umask())
    finally:
        os.close(fd)
    return Path(tmp_name)


def current_umask() -> int:
    """This process's umask, read without changing it (os.umask would, for a moment, for
    every thread) where Linux reports it; otherwise by setting and restoring it."""
    try:
        with open("/proc/self/status", encoding="ascii") as status:
            for line in status:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except OSError:
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def write_bytes(target: str | os.PathLike[str], data: bytes) -> None:
    with atomic_path(target) as tmp:
        tmp.write_bytes(data)


def write_text(target: str | os.PathLike[str], text: str) -> None:
    write_bytes(target, text.encode("utf-8"))


def write_json(target: str | os.PathLike[str], obj: Any) -> None:
    write_text(target, json.dumps(obj, indent=2, sort_keys=False, default=_json_default) + "\n")


def _json_default(value: Any) -> Any:
    # numpy scalars and arrays, Paths
    if hasattr(value, "tolist"):
        return value.tolist()
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")


def _fsync_dir(folder: Path) -> None:
    with contextlib.suppress(OSError):
        fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def sha256_file(path: str | os.PathLike[str], chunk_size: int = 1 << 20) -> str:
    """Hex sha256 of a file, read in chunks (checkpoints are hundreds of MB)."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(chunk_size):
            digest.update(chunk)
    return digest.hexdigest()


@contextlib.contextmanager
def atomic_dir(target: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield an empty folder beside ``target`` to build in; on success put it at ``target``
    (:func:`replace_dir`), so a reader finds the old folder or the finished new one, never
    half. On error, or after the swap, whatever is left of the build folder is removed."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    building = Path(tempfile.mkdtemp(prefix=f".{target.name}.", suffix=".partial", dir=target.parent))
    try:
        yield building
        # mkdtemp made the folder private (700); give it the mode a plain mkdir would.
        os.chmod(building, 0o777 & ~current_umask())
        replace_dir(building, target)
    finally:
        shutil.rmtree(building, ignore_errors=True)


def replace_dir(built: Path, target: Path) -> None:
    """Put the finished folder ``built`` at ``target``: a rename, with an existing target moved
    aside first and removed after, so a reader finds the old folder or the new one."""
    if target.exists() and not target.is_dir():
        raise MaskpipeError(f"{target} exists and is not a folder; choose another output folder")
    old = None
    if target.exists():
        old = target.with_name(f".{target.name}.old-{os.getpid()}")
        os.replace(target, old)
    os.replace(built, target)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
