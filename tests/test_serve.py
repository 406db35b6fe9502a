"""`maskpipe serve` over real HTTP on 127.0.0.1: both protocols, every bad input, concurrency.

The server (the ``server`` fixture, tests/fixtures/serving.py) runs in the serving environment,
started as a user starts it, on the model the export tests build; answers are checked against
`maskpipe infer` on the same photos.
"""

from __future__ import annotations

import base64
import json
import shutil
import subprocess
import tempfile
from pathlib import Path

import numpy as np
import pytest

from fixtures.serving import MAX_BATCH, jpeg, serve_python
from benchmarks.serve_client import drive, free_port, request, v1_body, v2_body

MAX_BODY_MB = 20
# every test starts maskpipe serve in the serving environment
pytestmark = [pytest.mark.integration, pytest.mark.serve_args("--max-body-mb", str(MAX_BODY_MB))]


def _v1(server, photos: list[bytes]):
    return request(f"{server.url}/v1/models/maskpipe:predict", v1_body(photos))


def test_v1_answers_every_eval_photo_as_infer_does(server, photos, expected):
    ids = expected["ImageID"].tolist()
    answers = []
    for start in range(0, len(ids), MAX_BATCH):
        reply = _v1(server, [photos[i] for i in ids[start : start + MAX_BATCH]])
        assert reply.status == 200, reply.body
        answers += reply.body["predictions"]
    assert [a["class"] for a in answers] == expected["ans"].tolist()
    for answer, (_, row) in zip(answers, expected.iterrows()):
        assert answer["mask"]["probabilities"]["wear"] == pytest.approx(row["mask_p0"], abs=1e-4)
        assert answer["age"]["probabilities"][">=60"] == pytest.approx(row["age_p2"], abs=1e-4)
        label = ("male", "female")[int(np.argmax([row["gender_p0"], row["gender_p1"]]))]
        assert answer["gender"]["label"] == label
        assert answer["class_name"].split("/") == [answer[t]["label"] for t in ("mask", "gender", "age")]


def test_v2_json_and_binary_requests_answer_as_infer_does(server, photos, expected):
    ids = expected["ImageID"].tolist()[:MAX_BATCH]
    reply = request(f"{server.url}/v2/models/maskpipe/infer", v2_body([photos[i] for i in ids]))
    assert reply.status == 200, reply.body
    outputs = {o["name"]: o for o in reply.body["outputs"]}
    assert outputs["class"]["data"] == expected["ans"].tolist()[:MAX_BATCH]
    assert outputs["labels"]["shape"] == [len(ids), 3] and outputs["mask_probs"]["shape"] == [len(ids), 3]
    np.testing.assert_allclose(outputs["mask_probs"]["data"][0::3], expected["mask_p0"][:MAX_BATCH], atol=1e-4)

    # The binary data extension: JSON header, then each element as 4-byte length + bytes: the
    # raw photo files (as tritonclient sends them), or base64 text (as this server once asked).
    for encode in (bytes, base64.b64encode):
        body, headers = _binary_v2([encode(photos[i]) for i in ids])
        reply = request(f"{server.url}/v2/models/maskpipe/infer", body, headers=headers)
        assert reply.status == 200, reply.body
        assert {o["name"]: o for o in reply.body["outputs"]}["class"]["data"] == expected["ans"].tolist()[:MAX_BATCH]


def test_health_readiness_and_metadata_endpoints(server):
    assert request(f"{server.url}/").body == {"status": "alive"}
    assert request(f"{server.url}/v2/health/live").status == 200
    assert request(f"{server.url}/v2/health/ready").body == {"ready": True}
    assert request(f"{server.url}/v1/models/maskpipe").body == {"name": "maskpipe", "ready": True}
    metadata = request(f"{server.url}/v2/models/maskpipe").body
    assert metadata["inputs"] == [{"name": "images", "datatype": "BYTES", "shape": [-1]}]
    assert {o["name"] for o in metadata["outputs"]} >= {"class", "labels", "probabilities", "class_probs"}


def _png_header(width: int, height: int) -> bytes:
    """A PNG that claims ``width`` x ``height`` pixels (no pixel data worth the name)."""
    from datafactory import write_huge_png_header

    with tempfile.TemporaryDirectory() as folder:
        return write_huge_png_header(Path(folder) / "claimed.png", width, height).read_bytes()


def _binary_v2(elements: list[bytes]) -> tuple[bytes, dict]:
    """A v2 request in the binary data extension: JSON header, then each element as its
    4-byte little-endian length and its bytes; with the headers that announce it."""
    raw = b"".join(len(e).to_bytes(4, "little") + e for e in elements)
    header = json.dumps({"inputs": [{"name": "images", "datatype": "BYTES", "shape": [len(elements)], "parameters": {"binary_data_size": len(raw)}}]}).encode()
    return header + raw, {"Content-Type": "application/octet-stream", "Inference-Header-Content-Length": str(len(header))}


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


BAD_REQUESTS = {
    "not an image": ("/v1/models/maskpipe:predict", lambda: v1_body([b"<html>403 Forbidden</html>"]), 400, "not an image"),
    "truncated JPEG": ("/v1/models/maskpipe:predict", lambda: v1_body([jpeg()[:1500]]), 400, "truncated"),
    "0x0 image": ("/v1/models/maskpipe:predict", lambda: v1_body([_png_header(0, 0)]), 400, "image 0:"),
    "20000x20000 image": ("/v1/models/maskpipe:predict", lambda: v1_body([_png_header(20_000, 20_000)]), 400, "too large"),
    "50 MB body": ("/v1/models/maskpipe:predict", lambda: v1_body([b"\xff" * (50 * 1024 * 1024 // 4 * 3)]), 413, "over this server's limit"),
    "empty batch": ("/v1/models/maskpipe:predict", lambda: v1_body([]), 400, "no images"),
    "batch above the maximum": ("/v1/models/maskpipe:predict", lambda: v1_body([jpeg()] * (MAX_BATCH + 1)), 400, f"maximum of {MAX_BATCH}"),
    "wrong JSON shape (v1)": ("/v1/models/maskpipe:predict", lambda: json.dumps({"instances": [_b64(jpeg())]}).encode(), 400, "must be an object"),
    "no instances key (v1)": ("/v1/models/maskpipe:predict", lambda: json.dumps({"images": []}).encode(), 400, "instances"),
    "not base64": ("/v1/models/maskpipe:predict", lambda: json.dumps({"instances": [{"b64": "%%%"}]}).encode(), 400, "not valid base64"),
    "not JSON": ("/v1/models/maskpipe:predict", lambda: b"{instances", 400, "not valid JSON"),
    "wrong JSON shape (v2)": ("/v2/models/maskpipe/infer", lambda: json.dumps({"inputs": {"name": "images"}}).encode(), 400, '\\"inputs\\" must be a list'),
    "wrong datatype (v2)": (
        "/v2/models/maskpipe/infer",
        lambda: json.dumps({"inputs": [{"name": "images", "datatype": "FP32", "shape": [1], "data": [0.5]}]}).encode(),
        400, "datatype 'FP32'",
    ),
    "shape that disagrees with the data (v2)": (
        "/v2/models/maskpipe/infer",
        lambda: json.dumps({"inputs": [{"name": "images", "datatype": "BYTES", "shape": [2], "data": [_b64(jpeg())]}]}).encode(),
        400, "shape",
    ),
    "unknown model name (v1)": ("/v1/models/other:predict", lambda: v1_body([jpeg()]), 404, "other"),
    "unknown model name (v2)": ("/v2/models/other/infer", lambda: v2_body([jpeg()]), 404, "other"),
}


@pytest.mark.parametrize("case", list(BAD_REQUESTS))
def test_bad_input_gets_a_4xx_with_a_message_and_the_server_keeps_serving(server, case):
    path, make_body, status, message = BAD_REQUESTS[case]
    body = make_body()
    body, headers = body if isinstance(body, tuple) else (body, {})
    reply = request(f"{server.url}{path}", body, headers=headers)
    assert reply.status == status, reply.body
    assert message in json.dumps(reply.body), reply.body
    good = _v1(server, [jpeg()])
    assert good.status == 200 and len(good.body["predictions"]) == 1


def test_32_concurrent_clients_get_every_answer_right_and_are_batched(server, photos, expected):
    ids = expected["ImageID"].tolist()
    bodies = [v1_body([photos[i]]) for i in ids]
    result = drive(server.url, bodies, clients=32, requests_per_client=20)
    assert result.requests == 32 * 20
    failures = {key: reply for key, reply in result.answers.items() if reply.status != 200}
    assert not failures, list(failures.items())[:3]
    for (client, index), reply in result.answers.items():
        image = (client + index) % len(ids)
        assert [p["class"] for p in reply.body["predictions"]] == [expected["ans"].iloc[image]]
    batch_sizes = [int(reply.headers["x-maskpipe-batch-images"]) for reply in result.answers.values()]
    assert max(batch_sizes) > 1  # concurrent requests shared forward passes


@pytest.mark.parametrize("damage", ["alter", "remove"])
def test_a_model_folder_with_a_missing_or_altered_file_refuses_to_start(exported_model, tmp_path, damage):
    copy = tmp_path / "model"
    shutil.copytree(exported_model, copy)
    target = copy / "model.onnx"
    if damage == "alter":
        with open(target, "r+b") as handle:
            handle.seek(100)
            byte = handle.read(1)
            handle.seek(100)
            handle.write(bytes([byte[0] ^ 0xFF]))
    else:
        target.unlink()
    result = subprocess.run(
        [serve_python(), "-m", "maskpipe", "serve", str(copy), "--port", str(free_port())],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert result.returncode == 2
    assert str(target) in result.stderr and ("altered" in result.stderr or "missing" in result.stderr)
    assert "Traceback" not in result.stderr
