"""Drive a running `maskpipe serve` with the clients people already use; print what they got.

Run in the serving environment (it has kserve; ``make venv`` adds tritonclient from
pyproject.toml's test extra) by tests/test_serve_clients.py:

    python tests/oip_clients.py URL MODEL_NAME PHOTO...

Prints one JSON object: for each way of calling, the classes (and mask probabilities) the client
decoded from the answer, and the health and metadata calls' results.
"""

from __future__ import annotations

import asyncio
import base64
import json
import sys
from pathlib import Path

import numpy as np


def tritonclient_calls(url: str, name: str, photos: list[bytes]) -> dict:
    import tritonclient.http as httpclient

    client = httpclient.InferenceServerClient(url.removeprefix("http://"))
    metadata = client.get_model_metadata(name)
    result = {
        "server_live": client.is_server_live(),
        "server_ready": client.is_server_ready(),
        "model_ready": client.is_model_ready(name),
        "model_metadata": metadata,
        "server_metadata": client.get_server_metadata(),
    }
    raw = np.array(photos, dtype=np.object_)
    b64 = np.array([base64.b64encode(p) for p in photos], dtype=np.object_)
    calls = {
        # (photos, binary input, binary outputs, request compression, model version)
        "json": (b64, False, False, None, ""),
        "binary raw photos": (raw, True, True, None, ""),
        "binary raw photos, gzip": (raw, True, False, "gzip", ""),
        "json, deflate": (b64, False, True, "deflate", ""),
        "binary, by version": (raw, True, True, None, metadata["versions"][0]),
    }
    for label, (data, binary_in, binary_out, compression, version) in calls.items():
        images = httpclient.InferInput("images", [len(photos)], "BYTES")
        images.set_data_from_numpy(data, binary_data=binary_in)
        outputs = [httpclient.InferRequestedOutput(n, binary_data=binary_out) for n in ("class", "mask_probs", "class_name")]
        answer = client.infer(name, [images], outputs=outputs, model_version=version, request_compression_algorithm=compression)
        result[label] = {
            "class": answer.as_numpy("class").tolist(),
            "mask_probs": answer.as_numpy("mask_probs").tolist(),
            "class_name": [v.decode() if isinstance(v, bytes) else v for v in answer.as_numpy("class_name").tolist()],
            "outputs": [o["name"] for o in answer.get_response()["outputs"]],
        }
    client.close()
    return result


async def kserve_calls(url: str, name: str, photos: list[bytes]) -> dict:
    from kserve import InferenceRESTClient, InferInput, InferRequest, RESTConfig

    v2 = InferenceRESTClient(RESTConfig(protocol="v2"))
    result = {"server_ready": await v2.is_server_ready(url), "model_ready": await v2.is_model_ready(url, name)}
    for label, (data, binary) in {
        "json": ([base64.b64encode(p) for p in photos], False),
        "binary raw photos": (photos, True),
    }.items():
        images = InferInput("images", [len(photos)], "BYTES")
        images.set_data_from_numpy(np.array(data, dtype=np.object_), binary_data=binary)
        answer = await v2.infer(url, InferRequest(model_name=name, infer_inputs=[images]), model_name=name)
        by_name = {o.name: o for o in answer.outputs}
        result[label] = {"class": by_name["class"].as_numpy().tolist(), "mask_probs": by_name["mask_probs"].as_numpy().tolist()}
    await v2._client.aclose()
    v1 = InferenceRESTClient(RESTConfig(protocol="v1"))
    answer = await v1.infer(url, {"instances": [{"b64": base64.b64encode(p).decode()} for p in photos]}, model_name=name)
    result["v1"] = {"class": [p["class"] for p in answer["predictions"]]}
    await v1._client.aclose()
    return result


def main(argv: list[str]) -> None:
    url, name, *paths = argv
    photos = [Path(p).read_bytes() for p in paths]
    print(json.dumps({"tritonclient": tritonclient_calls(url, name, photos), "kserve": asyncio.run(kserve_calls(url, name, photos))}))


if __name__ == "__main__":
    main(sys.argv[1:])
