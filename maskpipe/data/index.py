"""Index a data root (local folder or ``s3://bucket/prefix``) into ``index.parquet``.

One row per usable training image, with the person's labels, the 18-class id and the
train/validation split (schema in docs/architecture.md); ``index.eval.parquet`` for the eval
images in ``info.csv`` order; and a report of everything that was skipped and why. Every image
is decoded once here (in a process pool) so training never meets a broken file. All file
access goes through ``maskpipe.storage`` so local and S3 roots behave the same.
"""

from __future__ import annotations

import io
import logging
import os
import posixpath
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from maskpipe import labels
from maskpipe.atomic import atomic_path, write_json
from maskpipe.data import layout as lay
from maskpipe.data.corrections import apply_corrections, load_corrections
from maskpipe.data.images import IMAGE_EXTENSIONS, check_images
from maskpipe.data.split import assign_split, check_val_fraction
from maskpipe.errors import DataLayoutError

log = logging.getLogger(__name__)

META_DATA_ROOT = b"maskpipe.data_root"
INDEX_COLUMNS = [
    "path", "profile", "id", "gender", "race", "age", "stem",
    "mask_label", "gender_label", "age_label", "class", "split",
]  # fmt: skip
EVAL_COLUMNS = ["image_id", "path"]
TRAIN_CSV_COLUMNS = ("id", "gender", "race", "age", "path")
# When one folder holds the same stem twice (mask1.jpg and mask1.png) the first readable file
# in this extension order is kept; ties (mask1.jpg vs mask1.JPG) go to the sorted file name.
_EXTENSION_PREFERENCE = (".jpg", ".jpeg", ".png")
_STEM_BY_LOWER = {stem.lower(): stem for stem in labels.MASK_STEMS}


@dataclass
class IndexResult:
    """What ``build_index`` wrote: the frames, the report and the output paths."""

    train: pd.DataFrame
    eval: pd.DataFrame | None
    report: dict[str, Any]
    index_path: Path
    eval_index_path: Path | None = None
    report_path: Path | None = None

    def summary(self) -> str:
        return format_summary(self.report, self.index_path)


@dataclass
class _Scan:
    """Bookkeeping while indexing; becomes the report."""

    skipped_files: list[dict[str, str]] = field(default_factory=list)
    skipped_profiles: list[dict[str, str]] = field(default_factory=list)
    ignored_hidden: int = 0

    def skip_file(self, path: str, reason: str) -> None:
        self.skipped_files.append({"path": path, "reason": reason})

    def skip_profile(self, folder: str, reason: str) -> None:
        self.skipped_profiles.append({"profile": folder, "reason": reason})


# ---------------------------------------------------------------------------- public API


def build_index(
    data_root: str,
    out_path: str | os.PathLike[str],
    report_path: str | os.PathLike[str] | None = None,
    *,
    val_fraction: float = 0.2,
    seed: int = 42,
    corrections: str | None = None,
    skip_bad_profiles: bool = False,
    cache_dir: str | os.PathLike[str] | None = None,
    workers: int | None = None,
) -> IndexResult:
    """Scan ``data_root``, decode-check every image and write the index files.

    Raises DataLayoutError (naming the folder or file and the fix) for a root without a
    recognisable layout, profile folders that do not parse or disagree with ``train.csv``
    (unless ``skip_bad_profiles``), and a broken eval listing. Unusable training files are
    skipped and reported, never silently kept.
    """
    check_val_fraction(val_fraction)
    root = normalize_root(data_root)
    scan = _Scan()
    files = _list_visible(root, scan)
    layout = lay.detect_layout(root, files)
    if layout.images_prefix is None:
        raise DataLayoutError(
            f"data root {root} has eval/info.csv but no training images; {lay.EXPECTED_LAYOUTS}"
        )
    fix_source, fixes = load_corrections(corrections) if corrections else (None, [])

    profiles, profile_files = _collect_profiles(layout, files, scan, skip_bad_profiles)
    csv_report = _check_train_csv(root, layout, profiles, scan, skip_bad_profiles)
    for folder in [s["profile"] for s in scan.skipped_profiles if s["profile"] in profiles]:
        profiles.pop(folder)
        profile_files.pop(folder, None)
    readable = _decode_check(root, profile_files, scan, cache_dir, workers)
    chosen = _choose_files(readable, scan)

    fixed = apply_corrections(profiles, fixes)
    train = _rows(fixed.profiles, chosen, fixed.swapped)
    if train.empty:
        raise DataLayoutError(
            f"data root {root}: no usable training images were found ({len(scan.skipped_files)} "
            f"file(s) skipped, e.g. {_few([_describe(s) for s in scan.skipped_files], 3)}); "
            "check the layout and the image files"
        )
    train["split"] = assign_split(train, val_fraction, seed)
    train = train[INDEX_COLUMNS]

    eval_frame = _index_eval(root, layout, set(files), cache_dir, workers) if layout.eval_info else None
    report = _report(root, layout, train, eval_frame, chosen, profiles, scan, csv_report)
    report["corrections"] = {
        "source": fix_source,
        "applied": fixed.applied,
        "unmatched_ids": fixed.unmatched,
    }
    report["split"] = {"val_fraction": val_fraction, "seed": seed, "group_by": "id"}

    out_path = Path(out_path)
    write_frame(train, out_path, root)
    eval_out = None
    if eval_frame is not None:
        eval_out = eval_index_path(out_path)
        write_frame(eval_frame, eval_out, root)
    if report_path is not None:
        write_json(report_path, report)
    return IndexResult(
        train, eval_frame, report, out_path, eval_out, Path(report_path) if report_path else None
    )


def index_eval(
    data_root: str,
    cache_dir: str | os.PathLike[str] | None = None,
    *,
    check_images: bool = True,
) -> pd.DataFrame:
    """Index only ``eval/`` of ``data_root`` (for ``maskpipe infer --data``): columns
    ``image_id``, ``path`` in ``info.csv`` order; ``frame.attrs["data_root"]`` is the root.

    ``check_images=False`` skips the decode check, for callers that decode every image anyway
    and fail on a bad one with its name (inference), so each image is decoded once."""
    root = normalize_root(data_root)
    files = _list_visible(root, _Scan())
    if lay.EVAL_INFO not in set(files):
        raise DataLayoutError(
            f"data root {root} has no {lay.EVAL_INFO}; inference needs eval/info.csv "
            "(column ImageID) and the images in eval/images/"
        )
    layout = lay.Layout("eval_only", None, None, lay.EVAL_INFO)
    frame = _index_eval(root, layout, set(files), cache_dir, None, check_images=check_images)
    frame.attrs["data_root"] = root
    return frame


def read_index(path: str | os.PathLike[str]) -> tuple[pd.DataFrame, str]:
    """Read ``index.parquet``; returns (rows, data_root)."""
    return _read_frame(path, INDEX_COLUMNS, "index")


def read_eval_index(path: str | os.PathLike[str]) -> tuple[pd.DataFrame, str]:
    """Read ``index.eval.parquet``; returns (rows in info.csv order, data_root)."""
    return _read_frame(path, EVAL_COLUMNS, "eval index")


def eval_index_path(index_path: str | os.PathLike[str]) -> Path:
    """``index.parquet`` -> ``index.eval.parquet`` (beside it)."""
    index_path = Path(index_path)
    stem = index_path.name[: -len(".parquet")] if index_path.name.endswith(".parquet") else index_path.name
    return index_path.with_name(f"{stem}.eval.parquet")


def normalize_root(data_root: str | os.PathLike[str]) -> str:
    """An ``s3://`` URI without a trailing slash, or an absolute local path that exists."""
    from maskpipe import storage

    text = os.fspath(data_root)
    if storage.is_s3(text):
        storage.parse_s3_uri(text)  # StorageError when there is no bucket
        return text.rstrip("/")
    path = Path(text).expanduser().absolute()
    if not path.exists():
        raise DataLayoutError(f"data root {path} does not exist; pass a data folder or s3://bucket/prefix")
    if not path.is_dir():
        raise DataLayoutError(f"data root {path} is a file; pass the folder that holds train/ or the profile folders")
    return os.path.normpath(path)


def write_frame(frame: pd.DataFrame, path: str | os.PathLike[str], data_root: str) -> None:
    """Write ``frame`` as parquet with the data root in its metadata, atomically."""
    table = pa.Table.from_pandas(frame.reset_index(drop=True), preserve_index=False)
    metadata = dict(table.schema.metadata or {})
    metadata[META_DATA_ROOT] = data_root.encode("utf-8")
    table = table.replace_schema_metadata(metadata)
    with atomic_path(path) as tmp:
        pq.write_table(table, tmp)


# ---------------------------------------------------------------------------- scanning


def _list_visible(root: str, scan: _Scan) -> list[str]:
    from maskpipe import storage

    files = sorted(storage.list_files(root))
    if not storage.is_s3(root):
        for link in lay.find_escaping_links(root):
            scan.skip_file(link, "symlink pointing outside the data root (not followed)")
    # Object keys may hold '..', '.' or empty segments (S3 allows them, a local listing never
    # does); such a key would leave its folder once written to disk, so it is reported, not used.
    unsafe = {f for f in files if _has_unsafe_segment(f)}
    for path in sorted(unsafe):
        scan.skip_file(path, "object key with a '..', '.' or empty path segment (not followed)")
    visible = [f for f in files if f not in unsafe and not lay.is_hidden(f)]
    scan.ignored_hidden = len(files) - len(unsafe) - len(visible)
    if not files:
        raise DataLayoutError(f"data root {root} is empty; {lay.EXPECTED_LAYOUTS}")
    return visible


def _has_unsafe_segment(rel_path: str) -> bool:
    return any(part in ("", ".", "..") for part in rel_path.split("/"))


def _collect_profiles(
    layout: lay.Layout, files: list[str], scan: _Scan, skip_bad: bool
) -> tuple[dict[str, lay.Profile], dict[str, list[str]]]:
    """Parse the profile folders; returns folder -> Profile and folder -> candidate files
    (known stem, image extension; paths relative to the root)."""
    prefix = layout.images_prefix
    by_folder: dict[str, list[str]] = {}
    for path in files:
        if prefix:
            if not path.startswith(prefix + "/"):
                continue
            inner = path[len(prefix) + 1 :]
        elif path.startswith("eval/"):
            continue  # a profiles-layout root may still carry the eval folder
        else:
            inner = path
        parts = inner.split("/")
        if len(parts) != 2:
            scan.skip_file(path, "not directly inside a profile folder (expected <profile>/<stem>.<ext>)")
            continue
        by_folder.setdefault(parts[0], []).append(path)

    profiles: dict[str, lay.Profile] = {}
    candidates: dict[str, list[str]] = {}
    for folder in sorted(by_folder):
        try:
            profiles[folder] = lay.parse_profile(folder)
        except DataLayoutError as exc:
            if not skip_bad:
                raise
            scan.skip_profile(folder, str(exc))
            continue
        candidates[folder] = [p for p in by_folder[folder] if _is_candidate(p, scan)]
    return profiles, candidates


def _is_candidate(path: str, scan: _Scan) -> bool:
    name = posixpath.basename(path)
    stem, ext = posixpath.splitext(name)
    if ext.lower() not in IMAGE_EXTENSIONS:
        scan.skip_file(path, f"not a .jpg/.jpeg/.png file (extension {ext or 'none'!r})")
        return False
    if stem.lower() not in _STEM_BY_LOWER:
        scan.skip_file(path, f"unknown image name {stem!r}; expected one of {', '.join(labels.MASK_STEMS)}")
        return False
    return True


def _check_train_csv(
    root: str, layout: lay.Layout, profiles: dict[str, lay.Profile], scan: _Scan, skip_bad: bool
) -> dict[str, Any] | None:
    """Compare train.csv with the folder names; a disagreement is an error (or a skip)."""
    if layout.train_csv is None:
        return None
    csv_path = f"{root}/{layout.train_csv}"
    table = _read_csv(root, layout.train_csv, TRAIN_CSV_COLUMNS)
    dup_paths = sorted(table.loc[table["path"].duplicated(), "path"].unique())
    listed = dict(zip(table["path"], table.to_dict("records")))
    for folder, profile in sorted(profiles.items()):
        row = listed.get(folder)
        if row is None:
            continue
        problem = _disagreement(profile, row)
        if problem is None:
            continue
        message = (
            f"profile folder {folder!r} disagrees with {csv_path}: {problem}; fix the folder name "
            "or the CSV row (or index with --skip-bad-profiles to skip the person)"
        )
        if not skip_bad:
            raise DataLayoutError(message)
        scan.skip_profile(folder, f"disagrees with train.csv: {problem}")
    return {
        "rows": len(table),
        "duplicate_paths": dup_paths,
        "folders_not_in_csv": sorted(set(profiles) - set(listed)),
        "csv_rows_without_folder": sorted(set(listed) - set(profiles) - _skipped(scan)),
    }


def _skipped(scan: _Scan) -> set[str]:
    return {s["profile"] for s in scan.skipped_profiles}


def _disagreement(profile: lay.Profile, row: dict[str, str]) -> str | None:
    gender = str(row["gender"]).strip().lower()
    if gender != profile.gender:
        return f"gender is {profile.gender!r} in the folder name but {row['gender']!r} in the CSV"
    age = str(row["age"]).strip()
    if not age.isdigit() or int(age) != profile.age:
        return f"age is {profile.age} in the folder name but {row['age']!r} in the CSV"
    return None


def _read_csv(root: str, rel_path: str, required: tuple[str, ...]) -> pd.DataFrame:
    from maskpipe import storage

    where = f"{root}/{rel_path}"
    try:
        raw = storage.read_bytes(root, rel_path)
        # Every column as text: ids are zero-padded ("000001") and must stay that way.
        table = pd.read_csv(io.BytesIO(raw), dtype=str, keep_default_na=False, skipinitialspace=True)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as exc:
        raise DataLayoutError(f"{where} is not a readable CSV ({exc}); fix or regenerate it") from None
    table.columns = [str(c).strip() for c in table.columns]
    missing = [c for c in required if c not in table.columns]
    if missing:
        raise DataLayoutError(
            f"{where} lacks the column(s) {', '.join(missing)} (found {', '.join(table.columns) or 'none'}); "
            f"expected a header {','.join(required)}"
        )
    return table


def _decode_check(
    root: str,
    profile_files: dict[str, list[str]],
    scan: _Scan,
    cache_dir: str | os.PathLike[str] | None,
    workers: int | None,
) -> dict[str, list[str]]:
    """Decode every candidate image; returns folder -> readable files."""
    paths = [p for folder in sorted(profile_files) for p in profile_files[folder]]
    reasons = _check_paths(root, paths, cache_dir, workers)
    bad = {path: reason for path, reason in zip(paths, reasons) if reason is not None}
    for path, reason in bad.items():
        scan.skip_file(path, reason)
    return {folder: [p for p in files if p not in bad] for folder, files in profile_files.items()}


def _check_paths(
    root: str, paths: list[str], cache_dir: str | os.PathLike[str] | None, workers: int | None
) -> list[str | None]:
    from maskpipe import storage

    if not paths:
        return []
    log.info("decode-checking %d images under %s", len(paths), root)
    local = storage.localize(root, paths, cache_dir=Path(cache_dir) if cache_dir else None)
    return check_images(local, workers=workers)


def _choose_files(readable: dict[str, list[str]], scan: _Scan) -> dict[str, dict[str, str]]:
    """One file per stem per profile: folder -> {stem: path}. Extra copies are reported."""
    chosen: dict[str, dict[str, str]] = {}
    for folder, paths in sorted(readable.items()):
        by_stem: dict[str, list[str]] = {}
        for path in paths:
            stem = _STEM_BY_LOWER[posixpath.splitext(posixpath.basename(path))[0].lower()]
            by_stem.setdefault(stem, []).append(path)
        chosen[folder] = {}
        for stem, options in by_stem.items():
            options.sort(key=_preference)
            chosen[folder][stem] = options[0]
            for other in options[1:]:
                scan.skip_file(other, f"second file for {stem!r} in this folder; kept {posixpath.basename(options[0])}")
    return chosen


def _preference(path: str) -> tuple[int, str]:
    ext = posixpath.splitext(path)[1]
    rank = _EXTENSION_PREFERENCE.index(ext.lower())
    return (rank, posixpath.basename(path)) if ext == ext.lower() else (rank + 10, posixpath.basename(path))


def _rows(
    profiles: dict[str, lay.Profile],
    chosen: dict[str, dict[str, str]],
    swapped: set[str],
) -> pd.DataFrame:
    records = []
    for folder in sorted(chosen):
        profile = profiles[folder]
        g = labels.gender_label(profile.gender)
        a = labels.age_label(profile.age)
        for stem in labels.MASK_STEMS:  # canonical order: mask1..mask5, incorrect_mask, normal
            if stem not in chosen[folder]:
                continue
            m = labels.mask_label(_swap(stem) if folder in swapped else stem)
            records.append(
                {
                    "path": chosen[folder][stem], "profile": folder, "id": profile.id,
                    "gender": profile.gender, "race": profile.race, "age": profile.age,
                    "stem": stem, "mask_label": m, "gender_label": g, "age_label": a,
                    "class": labels.encode_class(m, g, a),
                }  # fmt: skip
            )
    frame = pd.DataFrame.from_records(records, columns=INDEX_COLUMNS[:-1])
    for column in ("age", "mask_label", "gender_label", "age_label", "class"):
        frame[column] = frame[column].astype("int64")
    return frame


def _swap(stem: str) -> str:
    return {"incorrect_mask": "normal", "normal": "incorrect_mask"}.get(stem, stem)


# ---------------------------------------------------------------------------- eval


def _index_eval(
    root: str,
    layout: lay.Layout,
    present: set[str],
    cache_dir: str | os.PathLike[str] | None,
    workers: int | None,
    *,
    check_images: bool = True,
) -> pd.DataFrame:
    """Rows of eval/info.csv in order; a duplicated, missing or unreadable image is an error."""
    assert layout.eval_info is not None
    where = f"{root}/{layout.eval_info}"
    table = _read_csv(root, layout.eval_info, ("ImageID",))
    image_ids = [str(i).strip() for i in table["ImageID"]]
    if not image_ids:
        raise DataLayoutError(f"{where} lists no images; it needs one ImageID row per eval image")
    not_names = [i for i in image_ids if not _is_plain_file_name(i)]
    if not_names:
        raise DataLayoutError(
            f"{where} lists {len(not_names)} ImageID(s) that are not plain file names: "
            f"{_few([repr(i) for i in not_names])}; an ImageID names a file directly inside "
            f"{lay.EVAL_IMAGES}/ (no '/', '\\' or '..')"
        )
    dups = sorted(i for i, n in Counter(image_ids).items() if n > 1)
    if dups:
        raise DataLayoutError(
            f"{where} lists {len(dups)} ImageID(s) more than once: {_few(dups)}; remove the repeated rows"
        )
    paths = [f"{lay.EVAL_IMAGES}/{i}" for i in image_ids]
    missing = [p for p in paths if p not in present]
    if missing:
        raise DataLayoutError(
            f"{where} lists {len(missing)} image(s) not found under {root}/{lay.EVAL_IMAGES}/: "
            f"{_few(missing)}; add the files or remove their rows"
        )
    reasons = _check_paths(root, paths, cache_dir, workers) if check_images else []
    bad = [f"{p} ({r})" for p, r in zip(paths, reasons) if r is not None]
    if bad:
        raise DataLayoutError(
            f"{len(bad)} eval image(s) listed in {where} cannot be decoded: {_few(bad)}; "
            "replace them with readable JPEG/PNG files"
        )
    return pd.DataFrame({"image_id": image_ids, "path": paths})


def _is_plain_file_name(image_id: str) -> bool:
    # Paths from a CSV must not reach outside eval/images/ (../, absolute, sub-folders).
    return bool(image_id) and image_id not in (".", "..") and not any(c in image_id for c in "/\\\0")


def _describe(skipped: dict[str, str]) -> str:
    return f"{skipped['path']} ({skipped['reason']})"


def _few(items: list[str], limit: int = 5) -> str:
    shown = ", ".join(items[:limit])
    return shown + (f" and {len(items) - limit} more" if len(items) > limit else "")


# ---------------------------------------------------------------------------- report


def _report(
    root: str,
    layout: lay.Layout,
    train: pd.DataFrame,
    eval_frame: pd.DataFrame | None,
    chosen: dict[str, dict[str, str]],
    profiles: dict[str, lay.Profile],
    scan: _Scan,
    csv_report: dict[str, Any] | None,
) -> dict[str, Any]:
    missing = {
        folder: [s for s in labels.MASK_STEMS if s not in chosen.get(folder, {})]
        for folder in sorted(profiles)
    }
    missing = {folder: stems for folder, stems in missing.items() if stems}
    folders_by_id: dict[str, list[str]] = {}
    for folder in sorted(train["profile"].unique()):
        folders_by_id.setdefault(profiles[folder].id, []).append(folder)
    return {
        "data_root": root,
        "layout": layout.kind,
        "profiles": int(train["profile"].nunique()),
        "images": len(train),
        "eval_images": None if eval_frame is None else len(eval_frame),
        "counts": _counts(train),
        "split_counts": {
            name: {"profiles": int(part["profile"].nunique()), "images": len(part)}
            for name, part in train.groupby("split")
        },
        "skipped_files": sorted(scan.skipped_files, key=lambda s: s["path"]),
        "skipped_profiles": scan.skipped_profiles,
        "profiles_missing_images": missing,
        "duplicate_ids": {i: f for i, f in folders_by_id.items() if len(f) > 1},
        "ignored_hidden_files": scan.ignored_hidden,
        "train_csv": csv_report,
    }


def _counts(train: pd.DataFrame) -> dict[str, dict[str, int]]:
    counts: dict[str, dict[str, int]] = {
        "class": {
            labels.CLASS_NAMES[c]: int((train["class"] == c).sum())
            for c in range(labels.NUM_COMBINED_CLASSES)
        }
    }
    for task in labels.TASKS:
        column = train[f"{task}_label"]
        counts[task] = {name: int((column == i).sum()) for i, name in enumerate(labels.TASK_CLASS_NAMES[task])}
    return counts


def format_summary(report: dict[str, Any], index_path: Path | None = None) -> str:
    """A small readable table: images per class (rows mask/gender, columns age) and totals."""
    lines = [
        f"indexed {report['data_root']} ({report['layout']} layout): {report['profiles']} people, "
        f"{report['images']} images"
        + "".join(
            f", {name} {c['profiles']} people/{c['images']} images"
            for name, c in sorted(report.get("split_counts", {}).items())
        )
    ]
    classes = report["counts"]["class"]
    width = max(len(n) for n in labels.AGE_NAMES) + 2
    lines.append(f"{'':<18}" + "".join(f"{n:>{width}}" for n in labels.AGE_NAMES))
    for mask in labels.MASK_NAMES:
        for gender in labels.GENDER_NAMES:
            cells = [classes[f"{mask}/{gender}/{age}"] for age in labels.AGE_NAMES]
            lines.append(f"{mask + '/' + gender:<18}" + "".join(f"{c:>{width}}" for c in cells))
    skipped = Counter(s["reason"].split(" (")[0].split(";")[0] for s in report["skipped_files"])
    lines.append(
        f"skipped files: {len(report['skipped_files'])}"
        + (" (" + ", ".join(f"{n} {r}" for r, n in skipped.most_common()) + ")" if skipped else "")
        + f"; skipped people: {len(report['skipped_profiles'])}"
        + f"; people missing photos: {len(report['profiles_missing_images'])}"
        + f"; ids in several folders: {len(report['duplicate_ids'])}"
    )
    fixes = report.get("corrections", {})
    if fixes.get("source"):
        lines.append(f"corrections ({fixes['source']}): {len(fixes['applied'])} applied")
    if report.get("eval_images") is not None:
        lines.append(f"eval images: {report['eval_images']}")
    if index_path is not None:
        lines.append(f"wrote {index_path}")
    return "\n".join(lines)


def _read_frame(path: str | os.PathLike[str], columns: list[str], what: str) -> tuple[pd.DataFrame, str]:
    path = Path(path)
    if not path.is_file():
        raise DataLayoutError(f"{what} {path} does not exist; create it with `maskpipe index DATA_ROOT -o ...`")
    try:
        table = pq.read_table(path)
    except (pa.ArrowException, OSError) as exc:
        raise DataLayoutError(f"{what} {path} is not a readable parquet file ({exc}); rebuild it with `maskpipe index`") from None
    root = (table.schema.metadata or {}).get(META_DATA_ROOT)
    missing = [c for c in columns if c not in table.column_names]
    if root is None or missing:
        raise DataLayoutError(
            f"{path} is not a maskpipe {what} (missing {'metadata ' + META_DATA_ROOT.decode() if root is None else 'columns ' + ', '.join(missing)}); "
            "rebuild it with `maskpipe index`"
        )
    return table.to_pandas(), root.decode("utf-8")
