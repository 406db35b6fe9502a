"""`maskpipe serve` answers without torch, as in the slim serving image (docker/Dockerfile.serve).

The development environment holds torch (one venv for every command), so a serving path that
slipped in a torch import would pass every other serving test here and fail only in the image.
This starts the server with ``torch``, ``torchvision`` and ``timm`` made unimportable (stand-in
packages first on PYTHONPATH whose import raises ImportError, as a missing package does) and
checks it answers as ``maskpipe infer`` does. The image itself is checked to hold no torch by
tests/test_serve_image.py.
"""

from __future__ import annotations

import os

import pytest

from fixtures.serving import MAX_BATCH, serve_python
from benchmarks.serve_client import ServerProcess, request, v1_body

# starts maskpipe serve
pytestmark = pytest.mark.integration

ABSENT = ("torch", "torchvision", "timm")


def test_serve_answers_as_infer_does_with_torch_unimportable(exported_model, photos, expected, tmp_path, monkeypatch):
    blocked = tmp_path / "blocked"
    for name in ABSENT:
        (blocked / name).mkdir(parents=True)
        (blocked / name / "__init__.py").write_text(f"raise ImportError('{name} is absent from the serving image')\n")
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(filter(None, [str(blocked), os.environ.get("PYTHONPATH")])))

    ids = expected["ImageID"].tolist()[:MAX_BATCH]
    with ServerProcess(exported_model, python=serve_python(), log_path=tmp_path / "serve.log") as server:
        reply = request(f"{server.url}/v1/models/maskpipe:predict", v1_body([photos[i] for i in ids]))
        log = server.log_tail(20000)
    assert reply.status == 200, (reply.body, log)
    assert [a["class"] for a in reply.body["predictions"]] == expected["ans"].tolist()[:MAX_BATCH]
