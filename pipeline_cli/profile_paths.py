"""Data, resume and root paths a Kubeflow profile namespace's keys cannot reach, refused before a submit.

A run that reads its data or writes its resume state in bucket ``mlpipeline`` outside the
prefixes of ``maskpipe.profile_namespace`` fails with AccessDenied after its pods have
started; ``pipeline.py submit`` refuses it first. Other buckets are not judged: an install may
grant them by its own policy.
"""

from __future__ import annotations

from typing import List, Optional, Tuple

from maskpipe.profile_namespace import PROFILE_BUCKET, allowed_prefixes


def _split(location: str) -> Optional[Tuple[str, str]]:
    """``s3://bucket/key`` / ``minio://bucket/key`` / ``bucket/key`` -> (bucket, key)."""
    for scheme in ("s3://", "minio://"):
        if location.startswith(scheme):
            location = location[len(scheme):]
            break
    else:
        if "://" in location or location.startswith("/"):
            return None  # a mounted path or another store: nothing to say
    bucket, _, key = location.partition("/")
    return bucket, key


def unreachable(location: str, namespace: str, *, below: str = "") -> bool:
    """True when ``location`` (plus ``below``, what the run appends) lies in ``mlpipeline``
    outside every prefix ``namespace``'s keys may reach."""
    parts = _split(location)
    if parts is None or parts[0] != PROFILE_BUCKET:
        return False
    key = parts[1].strip("/")
    key = f"{key}/{below}" if key else below
    return not any((key + "/").startswith(prefix) for prefix in allowed_prefixes(namespace))


def check_profile_paths(paths: List[Tuple[str, str, str]], namespace: Optional[str]) -> Optional[str]:
    """The one-line refusal for the first of ``(flag, location, below)`` that ``namespace``'s
    keys cannot reach, or None (also when the namespace is unknown: single-user installs)."""
    if not namespace:
        return None
    for flag, location, below in paths:
        if location and unreachable(location, namespace, below=below):
            allowed = ", ".join(f"s3://{PROFILE_BUCKET}/{p}" for p in allowed_prefixes(namespace))
            return (
                f"{flag} {location} is outside what namespace {namespace}'s keys (Secret "
                f"mlpipeline-minio-artifact) may reach: only {allowed}; put it under "
                f"s3://{PROFILE_BUCKET}/private/{namespace}/ (or shared/)"
            )
    return None
