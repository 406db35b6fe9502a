"""The ``index-data`` step: index a data root, write its Markdown and HTML reports."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Dict

from maskpipe.atomic import write_text
from maskpipe.data.index import build_index, eval_index_path
from maskpipe.labels import CLASS_NAMES, TASK_CLASS_NAMES, TASKS


def index_step(
    data_root: str,
    folder: Path,
    report_path: Path,
    html_path: Path,
    *,
    val_fraction: float = 0.2,
    seed: int = 42,
    corrections: str = "",
    skip_bad_profiles: bool = False,
) -> Dict[str, Any]:
    """Write ``folder``/index.parquet (+ index.eval.parquet, report.json), the Markdown summary at
    ``report_path`` and the HTML report at ``html_path``; returns the index artifact's metadata."""
    from maskpipe.reports import write_index_report

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    index_path = folder / "index.parquet"
    result = build_index(
        data_root,
        index_path,
        report_path=folder / "report.json",
        val_fraction=val_fraction,
        seed=seed,
        corrections=corrections or None,
        skip_bad_profiles=skip_bad_profiles,
    )
    print(result.summary())
    write_index_report(result.train, result.report, html_path)

    train = result.train
    eval_rows = 0 if result.eval is None else len(result.eval)
    skipped = result.report.get("skipped_files", [])
    skipped_people = result.report.get("skipped_profiles", [])
    split_counts = {str(k): int(v) for k, v in train["split"].value_counts().items()}
    write_text(report_path, index_markdown(data_root, train, eval_rows, split_counts, skipped, skipped_people))
    return {
        "data_root": data_root,
        "images": len(train),
        "people": int(train["profile"].nunique()),
        "images_per_split": split_counts,
        "eval_images": eval_rows,
        "has_eval": eval_index_path(index_path).exists(),
        "skipped_files": len(skipped),
        "skipped_people": len(skipped_people),
        "val_fraction": val_fraction,
        "seed": seed,
    }


def index_markdown(data_root, train, eval_rows, split_counts, skipped, skipped_people) -> str:
    """The step's Markdown summary: images per split, class and task, and the skipped items."""
    lines = [
        "# Index",
        "",
        f"Data root: `{data_root}`",
        "",
        f"- training images: **{len(train)}** from **{train['profile'].nunique()}** people",
        "- per split: " + ", ".join(f"{k} {v}" for k, v in sorted(split_counts.items())),
        f"- eval images: **{eval_rows}**",
        f"- skipped files: **{len(skipped)}**, skipped people: **{len(skipped_people)}**",
        "",
        "## Images per class",
        "",
        "| class | name | train | val |",
        "|---:|---|---:|---:|",
    ]
    per_class = train.groupby(["class", "split"]).size()
    for cls, name in enumerate(CLASS_NAMES):
        n_train = int(per_class.get((cls, "train"), 0))
        n_val = int(per_class.get((cls, "val"), 0))
        lines.append(f"| {cls} | {name} | {n_train} | {n_val} |")
    for task in TASKS:
        counts = train[f"{task}_label"].value_counts()
        names = TASK_CLASS_NAMES[task]
        lines += ["", f"## {task}", ""]
        lines += [f"- {name}: {int(counts.get(i, 0))}" for i, name in enumerate(names)]
    for title, items, key in (
        ("Skipped people", skipped_people, "profile"),
        ("Skipped files", skipped, "path"),
    ):
        if not items:
            continue
        lines += ["", f"## {title}", "", "| item | reason |", "|---|---|"]
        lines += [f"| `{item[key]}` | {item['reason']} |" for item in items[:200]]
        if len(items) > 200:
            lines.append(f"| ... | {len(items) - 200} more in report.json |")
    return "\n".join(lines) + "\n"
