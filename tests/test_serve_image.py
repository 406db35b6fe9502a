"""The serving image (docker/Dockerfile.serve): built, started on an exported model, asked.

Builds the image with docker/build-image.sh from the repository's tracked files (where no
registry is reachable, on Debian bookworm's Python, the GPU stand-in's first layer), or takes
the prebuilt ``MASKPIPE_TEST_SERVE_IMAGE`` (the image workflow builds it itself). Then starts a
container as the image starts in an InferenceService (``maskpipe serve /mnt/models``, the model
folder mounted read-only there, running as its non-root user) and checks that its v1 answers
give the classes of ``maskpipe infer`` on the same photos, that a damaged model folder stops it
with the file's name, and that the image carries no torch.

Needs a container engine, as tests/test_containers.py does (``-m container``; a failure instead
of a skip with ``MASKPIPE_REQUIRE_CONTAINERS=1``).
"""

from __future__ import annotations

import shutil
import time
from pathlib import Path

import pytest
from fixtures.images import run_in_image

from benchmarks.serve_client import free_port, request, v1_body

pytestmark = [pytest.mark.container, pytest.mark.timeout(2400)]


def _start(engine, image: str, model: Path, port: int):
    return engine.client.containers.run(
        image, ["/mnt/models", "--host", "127.0.0.1", "--port", str(port), "--max-batch", "8"],
        volumes={str(model): {"bind": "/mnt/models", "mode": "ro"}}, network_mode="host", detach=True,
    )  # fmt: skip


def test_the_served_image_answers_as_maskpipe_infer_does(engine, serve_image, exported_model, photos, expected, tmp_path):
    # Mounted as `maskpipe export` wrote it: the image's user (uid 1001) must be able to read
    # a folder the host's user exported (it once could not: a 700 folder, 600 weights).
    model = exported_model
    port = free_port()
    container = _start(engine, serve_image, model, port)
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            container.reload()
            assert container.status != "exited", container.logs().decode(errors="replace")[-3000:]
            try:
                if request(f"http://127.0.0.1:{port}/v2/health/ready", timeout=2).status == 200:
                    break
            except OSError:
                pass
            time.sleep(0.5)
        else:
            pytest.fail(f"the serving container was not ready in 120 s:\n{container.logs().decode(errors='replace')[-3000:]}")
        ids = expected["ImageID"].tolist()[:8]
        reply = request(f"http://127.0.0.1:{port}/v1/models/maskpipe:predict", v1_body([photos[i] for i in ids]))
        assert reply.status == 200, reply.body
        assert [p["class"] for p in reply.body["predictions"]] == expected["ans"].tolist()[:8]
    finally:
        container.remove(force=True)


def test_the_serving_container_refuses_an_altered_model_naming_the_file(engine, serve_image, exported_model, tmp_path):
    model = Path(shutil.copytree(exported_model, tmp_path / "model"))  # modes kept
    (model / "checkpoints" / "mask" / "config.yaml").write_text("altered: true\n")
    container = _start(engine, serve_image, model, free_port())
    try:
        code = container.wait(timeout=120)["StatusCode"]
        logs = container.logs().decode(errors="replace")
    finally:
        container.remove(force=True)
    assert code == 2, logs
    assert "/mnt/models/checkpoints/mask/config.yaml was altered" in logs


def test_the_serving_image_has_no_torch_and_runs_as_uid_1001(engine, serve_image):
    output = run_in_image(
        engine, serve_image, ["-c", "import importlib.util as u, os; print(u.find_spec('torch'), os.getuid(), os.getgid())"],
        entrypoint=["python"],
    )  # fmt: skip
    assert output.split() == ["None", "1001", "0"]
