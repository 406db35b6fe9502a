"""The container images the components run in, chosen in one place.

``docker/IMAGE`` (one line) names the image repository with its moving tag (``:main``). The
default a pipeline is compiled with is that repository at the commit of this checkout,
``:sha-<full commit>``, the tag CI publishes for every commit pushed to ``main``
(``.github/workflows/images.yml``): a tag that never moves, so a node cannot run a stale image.
``MASKPIPE_IMAGE`` (or ``pipeline.py --image``) overrides it at compile time; ``:main`` is used
only when named there. The serving image (``docker/Dockerfile.serve``, for the ``deploy`` step
and the InferenceService) is the same reference with ``-serve`` appended to its tag, as CI tags
it; ``MASKPIPE_SERVE_IMAGE`` overrides.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path
from typing import Optional

REPO = Path(__file__).resolve().parent.parent
IMAGE_FILE = REPO / "docker" / "IMAGE"
# Used only when docker/IMAGE is missing (e.g. a source checkout without the docker folder).
FALLBACK_IMAGE = "ghcr.io/maskpipe/maskpipe:main"


def read_default_image(image_file: Path = IMAGE_FILE) -> str:
    """The first non-empty, non-comment line of ``image_file``, or FALLBACK_IMAGE."""
    try:
        lines = image_file.read_text().splitlines()
    except FileNotFoundError:
        return FALLBACK_IMAGE
    for line in lines:
        line = line.strip()
        if line and not line.startswith("#"):
            return line
    return FALLBACK_IMAGE


def checkout_commit(repo: Path = REPO) -> Optional[str]:
    """The full commit sha of the git checkout at ``repo``, or None (no git, not a checkout)."""
    try:
        result = subprocess.run(
            ["git", "-C", str(repo), "rev-parse", "--verify", "-q", "HEAD^{commit}"],
            capture_output=True, text=True, timeout=10,
        )  # fmt: skip
    except (OSError, subprocess.TimeoutExpired):
        return None
    sha = result.stdout.strip()
    return sha if result.returncode == 0 and len(sha) == 40 else None


def repository_of(image: str) -> str:
    """``registry:5000/name:tag`` -> ``registry:5000/name`` (a colon in the host is no tag)."""
    head, sep, tail = image.rpartition(":")
    return head if sep and "/" not in tail else image


def pinned_image(image: str, commit: Optional[str]) -> str:
    """``image``'s repository at ``:sha-<commit>``; ``image`` itself when the commit is unknown."""
    return f"{repository_of(image)}:sha-{commit}" if commit else image


def serving_image(image: str) -> str:
    """``registry/name:tag`` -> ``registry/name:tag-serve`` (no tag: ``:main-serve``)."""
    head, sep, tail = image.rpartition(":")
    if sep and "/" not in tail:
        return f"{head}:{tail}-serve"
    return f"{image}:main-serve"


MOVING_IMAGE = read_default_image()  # docker/IMAGE: the repository and its moving tag
DEFAULT_IMAGE = pinned_image(MOVING_IMAGE, checkout_commit())
# False when no commit could be found: DEFAULT_IMAGE is then the moving tag, which a cluster
# compile refuses unless it was chosen explicitly (pipeline.py --image / MASKPIPE_IMAGE).
DEFAULT_IMAGE_PINNED = DEFAULT_IMAGE != MOVING_IMAGE or ":sha-" in MOVING_IMAGE
IMAGE = os.environ.get("MASKPIPE_IMAGE", "").strip() or DEFAULT_IMAGE
SERVE_IMAGE = os.environ.get("MASKPIPE_SERVE_IMAGE", "").strip() or serving_image(IMAGE)
