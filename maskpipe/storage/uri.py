"""Parse ``s3://bucket/prefix`` URIs and keep relative paths inside their root."""

from __future__ import annotations

import os
import re
from pathlib import PurePosixPath

from maskpipe.errors import StorageError

S3_SCHEME = "s3://"
_BUCKET_RE = re.compile(r"^[a-z0-9][a-z0-9.\-]{1,61}[a-z0-9]$")


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
