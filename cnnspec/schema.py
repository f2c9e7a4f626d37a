"""The JSON Schema of the spec format (``cnnspec schema``), built from the registry so
that a new layer kind appears in it without being written here."""

from __future__ import annotations

from typing import Any

from cnnspec.layers import LAYERS
from cnnspec.spec import LayerExpect, NetworkExpect, SpecHeader

_META = {
    "name": {"type": ["string", "integer"], "description": "layer name; repeats append .0, .1, ..."},
    "inputs": {
        "description": "layer names this layer reads ('input' is the network's or block's input)",
        "oneOf": [{"type": "string"}, {"type": "array", "items": {"type": "string"}, "minItems": 1}],
    },
    "expect": LayerExpect.model_json_schema(),
    "repeat": {"description": "repeat this entry n times", "oneOf": [{"type": "integer", "minimum": 1}, {"type": "string"}]},
}


def spec_json_schema() -> dict[str, Any]:
    defs: dict[str, Any] = {}
    entries = []
    defaults = {}
    for kind, cls in LAYERS.items():
        schema = cls.model_json_schema()
        defs.update(schema.pop("$defs", {}))
        schema["title"] = kind
        entries.append(
            {
                "type": "object",
                "properties": {kind: schema, **_META},
                "required": [kind],
                "additionalProperties": False,
            }
        )
        defaults[kind] = {**schema, "required": []}
    block_use = {
        "description": "a block from 'blocks:', with its parameters",
        "type": "object",
        "minProperties": 1,
        "additionalProperties": {"type": ["object", "null"]},
        "properties": _META,
    }
    layer_list = {"type": "array", "items": {"anyOf": [*entries, block_use]}, "minItems": 1}
    schema = SpecHeader.model_json_schema()
    defs.update(schema.pop("$defs", {}))
    properties = schema["properties"]
    properties["layers"] = layer_list
    properties["defaults"] = {
        "type": "object",
        "description": "default arguments per layer kind",
        "properties": defaults,
        "additionalProperties": False,
    }
    properties["blocks"] = {
        "type": "object",
        "description": "reusable blocks: parameters (a default, or 'required') and layers using $parameter",
        "additionalProperties": {
            "type": "object",
            "properties": {"description": {"type": "string"}, "params": {"type": "object"}, "layers": layer_list},
            "required": ["layers"],
            "additionalProperties": False,
        },
    }
    properties["expect"] = NetworkExpect.model_json_schema()
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    schema["title"] = "cnnspec network spec"
    if defs:
        schema["$defs"] = defs
    return schema
