"""The storage operations callers use, each taking a local folder or an ``s3://`` prefix alike."""

from __future__ import annotations

import logging
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

from maskpipe.atomic import atomic_path
from maskpipe.errors import StorageError
from maskpipe.storage.cache import _cache_path, _cache_root, _cached, _md5_file, _same_content
from maskpipe.storage.client import _Bucket, _list_objects, _open_bucket, _RemoteObject, _stat_object
from maskpipe.storage.local import _list_local, _local_file, _local_root
from maskpipe.storage.transfer import _fetch, _get_bytes, _put_file, _remote_objects, _run_parallel
from maskpipe.storage.uri import _join_key, _safe_rel_path, is_s3, parse_s3_uri

log = logging.getLogger("maskpipe.storage")


def list_files(root: str) -> list[str]:
    """Every file under ``root``, as sorted POSIX paths relative to it.

    Local roots: symlinks leaving the root are not followed; hidden files are listed (the
    indexer decides what to skip). S3 roots: every object under the prefix, recursively.
    """
    if not is_s3(root):
        return _list_local(_local_root(root))
    bucket_name, prefix = parse_s3_uri(root)
    bucket, _ = _open_bucket(bucket_name)
    cut = len(prefix) + 1 if prefix else 0
    return sorted(key[cut:] for key in _list_objects(bucket, prefix))


def localize(
    root: str, rel_paths: list[str], cache_dir: Path | None = None, workers: int = 8
) -> list[Path]:
    """Local paths for ``rel_paths`` under ``root``, in the same order.

    Local roots: ``root/rel`` after checking it stays inside ``root``. S3 roots: each object is
    downloaded (``workers`` in parallel, with retries) into ``cache_dir/<bucket>/<key>``;
    by default ``$MASKPIPE_CACHE_DIR`` or ``~/.cache/maskpipe/s3``, then
    ``<endpoint>/<bucket>/<key>``. A cached file is reused when its size, and its MD5 where
    the object's ETag is one, match the object; downloads land under a temporary name and
    are renamed when complete, so a cut-off download is never taken for a whole file.
    """
    if not is_s3(root):
        local_root = _local_root(root)
        return [_local_file(local_root, rel) for rel in rel_paths]
    bucket_name, prefix = parse_s3_uri(root)
    rels = [_safe_rel_path(rel, root).as_posix() for rel in rel_paths]
    if not rels:
        return []
    bucket, _ = _open_bucket(bucket_name)
    cache_root = _cache_root(bucket.settings, bucket_name, cache_dir)
    targets = [_cache_path(cache_root, _join_key(prefix, rel), root) for rel in rels]
    remote = _remote_objects(bucket, prefix, [_join_key(prefix, rel) for rel in rels])
    jobs = {target: remote[_join_key(prefix, rel)] for rel, target in zip(rels, targets)}
    _download_all(bucket, jobs, workers)
    return targets


def read_bytes(root: str, rel_path: str) -> bytes:
    """The bytes of one file under ``root`` (S3: read directly, not cached)."""
    if not is_s3(root):
        return _local_file(_local_root(root), rel_path).read_bytes()
    bucket_name, prefix = parse_s3_uri(root)
    key = _join_key(prefix, _safe_rel_path(rel_path, root).as_posix())
    bucket, _ = _open_bucket(bucket_name)
    return bucket.call(bucket.uri(key), lambda: _get_bytes(bucket, key))


def upload_file(local: Path, uri: str) -> None:
    """Upload one file to the object ``uri`` (multipart above 16 MiB; visible only when complete)."""
    local = Path(local)
    if not local.is_file():
        raise StorageError(f"cannot upload {local}: it is not a file")
    bucket_name, key = parse_s3_uri(uri)
    if not key:
        raise StorageError(f"{uri!r} names a bucket, not an object: write s3://BUCKET/PATH/FILE")
    bucket, _ = _open_bucket(bucket_name)
    _put_file(bucket, local, key)


def download_file(uri: str, local: Path) -> None:
    """Download the object ``uri`` to ``local`` atomically (a reader never sees half a file)."""
    bucket_name, key = parse_s3_uri(uri)
    if not key:
        raise StorageError(f"{uri!r} names a bucket, not an object: write s3://BUCKET/PATH/FILE")
    bucket, _ = _open_bucket(bucket_name)
    _fetch(bucket, _stat_object(bucket, key), Path(local), durable=True)


@dataclass
class UploadResult:
    """What ``upload_dir`` did."""

    uri: str
    uploaded: int = 0
    skipped: int = 0
    bytes_uploaded: int = 0
    created_bucket: bool = False
    seconds: float = 0.0

    def summary(self) -> str:
        text = (
            f"uploaded {self.uploaded} files ({_human_bytes(self.bytes_uploaded)}) to {self.uri} "
            f"in {self.seconds:.1f} s; skipped {self.skipped} already there with the same size"
        )
        if self.created_bucket:
            text += f"; created bucket {parse_s3_uri(self.uri)[0]!r}"
        return text


def upload_dir(local_dir: Path, uri: str, workers: int = 8) -> UploadResult:
    """Upload every file under ``local_dir`` to the prefix ``uri``; creates the bucket if missing.

    Objects already there with the same size are skipped, so an interrupted upload is
    finished by running the same command again.
    """
    started = time.monotonic()
    local_root = _local_root(local_dir)
    bucket_name, prefix = parse_s3_uri(uri)
    bucket, created = _open_bucket(bucket_name, create=True)
    remote = {} if created else _list_objects(bucket, prefix)
    result = UploadResult(uri=uri.rstrip("/"), created_bucket=created)
    todo: list[tuple[Path, str]] = []
    for rel in _list_local(local_root):
        path, key = local_root / rel, _join_key(prefix, rel)
        have = remote.get(key)
        if have is not None and have.size == path.stat().st_size:
            result.skipped += 1
        else:
            todo.append((path, key))
    _run_parallel(
        [lambda path=path, key=key: _put_file(bucket, path, key) for path, key in todo],
        workers,
        desc="upload",
        failure_hint="rerun the same command: files already uploaded are skipped",
    )
    result.uploaded = len(todo)
    result.bytes_uploaded = sum(path.stat().st_size for path, _ in todo)
    result.seconds = time.monotonic() - started
    return result


def sync_up(local_dir: Path, uri: str) -> bool:
    """Mirror ``local_dir`` to ``uri`` (an s3:// prefix or a local folder): upload new and changed files.

    A file counts as unchanged only when its content hash matches the object's ETag, so a
    resume state rewritten at the same size is uploaded again. Remote files are never deleted.
    Returns True when anything was copied.
    """
    local_dir = Path(local_dir)
    if not local_dir.is_dir():
        return False
    if not is_s3(uri):
        return _mirror_local(local_dir, Path(uri))
    bucket_name, prefix = parse_s3_uri(uri)
    bucket, _ = _open_bucket(bucket_name, create=True)
    remote = _list_objects(bucket, prefix)
    changed = [
        rel
        for rel in _list_local(local_dir)
        if not _same_content(local_dir / rel, remote.get(_join_key(prefix, rel)))
    ]
    for rel in changed:
        _put_file(bucket, local_dir / rel, _join_key(prefix, rel))
    if changed:
        log.info("synced %d file(s) from %s to %s", len(changed), local_dir, uri)
    return bool(changed)


def sync_down(uri: str, local_dir: Path) -> bool:
    """Mirror ``uri`` (an s3:// prefix or a local folder) into ``local_dir``.

    Returns False when there is nothing at ``uri`` (a first run), True otherwise. Each file
    is written atomically; files whose content already matches are left alone.
    """
    local_dir = Path(local_dir)
    if not is_s3(uri):
        source = Path(uri)
        if not source.is_dir() or not _list_local(source):
            return False
        _mirror_local(source, local_dir)
        return True
    bucket_name, prefix = parse_s3_uri(uri)
    bucket, _ = _open_bucket(bucket_name)
    remote = _list_objects(bucket, prefix)
    if not remote:
        return False
    cut = len(prefix) + 1 if prefix else 0
    for key, obj in sorted(remote.items()):
        target = _cache_path(local_dir, key[cut:], uri)
        if not _same_content(target, obj):
            _fetch(bucket, obj, target, durable=True)
    log.info("restored %d file(s) from %s to %s", len(remote), uri, local_dir)
    return True


def _download_all(bucket: _Bucket, jobs: dict[Path, _RemoteObject], workers: int) -> None:
    todo = {target: obj for target, obj in jobs.items() if not _cached(target, obj)}
    if todo:
        _run_parallel(
            [lambda target=target, obj=obj: _fetch(bucket, obj, target, durable=False) for target, obj in todo.items()],
            workers,
            desc="download",
            failure_hint="rerun: files already downloaded are reused from the cache",
        )
    log.info(
        "localized %d file(s) from s3://%s: %d downloaded, %d reused from the cache",
        len(jobs), bucket.name, len(todo), len(jobs) - len(todo),
    )


def _mirror_local(source: Path, target: Path) -> bool:
    copied = False
    for rel in _list_local(source):
        src, dst = source / rel, target / rel
        if dst.is_file() and dst.stat().st_size == src.stat().st_size and _md5_file(dst) == _md5_file(src):
            continue
        with atomic_path(dst) as tmp:
            shutil.copyfile(src, tmp)
        copied = True
    return copied


def _human_bytes(count: int) -> str:
    size = float(count)
    for unit in ("B", "KB", "MB", "GB"):
        if size < 1024 or unit == "GB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{size:.1f} GB"
