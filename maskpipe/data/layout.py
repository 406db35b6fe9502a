"""Find the data layout under a root and parse profile folder names.

Three layouts are recognised (paths relative to the data root):

* ``competition``: ``train/images/<profile>/<stem>.<ext>``, optionally ``train/train.csv`` and
  ``eval/info.csv`` + ``eval/images/``;
* ``train_dir``: the competition's ``train/`` folder itself: ``images/<profile>/...`` and
  optionally ``train.csv``;
* ``profiles``: a folder of profile folders, as the official baseline's ``--data_dir``.

A profile folder is named ``<id>_<gender>_<race>_<age>``, e.g. ``000001_female_Asian_45``. The
folder name, not the id, is the key of a person: ids repeat in the real set.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable

from maskpipe.errors import DataLayoutError
from maskpipe.labels import GENDERS

TRAIN_IMAGES = "train/images"
TRAIN_CSV = "train/train.csv"
EVAL_INFO = "eval/info.csv"
EVAL_IMAGES = "eval/images"

MIN_AGE, MAX_AGE = 0, 120

PROFILE_PATTERN = "<id>_<gender>_<race>_<age>, e.g. 000001_female_Asian_45"

EXPECTED_LAYOUTS = (
    "expected one of: (1) the competition layout train/images/<id>_<gender>_<race>_<age>/"
    "<stem>.jpg with optional train/train.csv and eval/info.csv + eval/images/; "
    "(2) the competition's train/ folder (images/<profile>/..., train.csv); "
    "(3) a folder of profile folders <id>_<gender>_<race>_<age>/ (the baseline's --data_dir)"
)


@dataclass(frozen=True)
class Profile:
    """One person's folder and the labels its name carries."""

    folder: str
    id: str
    gender: str  # "male" or "female", lower case
    race: str
    age: int


@dataclass(frozen=True)
class Layout:
    """Where things are under a data root. ``images_prefix`` is None when there is no train
    data (an eval-only root); ``""`` means the profile folders sit at the root."""

    kind: str
    images_prefix: str | None
    train_csv: str | None
    eval_info: str | None

    def image_path(self, rel_in_images: str) -> str:
        """Path relative to the data root of a path relative to the images folder."""
        assert self.images_prefix is not None
        return f"{self.images_prefix}/{rel_in_images}" if self.images_prefix else rel_in_images


def is_hidden(rel_path: str) -> bool:
    """True for paths that tools leave behind and that are never data: any component that
    starts with a dot (``.DS_Store``, AppleDouble ``._mask1.jpg``, ``.ipynb_checkpoints/``)
    and macOS zip residue (``__MACOSX/``)."""
    return any(part.startswith(".") or part == "__MACOSX" for part in rel_path.split("/"))


def parse_profile(folder: str) -> Profile:
    """Parse ``<id>_<gender>_<race>_<age>``; DataLayoutError naming the folder otherwise."""
    parts = folder.split("_")
    if len(parts) != 4 or not all(parts):
        raise DataLayoutError(
            f"profile folder {folder!r}: name does not parse; expected {PROFILE_PATTERN}. "
            "Rename the folder, or index with --skip-bad-profiles to skip it"
        )
    pid, gender, race, age_text = parts
    if gender.lower() not in GENDERS:
        raise DataLayoutError(
            f"profile folder {folder!r}: gender {gender!r} is not male or female; "
            f"expected {PROFILE_PATTERN}. Rename the folder, or use --skip-bad-profiles"
        )
    if not age_text.isdigit() or not MIN_AGE <= int(age_text) <= MAX_AGE:
        raise DataLayoutError(
            f"profile folder {folder!r}: age {age_text!r} is not a whole number of years "
            f"in {MIN_AGE}..{MAX_AGE}; expected {PROFILE_PATTERN}. Rename the folder, or use "
            "--skip-bad-profiles"
        )
    return Profile(folder=folder, id=pid, gender=gender.lower(), race=race, age=int(age_text))


def looks_like_profile(folder: str) -> bool:
    try:
        parse_profile(folder)
    except DataLayoutError:
        return False
    return True


def detect_layout(data_root: str, files: Iterable[str]) -> Layout:
    """Decide the layout from the (non-hidden) relative file paths under ``data_root``."""
    files = [f for f in files if not is_hidden(f)]
    if not files:
        raise DataLayoutError(
            f"data root {data_root} holds no files (hidden files are ignored); {EXPECTED_LAYOUTS}"
        )
    present = set(files)
    eval_info = EVAL_INFO if EVAL_INFO in present else None

    if any(f.startswith(TRAIN_IMAGES + "/") for f in files):
        train_csv = TRAIN_CSV if TRAIN_CSV in present else None
        return Layout("competition", TRAIN_IMAGES, train_csv, eval_info)
    if _has_profile_folders(f[len("images/"):] for f in files if f.startswith("images/")):
        return Layout("train_dir", "images", "train.csv" if "train.csv" in present else None, None)
    if _has_profile_folders(files):
        return Layout("profiles", "", None, eval_info)
    if eval_info is not None:
        return Layout("eval_only", None, None, eval_info)
    raise DataLayoutError(
        f"data root {data_root}: no recognisable layout; {EXPECTED_LAYOUTS}. "
        f"Found: {_describe_top_level(files)}"
    )


def _has_profile_folders(paths: Iterable[str]) -> bool:
    return any(
        "/" in path and looks_like_profile(path.split("/", 1)[0]) for path in paths
    )


def _describe_top_level(files: list[str], limit: int = 8) -> str:
    entries = sorted({f.split("/", 1)[0] + ("/" if "/" in f else "") for f in files})
    shown = ", ".join(entries[:limit])
    return shown + (f" and {len(entries) - limit} more" if len(entries) > limit else "")


def find_escaping_links(root: str | os.PathLike[str]) -> list[str]:
    """Symlinks under a local ``root`` whose target lies outside it (relative POSIX paths).

    They are never followed; the index reports them so a missing image has a visible cause.
    """
    base = Path(root).resolve()
    escaping: list[str] = []
    for folder, dirs, names in os.walk(base, followlinks=False):
        for name in sorted(dirs) + sorted(names):
            path = Path(folder) / name
            if not path.is_symlink():
                continue
            target = path.resolve()
            if target != base and base not in target.parents:
                escaping.append(path.relative_to(base).as_posix())
        dirs[:] = [d for d in dirs if not (Path(folder) / d).is_symlink()]
    return sorted(escaping)
