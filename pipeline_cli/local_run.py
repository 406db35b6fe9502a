"""Run the whole pipeline on this machine through kfp.local and collect what it wrote.

Two runners: each step as a subprocess of this Python (the default), or each step in the
project image (``image=``; the container side is in ``pipeline_cli.containers``).
"""

import contextlib
import dataclasses
import json
import re
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, Optional

from maskpipe.storage import is_s3
from pipeline_dag import LOCAL_OPTIONS, TASKS, PipelineOptions, make_pipeline
from pipeline_cli.console import ANSI, StepConsole, console_to, quoted_tail
from pipeline_cli.local_deploy import deploy_preflight, deploy_step_with


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
    html_reports: Dict[str, Path]  # step name -> its HTML report, in pipeline order
    metrics: Dict[str, Dict[str, Any]]
    scores: Optional[Dict[str, Any]] = None
    log_path: Optional[Path] = None
    report: Optional[Path] = None  # report.html linking the step reports
    model_dir: Optional[Path] = None  # what export-model wrote (None with export=false)
    service_url: Optional[str] = None  # what the deploy step returned (None without deploy)

    def summary(self) -> str:
        """Where things are, and the scores: what a person reads after a run."""
        lines = [f"run folder:     {self.run_dir}"]
        if self.log_path:
            lines.append(f"full log:       {self.log_path}")
        lines.append(f"checkpoints:    {', '.join(str(p) for p in self.checkpoints.values())}")
        validation = [
            f"{step} {values['val_macro_f1']:.4f}"
            for step, values in sorted(self.metrics.items())
            if "val_macro_f1" in values
        ]
        if validation:
            lines.append(f"val macro-F1:   {', '.join(validation)}")
        if self.scores is not None:
            from maskpipe.evaluate import format_scores

            lines += ["", f"scores against {self.scores['truth']}:", format_scores(self.scores, detail=False)]
            lines.append(f"per class and confusion matrix: {self.output_dir / 'scores.json'}")
        lines += ["", f"submission.csv: {self.submission}"]
        if self.model_dir is not None:
            lines.append(f"served model:   {self.model_dir}  (maskpipe serve {self.model_dir})")
        if self.service_url is not None:
            lines.append(f"deployed at:    {self.service_url}")
        if self.report:
            lines.append(f"report:         {self.report}")
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
    that image (``DockerRunner``), the image compiled into every step. The terminal shows one
    line per step start and end and training's epoch lines; everything else kfp.local prints
    goes to ``output_dir/run-local.log``. On failure raises PipelineRunError naming the step
    (display name), the cause and the tail of its log; the outputs of the steps that ran stay
    under ``output_dir/runs``. With ``deploy`` the deploy step runs in the serving environment
    against the kubeconfig's API (``pipeline_cli.local_deploy``), checked before any step runs
    (MaskpipeError).
    """
    from kfp import local

    deploy_python = deploy_preflight(arguments, image)
    output_dir = Path(output_dir).resolve()
    runs_root = output_dir / "runs"
    runs_root.mkdir(parents=True, exist_ok=True)
    arguments = dict(arguments)
    if not is_s3(arguments["data_root"]):
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
    display_names = step_display_names(pipeline_func.pipeline_spec)

    local.init(runner=runner, pipeline_root=str(runs_root), raise_on_error=True)
    before = set(runs_root.iterdir())
    with contextlib.ExitStack() as stack:
        if in_containers is not None:
            stack.enter_context(containers.group_writable_root(runs_root))
            stack.enter_context(containers.steps_in_containers(in_containers))
        stack.enter_context(deploy_step_with(deploy_python))
        console = stack.enter_context(console_to(log_path, display_names))
        try:
            pipeline_func(**arguments)
        except RuntimeError as exc:
            message = _failure_message(str(exc), console, log_path)
            failed = in_containers.failed_step() if in_containers is not None else None
            if failed is not None:
                key = _failed_task_key(str(exc))
                message = containers.failure_message(
                    console.name(key) if key else "unknown step", key or "?", failed,
                    in_containers.image,
                ) + f"\nthe other steps' outputs: {runs_root}\nfull log: {log_path}"
            raise PipelineRunError(message) from None
    new_dirs = sorted(p for p in set(runs_root.iterdir()) - before if p.is_dir())
    if not new_dirs:
        raise PipelineRunError(f"kfp.local wrote no run folder under {runs_root}")
    run = collect_local_run(new_dirs[-1], output_dir, display_names)
    run.log_path = log_path
    if truth is None and not is_s3(arguments["data_root"]):
        found = Path(arguments["data_root"]) / "eval_truth.csv"
        truth = found if found.exists() else None
    if truth is not None:
        from maskpipe.evaluate import evaluate_files

        run.scores = evaluate_files(run.submission, truth, json_path=output_dir / "scores.json")
    from maskpipe.reports import write_run_index

    run.report = write_run_index(
        run.html_reports, output_dir / "report.html", title=f"Pipeline run {run.run_dir.name}"
    )
    return run


def step_display_names(spec: Any) -> Dict[str, str]:
    """Task key -> display name of every step of a pipeline spec, inside conditions too (not
    the condition groups). Two keys can share a name: ensemble-infer has one task per branch of
    the ``export`` condition, and one of them runs."""
    dags = [spec.root.dag] + [c.dag for c in spec.components.values() if c.HasField("dag")]
    return {
        key: task.task_info.name
        for dag in dags
        for key, task in dag.tasks.items()
        if not spec.components[task.component_ref.name].HasField("dag")
    }


def collect_local_run(
    run_dir: Path, output_dir: Path, display_names: Dict[str, str]
) -> LocalRun:
    """Find each step's outputs in a kfp.local run folder (``<run>/<task key>/<output>``; a
    step inside a condition too: kfp.local names its folder by the task key all the same)."""
    by_name = {name: run_dir / key for key, name in display_names.items() if (run_dir / key).is_dir()}
    infer_dir = by_name["ensemble-infer"]
    submission = output_dir / "submission.csv"
    shutil.copyfile(infer_dir / "submission", submission)
    exported = by_name.get("export-model", run_dir / "export-model") / "model"
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
        html_reports={
            name: by_name[name] / "html_report"
            for name in _in_pipeline_order(by_name)
            if (by_name[name] / "html_report").exists() or name in _REPORTING_STEPS
        },
        metrics=metrics,
        model_dir=exported if (exported / "model.json").is_file() else None,
        service_url=_returned(by_name["deploy"]) if "deploy" in by_name else None,
    )


# The steps that always write an HTML report (a missing one is listed as missing).
_REPORTING_STEPS = ("index-data", *(f"train-{task}" for task in TASKS), "ensemble-infer")


def _in_pipeline_order(names) -> list:
    """Indexing first, then the trainings, the ensemble, and whatever follows it."""
    order = _REPORTING_STEPS
    return sorted(names, key=lambda name: (order.index(name) if name in order else len(order), name))


def _returned(step_dir: Path) -> Optional[str]:
    """A step's return value (its ``Output`` parameter in executor_output.json)."""
    path = step_dir / "executor_output.json"
    if not path.is_file():
        return None
    return json.loads(path.read_text()).get("parameterValues", {}).get("Output")


def _metrics_from_executor_output(path: Path) -> Dict[str, Any]:
    """The scalar metrics a step logged (kfp.local keeps them only in executor_output.json)."""
    data = json.loads(path.read_text())
    values: Dict[str, Any] = {}
    # executor_output.json lists artifacts by output name, without their types
    for artifact in data.get("artifacts", {}).get("metrics", {}).get("artifacts", []):
        values.update(artifact.get("metadata", {}))
    return {k: float(v) for k, v in values.items() if isinstance(v, (int, float))}


_ERROR_LINE = re.compile(r"^\s*((?:[A-Za-z_][\w.]*\.)?[A-Z]\w*(?:Error|Exception|Exit)\b.*)$")


def _failure_message(error: str, console: StepConsole, log_path: Path) -> str:
    """Name the failed step, quote the last error line of its log, then the log's tail."""
    key = _failed_task_key(error)
    step = console.name(key) if key else "unknown step"
    step_log = console.step_log(key) if key else []
    causes = [m.group(1).strip() for m in map(_ERROR_LINE.match, step_log) if m]
    cause = causes[-1] if causes else ANSI.sub("", error).strip()
    lines = [f"step {step} (task {key}) failed: {cause}"]
    if step_log:
        lines += quoted_tail(step_log)
    lines.append(f"full log: {log_path}")
    return "\n".join(lines)


def _failed_task_key(error: str) -> Optional[str]:
    """The task key (e.g. ``train-model-2``) in kfp.local's error for a failed pipeline."""
    match = re.search(r"Inner task failed: '?([\w-]+)", ANSI.sub("", error))
    return match.group(1) if match else None
