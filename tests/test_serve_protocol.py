"""maskpipe.serve_protocol without a server: each wire rule and each malformed-request category.

The same categories go over HTTP in tests/test_serve_hostile.py; here each is one call, so a
rule that regresses names itself.
"""

from __future__ import annotations

import base64
import gzip
import json
import zlib

import numpy as np
import pytest

from maskpipe.serve_protocol import RequestError, V2Request, decode_body, encode_v2, parse_v2, v1_photos

OUTPUTS = ["class", "class_name", "labels", "probabilities", "mask_probs"]
JPEG = b"\xff\xd8\xff\xe0fake jpeg body"
PNG = b"\x89PNG\r\n\x1a\nfake png body"


def binary_request(header: dict | list | str, raw: bytes, length: str | None = None) -> tuple[bytes, dict]:
    text = header.encode() if isinstance(header, str) else json.dumps(header).encode()
    return text + raw, {"Inference-Header-Content-Length": length if length is not None else str(len(text))}


def elements(*items: bytes) -> bytes:
    return b"".join(len(item).to_bytes(4, "little") + item for item in items)


def bytes_input(count: int, **extra) -> dict:
    return {"name": "images", "datatype": "BYTES", "shape": [count], **extra}


def test_raw_photo_files_in_the_binary_extension_are_read_as_they_are():
    raw = elements(JPEG, PNG)
    body, headers = binary_request({"inputs": [bytes_input(2, parameters={"binary_data_size": len(raw)})]}, raw)
    assert parse_v2(body, headers, OUTPUTS).photos == [JPEG, PNG]


def test_base64_text_in_the_binary_extension_is_decoded():
    raw = elements(base64.b64encode(JPEG))
    body, headers = binary_request({"inputs": [bytes_input(1, parameters={"binary_data_size": len(raw)})]}, raw)
    assert parse_v2(body, headers, OUTPUTS).photos == [JPEG]


@pytest.mark.parametrize("content_type", [None, "application/json", "application/json; charset=utf-8", "APPLICATION/JSON;charset=UTF-8"])
def test_v1_and_v2_json_are_read_with_or_without_a_content_type_and_with_a_charset(content_type):
    v1 = json.dumps({"instances": [{"b64": base64.b64encode(JPEG).decode()}]}).encode()
    assert v1_photos(v1, content_type) == [JPEG]
    v2 = json.dumps({"inputs": [bytes_input(1, data=[base64.b64encode(PNG).decode()])]}).encode()
    headers = {} if content_type is None else {"Content-Type": content_type}
    assert parse_v2(v2, headers, OUTPUTS).photos == [PNG]


def test_gzip_and_deflate_bodies_are_inflated_and_a_bomb_is_413():
    body = json.dumps({"instances": []}).encode() * 10
    assert decode_body(gzip.compress(body), "gzip", 10_000) == body
    assert decode_body(zlib.compress(body), "deflate", 10_000) == body
    raw_deflate = zlib.compressobj(wbits=-zlib.MAX_WBITS)
    assert decode_body(raw_deflate.compress(body) + raw_deflate.flush(), "deflate", 10_000) == body
    assert decode_body(body, None, 10_000) == body
    with pytest.raises(RequestError) as bomb:
        decode_body(gzip.compress(b"0" * 5_000_000), "gzip", 1_000_000)
    assert bomb.value.status == 413 and "1,000,000 bytes" in bomb.value.message


def test_requested_outputs_and_binary_outputs_are_honoured():
    doc = {
        "inputs": [bytes_input(1, data=[base64.b64encode(JPEG).decode()])],
        "outputs": [{"name": "class_name"}, {"name": "mask_probs", "parameters": {"binary_data": True}}],
    }
    request = parse_v2(json.dumps(doc).encode(), {}, OUTPUTS)
    assert request.outputs == [("class_name", False), ("mask_probs", True)]
    tensors = {
        "class": np.array([4], dtype=np.int64),
        "class_name": np.array(["wear/female/<30"], dtype=object),
        "mask_probs": np.array([[0.5, 0.25, 0.25]], dtype=np.float32),
    }
    body, headers = encode_v2(request, "maskpipe", "abc", tensors, "id-1")
    length = int(headers["inference-header-content-length"])
    head = json.loads(body[:length])
    assert [o["name"] for o in head["outputs"]] == ["class_name", "mask_probs"]
    assert head["outputs"][0]["data"] == ["wear/female/<30"]
    assert head["outputs"][1]["parameters"]["binary_data_size"] == 12
    np.testing.assert_array_equal(np.frombuffer(body[length:], dtype="<f4"), [0.5, 0.25, 0.25])


def test_binary_bytes_outputs_are_length_prefixed():
    request = V2Request(id=None, input_name="images", photos=[JPEG], outputs=None, binary_outputs=True)
    body, headers = encode_v2(request, "m", "1", {"class_name": np.array(["a/b/c"], dtype=object)}, "x")
    length = int(headers["inference-header-content-length"])
    assert body[length:] == elements(b"a/b/c")


def _jpeg_b64() -> str:
    return base64.b64encode(JPEG).decode()


# Each malformed category: (body, headers) -> the status and the words the one-line message holds.
MALFORMED = {
    "shape not matching the data": (json.dumps({"inputs": [bytes_input(2, data=[_jpeg_b64()])]}), {}, 400, "shape [2] but holds 1"),
    "binary shape not matching the data": (
        *binary_request({"inputs": [bytes_input(3, parameters={"binary_data_size": len(elements(JPEG))})]}, elements(JPEG)),
        400, "shape [3] but holds 1",
    ),
    "header length not a number": (*binary_request({"inputs": []}, b"", length="12abc"), 400, "Inference-Header-Content-Length"),
    "header length past the body": (*binary_request({"inputs": []}, b"", length="99999"), 400, "holds only"),
    "no inputs": (json.dumps({"outputs": []}), {}, 400, 'no "inputs"'),
    "JSON part a list": (*binary_request([1, 2], b""), 400, "must be a JSON object, got a list"),
    "JSON body a string": (json.dumps("images"), {}, 400, "got a string"),
    "binary_data_size a string": (
        *binary_request({"inputs": [bytes_input(1, parameters={"binary_data_size": "12"})]}, elements(JPEG)), 400, "binary_data_size must be a whole number",
    ),
    "binary_data_size past the end of the body": (
        *binary_request({"inputs": [bytes_input(1, parameters={"binary_data_size": 5000})]}, elements(JPEG)), 400, "only 22 follow",
    ),
    "binary element past the end of its data": (
        *binary_request({"inputs": [bytes_input(1, parameters={"binary_data_size": 8})]}, (900).to_bytes(4, "little") + b"abcd"),
        400, "element 0 declares 900 bytes",
    ),
    "binary_data_size not fitting its elements": (
        *binary_request({"inputs": [bytes_input(1, parameters={"binary_data_size": 7})]}, b"\x02\x00\x00\x00ab\x00"),
        400, "stray bytes",
    ),
    "bytes after the JSON with no binary input": (*binary_request({"inputs": [bytes_input(1, data=[_jpeg_b64()])]}, b"junk"), 400, "no input declares"),
    "NaN in v2 JSON": ('{"inputs": [{"name": "images", "datatype": "BYTES", "shape": [1], "data": [NaN]}]}', {}, 400, "NaN"),
    "Infinity in v2 JSON": ('{"inputs": [], "parameters": {"x": Infinity}}', {}, 400, "Infinity"),
    "not JSON": ("{inputs", {}, 400, "not valid JSON"),
    "not UTF-8": (b"\xff\xfe{}", {}, 400, "not UTF-8"),
    "inputs an object": (json.dumps({"inputs": {"name": "images"}}), {}, 400, '"inputs" must be a list'),
    "two inputs": (json.dumps({"inputs": [bytes_input(0, data=[]), bytes_input(0, data=[])]}), {}, 400, "exactly one input"),
    "input not an object": (json.dumps({"inputs": ["images"]}), {}, 400, "inputs[0] must be an object"),
    "wrong datatype": (json.dumps({"inputs": [{"name": "images", "datatype": "FP32", "shape": [1], "data": [0.5]}]}), {}, 400, "datatype 'FP32'"),
    "shape not a list of whole numbers": (json.dumps({"inputs": [bytes_input(1) | {"shape": [1.5]}]}), {}, 400, "shape must be a list"),
    "shape of rank 3": (json.dumps({"inputs": [bytes_input(1) | {"shape": [1, 1, 1], "data": [_jpeg_b64()]}]}), {}, 400, "shape [1, 1, 1]"),
    "no data": (json.dumps({"inputs": [bytes_input(1)]}), {}, 400, 'no "data"'),
    "data element a number": (json.dumps({"inputs": [bytes_input(1, data=[7])]}), {}, 400, "data[0] is a number"),
    "data not base64": (json.dumps({"inputs": [bytes_input(1, data=["%%%"])]}), {}, 400, "not valid base64"),
    "id a number": (json.dumps({"id": 7, "inputs": [bytes_input(1, data=[_jpeg_b64()])]}), {}, 400, '"id" must be a string'),
    "unknown output requested": (
        json.dumps({"inputs": [bytes_input(1, data=[_jpeg_b64()])], "outputs": [{"name": "logits"}]}), {}, 400, "'logits' is not an output",
    ),
    "binary_data flag a string": (
        json.dumps({"inputs": [bytes_input(1, data=[_jpeg_b64()])], "outputs": [{"name": "class", "parameters": {"binary_data": "yes"}}]}),
        {}, 400, "binary_data must be true or false",
    ),
    "binary_data_size without the header": (
        json.dumps({"inputs": [bytes_input(1, parameters={"binary_data_size": 4})]}), {}, 400, "no Inference-Header-Content-Length",
    ),
    "a Content-Type that is not JSON": (json.dumps({"inputs": []}), {"Content-Type": "image/jpeg"}, 415, "'image/jpeg' is not JSON"),
    "a charset that is not UTF-8": (json.dumps({"inputs": []}), {"Content-Type": "application/json; charset=latin-1"}, 415, "charset"),
}


@pytest.mark.parametrize("case", list(MALFORMED))
def test_each_malformed_v2_request_is_a_4xx_with_one_line_naming_the_field(case):
    body, headers, status, words = MALFORMED[case]
    with pytest.raises(RequestError) as error:
        parse_v2(body.encode() if isinstance(body, str) else body, headers, OUTPUTS)
    assert error.value.status == status
    assert words in error.value.message and "\n" not in error.value.message


@pytest.mark.parametrize(
    ("body", "words"),
    [
        (b"[]", "must be a JSON object, got a list"),
        (json.dumps({"images": []}).encode(), 'no "instances"'),
        (json.dumps({"instances": {}}).encode(), '"instances" must be a list'),
        (json.dumps({"instances": ["abc"]}).encode(), "instances[0] must be an object"),
        (json.dumps({"instances": [{"b64": "%%"}]}).encode(), "instances[0].b64 is not valid base64"),
        (b'{"instances": NaN}', "NaN"),
    ],
)
def test_each_malformed_v1_request_is_a_400_naming_the_field(body, words):
    with pytest.raises(RequestError) as error:
        v1_photos(body, "application/json")
    assert error.value.status == 400 and words in error.value.message


@pytest.mark.parametrize(
    ("body", "encoding", "status", "words"),
    [
        (b"not gzip at all", "gzip", 400, "not valid gzip"),
        (gzip.compress(b'{"instances": []}')[:-12], "gzip", 400, "ends early"),
        (b"{}", "br", 415, "'br' is not supported"),
    ],
)
def test_a_bad_content_encoding_is_a_4xx_saying_so(body, encoding, status, words):
    with pytest.raises(RequestError) as error:
        decode_body(body, encoding, 1_000_000)
    assert error.value.status == status and words in error.value.message
