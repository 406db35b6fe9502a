"""``run-local --deploy``: the deploy step here, in the serving environment, against a kubeconfig.

On a cluster the deploy step runs in the serving image (kserve SDK; kserve 0.21 needs
pandas<3) and the other steps in the training image (pandas 3). Locally the same split holds:
kfp.local's SubprocessRunner runs every step with this interpreter, so for the one step whose
function is ``deploy_model`` the interpreter is swapped for the serving environment's
(``$MASKPIPE_SERVE_PYTHON`` or ``.venv``, ``make venv``). The step then finds the
Kubernetes API the way kubectl does outside a cluster: ``$KUBECONFIG`` or ``~/.kube/config``,
and its current context's namespace unless ``deploy_namespace`` is given.

Everything checkable is checked before the first step runs, so a bad name or a missing
environment costs no training.
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
import sys
from pathlib import Path
from typing import Any, Dict, Iterator, List, Optional

ROOT = Path(__file__).resolve().parent.parent
DEPLOY_FUNCTION = "deploy_model"
# The interpreter of the deploy step, when it is not ROOT/.venv's (`make venv`, with the serve extra).
SERVE_PYTHON_ENV = "MASKPIPE_SERVE_PYTHON"


def deploy_preflight(arguments: Dict[str, Any], image: Optional[str]) -> Optional[str]:
    """For a run with ``deploy``: the interpreter its deploy step runs with, after checking the
    service name, the kubeconfig and its namespace. None when the run does not deploy.

    Raises:
        MaskpipeError: one line naming what is missing and how to get it.
    """
    if not arguments.get("deploy"):
        return None
    from maskpipe.deploy import check_service_name, current_namespace
    from maskpipe.errors import MaskpipeError

    check_service_name(arguments.get("deploy_name", "maskpipe"))
    if image:
        raise MaskpipeError(
            "run-local --deploy runs the deploy step in the serving environment, not in a container: "
            "drop --runner docker for a run that deploys (or deploy from a cluster run: pipeline.py submit --deploy)"
        )
    if not arguments.get("export", True):
        raise MaskpipeError("--deploy serves the exported model folder: drop --no-export")
    python = deploy_python()
    if not arguments.get("deploy_namespace"):
        current_namespace()  # refuses a kubeconfig without a current namespace, before training
    return python


def deploy_python() -> str:
    """The serving environment's interpreter; this one if kserve is installed here."""
    from maskpipe.errors import MaskpipeError

    python = Path(os.environ.get(SERVE_PYTHON_ENV) or ROOT / ".venv" / "bin" / "python")
    if python.exists():
        return str(python)
    if importlib.util.find_spec("kserve") is not None:
        return sys.executable
    raise MaskpipeError(
        f"run-local --deploy runs the deploy step with the kserve SDK, which is not installed here and "
        f"there is no serving environment at {python}: run `make venv` (or set {SERVE_PYTHON_ENV})"
    )


@contextlib.contextmanager
def deploy_step_with(python: Optional[str]) -> Iterator[None]:
    """While a run lasts, start kfp.local's subprocess for the deploy step with ``python``.

    kfp 2.17.3's SubprocessTaskHandler puts ``sys.executable`` in place of ``python3`` in the
    step's command and calls the module's ``run_local_subprocess``; this wraps that function
    (tests/test_deploy.py's end-to-end run fails if it stops being called).
    """
    if python is None or python == sys.executable:
        yield
        return
    from kfp.local import subprocess_task_handler

    saved = subprocess_task_handler.run_local_subprocess

    def run_local_subprocess(full_command: List[str], env_vars: Optional[Dict[str, str]] = None) -> int:
        if _function_of(full_command) == DEPLOY_FUNCTION:
            swapped = [_with_python(part, python) for part in full_command]
            if swapped == full_command:
                raise RuntimeError(
                    "kfp.local's command for the deploy step no longer starts kfp.dsl.executor_main "
                    "with this interpreter: pipeline_cli/local_deploy.py needs updating for this kfp"
                )
            full_command = swapped
        return saved(full_command=full_command, env_vars=env_vars)

    subprocess_task_handler.run_local_subprocess = run_local_subprocess
    try:
        yield
    finally:
        subprocess_task_handler.run_local_subprocess = saved


def _function_of(command: List[str]) -> Optional[str]:
    for flag, value in zip(command, command[1:]):
        if flag == "--function_to_execute":
            return value
    return None


def _with_python(part: str, python: str) -> str:
    """The launcher line (``... <sys.executable> -m kfp.dsl.executor_main ...``) with ``python``."""
    if "kfp.dsl.executor_main" not in part:
        return part
    return part.replace(f"{sys.executable} -m kfp.dsl.executor_main", f"{python} -m kfp.dsl.executor_main")
