"""Which recipe choices help: each difference between ``original`` and ``default``, measured.

``original`` and ``default`` are GPU recipes (ImageNet-pretrained efficientnet_b4 at 448x336+);
shrunk whole to a from-scratch CPU network neither learns in a few epochs, which measures
nothing. So this script measures their *differences* one at a time on the CPU-sized recipe
that does learn (preset ``smoke``: resnet10t from scratch at 96x72): every row is the smoke
recipe with one choice set to the original's or the default's value, trained on the same
synthetic people for the same number of epochs, then scored on the eval people (never
trained on) with the official 18-class macro-F1.

A row retrains only the task models its choice touches (the gender sampler only touches
gender); the other models are the reference run's, so the 18-class score isolates the choice.
Flip TTA needs no training: the reference models predict again with it.

    python benchmarks/presets_compare.py --out /tmp/presets-compare           # ~45 min, 2 cores
    python benchmarks/presets_compare.py --only tta sampler_shuffle scheduler_step

The full-size GPU figures (pretrained efficientnet_b4) are not measured by this script.
It writes its table to benchmarks/results/presets_compare.md (``--results``).
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from results import add_results_argument, record

TASKS = ("mask", "gender", "age")
ALL_AUGS = "flip,affine,hue_sat_val,brightness_contrast,coarse_dropout,cutout,noise"


@dataclass
class Variant:
    """The smoke recipe with ``overrides``; ``tasks`` are retrained, the rest reused."""

    name: str
    choice: str
    overrides: list[str] = field(default_factory=list)
    tasks: tuple[str, ...] = TASKS
    val_split: bool = False  # train on the index with a 20% validation split
    tta: bool = False


def variants() -> list[Variant]:
    with_val = ["data.use_val_split=true", "train.select_by=val_f1"]
    return [
        Variant("reference", "smoke preset as shipped"),
        Variant("tta", "flip TTA at inference (default)", tasks=(), tta=True),
        Variant("sampler_shuffle", "gender sampler: shuffle (original, default)",
                ["train.sampler={mask: weighted, gender: shuffle, age: weighted}"], ("gender",)),
        Variant("holdout_last", "a 20% person hold-out (scored, not used to select), last epoch",
                val_split=True),
        Variant("select_val_f1", "model selection: best val macro-F1 on a 20% person split, patience 4 (previous default)",
                [*with_val, "train.early_stopping_patience=4"], val_split=True),
        Variant("scheduler_step", "schedule: StepLR every 5 epochs x0.5 (original)",
                ["train.scheduler=step", "train.step_size=5", "train.gamma=0.5"]),
        Variant("label_smoothing", "label smoothing 0.1 (previous default)", ["train.label_smoothing=0.1"]),
        Variant("all_augs", "all seven augmentations (original and default)", [f"data.augs={ALL_AUGS}"]),
        Variant("augment_original", "input path: decode every access, original list (original)",
                ["data.augment=original"]),
        Variant("accum2", "batch 8 x grad accumulation 2 (original's split of the batch)",
                ["train.batch_size=8", "train.grad_accum=2"]),
        Variant("select_train_acc", "model selection: best training accuracy, all people (original)",
                ["train.select_by=train_acc"]),
    ]  # fmt: skip


def prepare(out: Path, people: int, eval_people: int, seed: int) -> tuple[Path, Path, Path]:
    from maskpipe.data.index import build_index
    from maskpipe.data.synth import generate

    data = out / "data"
    index_all, index_val = out / "index-all.parquet", out / "index-val.parquet"
    if not index_val.exists():
        # The photo size of `maskpipe synth` (512x384, HxW): the 448x336 crop is part of the recipe.
        generate(data, people=people, eval_people=eval_people, seed=seed)
        build_index(str(data), index_all, val_fraction=0.0)
        build_index(str(data), index_val, val_fraction=0.2)
    return data, index_all, index_val


def run_variant(
    variant: Variant, epochs: int, data: Path, indexes: tuple[Path, Path], out: Path
) -> dict:
    from maskpipe.config import load_config
    from maskpipe.ensemble import predict_submission
    from maskpipe.runtime import open_backend
    from maskpipe.evaluate import evaluate_files
    from maskpipe.train import train_task

    config = load_config("smoke", [f"train.epochs={epochs}", *variant.overrides])
    index = indexes[1] if variant.val_split else indexes[0]
    started = time.monotonic()
    checkpoints, epochs_run = {}, {}
    for task in TASKS:
        if task in variant.tasks:
            result = train_task(config, task, index, out / variant.name / task, cache_dir=out / "cache")
            epochs_run[task] = f"{result.best_epoch}/{result.epochs_done}"
        checkpoints[task] = out / (variant.name if task in variant.tasks else "reference") / task
    seconds = time.monotonic() - started
    submission = out / variant.name / "submission.csv"
    predict_submission(open_backend(checkpoints, tta=variant.tta), str(data), submission, cache_dir=out / "cache")
    scores = evaluate_files(submission, data / "eval_truth.csv")
    return {"seconds": seconds, "epochs": epochs_run, "scores": scores}


def table_row(variant: Variant, result: dict) -> str:
    tasks, scores = result["scores"]["tasks"], result["scores"]
    trained = ", ".join(variant.tasks) or "none"
    chosen = "; ".join(f"{t} {e}" for t, e in result["epochs"].items()) or "-"
    return (
        f"| {variant.choice} | {trained} | {result['seconds']:.0f} | {tasks['mask']['accuracy']:.3f} | "
        f"{tasks['gender']['macro_f1']:.3f} | {tasks['age']['macro_f1']:.3f} | "
        f"{scores['accuracy']:.3f} | **{scores['macro_f1']:.3f}** | {chosen} |"
    )


HEADER = (
    "| variant of the smoke recipe | retrained | train s | eval mask acc | eval gender F1 | "
    "eval age F1 | eval 18-class acc | eval 18-class macro-F1 | chosen epoch / run |\n"
    "|---|---|---|---|---|---|---|---|---|"
)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--people", type=int, default=90)
    parser.add_argument("--eval-people", type=int, default=30)
    parser.add_argument("--seed", type=int, default=0, help="synthetic data seed")
    parser.add_argument("--epochs", type=int, default=None, help="default: the smoke preset's")
    parser.add_argument("--out", type=Path, default=Path("presets-compare"))
    parser.add_argument(
        "--only", nargs="*", help="variants to run (the reference always runs first; a finished "
        "variant folder under --out is reused, not retrained)",
    )
    add_results_argument(parser, "presets_compare")
    args = parser.parse_args(argv)
    return record(args.results, lambda: compare(args), script=__file__, argv=argv)


def compare(args: argparse.Namespace) -> int:
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")

    from maskpipe.config import load_config

    epochs = args.epochs or load_config("smoke").train.epochs
    data, index_all, index_val = prepare(args.out, args.people, args.eval_people, args.seed)
    rows = []
    print(HEADER, flush=True)
    for variant in variants():
        if args.only and variant.name not in args.only and variant.name != "reference":
            continue
        result = run_variant(variant, epochs, data, (index_all, index_val), args.out)
        rows.append(table_row(variant, result))
        print(rows[-1], flush=True)
    print(
        f"\n{args.people} training people, {args.eval_people} unseen eval people (synthetic, seed "
        f"{args.seed}), {epochs} epochs, resnet10t 96x72 from scratch, CPU\n{HEADER}"
    )
    print("\n".join(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
