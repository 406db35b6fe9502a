"""Label corrections applied while indexing: a profile's gender or age, or an exchange of its
``incorrect_mask`` and ``normal`` photos.

A corrections file is YAML (a ``corrections:`` list of mappings) or CSV (columns
``id,gender,age,swap_incorrect_normal,note``; empty cells mean "no change"). Entries match
profiles by the **id part** of the folder name (``000020`` matches ``000020_female_Asian_50``),
because that is how the fixes are reported; an id used by several folders is corrected in all of
them. ``corrections="known"`` loads the widely reported fixes shipped in
``maskpipe/data/corrections/known.yaml``. Every change made is recorded in the index report.
"""

from __future__ import annotations

import csv
import dataclasses
import io
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any, Iterable

import yaml

from maskpipe.data.layout import MAX_AGE, MIN_AGE, Profile
from maskpipe.errors import DataLayoutError
from maskpipe.labels import GENDERS

KNOWN = "known"
_FIELDS = ("id", "gender", "age", "swap_incorrect_normal", "note")
_TRUE = {"true", "yes", "1", "y"}
_FALSE = {"false", "no", "0", "n", ""}


@dataclass(frozen=True)
class Correction:
    """One reported label error of the person with folder-name id ``id``."""

    id: str
    gender: str | None = None
    age: int | None = None
    swap_incorrect_normal: bool = False
    note: str = ""


@dataclass
class CorrectionResult:
    """Profiles after correction, the folders whose two photos are exchanged, and the log."""

    profiles: dict[str, Profile]
    swapped: set[str]
    applied: list[dict[str, Any]]
    unmatched: list[str]


def load_corrections(spec: str | Path) -> tuple[str, list[Correction]]:
    """Read ``"known"`` or a ``.yaml``/``.yml``/``.csv`` file; returns (source, corrections)."""
    if str(spec) == KNOWN:
        text = resources.files("maskpipe.data").joinpath("corrections/known.yaml").read_text("utf-8")
        return "known (maskpipe/data/corrections/known.yaml)", _parse_yaml(text, "known.yaml")
    path = Path(spec)
    if not path.is_file():
        raise DataLayoutError(
            f"corrections file {path} does not exist; pass 'known' or a CSV/YAML file"
        )
    text = path.read_text("utf-8")
    suffix = path.suffix.lower()
    if suffix in {".yaml", ".yml"}:
        return str(path), _parse_yaml(text, str(path))
    if suffix == ".csv":
        return str(path), _parse_csv(text, str(path))
    raise DataLayoutError(f"corrections file {path}: unknown type {suffix!r}; use .csv, .yaml or .yml")


def _parse_yaml(text: str, source: str) -> list[Correction]:
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise DataLayoutError(f"corrections file {source}: not valid YAML ({exc})") from None
    entries = data.get("corrections") if isinstance(data, dict) else None
    if not isinstance(entries, list):
        raise DataLayoutError(
            f"corrections file {source}: expected a top-level 'corrections:' list of "
            "{id: ..., gender: ..., age: ..., swap_incorrect_normal: ...} entries"
        )
    return _validated(entries, source)


def _parse_csv(text: str, source: str) -> list[Correction]:
    reader = csv.DictReader(io.StringIO(text))
    if reader.fieldnames is None or "id" not in reader.fieldnames:
        raise DataLayoutError(
            f"corrections file {source}: needs a header with an 'id' column and any of "
            f"{', '.join(_FIELDS[1:])}"
        )
    rows = [{k: v for k, v in row.items() if k is not None and v not in (None, "")} for row in reader]
    return _validated(rows, source)


def _validated(entries: Iterable[Any], source: str) -> list[Correction]:
    corrections = []
    for number, entry in enumerate(entries, start=1):
        where = f"corrections file {source}, entry {number}"
        if not isinstance(entry, dict):
            raise DataLayoutError(f"{where}: expected a mapping, got {entry!r}")
        unknown = set(entry) - set(_FIELDS)
        if unknown:
            raise DataLayoutError(f"{where}: unknown field(s) {sorted(unknown)}; valid: {', '.join(_FIELDS)}")
        corrections.append(_one(entry, where))
    return corrections


def _one(entry: dict[str, Any], where: str) -> Correction:
    pid = str(entry.get("id", "")).strip()
    if not pid:
        raise DataLayoutError(f"{where}: 'id' is missing (the id part of the profile folder name)")
    gender = entry.get("gender")
    if gender is not None:
        gender = str(gender).strip().lower()
        if gender not in GENDERS:
            raise DataLayoutError(f"{where}: gender {entry['gender']!r} is not male or female")
    age = entry.get("age")
    if age is not None:
        if not str(age).strip().isdigit() or not MIN_AGE <= int(str(age).strip()) <= MAX_AGE:
            raise DataLayoutError(f"{where}: age {age!r} is not a whole number in {MIN_AGE}..{MAX_AGE}")
        age = int(str(age).strip())
    swap = _flag(entry.get("swap_incorrect_normal", False), where)
    if gender is None and age is None and not swap:
        raise DataLayoutError(f"{where}: id {pid} changes nothing; give gender, age or swap_incorrect_normal")
    return Correction(pid, gender, age, swap, str(entry.get("note", "") or ""))


def _flag(value: Any, where: str) -> bool:
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in _TRUE or text in _FALSE:
        return text in _TRUE
    raise DataLayoutError(f"{where}: swap_incorrect_normal must be true or false, got {value!r}")


def apply_corrections(profiles: dict[str, Profile], corrections: list[Correction]) -> CorrectionResult:
    """Apply ``corrections`` to ``profiles`` (folder -> Profile); only real changes are logged."""
    by_id: dict[str, list[str]] = {}
    for folder, profile in profiles.items():
        by_id.setdefault(profile.id, []).append(folder)
    corrected = dict(profiles)
    swapped: set[str] = set()
    applied: list[dict[str, Any]] = []
    unmatched: list[str] = []
    for fix in corrections:
        folders = sorted(by_id.get(fix.id, []))
        if not folders:
            unmatched.append(fix.id)
        for folder in folders:
            before = corrected[folder]
            changes = {}
            if fix.gender is not None and fix.gender != before.gender:
                changes["gender"] = fix.gender
            if fix.age is not None and fix.age != before.age:
                changes["age"] = fix.age
            for field, value in changes.items():
                applied.append(_entry(folder, field, getattr(before, field), value, fix.note))
            corrected[folder] = dataclasses.replace(before, **changes)
            if fix.swap_incorrect_normal and folder not in swapped:
                swapped.add(folder)
                applied.append(_entry(folder, "swap_incorrect_normal", False, True, fix.note))
    return CorrectionResult(corrected, swapped, applied, unmatched)


def _entry(folder: str, field: str, before: Any, after: Any, note: str) -> dict[str, Any]:
    return {"profile": folder, "field": field, "from": before, "to": after, "note": note}
