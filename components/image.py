"""The container image every component runs in, chosen in one place.

``docker/IMAGE`` (one line, written by the image build) names the default; the environment
variable ``MASKPIPE_IMAGE`` overrides it at compile time, e.g. to pin a commit tag.
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
