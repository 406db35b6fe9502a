"""Pipeline step ``index-data``: scan a data root and write the index every later step reads."""

from kfp import dsl
from kfp.dsl import HTML, Dataset, Markdown, Output

from components.image import IMAGE


@dsl.component(base_image=IMAGE, install_kfp_package=False)
def index_data(
    data_root: str,
    index: Output[Dataset],
    report: Output[Markdown],
    html_report: Output[HTML],
    val_fraction: float = 0.2,
    seed: int = 42,
    corrections: str = "",
    skip_bad_profiles: bool = False,
):
    """Index a data set in the competition layout and split its people into train/val.

    Wraps ``maskpipe.data.index.build_index``. Every image is decode-checked; unusable files are
    skipped and listed in the report instead of failing a training step hours later.

    Args:
        data_root: Folder (a path mounted in the pod) or ``s3://bucket/prefix`` holding
            ``train/`` and optionally ``eval/``.
        index: Output folder with ``index.parquet``, ``index.eval.parquet`` (when ``eval/``
            exists) and ``report.json``.
        report: Markdown summary: images per split, class and task, and the skipped files.
        html_report: Visual report (``maskpipe.reports.write_index_report``, as ``maskpipe
            index`` writes it): images per class and task, people per gender and age bin,
            skipped and corrected files, sample photos per mask state.
        val_fraction: Fraction of people held out for validation (0 disables the split).
        seed: Seed of the profile-level stratified split.
        corrections: Label corrections: ``""`` for none, ``"known"`` for the widely reported
            fixes, or a CSV/YAML path readable by the pod.
        skip_bad_profiles: Skip (and report) profile folders whose names do not parse instead
            of failing.
    """
    from pathlib import Path

    from maskpipe.atomic import write_text
    from maskpipe.data.index import build_index, eval_index_path
    from maskpipe.labels import CLASS_NAMES, TASK_CLASS_NAMES, TASKS

    folder = Path(index.path)
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
    from maskpipe.reports import write_index_report

    write_index_report(result.train, result.report, html_report.path)

    train = result.train
    eval_rows = 0 if result.eval is None else len(result.eval)
    skipped = result.report.get("skipped_files", [])
    skipped_people = result.report.get("skipped_profiles", [])
    split_counts = {str(k): int(v) for k, v in train["split"].value_counts().items()}
    index.metadata.update(
        {
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
    )

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
    write_text(report.path, "\n".join(lines) + "\n")
