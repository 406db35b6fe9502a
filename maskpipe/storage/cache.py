"""Where downloaded objects are cached locally, and whether a local file still holds what an object holds."""

from __future__ import annotations

import hashlib
import os
import re
from pathlib import Path

from maskpipe.errors import StorageError
from maskpipe.storage import transfer
from maskpipe.storage.client import _RemoteObject
from maskpipe.storage.local import _inside
from maskpipe.storage.settings import S3Settings
from maskpipe.storage.uri import _safe_rel_path

_MD5_ETAG_RE = re.compile(r"^[0-9a-f]{32}$")
_MULTIPART_ETAG_RE = re.compile(r"^[0-9a-f]{32}-(\d+)$")
_HASH_CHUNK = 1024 * 1024


def _cache_root(settings: S3Settings, bucket: str, cache_dir: Path | None) -> Path:
    if cache_dir is not None:
        return Path(cache_dir).expanduser() / bucket
    base = os.environ.get("MASKPIPE_CACHE_DIR", "").strip()
    base_dir = Path(base).expanduser() if base else Path.home() / ".cache" / "maskpipe" / "s3"
    return base_dir / settings.endpoint.replace(":", "_") / bucket


def _cache_path(cache_root: Path, key: str, root: str) -> Path:
    """Where ``key`` lands under ``cache_root``; object keys with ``..`` or ``/`` tricks are refused."""
    rel = _safe_rel_path(key, root)
    target = cache_root.joinpath(*rel.parts)
    if not _inside(Path(os.path.abspath(target)), Path(os.path.abspath(cache_root))):
        raise StorageError(f"object key {key!r} would be written outside the cache {cache_root}; refusing it")
    return target


def _cached(target: Path, obj: _RemoteObject) -> bool:
    try:
        size = target.stat().st_size
    except OSError:
        return False
    if size != obj.size:
        return False
    return not _MD5_ETAG_RE.match(obj.etag) or _md5_file(target) == obj.etag


def _same_content(path: Path, obj: _RemoteObject | None) -> bool:
    """True when ``path`` holds what ``obj`` holds: same size and the same (multipart) MD5 ETag."""
    if obj is None or not path.is_file() or path.stat().st_size != obj.size:
        return False
    if _MD5_ETAG_RE.match(obj.etag):
        return _md5_file(path) == obj.etag
    multipart = _MULTIPART_ETAG_RE.match(obj.etag)
    # Only our own part size can be recomputed; any other ETag counts as changed.
    return bool(multipart) and _multipart_etag(path, transfer.PART_SIZE) == obj.etag


def _md5_file(path: Path) -> str:
    digest = hashlib.md5(usedforsecurity=False)
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(_HASH_CHUNK), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _multipart_etag(path: Path, part_size: int) -> str:
    part_digests = []
    with open(path, "rb") as handle:
        for part in iter(lambda: handle.read(part_size), b""):
            part_digests.append(hashlib.md5(part, usedforsecurity=False).digest())
    combined = hashlib.md5(b"".join(part_digests), usedforsecurity=False).hexdigest()
    return f"{combined}-{len(part_digests)}"
