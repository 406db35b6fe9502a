"""Run the whole pipeline on this machine through kfp.local and collect what it wrote.

Two runners: each step as a subprocess of this Python (the default), or each step in the
project image (``image=``; the container side is in ``pipeline_cli.containers``).
"""

import contextlib
import dataclasses
import json
import re
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Optional

from pipeline import LOCAL_OPTIONS, TASKS, PipelineOptions, make_pipeline


class PipelineRunError(RuntimeError):
    """A local pipeline run failed; the message names the step and the cause."""


@dataclass
class LocalRun:
    """Where a local run put its outputs."""

    run_dir: Path
    output_dir: Path
    submission: Path
    index_dir: Path
    checkpoints: Dict[str, Path]
    reports: Dict[str, Path]
    metrics: Dict[str, Dict[str, Any]]
    scores: Optional[Dict[str, Any]] = None
    log_path: Optional[Path] = None

    def summary(self) -> str:
        lines = [f"run folder:      {self.run_dir}", f"submission:      {self.submission}"]
        lines += [f"checkpoint {t + ':':<7}{p}" for t, p in self.checkpoints.items()]
        lines += [f"index:           {self.index_dir}"]
        lines += [f"report {n + ':':<9}{p}" for n, p in self.reports.items()]
        for step, values in self.metrics.items():
            shown = ", ".join(
                f"{k} {v:.4f}" for k, v in values.items() if k in ("val_accuracy", "val_macro_f1")
            )
            if shown:
                lines.append(f"metrics {step}: {shown}")
        if self.log_path:
            lines.append(f"log:             {self.log_path}")
        return "\n".join(lines)


def run_local(
    arguments: Dict[str, Any],
    output_dir: Path,
    *,
    options: PipelineOptions = LOCAL_OPTIONS,
    truth: Optional[Path] = None,
    image: Optional[str] = None,
) -> LocalRun:
    """Run the whole pipeline here through kfp.local.

    Without ``image`` each step runs as a subprocess of this Python, with this environment
    (``SubprocessRunner(use_venv=False)``). With ``image`` each step runs in a container of
    that image (``DockerRunner``), the image compiled into every step. On failure raises
    PipelineRunError naming the step (display name) and the cause from its log; the outputs
    of the steps that ran stay under ``output_dir/runs``.
    """
    from kfp import local

    output_dir = Path(output_dir).resolve()
    runs_root = output_dir / "runs"
    runs_root.mkdir(parents=True, exist_ok=True)
    arguments = dict(arguments)
    if not _is_s3(arguments["data_root"]):
        arguments["data_root"] = str(Path(arguments["data_root"]).resolve())
    log_path = output_dir / "run-local.log"
    in_containers = None
    runner: Any = local.SubprocessRunner(use_venv=False)
    if image:
        from pipeline_cli import containers

        try:
            in_containers = containers.prepare(image, arguments["data_root"])
        except containers.ContainerEngineError as exc:
            raise PipelineRunError(str(exc)) from None
        in_containers.log_dir = output_dir / "container-logs"
        options = dataclasses.replace(options, image=in_containers.image)
        runner = local.DockerRunner(**in_containers.run_args())
    pipeline_func = make_pipeline(options)
    display_names = {
        key: spec.task_info.name for key, spec in pipeline_func.pipeline_spec.root.dag.tasks.items()
    }

    local.init(runner=runner, pipeline_root=str(runs_root), raise_on_error=True)
    before = set(runs_root.iterdir())
    with contextlib.ExitStack() as stack:
        if in_containers is not None:
            stack.enter_context(containers.group_writable_root(runs_root))
            stack.enter_context(containers.steps_in_containers(in_containers))
        captured = stack.enter_context(_tee_stdout(log_path))
        try:
            pipeline_func(**arguments)
        except RuntimeError as exc:
            message = _failure_message(str(exc), captured.getvalue(), display_names, log_path)
            failed = in_containers.failed_step() if in_containers is not None else None
            if failed is not None:
                key = _failed_task_key(str(exc))
                message = containers.failure_message(
                    display_names.get(key, key or "unknown step"), key or "?", failed,
                    in_containers.image,
                ) + f"\nthe other steps' outputs: {runs_root}\nfull log: {log_path}"
            raise PipelineRunError(message) from None
    new_dirs = sorted(p for p in set(runs_root.iterdir()) - before if p.is_dir())
    if not new_dirs:
        raise PipelineRunError(f"kfp.local wrote no run folder under {runs_root}")
    run = collect_local_run(new_dirs[-1], output_dir, display_names)
    run.log_path = log_path
    if truth is None and not _is_s3(arguments["data_root"]):
        found = Path(arguments["data_root"]) / "eval_truth.csv"
        truth = found if found.exists() else None
    if truth is not None:
        from maskpipe.evaluate import evaluate_files

        run.scores = evaluate_files(run.submission, truth, json_path=output_dir / "scores.json")
    return run


def collect_local_run(
    run_dir: Path, output_dir: Path, display_names: Dict[str, str]
) -> LocalRun:
    """Find each step's outputs in a kfp.local run folder (``<run>/<task key>/<output>``)."""
    by_name = {name: run_dir / key for key, name in display_names.items()}
    infer_dir = by_name["ensemble-infer"]
    submission = output_dir / "submission.csv"
    shutil.copyfile(infer_dir / "submission", submission)
    metrics = {}
    for name, folder in by_name.items():
        executor_output = folder / "executor_output.json"
        if executor_output.exists():
            metrics[name] = _metrics_from_executor_output(executor_output)
    return LocalRun(
        run_dir=run_dir,
        output_dir=output_dir,
        submission=submission,
        index_dir=by_name["index-data"] / "index",
        checkpoints={task: by_name[f"train-{task}"] / "model" for task in TASKS},
        reports={
            "index": by_name["index-data"] / "report",
            "inference": infer_dir / "report",
        },
        metrics=metrics,
    )


def _metrics_from_executor_output(path: Path) -> Dict[str, Any]:
    """The scalar metrics a step logged (kfp.local keeps them only in executor_output.json)."""
    data = json.loads(path.read_text())
    values: Dict[str, Any] = {}
    # executor_output.json lists artifacts by output name, without their types
    for artifact in data.get("artifacts", {}).get("metrics", {}).get("artifacts", []):
        values.update(artifact.get("metadata", {}))
    return {k: float(v) for k, v in values.items() if isinstance(v, (int, float))}


_ANSI = re.compile(r"\x1b\[[0-9;]*m")
_ERROR_LINE = re.compile(r"^\s*((?:[A-Za-z_][\w.]*\.)?[A-Z]\w*(?:Error|Exception|Exit)\b.*)$")


def _failure_message(
    error: str, log: str, display_names: Dict[str, str], log_path: Path
) -> str:
    """Name the failed step and quote the last error line of its streamed log."""
    error = _ANSI.sub("", error)
    log = _ANSI.sub("", log)
    key = _failed_task_key(error)
    step = display_names.get(key, key) if key else "unknown step"
    section = log
    if key:
        start = log.rfind(f"Executing task '{key}'")
        end = log.find(f"Task '{key}' finished", start if start >= 0 else 0)
        if start >= 0:
            section = log[start : end if end > start else len(log)]
    causes = [m.group(1).strip() for m in map(_ERROR_LINE.match, section.splitlines()) if m]
    cause = causes[-1] if causes else error.strip()
    return f"step {step} (task {key}) failed: {cause}\nfull log: {log_path}"


def _failed_task_key(error: str) -> Optional[str]:
    """The task key (e.g. ``train-model-2``) in kfp.local's error for a failed pipeline."""
    match = re.search(r"Inner task failed: '?([\w-]+)", _ANSI.sub("", error))
    return match.group(1) if match else None


class _Tee:
    """Write to the real stdout and keep a copy (kfp.local prints each step's log)."""

    def __init__(self, stream, log_file):
        self._stream = stream
        self._log_file = log_file
        self._parts: List[str] = []

    def write(self, text: str) -> int:
        self._stream.write(text)
        self._log_file.write(text)
        self._parts.append(text)
        return len(text)

    def flush(self) -> None:
        self._stream.flush()
        self._log_file.flush()

    def getvalue(self) -> str:
        return "".join(self._parts)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._stream, name)


class _tee_stdout:
    def __init__(self, log_path: Path):
        self._log_path = log_path

    def __enter__(self) -> _Tee:
        self._log_file = open(self._log_path, "w", encoding="utf-8")
        self._saved = sys.stdout
        self._tee = _Tee(sys.stdout, self._log_file)
        sys.stdout = self._tee
        return self._tee

    def __exit__(self, *exc) -> None:
        sys.stdout = self._saved
        self._log_file.close()


def _is_s3(uri: str) -> bool:
    return uri.startswith("s3://")


