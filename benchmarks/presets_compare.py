"""Score the training recipes side by side on the same synthetic data at the same budget.

Each recipe trains the three task models at smoke size (resnet10t from scratch, 96x72 input,
the same number of epochs), then predicts the eval people - who were never trained on - and is
scored with the official 18-class macro-F1. Recipes:

* ``original``: the competition recipe (preset ``original``: albumentations list decoded per
  access, AdamP, StepLR, grad accumulation 2, train-accuracy selection, no validation split),
  only shrunk in architecture and size;
* ``default``: our preset ``default``, shrunk the same way;
* ``smoke``: the CPU preset used by the demo and the tests.

    python benchmarks/presets_compare.py --people 90 --epochs 8 --out /tmp/presets-compare

Prints one line per recipe: seconds, per-task validation / training score, and eval scores.
The numbers recorded in docs/presets.md come from this script.
"""

from __future__ import annotations

import argparse
import logging
import time
from pathlib import Path

SMALL = ["model.arch=resnet10t", "model.pretrained=false", "data.input_size=96x72"]


def recipes(epochs: int) -> dict[str, tuple[str, list[str]]]:
    budget = [f"train.epochs={epochs}"]
    return {
        "original": ("original", SMALL + budget),
        "default": ("default", SMALL + budget + ["data.cache_gb=1"]),
        "smoke": ("smoke", budget),
    }


def run_recipe(name: str, preset: str, overrides: list[str], data: Path, index: Path, out: Path) -> dict:
    from maskpipe.config import load_config
    from maskpipe.ensemble import predict_submission
    from maskpipe.evaluate import evaluate_files
    from maskpipe.train import train_task

    config = load_config(preset, overrides)
    started = time.monotonic()
    checkpoints, fit = {}, {}
    for task in ("mask", "gender", "age"):
        result = train_task(config, task, index, out / name / task, cache_dir=out / "cache")
        checkpoints[task] = result.checkpoint_dir
        fit[task] = f"{result.metrics['split']} f1 {result.metrics['macro_f1']:.3f}"
    seconds = time.monotonic() - started
    submission = out / name / "submission.csv"
    predict_submission(checkpoints, str(data), submission, cache_dir=out / "cache")
    scores = evaluate_files(submission, data / "eval_truth.csv")
    return {"seconds": seconds, "fit": fit, "scores": scores}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--people", type=int, default=90)
    parser.add_argument("--eval-people", type=int, default=30)
    parser.add_argument("--epochs", type=int, default=8)
    parser.add_argument("--out", type=Path, default=Path("presets-compare"))
    parser.add_argument("--only", nargs="*", help="recipes to run (default: all)")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")

    from maskpipe.data.index import build_index
    from maskpipe.data.synth import generate

    data, index = args.out / "data", args.out / "index.parquet"
    if not index.exists():
        generate(data, people=args.people, eval_people=args.eval_people, seed=0, size=(96, 128))
        build_index(str(data), index)
    rows = []
    for name, (preset, overrides) in recipes(args.epochs).items():
        if args.only and name not in args.only:
            continue
        result = run_recipe(name, preset, overrides, data, index, args.out)
        tasks = result["scores"]["tasks"]
        rows.append(
            f"| {name} | {result['seconds']:.0f} | {tasks['mask']['accuracy']:.3f} | "
            f"{tasks['gender']['macro_f1']:.3f} | {tasks['age']['macro_f1']:.3f} | "
            f"{result['scores']['accuracy']:.3f} | {result['scores']['macro_f1']:.3f} | "
            f"{'; '.join(f'{t}: {v}' for t, v in result['fit'].items())} |"
        )
        print(rows[-1], flush=True)
    print(
        f"\n{args.people} people ({args.eval_people} unseen eval people), {args.epochs} epochs, "
        "resnet10t 96x72 from scratch, CPU\n"
        "| recipe | train s (3 models) | eval mask acc | eval gender F1 | eval age F1 | "
        "eval 18-class acc | eval 18-class macro-F1 | selection score |\n"
        "|---|---|---|---|---|---|---|---|"
    )
    print("\n".join(rows))


if __name__ == "__main__":
    main()
