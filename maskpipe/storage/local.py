"""Local data roots: check a root, list its files, and refuse paths or symlinks that leave it."""

from __future__ import annotations

import logging
import os
from pathlib import Path

from maskpipe.errors import StorageError
from maskpipe.storage.uri import _safe_rel_path

log = logging.getLogger("maskpipe.storage")


def _local_root(root: str | os.PathLike[str]) -> Path:
    path = Path(root).expanduser()
    if not path.exists():
        raise StorageError(f"data root {path} does not exist")
    if not path.is_dir():
        raise StorageError(f"data root {path} is not a folder")
    return path


def _inside(path: Path, folder: Path) -> bool:
    return path == folder or folder in path.parents


def _list_local(root: Path) -> list[str]:
    """Files under root; a symlink is followed only when its target stays inside root."""
    real_root = root.resolve()
    found: list[str] = []
    visited: set[Path] = set()
    pending = [root]
    while pending:
        folder = pending.pop()
        real = folder.resolve()
        if real in visited:  # a link back to a folder already walked
            continue
        visited.add(real)
        with os.scandir(folder) as entries:
            for entry in entries:
                path = Path(entry.path)
                if entry.is_symlink() and not _inside(path.resolve(), real_root):
                    log.debug("not following %s: it points outside %s", path, root)
                    continue
                if entry.is_dir():
                    pending.append(path)
                elif entry.is_file():
                    found.append(path.relative_to(root).as_posix())
    return sorted(found)


def _local_file(root: Path, rel_path: str) -> Path:
    rel = _safe_rel_path(rel_path, str(root))
    path = root.joinpath(*rel.parts)
    if not _inside(path.resolve(), root.resolve()):
        raise StorageError(f"{path} leaves the data root {root} (through a symlink); refusing to read it")
    return path
