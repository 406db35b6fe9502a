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

    Wraps ``maskpipe.steps.index.index_step``. Every image is decode-checked; unusable files are
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
    from maskpipe.steps.index import index_step

    index.metadata.update(
        index_step(
            data_root, index.path, report.path, html_report.path, val_fraction=val_fraction, seed=seed,
            corrections=corrections, skip_bad_profiles=skip_bad_profiles,
        )  # fmt: skip
    )
