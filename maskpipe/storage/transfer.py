"""Move single objects between a checked bucket and local files: stat, stream down, put, in parallel."""

from __future__ import annotations

import os
from concurrent.futures import Future, ThreadPoolExecutor, as_completed
from pathlib import Path
from typing import Callable

from maskpipe.atomic import atomic_path, temporary_file_beside
from maskpipe.errors import StorageError
from maskpipe.storage.client import _Bucket, _etag, _list_objects, _RemoteObject
from maskpipe.storage.retry import _TruncatedDownload

# Files up to this size go up in one PUT, larger ones as multipart uploads of this part size;
# either way the object only becomes visible once complete.
PART_SIZE = 16 * 1024 * 1024
_CHUNK = 1024 * 1024
# Localizing more files than this lists the prefix once instead of asking for each object.
_STAT_EACH_LIMIT = 32


def _remote_objects(bucket: _Bucket, prefix: str, keys: list[str]) -> dict[str, _RemoteObject]:
    """Size and ETag of each requested key; StorageError naming the missing ones."""
    wanted = set(keys)
    if len(wanted) <= _STAT_EACH_LIMIT:
        stats = {key: _stat_or_missing(bucket, key) for key in wanted}
        found = {key: obj for key, obj in stats.items() if obj is not None}
    else:
        found = {key: obj for key, obj in _list_objects(bucket, prefix).items() if key in wanted}
    missing = sorted(wanted - found.keys())
    if missing:
        shown = ", ".join(bucket.uri(key) for key in missing[:5])
        more = f" and {len(missing) - 5} more" if len(missing) > 5 else ""
        raise StorageError(f"{len(missing)} object(s) do not exist at {bucket.settings.url}: {shown}{more}")
    return found


def _stat_or_missing(bucket: _Bucket, key: str) -> _RemoteObject | None:
    from minio.error import S3Error

    def stat():
        try:
            return bucket.client.stat_object(bucket.name, key)
        except S3Error as exc:
            if exc.code in ("NoSuchKey", "NoSuchObject", "NotFound", "ResourceNotFound"):
                return None
            raise

    info = bucket.call(bucket.uri(key), stat)
    return None if info is None else _RemoteObject(key, int(info.size or 0), _etag(info.etag))


def _fetch(bucket: _Bucket, obj: _RemoteObject, target: Path, *, durable: bool) -> None:
    """Download ``obj`` to ``target`` through a temporary file, retrying transient failures.

    ``durable`` fsyncs (resume state, single files); the image cache skips that because
    every use re-checks the size anyway.
    """
    target.parent.mkdir(parents=True, exist_ok=True)
    bucket.call(bucket.uri(obj.key), lambda: _fetch_once(bucket, obj, target, durable))


def _fetch_once(bucket: _Bucket, obj: _RemoteObject, target: Path, durable: bool) -> None:
    if durable:
        with atomic_path(target) as tmp:
            _stream_to(bucket, obj, tmp)
        return
    tmp = temporary_file_beside(target, suffix=".part")
    try:
        _stream_to(bucket, obj, tmp)
        os.replace(tmp, target)
    finally:
        tmp.unlink(missing_ok=True)


def _stream_to(bucket: _Bucket, obj: _RemoteObject, tmp: Path) -> None:
    response = bucket.client.get_object(bucket.name, obj.key)
    try:
        written = 0
        with open(tmp, "wb") as handle:
            for chunk in response.stream(_CHUNK):
                handle.write(chunk)
                written += len(chunk)
    finally:
        response.close()
        response.release_conn()
    if written != obj.size:
        raise _TruncatedDownload(f"{bucket.uri(obj.key)}: got {written} of {obj.size} bytes")


def _get_bytes(bucket: _Bucket, key: str) -> bytes:
    response = bucket.client.get_object(bucket.name, key)
    try:
        return response.read()
    finally:
        response.close()
        response.release_conn()


def _put_file(bucket: _Bucket, path: Path, key: str) -> None:
    def put() -> None:
        size = path.stat().st_size
        with open(path, "rb") as handle:
            bucket.client.put_object(bucket.name, key, handle, size, part_size=PART_SIZE)

    bucket.call(f"uploading {path} to {bucket.uri(key)}", put, key=key)


def _run_parallel(tasks: list[Callable[[], None]], workers: int, *, desc: str, failure_hint: str) -> None:
    """Run ``tasks`` on a thread pool with a progress bar; stop at the first failure."""
    if not tasks:
        return
    from maskpipe.progress import Progress

    with ThreadPoolExecutor(max_workers=max(1, workers), thread_name_prefix=f"s3-{desc}") as pool:
        futures: list[Future[None]] = [pool.submit(task) for task in tasks]
        # A handful of files (the per-epoch resume mirror) is not worth a bar.
        with Progress(len(futures), desc=desc, unit="file", enabled=len(tasks) > 50) as bar:
            for future in as_completed(futures):
                error = future.exception()
                if error is not None:
                    for other in futures:
                        other.cancel()
                    if isinstance(error, StorageError):
                        raise StorageError(f"{error} ({failure_hint})") from error
                    raise error
                bar.update(1)
