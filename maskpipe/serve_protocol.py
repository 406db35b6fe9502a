"""The wire format of `maskpipe serve`: request bodies in, photos out; model outputs in, bodies out.

Pure functions over bytes and header dicts (no web framework), so every rule here is tested
without a server (tests/test_serve_protocol.py) and the server's routes stay thin:

* :func:`decode_body` undoes ``Content-Encoding`` (gzip, deflate), bounded by the body limit.
* :func:`v1_photos` reads ``{"instances": [{"b64": ...}, ...]}``.
* :func:`parse_v2` reads an Open Inference Protocol request as NVIDIA's ``tritonclient`` and
  KServe's ``InferenceRESTClient`` send it: JSON with or without ``Content-Type``, or the binary
  data extension (``Inference-Header-Content-Length``: a JSON header, then each input's
  ``binary_data_size`` bytes; a BYTES element is a 4-byte little-endian length and its bytes,
  here the raw JPEG/PNG file), requested outputs by name with ``binary_data``.
* :func:`encode_v2` writes the response: JSON, or the binary extension for outputs asked so.

Every malformed request raises :class:`RequestError`: an HTTP status (4xx) and one line naming
the field, what was wrong and what to send.
"""

from __future__ import annotations

import base64
import binascii
import json
import math
import zlib
from dataclasses import dataclass
from typing import Any, Mapping

import numpy as np

HEADER_LENGTH = "inference-header-content-length"
V1_SHAPE = '{"instances": [{"b64": "<base64 of a JPEG or PNG file>"}, ...]}'
V2_SHAPE = '{"inputs": [{"name": "images", "datatype": "BYTES", "shape": [N], "data": ["<base64 photo>", ...]}]}'
# Media types read as JSON: none at all (tritonclient sends none), JSON itself, and curl -d's default.
JSON_MEDIA_TYPES = {"", "application/json", "text/json", "text/plain", "application/x-www-form-urlencoded"}
JPEG_MAGIC, PNG_MAGIC = b"\xff\xd8", b"\x89PNG"
DATATYPES = {np.dtype(np.int64): "INT64", np.dtype(np.float32): "FP32"}


class RequestError(Exception):
    """A request the server does not answer: ``status`` (4xx, or 503), a one-line ``message``
    and any ``headers`` for the answer (e.g. ``Retry-After``). Raised anywhere under a route,
    the model's ``predict`` included, it becomes that answer and one log line."""

    def __init__(self, message: str, status: int = 400, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.message, self.status, self.headers = message, status, dict(headers or {})


@dataclass(frozen=True)
class V2Request:
    """What a v2 request asks: its photos, and which outputs in which encoding.

    ``outputs`` is ``None`` when the request names none (all outputs are answered); otherwise
    ``(name, binary)`` pairs in the request's order.
    """

    id: str | None
    input_name: str
    photos: list[bytes]
    outputs: list[tuple[str, bool]] | None
    binary_outputs: bool


def header(headers: Mapping[str, str], name: str) -> str | None:
    """``headers[name]`` for any capitalisation of ``name``."""
    for key, value in headers.items():
        if key.lower() == name:
            return value
    return None


def decode_body(body: bytes, content_encoding: str | None, max_bytes: int) -> bytes:
    """The body with its ``Content-Encoding`` undone; no more than ``max_bytes`` once decoded."""
    codings = [c.strip().lower() for c in (content_encoding or "").split(",") if c.strip()]
    for coding in reversed(codings):  # the last coding applied is listed last
        if coding == "identity":
            continue
        if coding in ("gzip", "x-gzip"):
            body = _inflate(body, 16 + zlib.MAX_WBITS, "gzip", max_bytes)
        elif coding == "deflate":  # RFC 9110: the zlib format; some clients send raw deflate
            try:
                body = _inflate(body, zlib.MAX_WBITS, "deflate", max_bytes)
            except RequestError as exc:
                if exc.status == 413:
                    raise
                body = _inflate(body, -zlib.MAX_WBITS, "deflate", max_bytes)
        else:
            raise RequestError(
                f"Content-Encoding {coding!r} is not supported; send the body uncompressed, gzip or deflate", 415
            )
    return body


def _inflate(data: bytes, wbits: int, name: str, max_bytes: int) -> bytes:
    inflater = zlib.decompressobj(wbits)
    try:
        out = inflater.decompress(data, max_bytes + 1)
    except zlib.error:
        raise RequestError(f"the body is not valid {name} data (Content-Encoding: {name}); compress it again or send it uncompressed") from None
    if len(out) > max_bytes or inflater.unconsumed_tail:
        raise RequestError(
            f"the body inflates past this server's limit of {max_bytes:,} bytes; send fewer or smaller photos per request", 413
        )
    if not inflater.eof:
        raise RequestError(f"the {name} body ends early (truncated); send the whole compressed body")
    return out


def check_json_content_type(content_type: str | None) -> None:
    """Refuse a ``Content-Type`` that says the body is something other than JSON."""
    media, _, params = (content_type or "").partition(";")
    media = media.strip().lower()
    if media not in JSON_MEDIA_TYPES and not media.endswith("+json"):
        raise RequestError(
            f"Content-Type {media!r} is not JSON; send application/json (or no Content-Type), "
            "or the v2 binary data extension with an Inference-Header-Content-Length header",
            415,
        )
    for param in params.split(";"):
        key, _, value = param.partition("=")
        charset = value.strip().strip('"').lower()
        if key.strip().lower() == "charset" and charset not in ("utf-8", "utf8", "us-ascii", "ascii"):
            raise RequestError(f"Content-Type charset {charset!r} is not supported; send the JSON as UTF-8", 415)


def _reject_constant(name: str) -> None:
    raise RequestError(f"the JSON holds {name}, which is not JSON; send finite numbers only")


def parse_json(text: bytes, what: str) -> dict:
    """``text`` as a JSON object (strict: no NaN/Infinity), or RequestError naming ``what``."""
    try:
        value = json.loads(text.decode("utf-8"), parse_constant=_reject_constant)
    except UnicodeDecodeError:
        raise RequestError(f"{what} is not UTF-8 text; send JSON encoded as UTF-8") from None
    except json.JSONDecodeError as exc:
        raise RequestError(f"{what} is not valid JSON ({exc.msg} at line {exc.lineno} column {exc.colno})") from None
    except RecursionError:
        raise RequestError(f"{what} nests too deeply to read; send a flat JSON object") from None
    if not isinstance(value, dict):
        raise RequestError(f"{what} must be a JSON object, got a {_json_type(value)}")
    return value


def _json_type(value: Any) -> str:
    names = {dict: "object", list: "list", str: "string", bool: "boolean", int: "number", float: "number"}
    return "null" if value is None else names.get(type(value), type(value).__name__)


def b64decode(text: str, where: str) -> bytes:
    try:
        return base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise RequestError(f"{where} is not valid base64; send the photo file's bytes base64-encoded") from None


def v1_photos(body: bytes, content_type: str | None) -> list[bytes]:
    """The encoded photos of a v1 predict body."""
    check_json_content_type(content_type)
    payload = parse_json(body, "the v1 body")
    if "instances" not in payload:
        raise RequestError(f'the v1 body has no "instances" (its keys: {sorted(payload)}); send {V1_SHAPE}')
    instances = payload["instances"]
    if not isinstance(instances, list):
        raise RequestError(f'"instances" must be a list, got a {_json_type(instances)}; send {V1_SHAPE}')
    photos = []
    for i, instance in enumerate(instances):
        if not isinstance(instance, dict) or not isinstance(instance.get("b64"), str):
            raise RequestError(f'instances[{i}] must be an object {{"b64": "<base64 photo>"}}; send {V1_SHAPE}')
        photos.append(b64decode(instance["b64"], f"instances[{i}].b64"))
    return photos


def parse_v2(body: bytes, headers: Mapping[str, str], output_names: list[str]) -> V2Request:
    """The photos and requested outputs of a v2 infer body (JSON or binary data extension)."""
    declared = header(headers, HEADER_LENGTH)
    if declared is None:
        check_json_content_type(header(headers, "content-type"))
        json_part, binary = body, b""
    else:
        if not declared.strip().isdigit():
            raise RequestError(f"the Inference-Header-Content-Length header must be a whole number of bytes, got {declared!r}")
        length = int(declared)
        if length > len(body):
            raise RequestError(
                f"the Inference-Header-Content-Length header says {length:,} bytes of JSON but the body holds only {len(body):,}"
            )
        json_part, binary = body[:length], body[length:]
    doc = parse_json(json_part, "the v2 request JSON")
    request_id = doc.get("id")
    if request_id is not None and not isinstance(request_id, str):
        raise RequestError(f'"id" must be a string, got a {_json_type(request_id)}')
    parameters = _object(doc.get("parameters"), "parameters")
    binary_outputs = _flag(parameters.get("binary_data_output", False), "parameters.binary_data_output")
    if "classification" in parameters:
        raise RequestError("parameters.classification is not supported; request the class and class_name outputs")

    inputs = doc.get("inputs")
    if inputs is None:
        raise RequestError(f'the v2 request has no "inputs"; send {V2_SHAPE}')
    if not isinstance(inputs, list):
        raise RequestError(f'"inputs" must be a list, got a {_json_type(inputs)}; send {V2_SHAPE}')
    if len(inputs) != 1:
        raise RequestError(f'"inputs" must hold exactly one input (BYTES, the encoded photos), got {len(inputs)}')
    tensor = inputs[0]
    if not isinstance(tensor, dict):
        raise RequestError(f"inputs[0] must be an object, got a {_json_type(tensor)}; send {V2_SHAPE}")
    name = tensor.get("name")
    if not isinstance(name, str) or not name:
        raise RequestError('inputs[0].name must be a non-empty string (this model\'s input is "images")')
    datatype = tensor.get("datatype")
    if datatype != "BYTES":
        raise RequestError(
            f"inputs[0] ({name!r}) has datatype {datatype!r}; send the encoded JPEG/PNG photos as BYTES "
            "(base64 strings in JSON, or the raw files in the binary data extension)"
        )
    count = _shape_count(tensor.get("shape"), name)
    input_params = _object(tensor.get("parameters"), "inputs[0].parameters")
    if "binary_data_size" in input_params:
        if declared is None:
            raise RequestError(
                "inputs[0].parameters.binary_data_size is set but there is no Inference-Header-Content-Length header; "
                "send the header with the JSON part's length"
            )
        if "data" in tensor:
            raise RequestError('inputs[0] has both "data" and parameters.binary_data_size; send one of them')
        photos = _binary_elements(binary, input_params["binary_data_size"], name)
    else:
        if binary:
            raise RequestError(
                f"the body has {len(binary):,} bytes after the JSON header but no input declares parameters.binary_data_size"
            )
        photos = _json_elements(tensor.get("data"), name)
    if len(photos) != count:
        raise RequestError(f"inputs[0] ({name!r}) has shape {tensor['shape']} but holds {len(photos)} elements; use shape [{len(photos)}]")
    return V2Request(
        id=request_id, input_name=name, photos=photos,
        outputs=_requested_outputs(doc.get("outputs"), output_names, binary_outputs), binary_outputs=binary_outputs,
    )  # fmt: skip


def _object(value: Any, where: str) -> dict:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise RequestError(f"{where} must be an object, got a {_json_type(value)}")
    return value


def _flag(value: Any, where: str) -> bool:
    if not isinstance(value, bool):
        raise RequestError(f"{where} must be true or false, got {json.dumps(value)}")
    return value


def _shape_count(shape: Any, name: str) -> int:
    if not isinstance(shape, list) or not all(isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in shape):
        raise RequestError(f"inputs[0] ({name!r}).shape must be a list of whole numbers such as [N], got {json.dumps(shape)}")
    if len(shape) == 1 or (len(shape) == 2 and shape[1] == 1):
        return shape[0]
    raise RequestError(f"inputs[0] ({name!r}) has shape {shape}; send the photos as a list, shape [N] (or [N, 1])")


def _json_elements(data: Any, name: str) -> list[bytes]:
    if data is None:
        raise RequestError(f'inputs[0] ({name!r}) has no "data"; send the photos base64-encoded in "data"')
    if not isinstance(data, list):
        raise RequestError(f'inputs[0] ({name!r}).data must be a list of base64 strings, got a {_json_type(data)}')
    flat = [item for row in data for item in (row if isinstance(row, list) else [row])]
    photos = []
    for i, item in enumerate(flat):
        if not isinstance(item, str):
            raise RequestError(f"inputs[0] ({name!r}).data[{i}] is a {_json_type(item)}; send each photo as a base64 string")
        photos.append(b64decode(item, f"inputs[0] ({name!r}).data[{i}]"))
    return photos


def _binary_elements(binary: bytes, size: Any, name: str) -> list[bytes]:
    where = f"inputs[0] ({name!r}).parameters.binary_data_size"
    if not isinstance(size, int) or isinstance(size, bool) or size < 0:
        raise RequestError(f"{where} must be a whole number of bytes, got {json.dumps(size)}")
    if size > len(binary):
        raise RequestError(f"{where} is {size:,} bytes but only {len(binary):,} follow the JSON header")
    if size < len(binary):
        raise RequestError(f"{where} is {size:,} bytes but {len(binary):,} follow the JSON header; they must agree")
    photos, offset = [], 0
    while offset < size:
        if size - offset < 4:
            raise RequestError(f"{where}: {size - offset} stray bytes where a BYTES element's 4-byte length should be; "
                               "each element is a 4-byte little-endian length, then that many bytes")  # fmt: skip
        length = int.from_bytes(binary[offset : offset + 4], "little")
        offset += 4
        if length > size - offset:
            raise RequestError(
                f"{where}: element {len(photos)} declares {length:,} bytes but only {size - offset:,} remain; "
                "each element is a 4-byte little-endian length, then that many bytes"
            )
        photos.append(_photo_bytes(binary[offset : offset + length]))
        offset += length
    return photos


def _photo_bytes(element: bytes) -> bytes:
    """A binary BYTES element: the raw photo file, or (as older clients of this server sent
    it) the file base64-encoded; a base64 text never starts with a JPEG or PNG signature."""
    if element.startswith((JPEG_MAGIC, PNG_MAGIC)):
        return element
    try:
        return base64.b64decode(element, validate=True)
    except (binascii.Error, ValueError):
        return element  # not base64: the decoder says what it is not


def _requested_outputs(outputs: Any, names: list[str], binary_default: bool) -> list[tuple[str, bool]] | None:
    if outputs is None:
        return None
    if not isinstance(outputs, list):
        raise RequestError(f'"outputs" must be a list of {{"name": ...}} objects, got a {_json_type(outputs)}')
    requested = []
    for i, output in enumerate(outputs):
        if not isinstance(output, dict) or not isinstance(output.get("name"), str):
            raise RequestError(f'outputs[{i}] must be an object with a "name" string')
        if output["name"] not in names:
            raise RequestError(f"outputs[{i}].name {output['name']!r} is not an output of this model; its outputs: {', '.join(names)}")
        params = _object(output.get("parameters"), f"outputs[{i}].parameters")
        if "classification" in params:
            raise RequestError(f"outputs[{i}].parameters.classification is not supported; request class and class_name")
        binary = _flag(params.get("binary_data", binary_default), f"outputs[{i}].parameters.binary_data")
        requested.append((output["name"], binary))
    return requested


def encode_v2(
    request: V2Request, model_name: str, model_version: str, tensors: dict[str, np.ndarray], response_id: str
) -> tuple[bytes, dict[str, str]]:
    """The response body and its headers: JSON, or the binary extension when an output asks it."""
    chosen = request.outputs if request.outputs is not None else [(n, request.binary_outputs) for n in tensors]
    outputs, blobs = [], []
    for name, binary in chosen:
        value = tensors[name]
        datatype = DATATYPES.get(value.dtype, "BYTES")
        entry: dict[str, Any] = {"name": name, "datatype": datatype, "shape": list(value.shape)}
        if binary:
            blob = _to_binary(value, datatype)
            entry["parameters"] = {"binary_data_size": len(blob)}
            blobs.append(blob)
        else:
            entry["data"] = [_json_value(v) for v in value.reshape(-1).tolist()]
        outputs.append(entry)
    doc = {"model_name": model_name, "model_version": model_version, "id": response_id, "outputs": outputs}
    text = json.dumps(doc, allow_nan=False).encode()
    if not blobs:
        return text, {"content-type": "application/json"}
    headers = {"content-type": "application/octet-stream", HEADER_LENGTH: str(len(text))}
    return text + b"".join(blobs), headers


def _to_binary(value: np.ndarray, datatype: str) -> bytes:
    if datatype == "BYTES":
        items = [str(v).encode() for v in value.reshape(-1)]
        return b"".join(len(item).to_bytes(4, "little") + item for item in items)
    return np.ascontiguousarray(value, dtype=value.dtype.newbyteorder("<")).tobytes()


def _json_value(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        raise ValueError(f"the model gave a non-finite value {value}")
    return value
