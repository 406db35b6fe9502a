"""One minio client per process and settings, and buckets checked once (the preflight) before use.

Before the first transfer to a bucket a short preflight (at most two attempts) checks the
endpoint, the credentials and the bucket, so a wrong setting fails within seconds. Nothing on
the normal paths needs more than the prefix it works on: the preflight's HeadBucket is only a
check, a denied one is not fatal, and buckets are created only when HeadBucket says one is
missing.
"""

from __future__ import annotations

import logging
import os
import threading
from dataclasses import dataclass
from typing import Callable, TypeVar

from maskpipe.errors import StorageError
from maskpipe.storage.retry import _reason, _retrying, _RetriesExhausted
from maskpipe.storage.settings import _ENDPOINT_FORM, S3Settings
from maskpipe.storage.uri import is_s3

log = logging.getLogger("maskpipe.storage")

T = TypeVar("T")

_PREFLIGHT_ATTEMPTS = 2

_clients: dict[tuple[S3Settings, int], object] = {}
_verified_buckets: set[tuple[tuple, int, str]] = set()
_clients_lock = threading.Lock()


def _client(settings: S3Settings):
    """One minio client per settings and process (a forked DataLoader worker gets its own pool)."""
    key = (settings, os.getpid())
    with _clients_lock:
        client = _clients.get(key)
        if client is None:
            client = _new_client(settings)
            _clients[key] = client
        return client


def _new_client(settings: S3Settings):
    import certifi
    import urllib3
    from minio import Minio

    # Retries happen in retry._retrying, where they are counted, logged and bounded; urllib3's
    # own retries would multiply that budget and hide which object was failing. They could not
    # replace it either: urllib3 retries only until the response headers arrive, while minio
    # streams get_object bodies (preload_content=False), so a connection cut mid-download, or a
    # short body, surfaces after urllib3 is done; and one pool cannot give the preflight its
    # two attempts and transfers MASKPIPE_S3_RETRIES.
    http = urllib3.PoolManager(
        timeout=urllib3.Timeout(connect=settings.connect_timeout_s, read=settings.read_timeout_s),
        maxsize=32,
        cert_reqs="CERT_REQUIRED",
        ca_certs=os.environ.get("SSL_CERT_FILE") or certifi.where(),
        retries=urllib3.Retry(total=0, raise_on_redirect=False, raise_on_status=False),
    )
    try:
        return Minio(
            settings.endpoint,
            access_key=settings.access_key,
            secret_key=settings.secret_key,
            secure=settings.secure,
            region=settings.region,
            http_client=http,
        )
    except ValueError as exc:  # minio's own endpoint checks; its messages carry no keys
        raise StorageError(
            f"{settings.endpoint_var}={settings.endpoint!r} is not usable ({exc}): {_ENDPOINT_FORM}"
        ) from None


@dataclass(frozen=True)
class _Bucket:
    """A bucket at an endpoint that passed the preflight check."""

    settings: S3Settings
    name: str

    @property
    def client(self):
        return _client(self.settings)

    def uri(self, key: str) -> str:
        return f"s3://{self.name}/{key}"

    def call(self, what: str, func: Callable[[], T], key: str | None = None) -> T:
        """``func`` with retries; ``key`` (default: ``what`` is the object's URI) names the
        object or prefix for an access-denied message."""
        uri = self.uri(key) if key is not None else (what if is_s3(what) else None)
        return _retrying(self.settings, what, func, uri=uri)


def _open_bucket(bucket: str, *, create: bool = False) -> tuple[_Bucket, bool]:
    """Check endpoint, credentials and bucket once per process; returns (bucket, created)."""
    settings = S3Settings.from_env()
    key = (settings.identity, os.getpid(), bucket)
    if key in _verified_buckets:
        return _Bucket(settings, bucket), False
    client = _client(settings)
    what = f"bucket {bucket!r}"
    try:
        exists = _retrying(
            settings, what, lambda: _bucket_exists(client, bucket), _preflight_attempts(settings), f"s3://{bucket}"
        )
    except _RetriesExhausted as exc:
        raise StorageError(
            f"cannot reach the S3 endpoint {settings.url} ({_reason(exc.__cause__ or exc)}): "
            f"check {settings.endpoint_var} and that the server is up"
        ) from exc.__cause__
    created = False
    if exists is None:
        # Keys limited to a prefix may be denied HeadBucket (the endpoint answered, so it is
        # up); the first object call then says whether they reach the path itself.
        log.debug("HeadBucket on %s denied; going on to the path itself", bucket)
    elif not exists:
        if not create:
            raise StorageError(
                f"bucket {bucket!r} does not exist at {settings.url}: create it "
                "(`maskpipe data upload` does) or fix the s3:// URI"
            )
        _retrying(settings, what, lambda: _make_bucket(client, bucket), uri=f"s3://{bucket}")
        created = True
        log.info("created bucket %s at %s", bucket, settings.url)
    _verified_buckets.add(key)
    return _Bucket(settings, bucket), created


def _bucket_exists(client, bucket: str) -> bool | None:
    """HeadBucket: True, False, or None when these keys may not ask (AccessDenied)."""
    from minio.error import S3Error

    try:
        return client.bucket_exists(bucket)
    except S3Error as exc:
        if exc.code == "AccessDenied":
            return None
        raise


def _preflight_attempts(settings: S3Settings) -> int:
    return min(settings.attempts, _PREFLIGHT_ATTEMPTS)


def _make_bucket(client, bucket: str) -> None:
    from minio.error import S3Error

    try:
        client.make_bucket(bucket)
    except S3Error as exc:
        # another worker created it between the check and here
        if exc.code not in ("BucketAlreadyOwnedByYou", "BucketAlreadyExists"):
            raise


@dataclass(frozen=True)
class _RemoteObject:
    key: str
    size: int
    etag: str


def _list_objects(bucket: _Bucket, prefix: str) -> dict[str, _RemoteObject]:
    """Every object under ``prefix`` (recursive), folder markers left out."""
    list_prefix = f"{prefix}/" if prefix else None

    def listing() -> dict[str, _RemoteObject]:
        found = {}
        for item in bucket.client.list_objects(bucket.name, prefix=list_prefix, recursive=True):
            if item.is_dir or not item.object_name:
                continue
            found[item.object_name] = _RemoteObject(item.object_name, int(item.size or 0), _etag(item.etag))
        return found

    return bucket.call(f"listing {bucket.uri(prefix)}", listing, key=prefix)


def _stat_object(bucket: _Bucket, key: str) -> _RemoteObject:
    info = bucket.call(bucket.uri(key), lambda: bucket.client.stat_object(bucket.name, key))
    return _RemoteObject(key, int(info.size or 0), _etag(info.etag))


def _etag(value: str | None) -> str:
    return (value or "").strip('"').lower()
