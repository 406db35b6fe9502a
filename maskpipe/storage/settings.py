"""Read the S3 endpoint, credentials and retry budget from the environment (never logging the keys).

* ``MINIO_ENDPOINT`` (``host:port`` or ``http(s)://host:port``), ``MINIO_ACCESS_KEY``,
  ``MINIO_SECRET_KEY``, ``MINIO_SECURE`` (``true``/``false``, for a bare ``host:port``;
  default ``true``), ``MINIO_REGION``;
* or the AWS names: ``AWS_ENDPOINT_URL_S3`` / ``AWS_ENDPOINT_URL``, ``AWS_ACCESS_KEY_ID``,
  ``AWS_SECRET_ACCESS_KEY``, ``AWS_DEFAULT_REGION`` / ``AWS_REGION``;
* tuning: ``MASKPIPE_S3_RETRIES`` (attempts per request, default 5), ``MASKPIPE_S3_BACKOFF``
  (first back-off in seconds, doubled per retry, default 1), ``MASKPIPE_S3_CONNECT_TIMEOUT``
  (default 3 s), ``MASKPIPE_S3_READ_TIMEOUT`` (default 60 s).

The region defaults to ``us-east-1``: without one, the minio client first asks the server
for the bucket's location (GetBucketLocation), which a Kubeflow profile namespace's keys may
not do.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Callable, Mapping, TypeVar
from urllib.parse import urlsplit

from maskpipe.errors import StorageError

T = TypeVar("T")

_ENDPOINT_VARS = ("MINIO_ENDPOINT", "AWS_ENDPOINT_URL_S3", "AWS_ENDPOINT_URL")
_KEY_VARS = (("MINIO_ACCESS_KEY", "MINIO_SECRET_KEY"), ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"))
_REGION_VARS = ("MINIO_REGION", "AWS_DEFAULT_REGION", "AWS_REGION")
# What S3 clients sign with when nobody names a region; SeaweedFS and MinIO accept any.
DEFAULT_REGION = "us-east-1"
_ENV_HELP = (
    "set MINIO_ENDPOINT (host:port or http(s)://host:port), MINIO_ACCESS_KEY and MINIO_SECRET_KEY "
    "(and MINIO_SECURE=false for a plain-http host:port), or AWS_ENDPOINT_URL, AWS_ACCESS_KEY_ID "
    "and AWS_SECRET_ACCESS_KEY"
)


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
