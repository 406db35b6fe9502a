"""`maskpipe serve` under hostile input over real HTTP: every malformed category is a 4xx with a
one-line message naming the field, logged as one line (never a traceback), and good requests
mixed in with bad ones, concurrently, are all answered right.
"""

from __future__ import annotations

import base64
import gzip
import http.client
import io
import json
import time

import numpy as np
import pytest
from PIL import Image

from fixtures.serving import MAX_BATCH
from benchmarks.serve_client import Reply, drive, v1_body, v2_body

MAX_BODY_MB = 2
# maskpipe serve under hostile requests
pytestmark = [pytest.mark.integration, pytest.mark.serve_args("--max-body-mb", str(MAX_BODY_MB))]


def post(server, method: str, path: str, body: bytes | None, headers: dict) -> Reply:
    """Exactly these bytes and headers (http.client adds only Host and Content-Length)."""
    connection = http.client.HTTPConnection(server.url.removeprefix("http://"), timeout=60)
    try:
        connection.request(method, path, body=body, headers=headers)
        response = connection.getresponse()
        raw = response.read()
    finally:
        connection.close()
    try:
        parsed = json.loads(raw)
    except ValueError:
        parsed = raw.decode(errors="replace")
    return Reply(response.status, parsed, {k.lower(): v for k, v in response.getheaders()})


def _jpeg() -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(np.random.default_rng(1).integers(0, 256, (128, 96, 3), dtype=np.uint8)).save(buffer, format="JPEG")
    return buffer.getvalue()


def _binary(header: object, raw: bytes, length: str | None = None) -> tuple[bytes, dict]:
    text = json.dumps(header).encode()
    return text + raw, {"Inference-Header-Content-Length": length or str(len(text)), "Content-Type": "application/octet-stream"}


def _elements(*items: bytes) -> bytes:
    return b"".join(len(i).to_bytes(4, "little") + i for i in items)


def _bytes_input(count: int, **extra) -> dict:
    return {"name": "images", "datatype": "BYTES", "shape": [count], **extra}


V1, V2 = "/v1/models/maskpipe:predict", "/v2/models/maskpipe/infer"
JSON = {"Content-Type": "application/json"}
ONE = _elements(_jpeg())

# name -> (method, path, (body, headers), status, words of the one-line message)
HOSTILE = {
    "v2 shape not matching the data": ("POST", V2, (json.dumps({"inputs": [_bytes_input(3, data=[base64.b64encode(_jpeg()).decode()])]}).encode(), JSON), 400, "shape [3] but holds 1"),
    "binary shape not matching the data": ("POST", V2, _binary({"inputs": [_bytes_input(2, parameters={"binary_data_size": len(ONE)})]}, ONE), 400, "shape [2] but holds 1"),
    "header length not a number": ("POST", V2, _binary({"inputs": []}, ONE, length="ten"), 400, "Inference-Header-Content-Length"),
    "no inputs": ("POST", V2, (b'{"id": "a"}', JSON), 400, 'no \\"inputs\\"'),
    "JSON part a list": ("POST", V2, _binary([{"name": "images"}], ONE), 400, "must be a JSON object, got a list"),
    "binary_data_size a string": ("POST", V2, _binary({"inputs": [_bytes_input(1, parameters={"binary_data_size": "99"})]}, ONE), 400, "binary_data_size must be a whole number"),
    "binary_data_size not fitting the datatype": (
        "POST", V2, _binary({"inputs": [_bytes_input(1, parameters={"binary_data_size": len(ONE) + 2})]}, ONE + b"\x00\x00"), 400, "stray bytes",
    ),
    "a size past the end of the body": ("POST", V2, _binary({"inputs": [_bytes_input(1, parameters={"binary_data_size": 10**7})]}, ONE), 400, "follow the JSON header"),
    "an element past the end of its data": (
        "POST", V2, _binary({"inputs": [_bytes_input(1, parameters={"binary_data_size": 12})]}, (10**6).to_bytes(4, "little") + b"abcdefgh"), 400, "element 0 declares",
    ),
    "NaN in v2 JSON": ("POST", V2, (b'{"inputs": [{"name": "images", "datatype": "BYTES", "shape": [1], "data": [NaN]}]}', JSON), 400, "NaN"),
    "NaN in v1 JSON": ("POST", V1, (b'{"instances": [NaN]}', JSON), 400, "NaN"),
    "a binary element that is no photo": ("POST", V2, _binary({"inputs": [_bytes_input(1, parameters={"binary_data_size": 14})]}, _elements(b"\xff\xd8<html>..")), 400, "image 0"),
    "gzip that is not gzip": ("POST", V1, (b"plain text", {**JSON, "Content-Encoding": "gzip"}), 400, "not valid gzip"),
    "a gzip bomb": ("POST", V1, (gzip.compress(b" " * (40 * 1024 * 1024)), {**JSON, "Content-Encoding": "gzip"}), 413, "inflates past"),
    "an unknown Content-Encoding": ("POST", V2, (v2_body([_jpeg()]), {**JSON, "Content-Encoding": "br"}), 415, "'br' is not supported"),
    "a Content-Type that is not JSON": ("POST", V1, (v1_body([_jpeg()]), {"Content-Type": "image/jpeg"}), 415, "is not JSON"),
    "too many photos": ("POST", V2, (v2_body([_jpeg()] * (MAX_BATCH + 1)), {}), 400, f"maximum of {MAX_BATCH}"),
    "an unknown output": ("POST", V2, (json.dumps({"inputs": [_bytes_input(1, data=[base64.b64encode(_jpeg()).decode()])], "outputs": [{"name": "x"}]}).encode(), {}), 400, "'x' is not an output"),
    "an unknown version": ("POST", "/v2/models/maskpipe/versions/7/infer", (v2_body([_jpeg()]), {}), 404, "no version '7'"),
    "an unknown model": ("POST", "/v2/models/other/infer", (v2_body([_jpeg()]), {}), 404, "'other' is not served here"),
    "unload the model": ("POST", "/v2/repository/models/maskpipe/unload", (b"", {}), 404, "--enable-model-repository"),
    "load a model": ("POST", "/v2/repository/models/maskpipe/load", (b"", {}), 404, "--enable-model-repository"),
    "explain": ("POST", "/v1/models/maskpipe:explain", (v1_body([_jpeg()]), JSON), 404, "no endpoint"),
    "a wrong method": ("DELETE", V2, (None, {}), 405, "DELETE is not allowed"),
}


@pytest.mark.parametrize("case", list(HOSTILE))
def test_each_hostile_request_is_a_4xx_logged_as_one_line_and_the_server_keeps_serving(server, case):
    method, path, (body, headers), status, words = HOSTILE[case]
    log_before = len(server.log_path.read_bytes())
    reply = post(server, method, path, body, headers)
    assert reply.status == status, reply.body
    assert set(reply.body) == {"error"} and words in json.dumps(reply.body) and "\n" not in reply.body["error"], reply.body
    good = post(server, "POST", V2, v2_body([_jpeg()]), {})
    assert good.status == 200, good.body
    time.sleep(0.2)  # the log line is written after the answer is sent
    new_log = server.log_path.read_bytes()[log_before:].decode(errors="replace")
    assert "Traceback" not in new_log, new_log
    rejected = [line for line in new_log.splitlines() if "rejected" in line]
    assert len(rejected) == 1 and f" {status} " in rejected[0], new_log


def test_the_model_answers_and_is_ready_after_every_repository_call(server):
    for path in ("/v2/repository/models/maskpipe/unload", "/v2/repository/models/maskpipe/load", "/v2/repository/index"):
        assert post(server, "POST", path, b"{}", JSON).status == 404
    assert post(server, "GET", "/v2/health/ready", None, {}).body == {"ready": True}
    assert post(server, "GET", "/v2/models/maskpipe/ready", None, {}).status == 200
    assert post(server, "POST", V2, v2_body([_jpeg()]), {}).status == 200


def test_good_requests_mixed_with_bad_ones_concurrently_are_all_answered_right(server, photos, expected):
    ids = expected["ImageID"].tolist()
    good = [v1_body([photos[i]]) for i in ids]
    bad = [
        v1_body([b"<html>403 Forbidden</html>"]),
        b'{"instances": [{"b64": "%%%"}]}',
        b'{"instances": NaN}',
        v1_body([_jpeg()[:1500]]),
        v1_body([_jpeg()] * (MAX_BATCH + 1)),
        b"[1, 2]",
    ]
    bodies = [body for pair in zip(good, bad * 3) for body in pair]  # good, bad, good, bad, ...
    result = drive(server.url, bodies, clients=16, requests_per_client=12)
    assert result.requests == 16 * 12
    for (client, index), reply in result.answers.items():
        body_index = (client + index) % len(bodies)
        if body_index % 2 == 0:
            assert reply.status == 200, reply.body
            assert [p["class"] for p in reply.body["predictions"]] == [expected["ans"].iloc[body_index // 2]]
        else:
            assert reply.status == 400 and "error" in reply.body, reply.body

    # The same on v2, JSON beside bad binary-extension bodies.
    good_v2 = [v2_body([photos[i]]) for i in ids]
    bad_v2 = [
        b'{"inputs": [{"name": "images", "datatype": "BYTES", "shape": [1], "data": [NaN]}]}',
        b'{"inputs": {"name": "images"}}',
        json.dumps({"inputs": [_bytes_input(2, data=[base64.b64encode(_jpeg()).decode()])]}).encode(),
    ]
    bodies_v2 = [body for pair in zip(good_v2, bad_v2 * 5) for body in pair]
    result = drive(server.url, bodies_v2, clients=8, requests_per_client=10, path=V2)
    assert result.requests == 8 * 10
    for (client, index), reply in result.answers.items():
        body_index = (client + index) % len(bodies_v2)
        if body_index % 2 == 0:
            assert reply.status == 200, reply.body
            outputs = {o["name"]: o for o in reply.body["outputs"]}
            assert outputs["class"]["data"] == [int(expected["ans"].iloc[body_index // 2])]
        else:
            assert reply.status == 400 and "error" in reply.body, reply.body
    assert "Traceback" not in server.log_tail(1_000_000)
