"""The OpenAPI document `maskpipe serve` answers at ``/openapi.json``: its real request and
error shapes (:mod:`maskpipe.serve_protocol`), written out rather than derived from KServe's
generic models, so a client generator or ``schemathesis`` sees what the server does."""

from __future__ import annotations

from typing import Any

ERROR = {
    "type": "object", "required": ["error"], "additionalProperties": False,
    "properties": {"error": {"type": "string", "description": "one line: the field, what was wrong, what to send"}},
}  # fmt: skip
READY = {
    "type": "object", "required": ["name", "ready"],
    "properties": {"name": {"type": "string"}, "ready": {"type": "boolean"}},
}  # fmt: skip
TENSOR_META = {
    "type": "object", "required": ["name", "datatype", "shape"],
    "properties": {"name": {"type": "string"}, "datatype": {"type": "string"}, "shape": {"type": "array", "items": {"type": "integer"}}},
}  # fmt: skip
RETRY_AFTER = {"Retry-After": {"schema": {"type": "string"}, "description": "seconds to wait before retrying"}}


def _json(schema: dict, description: str, headers: dict | None = None) -> dict:
    response: dict[str, Any] = {"description": description, "content": {"application/json": {"schema": schema}}}
    if headers:
        response["headers"] = headers
    return response


def _errors(*statuses: int) -> dict:
    meaning = {
        400: "a malformed request (the message names the field)",
        404: "no such model, version or endpoint",
        405: "the method is not allowed on this path",
        413: "the body (or its gzip/deflate contents) is over the server's limit",
        415: "a Content-Type or Content-Encoding the server does not read",
        503: "the model cannot answer now",
    }
    return {str(s): _json(ERROR, meaning[s], RETRY_AFTER if s == 503 else None) for s in statuses}


def _ready_responses() -> dict:
    return {"200": _json(READY, "ready"), **_errors(404, 405), "503": _json(READY, "not ready: the model cannot answer now")}


def openapi_document(model_name: str, model_version: str, output_names: list[str], token: bool = False) -> dict:
    """The document for a server that serves ``model_name`` at ``model_version`` (``token``:
    every operation but the probes needs the bearer token)."""
    # The one name and version served (any other is a documented 404).
    NAME = {"name": "model_name", "in": "path", "required": True, "schema": {"type": "string", "enum": [model_name]}}
    VERSION = {"name": "model_version", "in": "path", "required": True, "schema": {"type": "string", "enum": [model_version]}}
    v1_request = {
        "type": "object", "required": ["instances"],
        "properties": {"instances": {"type": "array", "items": {
            "type": "object", "required": ["b64"],
            "properties": {"b64": {"type": "string", "contentEncoding": "base64", "description": "a JPEG or PNG file, base64"}},
        }}},
    }  # fmt: skip
    probabilities = {"type": "object", "additionalProperties": {"type": "number"}}
    task = {"type": "object", "required": ["label", "probability", "probabilities"], "properties": {
        "label": {"type": "string"}, "probability": {"type": "number"}, "probabilities": probabilities}}  # fmt: skip
    v1_response = {
        "type": "object", "required": ["predictions"],
        "properties": {"predictions": {"type": "array", "items": {
            "type": "object", "required": ["class", "class_name", "mask", "gender", "age"],
            "properties": {"class": {"type": "integer"}, "class_name": {"type": "string"}, "mask": task, "gender": task, "age": task},
        }}},
    }  # fmt: skip
    v2_request = {
        "type": "object", "required": ["inputs"],
        "properties": {
            "id": {"type": "string"},
            "parameters": {"type": "object", "properties": {"binary_data_output": {"type": "boolean"}}},
            "inputs": {"type": "array", "minItems": 1, "maxItems": 1, "items": {
                "type": "object", "required": ["name", "datatype", "shape"],
                "properties": {
                    "name": {"type": "string"},
                    "datatype": {"type": "string", "enum": ["BYTES"]},
                    "shape": {"type": "array", "items": {"type": "integer", "minimum": 0}, "minItems": 1, "maxItems": 2},
                    "data": {"type": "array", "items": {"type": "string", "contentEncoding": "base64"}},
                    "parameters": {"type": "object", "properties": {"binary_data_size": {"type": "integer", "minimum": 0}}},
                },
            }},
            "outputs": {"type": "array", "items": {
                "type": "object", "required": ["name"],
                "properties": {"name": {"type": "string", "enum": output_names},
                               "parameters": {"type": "object", "properties": {"binary_data": {"type": "boolean"}}}},
            }},
        },
    }  # fmt: skip
    v2_output = {
        "type": "object", "required": ["name", "datatype", "shape"],
        "properties": {
            "name": {"type": "string", "enum": output_names}, "datatype": {"type": "string", "enum": ["INT64", "FP32", "BYTES"]},
            "shape": {"type": "array", "items": {"type": "integer"}}, "data": {"type": "array"},
            "parameters": {"type": "object", "properties": {"binary_data_size": {"type": "integer"}}},
        },
    }  # fmt: skip
    v2_response = {
        "type": "object", "required": ["model_name", "outputs"],
        "properties": {"model_name": {"type": "string"}, "model_version": {"type": "string"}, "id": {"type": "string"},
                       "outputs": {"type": "array", "items": v2_output}},
    }  # fmt: skip
    binary_header = {
        "name": "Inference-Header-Content-Length", "in": "header", "required": False,
        "description": "binary data extension: the length of the JSON part; the raw tensor bytes follow it",
        "schema": {"type": "string", "pattern": "^[0-9]+$"},
    }  # fmt: skip
    infer = {
        "summary": "Classify photos (Open Inference Protocol v2)",
        "requestBody": {"required": True, "content": {
            "application/json": {"schema": v2_request},
            "application/octet-stream": {"schema": {"type": "string", "format": "binary"},
                                         "description": "binary data extension: the JSON header, then the inputs' bytes"},
        }},
        "responses": {
            "200": {"description": "the requested outputs", "content": {
                "application/json": {"schema": v2_response},
                "application/octet-stream": {"schema": {"type": "string", "format": "binary"}}}},
            **_errors(400, 404, 405, 413, 415, 503),
        },
    }  # fmt: skip
    metadata = {
        "type": "object", "required": ["name", "versions", "platform", "inputs", "outputs"],
        "properties": {"name": {"type": "string"}, "versions": {"type": "array", "items": {"type": "string"}},
                       "platform": {"type": "string"}, "inputs": {"type": "array", "items": TENSOR_META},
                       "outputs": {"type": "array", "items": TENSOR_META}},
    }  # fmt: skip
    models = {"type": "object", "required": ["models"], "properties": {"models": {"type": "array", "items": {"type": "string"}}}}
    paths = {
        "/": {"get": {"summary": "Liveness", "responses": {"200": _json({"type": "object"}, "alive")}}},
        "/v2/health/live": {"get": {"summary": "Liveness", "responses": {"200": _json({"type": "object"}, "alive")}}},
        "/v2/health/ready": {"get": {"summary": "Readiness: true only when the model can answer", "responses": {
            "200": _json({"type": "object", "properties": {"ready": {"type": "boolean"}}}, "ready"),
            "503": _json({"type": "object", "properties": {"ready": {"type": "boolean"}}}, "not ready")}}},
        "/metrics": {"get": {"summary": "Prometheus metrics", "responses": {
            "200": {"description": "metrics", "content": {"text/plain": {"schema": {"type": "string"}}}}}}},
        "/v1/models": {"get": {"summary": "Models served", "responses": {"200": _json(models, "model names")}}},
        "/v1/models/{model_name}": {"get": {"summary": "Model readiness (v1)", "parameters": [NAME], "responses": _ready_responses()}},
        "/v1/models/{model_name}:predict": {"post": {
            "summary": "Classify photos (v1)", "parameters": [NAME],
            "requestBody": {"required": True, "content": {"application/json": {"schema": v1_request}}},
            "responses": {"200": _json(v1_response, "one prediction per photo"), **_errors(400, 404, 405, 413, 415, 503)},
        }},
        "/v2": {"get": {"summary": "Server metadata", "responses": {"200": _json({"type": "object", "required": ["name", "version", "extensions"], "properties": {
            "name": {"type": "string"}, "version": {"type": "string"}, "extensions": {"type": "array", "items": {"type": "string"}}}}, "server metadata")}}},
        "/v2/models": {"get": {"summary": "Models served", "responses": {"200": _json(models, "model names")}}},
        "/v2/models/{model_name}": {"get": {"summary": "Model metadata", "parameters": [NAME],
                                            "responses": {"200": _json(metadata, "metadata"), **_errors(404, 405)}}},
        "/v2/models/{model_name}/versions/{model_version}": {"get": {"summary": "Model metadata", "parameters": [NAME, VERSION],
                                                                     "responses": {"200": _json(metadata, "metadata"), **_errors(404, 405)}}},
        "/v2/models/{model_name}/ready": {"get": {"summary": "Model readiness", "parameters": [NAME], "responses": _ready_responses()}},
        "/v2/models/{model_name}/versions/{model_version}/ready": {"get": {"summary": "Model readiness", "parameters": [NAME, VERSION],
                                                                           "responses": _ready_responses()}},
        "/v2/models/{model_name}/infer": {"post": {**infer, "parameters": [NAME, binary_header]}},
        "/v2/models/{model_name}/versions/{model_version}/infer": {"post": {**infer, "parameters": [NAME, VERSION, binary_header]}},
    }  # fmt: skip
    document: dict[str, Any] = {
        "openapi": "3.1.0",
        "info": {"title": "maskpipe serve", "version": model_version,
                 "description": f"Mask / gender / age classes of face photos; the model is served as {model_name!r}."},
        "paths": paths,
    }  # fmt: skip
    if token:
        document["components"] = {"securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}}}
        for path, operations in paths.items():
            if path not in ("/", "/v2/health/live", "/v2/health/ready"):
                for operation in operations.values():
                    operation["security"] = [{"bearer": []}]
                    operation["responses"]["401"] = _json(ERROR, "no or a wrong bearer token", {"WWW-Authenticate": {"schema": {"type": "string"}}})
    return document
