"""The JSON Schema of the spec format (``cnnspec schema``), built from the registry so
that a new layer kind appears in it without being written here."""

from __future__ import annotations

from typing import Any

from cnnspec.layers import LAYERS
from cnnspec.spec.grammar import PARAM_REFERENCE, LayerExpect, NetworkExpect, SpecHeader
from cnnspec.spec.training import TrainConfig
from cnnspec.spec.tune_section import TuneConfig

_PARAM = {"type": "string", "pattern": PARAM_REFERENCE.pattern, "description": "a block parameter"}
_META = {
    "name": {"type": ["string", "integer"], "description": "layer name; repeats append .0, .1, ..."},
    "inputs": {
        "description": "layer names this layer reads ('input' is the network's or block's input)",
        "oneOf": [{"type": "string"}, {"type": "array", "items": {"type": "string"}, "minItems": 1}],
    },
    "expect": LayerExpect.model_json_schema(),
    "repeat": {"description": "repeat this entry n times", "oneOf": [{"type": "integer", "minimum": 1}, _PARAM]},
}


def _arguments(kind: str, in_block: bool) -> dict[str, Any]:
    schema = LAYERS[kind].model_json_schema()
    schema.pop("required", None)  # 'defaults:' may supply them; 'cnnspec check' enforces it
    schema["title"] = kind
    if in_block:  # inside a block any argument may be a $parameter
        schema["properties"] = {key: {"anyOf": [value, _PARAM]} for key, value in schema["properties"].items()}
    return schema


def _layer_list(in_block: bool) -> dict[str, Any]:
    entries: list[dict[str, Any]] = [
        {
            "type": "object",
            "properties": {kind: _arguments(kind, in_block), **_META},
            "required": [kind],
            "additionalProperties": False,
        }
        for kind in LAYERS
    ]
    entries.append(
        {
            "description": "a block from 'blocks:', with its parameters",
            "type": "object",
            "minProperties": 1,
            "propertyNames": {"not": {"enum": list(LAYERS)}},  # a layer kind must match its own entry
            "additionalProperties": {"type": ["object", "null"]},
            "properties": _META,
        }
    )
    return {"type": "array", "items": {"anyOf": entries}, "minItems": 1}


def spec_json_schema() -> dict[str, Any]:
    schema = SpecHeader.model_json_schema()
    properties = schema["properties"]
    properties["layers"] = _layer_list(in_block=False)
    properties["defaults"] = {
        "type": "object",
        "description": "default arguments per layer kind",
        "properties": {kind: _arguments(kind, in_block=False) for kind in LAYERS},
        "additionalProperties": False,
    }
    properties["blocks"] = {
        "type": "object",
        "description": "reusable blocks: parameters (a default, or 'required') and layers using $parameter",
        "additionalProperties": {
            "type": "object",
            "properties": {"description": {"type": "string"}, "params": {"type": "object"}, "layers": _layer_list(in_block=True)},
            "required": ["layers"],
            "additionalProperties": False,
        },
    }
    properties["expect"] = NetworkExpect.model_json_schema()
    train = TrainConfig.model_json_schema()  # its nested sections refer to "#/$defs/..."
    schema.setdefault("$defs", {}).update(train.pop("$defs", {}))
    properties["train"] = train
    tune = TuneConfig.model_json_schema()
    schema["$defs"].update(tune.pop("$defs", {}))
    properties["tune"] = tune
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    schema["title"] = "cnnspec network spec"
    return schema
