"""Each benchmark's results file: what the script printed, with the date, the machine and the command line.

A benchmark script's ``main`` wraps its run in :func:`record`: everything the run prints to
stdout is copied, and when the run ends with status 0 the copy is written (atomically, by
:mod:`maskpipe.atomic`) to ``--results`` (default ``benchmarks/results/<script>.md``) under a
header that says when, where and how it was measured. A run that fails writes nothing, so a
results file never holds the figure of a fallback.

    parser = argparse.ArgumentParser(...)
    add_results_argument(parser, "train")
    ...
    return record(args.results, lambda: run_in_work_dir(...), script=__file__, argv=argv)
"""

from __future__ import annotations

import argparse
import datetime
import io
import os
import platform
import shlex
import subprocess
import sys
from pathlib import Path
from typing import Callable, Sequence

from maskpipe.atomic import write_text

BENCHMARKS = Path(__file__).resolve().parent
RESULTS_DIR = BENCHMARKS / "results"


def results_path(script: str) -> Path:
    """``benchmarks/results/<script>.md``: where a script's results go unless told otherwise."""
    return RESULTS_DIR / f"{script}.md"


def add_results_argument(parser: argparse.ArgumentParser, script: str, *, default: bool = True) -> None:
    """``--results FILE``: where the run's results go (:func:`results_path`; with
    ``default=False`` the script decides when ``--results`` is not given: it is None)."""
    parser.add_argument(
        "--results", type=Path, default=results_path(script) if default else None, metavar="FILE",
        help="Markdown file the run's figures are written to, with the date, machine and command line "
        f"(default: benchmarks/results/{script}.md)",
    )


class _Tee(io.TextIOBase):
    """A text stream that writes to ``stream`` and keeps a copy."""

    def __init__(self, stream) -> None:
        self.stream = stream
        self.copy = io.StringIO()

    def write(self, text: str) -> int:
        self.copy.write(text)
        return self.stream.write(text)

    def flush(self) -> None:
        self.stream.flush()


def record(results: Path | None, run: Callable[[], int], *, script: str, argv: Sequence[str] | None = None) -> int:
    """Call ``run()`` (which returns an exit status) with its stdout copied; on status 0 and a
    ``results`` path, write the results file of ``script`` (the benchmark's ``__file__``) run
    with ``argv`` (None: this process's arguments). Returns ``run()``'s status."""
    tee = _Tee(sys.stdout)
    sys.stdout = tee
    started = datetime.datetime.now(datetime.timezone.utc)
    try:
        status = run()
    finally:
        sys.stdout = tee.stream
    if status == 0 and results is not None:
        write_results(results, Path(script).name, tee.copy.getvalue(), command_line(script, argv), started)
        print(f"results written to {results}", file=sys.stderr)
    return status


def benchmark_main(script: str, parse_args: Callable, run: Callable) -> Callable[[Sequence[str] | None], int]:
    """A benchmark script's ``main(argv)``: parse, then ``run(args, folder)`` in ``--work-dir`` (or a
    temporary folder, ``original_recipe.run_in_work_dir``) with its output kept as ``--results``."""
    from original_recipe import run_in_work_dir

    def main(argv: Sequence[str] | None = None) -> int:
        args = parse_args(argv)
        return record(args.results, lambda: run_in_work_dir(lambda folder: run(args, folder), args.work_dir),
                      script=script, argv=argv)  # fmt: skip

    return main


def command_line(script: str, argv: Sequence[str] | None = None) -> str:
    """The command that runs ``script`` with ``argv``, as typed from the repository root."""
    path = Path(script).resolve()
    try:
        shown = path.relative_to(BENCHMARKS.parent)
    except ValueError:
        shown = path
    args = sys.argv[1:] if argv is None else list(argv)
    return shlex.join(["python", str(shown), *args])


def write_results(path: Path, script: str, output: str, command: str, started: datetime.datetime) -> None:
    rows = [("date", started.strftime("%Y-%m-%d %H:%M UTC")), ("command", f"`{command}`"), *machine().items()]
    text = "\n".join(
        [
            f"# {script} results",
            "",
            "Written by the script itself (benchmarks/results.py); run it again to replace this file.",
            "",
            "| | |",
            "|---|---|",
            *(f"| {key} | {value} |" for key, value in rows),
            "",
            "```text",
            output.rstrip("\n"),
            "```",
            "",
        ]
    )
    write_text(path, text)


def machine() -> dict[str, str]:
    """CPU model and cores, GPU, torch and Python versions, and the commit measured."""
    import torch

    available, total = len(os.sched_getaffinity(0)), os.cpu_count()
    gpu = "none"
    if torch.cuda.is_available():
        gpu = f"{torch.cuda.device_count()} x {torch.cuda.get_device_name()} (CUDA {torch.version.cuda})"
    return {
        "CPU": f"{cpu_model()}, {available} cores available (of {total})",
        "GPU": gpu,
        "torch": torch.__version__,
        "Python": f"{platform.python_version()} on {platform.system()} {platform.machine()}",
        "commit": commit(),
    }


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as handle:
            for line in handle:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def commit() -> str:
    """``git describe`` of the checkout measured (``-dirty`` when it has changes); "unknown"
    outside a git checkout."""
    try:
        result = subprocess.run(
            ["git", "describe", "--always", "--dirty"], cwd=BENCHMARKS, capture_output=True, text=True, timeout=10
        )
    except (OSError, subprocess.TimeoutExpired):
        return "unknown"
    return result.stdout.strip() if result.returncode == 0 else "unknown"
