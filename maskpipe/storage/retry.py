"""Tell transient S3 failures from permanent ones, retry the first and word the second as one line.

Transient failures (connection refused or reset, time-outs, 5xx, a cut-off download) are
retried with exponential back-off and jitter; everything else becomes a
:class:`~maskpipe.errors.StorageError` that names the object and what to fix.
"""

from __future__ import annotations

import http.client
import logging
import random
import time
from typing import Callable, TypeVar

from maskpipe.errors import StorageError
from maskpipe.profile_namespace import PROFILE_BUCKET, allowed_pattern
from maskpipe.storage.settings import S3Settings
from maskpipe.storage.uri import is_s3, parse_s3_uri

log = logging.getLogger("maskpipe.storage")

T = TypeVar("T")

_MAX_BACKOFF_S = 8.0
# The bucket of a Kubeflow install and the prefixes its profile controller lets a namespace's
# own keys use (maskpipe.profile_namespace states the rule).
KFP_BUCKET = PROFILE_BUCKET
KFP_NAMESPACE_PREFIXES = allowed_pattern()

_CREDENTIAL_CODES = {
    "InvalidAccessKeyId",
    "SignatureDoesNotMatch",
    "InvalidToken",
    "ExpiredToken",
    "InvalidClientTokenId",
    "AuthorizationHeaderMalformed",
}
_TRANSIENT_CODES = {"InternalError", "ServiceUnavailable", "SlowDown", "RequestTimeout", "RequestTimeTooSkewed"}


class _RetriesExhausted(StorageError):
    """Every attempt failed with a transient error (endpoint down or unreachable)."""


class _TruncatedDownload(Exception):
    """The connection ended before the object's full size arrived; worth another attempt."""


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
