"""Local folders and ``s3://bucket/prefix`` (MinIO or any S3 endpoint) behind one small interface.

Every data root in maskpipe is either a local folder or an ``s3://`` URI. Readers ask for
``list_files(root)`` and ``localize(root, rel_paths)`` and get local paths back; for S3 the
objects are downloaded in parallel into a cache folder that a rerun reuses.

The endpoint and the credentials come only from the environment and are never logged:

* ``MINIO_ENDPOINT`` (``host:port`` or ``http(s)://host:port``), ``MINIO_ACCESS_KEY``,
  ``MINIO_SECRET_KEY``, ``MINIO_SECURE`` (``true``/``false``, for a bare ``host:port``;
  default ``true``), ``MINIO_REGION``;
* or the AWS names: ``AWS_ENDPOINT_URL_S3`` / ``AWS_ENDPOINT_URL``, ``AWS_ACCESS_KEY_ID``,
  ``AWS_SECRET_ACCESS_KEY``, ``AWS_DEFAULT_REGION`` / ``AWS_REGION``.

The region defaults to ``us-east-1``: without one, the minio client first asks the server
for the bucket's location (GetBucketLocation), which a Kubeflow profile namespace's keys may
not do. Nothing on the normal paths (index, read, upload, the resume mirror) needs more than
the prefix it works on: the preflight's HeadBucket is only a check, and a denied one is not
fatal; buckets are created only when HeadBucket says one is missing.

Tuning (also environment): ``MASKPIPE_S3_RETRIES`` (attempts per request, default 5),
``MASKPIPE_S3_BACKOFF`` (first back-off in seconds, doubled per retry, default 1),
``MASKPIPE_S3_CONNECT_TIMEOUT`` (default 3 s), ``MASKPIPE_S3_READ_TIMEOUT`` (default 60 s),
``MASKPIPE_CACHE_DIR`` (download cache, default ``~/.cache/maskpipe/s3``).

Before the first transfer to a bucket a short preflight (at most two attempts) checks the
endpoint, the credentials and the bucket, so a wrong setting fails within seconds with a
:class:`~maskpipe.errors.StorageError` that says what to fix. Later transient failures
(connection refused or reset, time-outs, 5xx) are retried with exponential back-off.
"""

from __future__ import annotations

import hashlib
import http.client
import logging
import os
import random
import re
import shutil
import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor, as_completed
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Callable, Mapping, TypeVar
from urllib.parse import urlsplit

from maskpipe.atomic import atomic_path, temporary_file_beside
from maskpipe.errors import StorageError

log = logging.getLogger(__name__)

T = TypeVar("T")

S3_SCHEME = "s3://"
# Files up to this size go up in one PUT, larger ones as multipart uploads of this part size;
# either way the object only becomes visible once complete.
PART_SIZE = 16 * 1024 * 1024
_CHUNK = 1024 * 1024
_MAX_BACKOFF_S = 8.0
_PREFLIGHT_ATTEMPTS = 2
_BUCKET_RE = re.compile(r"^[a-z0-9][a-z0-9.\-]{1,61}[a-z0-9]$")
_MD5_ETAG_RE = re.compile(r"^[0-9a-f]{32}$")
_MULTIPART_ETAG_RE = re.compile(r"^[0-9a-f]{32}-(\d+)$")
# Localizing more files than this lists the prefix once instead of asking for each object.
_STAT_EACH_LIMIT = 32

_ENDPOINT_VARS = ("MINIO_ENDPOINT", "AWS_ENDPOINT_URL_S3", "AWS_ENDPOINT_URL")
_KEY_VARS = (("MINIO_ACCESS_KEY", "MINIO_SECRET_KEY"), ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"))
_REGION_VARS = ("MINIO_REGION", "AWS_DEFAULT_REGION", "AWS_REGION")
# What S3 clients sign with when nobody names a region; SeaweedFS and MinIO accept any.
DEFAULT_REGION = "us-east-1"
# The bucket of a Kubeflow install and the prefixes its profile controller (KFP 2.17
# pipelines-profile-controller/sync.py) lets a namespace's own keys use.
KFP_BUCKET = "mlpipeline"
KFP_NAMESPACE_PREFIXES = "s3://mlpipeline/{artifacts, private-artifacts/<ns>, private/<ns>, shared}/*"
_ENV_HELP = (
    "set MINIO_ENDPOINT (host:port or http(s)://host:port), MINIO_ACCESS_KEY and MINIO_SECRET_KEY "
    "(and MINIO_SECURE=false for a plain-http host:port), or AWS_ENDPOINT_URL, AWS_ACCESS_KEY_ID "
    "and AWS_SECRET_ACCESS_KEY"
)
_CREDENTIAL_CODES = {
    "InvalidAccessKeyId",
    "SignatureDoesNotMatch",
    "InvalidToken",
    "ExpiredToken",
    "InvalidClientTokenId",
    "AuthorizationHeaderMalformed",
}
_TRANSIENT_CODES = {"InternalError", "ServiceUnavailable", "SlowDown", "RequestTimeout", "RequestTimeTooSkewed"}


# --------------------------------------------------------------------------- URIs


def is_s3(uri: str | os.PathLike[str]) -> bool:
    """True for ``s3://...`` URIs, False for local paths."""
    return isinstance(uri, str) and uri.startswith(S3_SCHEME)


def parse_s3_uri(uri: str) -> tuple[str, str]:
    """Split ``s3://bucket/some/prefix/`` into ``("bucket", "some/prefix")``.

    Raises:
        StorageError: the URI is not ``s3://``, has no bucket, or the bucket name is invalid.
    """
    if not is_s3(uri):
        raise StorageError(f"{uri!r} is not an s3:// URI: write s3://BUCKET/PREFIX")
    bucket, _, prefix = uri[len(S3_SCHEME):].partition("/")
    if not bucket:
        raise StorageError(f"{uri!r} has no bucket: write s3://BUCKET/PREFIX, e.g. s3://datasets/mask")
    if not _BUCKET_RE.match(bucket) or ".." in bucket:
        raise StorageError(
            f"{uri!r}: {bucket!r} is not a valid bucket name "
            "(3-63 lowercase letters, digits, '.' or '-', starting and ending with a letter or digit)"
        )
    return bucket, prefix.strip("/")


def _join_key(prefix: str, rel_path: str) -> str:
    return f"{prefix}/{rel_path}" if prefix else rel_path


def _safe_rel_path(rel_path: str, root: str) -> PurePosixPath:
    """The relative path as parts, refusing absolute paths and ``..`` that would leave ``root``."""
    text = str(rel_path).replace("\\", "/")
    rel = PurePosixPath(text)
    if rel.is_absolute() or not rel.parts or ".." in rel.parts or text.endswith("/"):
        raise StorageError(
            f"{rel_path!r} is not a file path inside {root}: paths must be relative, "
            "without '..', and name a file"
        )
    return rel


# --------------------------------------------------------------------------- settings


@dataclass(frozen=True)
class S3Settings:
    """Where the S3 endpoint is and how hard to try. The keys never appear in repr or logs."""

    endpoint: str  # host:port
    secure: bool
    region: str
    access_key: str = field(repr=False)
    secret_key: str = field(repr=False)
    key_vars: tuple[str, str] = ("MINIO_ACCESS_KEY", "MINIO_SECRET_KEY")
    endpoint_var: str = "MINIO_ENDPOINT"
    attempts: int = 5
    backoff_s: float = 1.0
    connect_timeout_s: float = 3.0
    read_timeout_s: float = 60.0

    @property
    def url(self) -> str:
        return f"{'https' if self.secure else 'http'}://{self.endpoint}"

    @property
    def identity(self) -> tuple[str, bool, str, str, str]:
        """Who talks to which server; retry tuning left out."""
        return (self.endpoint, self.secure, self.region, self.access_key, self.secret_key)

    @property
    def credential_hint(self) -> str:
        return f"check {self.key_vars[0]} and {self.key_vars[1]} (values are not shown)"

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> S3Settings:
        """Read the endpoint, credentials and retry budget from the environment.

        Raises:
            StorageError: no endpoint or no credentials are set, or a value is malformed.
        """
        env = os.environ if environ is None else environ
        endpoint_var = next((name for name in _ENDPOINT_VARS if env.get(name, "").strip()), None)
        if endpoint_var is None:
            raise StorageError(f"no S3 endpoint configured for an s3:// path: {_ENV_HELP}")
        endpoint, secure = _parse_endpoint(env[endpoint_var].strip(), endpoint_var, env)
        key_vars = next((pair for pair in _KEY_VARS if env.get(pair[0]) and env.get(pair[1])), None)
        if key_vars is None:
            raise StorageError(f"no S3 credentials for endpoint {endpoint}: {_ENV_HELP}")
        region = next((env[name].strip() for name in _REGION_VARS if env.get(name, "").strip()), DEFAULT_REGION)
        return cls(
            endpoint=endpoint,
            secure=secure,
            region=region,
            access_key=env[key_vars[0]],
            secret_key=env[key_vars[1]],
            key_vars=key_vars,
            endpoint_var=endpoint_var,
            attempts=max(1, _env_number(env, "MASKPIPE_S3_RETRIES", 5, int)),
            backoff_s=max(0.0, _env_number(env, "MASKPIPE_S3_BACKOFF", 1.0, float)),
            connect_timeout_s=_env_number(env, "MASKPIPE_S3_CONNECT_TIMEOUT", 3.0, float),
            read_timeout_s=_env_number(env, "MASKPIPE_S3_READ_TIMEOUT", 60.0, float),
        )


_ENDPOINT_FORM = "use host:port or http(s)://host:port"


def _parse_endpoint(value: str, var: str, env: Mapping[str, str]) -> tuple[str, bool]:
    if "@" in value:
        # user:password@host would put a credential into every URL and message: refuse it
        # without echoing the value.
        raise StorageError(
            f"{var} holds a user name or password before '@' (value not shown): put the keys in "
            f"MINIO_ACCESS_KEY and MINIO_SECRET_KEY and {_ENDPOINT_FORM}"
        )
    if "://" in value:
        parts = urlsplit(value)
        if parts.scheme not in ("http", "https") or not parts.netloc or parts.path.strip("/"):
            raise StorageError(f"{var}={value!r} is not an endpoint: {_ENDPOINT_FORM}")
        netloc, secure = parts.netloc, parts.scheme == "https"
    else:
        if "/" in value:
            raise StorageError(f"{var}={value!r} is not an endpoint: {_ENDPOINT_FORM}")
        flag = env.get("MINIO_SECURE", "true").strip().lower()
        if flag not in ("true", "false", "1", "0", "yes", "no"):
            raise StorageError(f"MINIO_SECURE={flag!r} is not a boolean: use true or false")
        netloc, secure = value, flag in ("true", "1", "yes")
    _check_host_port(netloc, var)
    return netloc, secure


def _check_host_port(netloc: str, var: str) -> None:
    """Refuse what the minio client would reject later with a bare ValueError (a port that is
    no number or out of range, a broken IPv6 literal, a space in the host)."""
    try:
        parts = urlsplit(f"//{netloc}")
        parts.port  # noqa: B018 - the property validates the port
    except ValueError as exc:
        raise StorageError(f"{var}={netloc!r} is not an endpoint ({exc}): {_ENDPOINT_FORM}") from None
    if not parts.hostname or any(ch.isspace() for ch in netloc):
        raise StorageError(f"{var}={netloc!r} is not an endpoint: {_ENDPOINT_FORM}")


def _env_number(env: Mapping[str, str], name: str, default: T, kind: Callable[[str], T]) -> T:
    raw = env.get(name, "").strip()
    if not raw:
        return default
    try:
        return kind(raw)
    except ValueError:
        raise StorageError(f"{name}={raw!r} is not a number") from None


# --------------------------------------------------------------------------- client and retries


class _RetriesExhausted(StorageError):
    """Every attempt failed with a transient error (endpoint down or unreachable)."""


class _TruncatedDownload(Exception):
    """The connection ended before the object's full size arrived; worth another attempt."""


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

    # Retries happen in _retrying, where they are counted, logged and bounded; urllib3's own
    # retries would multiply that budget and hide which object was failing.
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


def _is_transient(exc: BaseException) -> bool:
    import urllib3.exceptions as u3
    from minio.error import InvalidResponseError, S3Error, ServerError

    if isinstance(exc, _TruncatedDownload):
        return True
    if isinstance(exc, u3.MaxRetryError):
        return not isinstance(exc.reason, u3.SSLError)
    if isinstance(exc, u3.SSLError):
        return False
    if isinstance(exc, (u3.HTTPError, ConnectionError, TimeoutError, http.client.HTTPException)):
        return True
    if isinstance(exc, ServerError):
        return exc.status_code >= 500 or exc.status_code == 429
    if isinstance(exc, InvalidResponseError):
        status = getattr(exc, "_code", 0) or 0
        return status >= 500 or status == 429
    if isinstance(exc, S3Error):
        return exc.code in _TRANSIENT_CODES
    return False


def _reason(exc: BaseException) -> str:
    """A short cause for a message: the OS error text when there is one, never URLs or headers."""
    from minio.error import S3Error

    if isinstance(exc, S3Error):
        return f"{exc.code}: {exc.message}"
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if isinstance(current, OSError) and current.strerror:
            return current.strerror
        current = getattr(current, "reason", None) or current.__cause__ or current.__context__
    return type(exc).__name__


def _retrying(
    settings: S3Settings, what: str, func: Callable[[], T], attempts: int | None = None, uri: str | None = None
) -> T:
    """Call ``func``; retry transient failures with exponential back-off and jitter.

    ``what`` names the object or bucket for messages, ``uri`` the s3:// path it works on.
    Permanent failures and an exhausted budget become a StorageError.
    """
    budget = attempts or settings.attempts
    delay = settings.backoff_s
    for attempt in range(1, budget + 1):
        try:
            return func()
        except StorageError:
            raise
        except Exception as exc:  # noqa: BLE001 - classified just below
            if not _is_transient(exc):
                raise _permanent_error(settings, what, exc, uri) from exc
            if attempt == budget:
                raise _RetriesExhausted(
                    f"{what}: giving up after {budget} attempts against {settings.url} "
                    f"({_reason(exc)}). Check that the endpoint ({settings.endpoint_var}) is up and "
                    "reachable; MASKPIPE_S3_RETRIES sets the number of attempts"
                ) from exc
            pause = min(delay, _MAX_BACKOFF_S) * random.uniform(0.5, 1.0)
            log.warning("%s: %s; retry %d/%d in %.1f s", what, _reason(exc), attempt, budget - 1, pause)
            time.sleep(pause)
            delay *= 2
    raise AssertionError("unreachable")  # the loop returns or raises


def _permanent_error(settings: S3Settings, what: str, exc: BaseException, uri: str | None = None) -> StorageError:
    import urllib3.exceptions as u3
    from minio.error import S3Error

    if isinstance(exc, S3Error):
        if exc.code == "NoSuchBucket":
            bucket = exc.bucket_name or what
            return StorageError(
                f"bucket {bucket!r} does not exist at {settings.url}: create it "
                "(`maskpipe data upload` does) or fix the s3:// URI"
            )
        if exc.code in ("NoSuchKey", "NoSuchObject"):
            return StorageError(f"{what} does not exist at {settings.url}")
        if exc.code in _CREDENTIAL_CODES:
            return StorageError(
                f"{settings.url} rejected the credentials ({exc.code}) for {what}: "
                f"{settings.credential_hint}; for AuthorizationHeaderMalformed also MINIO_REGION"
            )
        if exc.code == "AccessDenied":
            return _access_denied(settings, what, uri)
        return StorageError(f"{what} failed at {settings.url}: {exc.code}: {exc.message}")
    if isinstance(exc, (u3.SSLError, u3.MaxRetryError)):
        return StorageError(
            f"TLS with {settings.url} failed for {what} ({_reason(exc)}): if the endpoint speaks plain "
            "http, set MINIO_SECURE=false or use an http:// endpoint URL"
        )
    if isinstance(exc, ValueError):
        return StorageError(f"{what}: {exc}")
    return StorageError(f"{what} failed at {settings.url}: {type(exc).__name__}: {_reason(exc)}")


def _access_denied(settings: S3Settings, what: str, uri: str | None) -> StorageError:
    """One line naming the denied path; under ``mlpipeline/`` also what a Kubeflow profile
    namespace's keys may use there, since that is the usual cause on a multi-user install."""
    if uri is None or not is_s3(uri) or parse_s3_uri(uri)[0] != KFP_BUCKET:
        return StorageError(
            f"{settings.url} denied access to {what}: {settings.credential_hint}, "
            f"and that these keys may read and write {uri or 'that bucket'}"
        )
    return StorageError(
        f"{settings.url} denied access to {what}: the keys of a Kubeflow profile namespace (its "
        f"mlpipeline-minio-artifact Secret) may use only {KFP_NAMESPACE_PREFIXES}; put the path under "
        f"s3://{KFP_BUCKET}/private/<your namespace>/ or s3://{KFP_BUCKET}/shared/, or use keys allowed "
        f"there: {settings.credential_hint}"
    )


# --------------------------------------------------------------------------- bucket access


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


# --------------------------------------------------------------------------- local files


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


# --------------------------------------------------------------------------- public API


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


# --------------------------------------------------------------------------- transfers


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
    return bool(multipart) and _multipart_etag(path, PART_SIZE) == obj.etag


def _md5_file(path: Path) -> str:
    digest = hashlib.md5(usedforsecurity=False)
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(_CHUNK), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _multipart_etag(path: Path, part_size: int) -> str:
    part_digests = []
    with open(path, "rb") as handle:
        for part in iter(lambda: handle.read(part_size), b""):
            part_digests.append(hashlib.md5(part, usedforsecurity=False).digest())
    combined = hashlib.md5(b"".join(part_digests), usedforsecurity=False).hexdigest()
    return f"{combined}-{len(part_digests)}"


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

