"""What a Kubeflow profile namespace's own object-store keys may reach: the bucket and its prefixes.

The KFP 2.17 profile controller (``pipelines-profile-controller/sync.py`` in kubeflow/pipelines)
gives each profile namespace a SeaweedFS user, stored in that namespace's Secret
``mlpipeline-minio-artifact``, whose policy allows only these prefixes of bucket ``mlpipeline``.
One statement of that rule for the storage errors and for ``pipeline.py submit``'s check.
"""

from __future__ import annotations

PROFILE_BUCKET = "mlpipeline"


def allowed_prefixes(namespace: str) -> list[str]:
    """The prefixes of ``mlpipeline`` that ``namespace``'s keys may read and write."""
    return ["artifacts/", f"private-artifacts/{namespace}/", f"private/{namespace}/", "shared/"]


def allowed_pattern(namespace: str = "<ns>") -> str:
    """The allowed prefixes in one line: ``s3://mlpipeline/{artifacts, private-artifacts/<ns>, ...}/*``."""
    names = ", ".join(prefix.rstrip("/") for prefix in allowed_prefixes(namespace))
    return f"s3://{PROFILE_BUCKET}/{{{names}}}/*"
