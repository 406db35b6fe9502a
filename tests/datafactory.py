"""Build tiny data sets on the fly for tests: the competition layout, with chosen quirks.

Images are 24x32 (width x height) so a whole data set is written in milliseconds. Typical use::

    data = make_dataset(tmp_path)                      # 12 people, train.csv, 3 eval images
    truncate(data.image("000001_female_Asian_45", "mask2"))
    write_image(data.folder("000002_male_Asian_20") / "mask1.png")   # a second mask1
"""

from __future__ import annotations

import struct
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np
from PIL import Image

from maskpipe.labels import MASK_STEMS

TINY = (24, 32)  # (width, height)
STEMS: tuple[str, ...] = tuple(MASK_STEMS)

# Two people in each of the six gender x age strata, so a split has people on both sides.
DEFAULT_FOLDERS: tuple[str, ...] = (
    "000001_female_Asian_45", "000002_male_Asian_20", "000003_female_Asian_22",
    "000004_male_Asian_33", "000005_female_Asian_60", "000006_male_Asian_60",
    "000007_female_Asian_19", "000008_male_Asian_52", "000009_female_Asian_38",
    "000010_male_Asian_27", "000011_female_Asian_60", "000012_male_Asian_60",
)  # fmt: skip


@dataclass
class DataSet:
    """Where make_dataset put things."""

    root: Path
    images_dir: Path
    folders: list[str]
    eval_ids: list[str] = field(default_factory=list)

    def folder(self, name: str) -> Path:
        return self.images_dir / name

    def image(self, folder: str, stem: str, ext: str = ".jpg") -> Path:
        return self.images_dir / folder / f"{stem}{ext}"

    def eval_image(self, image_id: str) -> Path:
        return self.root / "eval" / "images" / image_id


def profile_folder(pid: str, gender: str, age: int, race: str = "Asian") -> str:
    return f"{pid}_{gender}_{race}_{age}"


def write_image(
    path: Path,
    *,
    size: tuple[int, int] = TINY,
    mode: str = "RGB",
    colour: int = 120,
    fmt: str | None = None,
) -> Path:
    """Write a small image; the format follows the extension unless ``fmt`` is given.
    ``mode`` may be RGB, L, P, RGBA, CMYK (JPEG) or I;16 (PNG)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fmt = fmt or ("PNG" if path.suffix.lower() == ".png" else "JPEG")
    width, height = size
    ramp = (np.arange(width * height, dtype=np.int64).reshape(height, width) + colour) % 256
    rgb = Image.fromarray(np.stack([ramp, ramp[::-1], np.full_like(ramp, colour)], -1).astype(np.uint8))
    if mode == "I;16":
        image = Image.fromarray((ramp * 257).astype(np.uint16))
    else:
        image = rgb.convert(mode)
    image.save(path, format=fmt)
    return path


def make_profile(
    images_dir: Path,
    folder: str,
    *,
    stems: Iterable[str] = STEMS,
    ext: str | dict[str, str] = ".jpg",
    size: tuple[int, int] = TINY,
) -> Path:
    """One profile folder with a photo per stem; ``ext`` may map stems to extensions."""
    target = Path(images_dir) / folder
    target.mkdir(parents=True, exist_ok=True)
    for i, stem in enumerate(stems):
        suffix = ext.get(stem, ".jpg") if isinstance(ext, dict) else ext
        write_image(target / f"{stem}{suffix}", size=size, colour=30 * i)
    return target


def make_dataset(
    root: Path,
    folders: Sequence[str] = DEFAULT_FOLDERS,
    *,
    layout: str = "competition",
    train_csv: bool = True,
    eval_images: int = 3,
    size: tuple[int, int] = TINY,
) -> DataSet:
    """A data root with ``folders`` as people (7 photos each).

    ``layout``: ``competition`` (train/images, train.csv, eval/), ``train_dir`` (the train/
    folder itself) or ``profiles`` (profile folders at the root, nothing else).
    """
    root = Path(root)
    images_dir = {"competition": root / "train" / "images", "train_dir": root / "images", "profiles": root}[layout]
    images_dir.mkdir(parents=True, exist_ok=True)
    for folder in folders:
        make_profile(images_dir, folder, size=size)
    if train_csv and layout != "profiles":
        write_train_csv(images_dir.parent / "train.csv", folders)
    data = DataSet(root, images_dir, list(folders))
    if eval_images and layout == "competition":
        data.eval_ids = write_eval(root, eval_images, size=size)
    return data


def write_train_csv(path: Path, folders: Iterable[str], rows: Iterable[str] = ()) -> Path:
    """train.csv for ``folders`` (labels from the names) plus any raw extra ``rows``."""
    lines = ["id,gender,race,age,path"]
    for folder in folders:
        pid, gender, race, age = folder.split("_")
        lines.append(f"{pid},{gender},{race},{age},{folder}")
    lines.extend(rows)
    path.write_text("\n".join(lines) + "\n")
    return path


def write_eval(root: Path, count: int, *, size: tuple[int, int] = TINY, listed: Sequence[str] | None = None) -> list[str]:
    """``count`` eval images named like the competition's (hex + .jpg) and an info.csv listing
    them (or ``listed`` instead, to list missing or repeated ids)."""
    images = Path(root) / "eval" / "images"
    images.mkdir(parents=True, exist_ok=True)
    ids = [f"{i:040x}.jpg" for i in range(0xE0A1, 0xE0A1 + count)]
    for i, image_id in enumerate(ids):
        write_image(images / image_id, size=size, colour=20 * i)
    rows = ids if listed is None else list(listed)
    (Path(root) / "eval" / "info.csv").write_text("ImageID,ans\n" + "".join(f"{r},0\n" for r in rows))
    return ids


def truncate(path: Path, keep: float = 0.6) -> Path:
    """Cut the end off a file, as an interrupted copy does."""
    data = Path(path).read_bytes()
    Path(path).write_bytes(data[: max(1, int(len(data) * keep))])
    return Path(path)


def write_zero_byte(path: Path) -> Path:
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Path(path).write_bytes(b"")
    return Path(path)


def write_not_an_image(path: Path) -> Path:
    """A text file with an image extension (e.g. an HTML error page saved as .jpg)."""
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Path(path).write_text("<html><body>403 Forbidden</body></html>\n")
    return Path(path)


def write_huge_png_header(path: Path, width: int = 8000, height: int = 6000) -> Path:
    """A PNG whose header claims ``width`` x ``height`` (48 MP by default) without the pixels:
    enough to test the size guard, which must reject it before decoding anything."""

    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    data = b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\x00" * 64)) + chunk(b"IEND", b"")
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Path(path).write_bytes(data)
    return Path(path)
