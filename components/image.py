"""The container images the components run in, chosen in one place.

``docker/IMAGE`` (one line, written by the image build) names the default; the environment
variable ``MASKPIPE_IMAGE`` overrides it at compile time, e.g. to pin a commit tag. The serving
image (``docker/Dockerfile.serve``, for the ``deploy`` step and the InferenceService) is the same
reference with ``-serve`` appended to its tag, as CI tags it; ``MASKPIPE_SERVE_IMAGE`` overrides.
"""

from __future__ import annotations

import os
from pathlib import Path

IMAGE_FILE = Path(__file__).resolve().parent.parent / "docker" / "IMAGE"
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


DEFAULT_IMAGE = read_default_image()
IMAGE = os.environ.get("MASKPIPE_IMAGE", "").strip() or DEFAULT_IMAGE


def serving_image(image: str) -> str:
    """``registry/name:tag`` -> ``registry/name:tag-serve`` (no tag: ``:main-serve``)."""
    head, sep, tail = image.rpartition(":")
    if sep and "/" not in tail:
        return f"{head}:{tail}-serve"
    return f"{image}:main-serve"


SERVE_IMAGE = os.environ.get("MASKPIPE_SERVE_IMAGE", "").strip() or serving_image(IMAGE)
