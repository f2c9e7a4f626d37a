"""The Open Inference Protocol (KServe v2, which Triton speaks) on the wire: tensors in
JSON, and the binary tensor extension, where a JSON header of
``Inference-Header-Content-Length`` bytes is followed by the raw tensors in order, each
input or output saying its size in ``parameters.binary_data_size`` (what Triton's own
clients send and ask for)."""

from __future__ import annotations

import json
from typing import Any

import numpy as np

HEADER = "Inference-Header-Content-Length"
DTYPES: dict[str, np.dtype[Any]] = {"FP32": np.dtype("<f4"), "FP64": np.dtype("<f8"), "FP16": np.dtype("<f2"), "UINT8": np.dtype("u1")}


class BadRequest(ValueError):
    """The request does not follow the protocol; the message says where."""


def parse_request(body: bytes, header_length: str | None) -> tuple[dict[str, Any], list[np.ndarray]]:
    """(the request's JSON, its input tensors in order)."""
    if header_length is not None:
        try:
            cut = int(header_length)
        except ValueError:
            raise BadRequest(f"{HEADER} is {header_length!r}, not a number of bytes") from None
        if not 0 < cut <= len(body):
            raise BadRequest(f"{HEADER} is {cut}, the body has {len(body)} bytes")
        head, binary = body[:cut], body[cut:]
    else:
        head, binary = body, b""
    try:
        request = json.loads(head)
    except (ValueError, UnicodeDecodeError) as exc:
        raise BadRequest(f"the body is not JSON ({exc})") from None
    if not isinstance(request, dict) or not isinstance(request.get("inputs"), list) or not request["inputs"]:
        raise BadRequest('the request needs "inputs": a list of tensors')
    tensors, offset = [], 0
    for number, tensor in enumerate(request["inputs"]):
        if not isinstance(tensor, dict):
            raise BadRequest(f"inputs[{number}] is not an object")
        name = tensor.get("name", f"inputs[{number}]")
        datatype, shape = tensor.get("datatype"), tensor.get("shape")
        if datatype not in DTYPES:
            raise BadRequest(f"input '{name}': datatype {datatype!r}; supported: {', '.join(DTYPES)}")
        if not isinstance(shape, list) or not all(isinstance(d, int) and d >= 0 for d in shape):
            raise BadRequest(f"input '{name}': shape must be a list of sizes, got {shape!r}")
        size = (tensor.get("parameters") or {}).get("binary_data_size")
        if size is not None:
            if not isinstance(size, int) or size < 0 or offset + size > len(binary):
                raise BadRequest(f"input '{name}': binary_data_size {size!r} reaches past the body's {len(binary)} binary bytes")
            raw = np.frombuffer(binary[offset : offset + size], DTYPES[datatype])
            offset += size
        else:
            try:
                raw = np.asarray(tensor.get("data"), DTYPES[datatype]).reshape(-1)
            except (TypeError, ValueError) as exc:
                raise BadRequest(f"input '{name}': data is not {datatype} numbers ({exc})") from None
        if raw.size != int(np.prod(shape)):
            raise BadRequest(f"input '{name}': {raw.size} values for shape {shape} ({int(np.prod(shape))})")
        tensors.append(raw.reshape(shape))
    return request, tensors


def wants_binary(request: dict[str, Any], name: str) -> bool:
    """Whether the request asks for output ``name`` in binary (per output, or for all)."""
    for output in request.get("outputs") or []:
        if isinstance(output, dict) and output.get("name") == name:
            return bool((output.get("parameters") or {}).get("binary_data", False))
    return bool((request.get("parameters") or {}).get("binary_data_output", False))


def wanted(request: dict[str, Any], names: list[str]) -> list[str]:
    """The outputs the request names (all of them when it names none)."""
    asked = [o.get("name") for o in request.get("outputs") or [] if isinstance(o, dict)]
    unknown = [name for name in asked if name not in names]
    if unknown:
        raise BadRequest(f"output {unknown[0]!r} is not one of the model's: {', '.join(names)}")
    return [name for name in names if name in asked] if asked else names


def response(model: str, request: dict[str, Any], outputs: dict[str, np.ndarray]) -> tuple[bytes, dict[str, str]]:
    """The body and its headers: JSON, or the JSON header and binary tensors."""
    entries, blobs = [], []
    for name, array in outputs.items():
        entry: dict[str, Any] = {"name": name, "datatype": "FP32", "shape": list(array.shape)}
        data = np.ascontiguousarray(array, "<f4")
        if wants_binary(request, name):
            blobs.append(data.tobytes())
            entry["parameters"] = {"binary_data_size": len(blobs[-1])}
        else:
            entry["data"] = data.reshape(-1).tolist()
        entries.append(entry)
    answer: dict[str, Any] = {"model_name": model, "outputs": entries}
    if "id" in request:
        answer["id"] = request["id"]
    head = json.dumps(answer).encode()
    if not blobs:
        return head, {"content-type": "application/json"}
    return head + b"".join(blobs), {"content-type": "application/octet-stream", HEADER: str(len(head))}
