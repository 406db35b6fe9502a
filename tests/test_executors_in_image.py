"""Every executor of the cluster-compiled pipeline starts inside its real image.

tests/test_executors.py starts each executor's command in this machine's environments; this
runs the same command and executor input in a throw-away container of the image the step
names on a cluster (the project image, or the serving image for the deploy step), as the
image's user, with the executor input's folders mounted at the same paths. Needs a container
engine, as tests/test_containers.py does (``-m container``).
"""

from __future__ import annotations

from pathlib import Path

import pytest
from fixtures.launcher import STARTED_EXECUTORS, assert_started, executors, is_serving, launcher_argv, passed_artifacts

pytestmark = [pytest.mark.container, pytest.mark.timeout(2400)]


def _open_to_the_image_user(folder: Path) -> None:
    """The image runs as uid 1001: let it write where the launcher would let it."""
    for path in [folder, *folder.rglob("*")]:
        path.chmod(0o777 if path.is_dir() else 0o666)


@pytest.mark.parametrize("label", STARTED_EXECUTORS)
def test_executor_starts_its_function_in_its_image(request, engine, cluster_spec, label, tmp_path):
    container, component = executors(cluster_spec)[label]
    image = request.getfixturevalue("serve_image" if is_serving(container) else "built_image")
    image = image if isinstance(image, str) else image.tag
    work = tmp_path / "work"
    work.mkdir()
    argv = launcher_argv(container, component, passed_artifacts(cluster_spec, label), work)
    _open_to_the_image_user(work)
    run = engine.client.containers.run(
        image, argv[1:], entrypoint=argv[:1], working_dir=str(work), detach=True, network_mode="host",
        volumes={str(work): {"bind": str(work), "mode": "rw"}},
        environment={"KUBECONFIG": f"{work}/no-kubeconfig", "MASKPIPE_PROGRESS": "0"},
    )  # fmt: skip
    try:
        code = run.wait(timeout=600)["StatusCode"]
        log = run.logs().decode("utf-8", errors="replace")
    finally:
        run.remove(force=True)
    assert_started(label, container, code, log)
