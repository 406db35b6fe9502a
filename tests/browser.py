"""Look at an HTML report the way a person would: headless Chromium (Debian's ``chromium``).

``check_images`` loads a copy of the page with a small script appended that lists every
``<img>`` and whether it decoded (``complete && naturalWidth > 0``), and reads the list back
from ``--dump-dom``; ``screenshot`` renders the page to a PNG; ``is_blank`` says whether a
screenshot shows nothing but background. Each run gets a fresh profile folder and no network
features, so nothing outside the page can load.
"""

from __future__ import annotations

import base64
import html
import json
import re
import shutil
import subprocess
import tempfile
from pathlib import Path

import numpy as np

CHROMIUM_FLAGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
    "--hide-scrollbars", "--virtual-time-budget=10000",
]  # fmt: skip
_MARKER = "maskpipe-image-check"
_CHECK_SCRIPT = f"""<script>
window.addEventListener("load", () => {{
  const images = Array.from(document.images).map(img => ({{
    alt: img.alt, ok: img.complete && img.naturalWidth > 0, width: img.naturalWidth
  }}));
  const out = document.createElement("pre");
  out.id = "{_MARKER}";
  out.textContent = JSON.stringify(images);
  document.body.appendChild(out);
}});
</script>"""


def chromium() -> str | None:
    """Debian's chromium; elsewhere (e.g. a GitHub runner) another Chromium build."""
    for name in ("chromium", "chromium-browser", "google-chrome"):
        if shutil.which(name):
            return shutil.which(name)
    return None


def _run(args: list[str], timeout: float = 90) -> str:
    binary = chromium()
    if binary is None:
        raise RuntimeError("chromium is not installed: apt-get install -y chromium (.ci/run does it)")
    with tempfile.TemporaryDirectory(prefix="chromium-profile-") as profile:
        result = subprocess.run(
            [binary, *CHROMIUM_FLAGS, f"--user-data-dir={profile}", *args],
            capture_output=True, text=True, timeout=timeout,
        )  # fmt: skip
    if result.returncode != 0:
        raise RuntimeError(f"chromium exited {result.returncode}: {result.stderr[-2000:]}")
    return result.stdout


def check_images(page: Path, workdir: Path) -> list[dict]:
    """Every ``<img>`` of ``page`` after loading: ``{"alt", "ok", "width"}``."""
    text = Path(page).read_text(encoding="utf-8")
    checked = workdir / f"{Path(page).stem}.checked.html"
    checked.write_text(text.replace("</body>", _CHECK_SCRIPT + "</body>"), encoding="utf-8")
    dom = _run(["--dump-dom", checked.resolve().as_uri()])
    found = re.search(rf'<pre id="{_MARKER}">(.*?)</pre>', dom, re.S)
    if found is None:
        raise AssertionError(f"the check script did not run on {page}; dump starts: {dom[:300]!r}")
    return json.loads(html.unescape(found.group(1)))


def screenshot(page: Path, out_png: Path, size: tuple[int, int] = (1280, 2000)) -> Path:
    _run([f"--screenshot={out_png}", f"--window-size={size[0]},{size[1]}", Path(page).resolve().as_uri()])
    return out_png


def is_blank(png: Path) -> bool:
    """True when under 2 % of the pixels differ from the most common colour (the background)."""
    from PIL import Image

    with Image.open(png) as image:
        pixels = np.asarray(image.convert("RGB")).reshape(-1, 3)
    colours, counts = np.unique(pixels, axis=0, return_counts=True)
    background = colours[counts.argmax()]
    differing = np.any(np.abs(pixels.astype(int) - background) > 16, axis=1).mean()
    return bool(differing < 0.02)


def embedded_svg_texts(page_html: str) -> list[str]:
    """The text of every chart (the SVGs embedded as data, whose text stays text)."""
    texts = []
    for data in re.findall(r'src="data:image/svg\+xml;base64,([A-Za-z0-9+/=]+)"', page_html):
        svg = base64.b64decode(data).decode("utf-8")
        texts += [html.unescape(t).strip() for t in re.findall(r"<text\b[^>]*>([^<]*)</text>", svg)]
    return texts


def external_references(page_html: str) -> list[str]:
    """Anything that would make the page load a resource from elsewhere, charts included."""
    svgs = [
        base64.b64decode(data).decode("utf-8")
        for data in re.findall(r'src="data:image/svg\+xml;base64,([A-Za-z0-9+/=]+)"', page_html)
    ]
    found = []
    for text in [page_html, *svgs]:
        found += re.findall(r"""(?:src|href)\s*=\s*["']?(?!data:|#)([a-z]+:[^"'\s>]*|//[^"'\s>]*)""", text, re.I)
        found += re.findall(r"url\(\s*['\"]?(?!data:|#)([^)'\"]+)", text, re.I)
        found += re.findall(r"<script\b|<link\b|@import|@font-face|<iframe\b", text, re.I)
    found += re.findall(r"https?://", page_html)
    return found
