"""The ``index-data`` report: what the data set holds and what indexing left out.

Images per class (all 18) and per task, people per gender and age bin, every skipped or
corrected file with the reason, and sample photos of each mask state.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from maskpipe import labels
from maskpipe.reports.page import Page, bar_chart, card, class_axis, spread_sample, write_page

THUMBNAILS_PER_MASK_STATE = 8


def write_index_report(
    train: pd.DataFrame,
    report: dict[str, Any],
    out_path: str | os.PathLike[str],
    *,
    cache_dir: str | os.PathLike[str] | None = None,
) -> Path:
    """Write the HTML report of an index: ``train`` and ``report`` as ``build_index`` returns
    them (``IndexResult.train``, ``IndexResult.report``). Sample photos are read from the
    report's data root (``cache_dir``: the local cache for ``s3://`` roots)."""
    data_root = report["data_root"]
    page = Page("Index", f"{data_root} ({report['layout']} layout)")
    split_counts = report.get("split_counts", {})
    page.facts(
        [
            ("people", report["profiles"]),
            ("training images", report["images"]),
            *((f"  {name} split", f"{c['profiles']} people, {c['images']} images") for name, c in sorted(split_counts.items())),
            ("eval images", "none (no eval/ folder)" if report.get("eval_images") is None else report["eval_images"]),
            ("skipped files", len(report["skipped_files"])),
            ("skipped people", len(report["skipped_profiles"])),
            ("label corrections applied", len(report.get("corrections", {}).get("applied", []))),
        ]
    )

    page.heading("Images per class")
    page.charts(_class_chart(train))
    page.heading("Images per task label")
    page.charts(*(_task_chart(train, task) for task in labels.TASKS))
    page.heading("People per gender and age bin")
    page.charts(_people_chart(train))

    _skipped_tables(page, report)
    page.heading("Sample photos per mask state")
    _mask_state_galleries(page, train, data_root, cache_dir)
    return write_page(page, out_path)


def _split_series(train: pd.DataFrame, column: str, n: int) -> dict[str, list[int]]:
    """Counts of ``column`` values ``0..n-1`` per split (one series when there is no val)."""
    series = {}
    for split in sorted(train["split"].unique(), key=lambda s: (s != "train", s)):
        values = train.loc[train["split"] == split, column].to_numpy()
        series[split] = np.bincount(values, minlength=n).tolist()
    return series


def _class_chart(train: pd.DataFrame) -> str:
    series = _split_series(train, "class", labels.NUM_COMBINED_CLASSES)
    return bar_chart(
        class_axis(), series, title="Images per class (18 classes, by split)", ylabel="images",
        horizontal=True, width=7.5, height=5.2,
    )  # fmt: skip


def _task_chart(train: pd.DataFrame, task: str) -> str:
    names = list(labels.TASK_CLASS_NAMES[task])
    series = _split_series(train, f"{task}_label", len(names))
    return bar_chart(names, series, title=f"{task}", ylabel="images", width=3.6, height=2.8)


def _people_chart(train: pd.DataFrame) -> str:
    people = train.drop_duplicates("profile")
    series = {
        gender: [int(((people["gender_label"] == g) & (people["age_label"] == a)).sum()) for a in range(3)]
        for g, gender in enumerate(labels.GENDER_NAMES)
    }
    return bar_chart(
        list(labels.AGE_NAMES), series, title="People per age bin and gender", ylabel="people",
        stacked=False, width=5.0, height=3.0,
    )  # fmt: skip


def _skipped_tables(page: Page, report: dict[str, Any]) -> None:
    page.heading("Skipped and corrected files")
    skipped = report["skipped_files"]
    people = report["skipped_profiles"]
    fixes = report.get("corrections", {}).get("applied", [])
    if not (skipped or people or fixes):
        page.paragraph("Every file was used as it is: nothing skipped, no label corrected.")
        return
    if skipped:
        page.heading(f"Skipped files ({len(skipped)})", 3)
        page.table(["file", "reason"], [(s["path"], s["reason"]) for s in skipped], more_in="report.json")
    if people:
        page.heading(f"Skipped people ({len(people)})", 3)
        page.table(["profile folder", "reason"], [(s["profile"], s["reason"]) for s in people], more_in="report.json")
    if fixes:
        source = report["corrections"].get("source") or ""
        page.heading(f"Label corrections ({len(fixes)}, from {source})", 3)
        page.table(
            ["profile folder", "field", "from", "to", "note"],
            [(f["profile"], f["field"], f["from"], f["to"], f.get("note", "")) for f in fixes],
            more_in="report.json",
        )


def _mask_state_galleries(
    page: Page, train: pd.DataFrame, data_root: str, cache_dir: str | os.PathLike[str] | None
) -> None:
    from maskpipe.storage import localize

    for label, name in enumerate(labels.MASK_NAMES):
        rows = train[train["mask_label"] == label].reset_index(drop=True)
        page.heading(f"{name} ({len(rows)} images)", 3)
        if rows.empty:
            page.paragraph("no images of this mask state")
            continue
        rows = rows.iloc[spread_sample(len(rows), THUMBNAILS_PER_MASK_STATE, seed=label)]
        local = localize(data_root, rows["path"].tolist(), Path(cache_dir) if cache_dir else None)
        page.gallery(
            [
                card(path, [row["stem"], f"{row['gender']}, {row['age']}", labels.CLASS_NAMES[row["class"]]])
                for path, row in zip(local, rows.to_dict("records"))
            ]
        )
