"""The ``train-<task>`` report: how training went and where the chosen model goes wrong.

Loss, accuracy and macro-F1 per epoch (train and validation), the learning rate per optimizer
step, the chosen epoch's confusion matrix and the images it got most confidently wrong. All of
it is read from the checkpoint folder (``history.json``, ``metrics.json``, ``mistakes.json``,
``checkpoint.json``), so a finished folder can be reported again at any time.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from maskpipe.errors import CheckpointError
from maskpipe.reports.page import Page, card, heatmap, line_chart, write_page

# A learning-rate curve of more steps is thinned to this many points (it is smooth).
MAX_LR_POINTS = 1000


def write_train_report(
    checkpoint_dir: str | os.PathLike[str],
    out_path: str | os.PathLike[str],
    *,
    cache_dir: str | os.PathLike[str] | None = None,
) -> Path:
    """Write the HTML report of a training run from its checkpoint folder.

    Raises CheckpointError naming the file when the folder lacks ``history.json`` or
    ``metrics.json`` (written by ``maskpipe train`` after the first epoch).
    """
    folder = Path(checkpoint_dir)
    history = _read_json(folder / "history.json", required=True)
    metrics = _read_json(folder / "metrics.json", required=True)
    meta = _read_json(folder / "checkpoint.json") or {}
    mistakes = _read_json(folder / "mistakes.json")
    task = metrics.get("task") or meta.get("task", "?")

    page = Page(f"Training: {task}", str(folder))
    split = metrics.get("split", "val")
    page.facts(
        [
            ("architecture", meta.get("arch", "")),
            ("input size (h x w)", "x".join(str(v) for v in meta.get("input_size", []))),
            ("epochs done", len(history)),
            ("chosen epoch", f"{metrics.get('epoch')} (selected by {metrics.get('selected_by', '')})"),
            (f"{split} accuracy", metrics.get("accuracy")),
            (f"{split} macro-F1", metrics.get("macro_f1")),
        ]
    )

    page.heading("Per epoch")
    epochs = [row["epoch"] for row in history]
    has_val = any(row.get("val_loss") is not None for row in history)
    if not has_val:
        page.paragraph("No validation people in this run (val_fraction 0): training curves only.")
    page.charts(
        *(
            line_chart(
                epochs,
                {"train": [row[f"train_{key}"] for row in history], "validation": [row.get(f"val_{key}") for row in history]},
                title=title, xlabel="epoch",
            )  # fmt: skip
            for key, title in (("loss", "Loss"), ("accuracy", "Accuracy"), ("macro_f1", "Macro-F1"))
        )
    )
    page.heading("Learning rate")
    page.charts(_lr_chart(history))

    page.heading(f"Confusion matrix (epoch {metrics.get('epoch')}, {_split_name(split)})")
    page.charts(heatmap(metrics["confusion_matrix"], metrics["class_names"], title=f"{task}: true vs predicted"))

    page.heading("Most confidently wrong")
    _mistakes_gallery(page, mistakes, cache_dir)
    return write_page(page, out_path)


def _lr_chart(history: list[dict[str, Any]]) -> str:
    steps = [lr for row in history for lr in row.get("lr_steps") or []]
    if steps:
        stride = max(1, -(-len(steps) // MAX_LR_POINTS))
        xs = list(range(1, len(steps) + 1, stride))
        return line_chart(
            xs, {"learning rate": steps[::stride]}, title="Learning rate per optimizer step",
            xlabel="step", markers=False, width=6.0,
        )  # fmt: skip
    # checkpoints written before the per-step record hold the rate at each epoch's end
    return line_chart(
        [row["epoch"] for row in history], {"learning rate": [row["lr"] for row in history]},
        title="Learning rate at the end of each epoch", xlabel="epoch", width=6.0,
    )  # fmt: skip


def _mistakes_gallery(page: Page, mistakes: dict[str, Any] | None, cache_dir: str | os.PathLike[str] | None) -> None:
    if mistakes is None:
        page.paragraph("not recorded (mistakes.json is missing: the run was made by an older maskpipe)")
        return
    checked, wrong = mistakes["images_checked"], mistakes["wrong"]
    page.paragraph(
        f"{wrong} of {checked} {_split_name(mistakes['split'])} images{'' if mistakes['split'] == 'val' else ' (a sample, unaugmented)'} wrong with the model of epoch "
        f"{mistakes['epoch']}; the {len(mistakes['mistakes'])} of highest probability:"
    )
    if not mistakes["mistakes"]:
        return
    from maskpipe.storage import localize

    names = mistakes["class_names"]
    items = mistakes["mistakes"]
    local = localize(mistakes["data_root"], [m["path"] for m in items], Path(cache_dir) if cache_dir else None)
    page.gallery(
        [
            card(
                path,
                [
                    f"true: {names[m['true']]}",
                    f"pred: {names[m['predicted']]} ({m['probability']:.2f})",
                    *m["path"].split("/")[-2:],
                ],
                status="wrong",
            )
            for path, m in zip(local, items)
        ]
    )


def _split_name(split: str) -> str:
    return "validation" if split == "val" else "training"


def _read_json(path: Path, required: bool = False) -> Any:
    if not path.is_file():
        if required:
            raise CheckpointError(
                f"{path} does not exist; the training report reads it from a checkpoint folder "
                "written by `maskpipe train` (after at least one epoch)"
            )
        return None
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise CheckpointError(f"{path} is not readable JSON ({exc}); rerun the training into a fresh folder") from None
