"""`maskpipe serve` with clients its authors did not write: tritonclient, KServe's
``InferenceRESTClient`` and ``schemathesis`` against the server's own OpenAPI document.

The clients run in the serving environment (tritonclient and schemathesis come from
pyproject.toml's test extra, which ``make venv`` installs), driven by
tests/oip_clients.py; their answers are compared with `maskpipe infer` on the same photos.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from fixtures.serving import MAX_BATCH, serve_python

# maskpipe serve driven by clients in the serving environment
pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[1]


def _needs(module: str) -> None:
    probe = subprocess.run([serve_python(), "-c", f"import {module}"], capture_output=True, text=True)
    if probe.returncode != 0:
        pytest.fail(f"the serving environment lacks {module}: run `make venv` (pyproject.toml's test extra)")


@pytest.fixture(scope="module")
def client_answers(server, serving_eval_data, expected) -> dict:
    _needs("tritonclient.http")
    ids = expected["ImageID"].tolist()[:MAX_BATCH]
    paths = [str(serving_eval_data / "eval" / "images" / i) for i in ids]
    result = subprocess.run(
        [serve_python(), str(REPO / "tests" / "oip_clients.py"), server.url, "maskpipe", *paths],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:] + server.log_tail()
    return json.loads(result.stdout)


TRITON_CALLS = ["json", "binary raw photos", "binary raw photos, gzip", "json, deflate", "binary, by version"]


@pytest.mark.parametrize("call", TRITON_CALLS)
def test_tritonclient_gets_the_classes_maskpipe_infer_gives(client_answers, expected, call):
    answer = client_answers["tritonclient"][call]
    assert answer["class"] == expected["ans"].tolist()[:MAX_BATCH]
    assert [row[0] for row in answer["mask_probs"]] == pytest.approx(expected["mask_p0"].tolist()[:MAX_BATCH], abs=1e-4)
    assert answer["outputs"] == ["class", "mask_probs", "class_name"]  # only the requested, in order
    assert all(name.count("/") == 2 for name in answer["class_name"])


def test_tritonclient_health_and_metadata_calls_answer(client_answers):
    triton = client_answers["tritonclient"]
    assert triton["server_live"] and triton["server_ready"] and triton["model_ready"]
    metadata = triton["model_metadata"]
    assert metadata["name"] == "maskpipe" and metadata["platform"] == "onnxruntime_onnx"
    assert len(metadata["versions"]) == 1 and metadata["versions"][0]
    assert metadata["inputs"] == [{"name": "images", "datatype": "BYTES", "shape": [-1]}]
    assert "binary_tensor_data" in triton["server_metadata"]["extensions"]
    assert "model_repository" not in triton["server_metadata"]["extensions"]


@pytest.mark.parametrize("call", ["json", "binary raw photos", "v1"])
def test_kserve_inference_rest_client_gets_the_classes_maskpipe_infer_gives(client_answers, expected, call):
    answer = client_answers["kserve"][call]
    assert answer["class"] == expected["ans"].tolist()[:MAX_BATCH]
    if "mask_probs" in answer:
        assert [row[0] for row in answer["mask_probs"]] == pytest.approx(expected["mask_p0"].tolist()[:MAX_BATCH], abs=1e-4)
    assert client_answers["kserve"]["server_ready"] and client_answers["kserve"]["model_ready"]


def test_schemathesis_finds_no_server_error_and_no_undocumented_status(server, tmp_path):
    _needs("schemathesis")
    checks = "not_a_server_error,status_code_conformance,content_type_conformance,response_schema_conformance,response_headers_conformance"
    result = subprocess.run(
        [serve_python(), "-m", "schemathesis.cli", "run", f"{server.url}/openapi.json", "--checks", checks,
         "--max-examples", "25", "--phases", "examples,coverage,fuzzing", "--seed", "20", "--workers", "1",
         "--request-timeout", "30", "--suppress-health-check", "all", "--no-color"],
        capture_output=True, text=True, timeout=600, cwd=tmp_path,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout[-6000:]
    assert "Traceback" not in server.log_tail(200_000)
