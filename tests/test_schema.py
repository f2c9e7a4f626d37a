"""`cnnspec schema` describes the real format: the zoo validates against it, typos do not."""

from __future__ import annotations

import json

import jsonschema
import pytest
import yaml

import cnnspec
from cnnspec.graph.load import zoo_path
from cnnspec.layers import LAYERS
from cnnspec.spec.schema import spec_json_schema


@pytest.fixture(scope="module")
def validator() -> jsonschema.protocols.Validator:
    schema = spec_json_schema()
    json.dumps(schema)  # serialisable
    cls = jsonschema.validators.validator_for(schema)
    cls.check_schema(schema)
    return cls(schema)


def test_every_kind_is_in_the_schema(validator: jsonschema.protocols.Validator) -> None:
    entries = validator.schema["properties"]["layers"]["items"]["anyOf"]
    kinds = {key for entry in entries for key in entry.get("required", [])}
    assert kinds == set(LAYERS)


@pytest.mark.parametrize("name", cnnspec.zoo_names())
def test_zoo_specs_validate(validator: jsonschema.protocols.Validator, name: str) -> None:
    validator.validate(yaml.safe_load(zoo_path(name).read_text()))


def test_schema_rejects_what_check_rejects(validator: jsonschema.protocols.Validator) -> None:
    good = {"name": "n", "input": {"shape": [1, 8, 8]}, "layers": [{"conv2d": {"filters": 2, "kernel": 3}}]}
    validator.validate(good)
    for bad in (
        {**good, "layer": []},
        {**good, "input": {"shape": [1, 8, 8, 8]}},
        {**good, "defaults": {"conv2d": {"filtres": 3}}},
        {**good, "layers": [{"conv2d": {"filters": 0, "kernel": 3}}]},
        {**good, "layers": [{"conv2d": {"filters": 2, "kernel": 3, "padding": "full"}}]},
    ):
        with pytest.raises(jsonschema.ValidationError):
            validator.validate(bad)


def test_schema_covers_the_train_section(validator: jsonschema.protocols.Validator) -> None:
    good = {"name": "n", "input": {"shape": [1, 8, 8]}, "layers": [{"dense": {"units": 2}}]}
    validator.validate({**good, "train": {"epochs": 3, "optimizer": {"name": "sgd", "lr": 0.1}, "data": {"augment": {"hflip": True}}}})
    for bad in ({"epochs": 0}, {"optimzer": {}}, {"data": {"augment": {"hflip": "yes"}}}):
        with pytest.raises(jsonschema.ValidationError):
            validator.validate({**good, "train": bad})
