"""One definition per layer kind: a registry entry, a final class, its name written once."""

from __future__ import annotations

import inspect
import re
from pathlib import Path

import pytest

from cnnspec.layers import LAYERS, Layer

ROOT = Path(__file__).resolve().parent.parent
SOURCES = [p for top in ("cnnspec", "calculators", "backends") for p in (ROOT / top).rglob("*.py")]


@pytest.mark.parametrize("kind", sorted(LAYERS))
def test_kind_is_a_final_concrete_class(kind: str) -> None:
    cls = LAYERS[kind]
    assert cls.kind == kind
    assert issubclass(cls, Layer) and not inspect.isabstract(cls)
    assert getattr(cls, "__final__", False), f"{cls.__name__} should be @final"
    assert not cls.__subclasses__()


@pytest.mark.parametrize("kind", sorted(LAYERS))
def test_kind_name_is_written_in_exactly_one_place(kind: str) -> None:
    pattern = re.compile(rf"""["']{re.escape(kind)}["']""")
    # An argument's values spelled in a Literal are values that may share a kind's name
    # (gelu's ``approximate: tanh``), not references to the kind.
    places = [(p.name, n) for p in SOURCES for n, line in enumerate(p.read_text().splitlines(), 1)
              if pattern.search(line) and "Literal[" not in line]
    assert len(places) == 1, f"'{kind}' is written in {places}; refer to the class instead"


def test_abstract_bases_are_not_registered() -> None:
    from cnnspec.layers.activation import Activation
    from cnnspec.layers.pool import GlobalPool2d, Pool2d

    assert not {Layer, Activation, Pool2d, GlobalPool2d} & set(LAYERS.values())
    with pytest.raises(TypeError):
        Layer()  # type: ignore[abstract]


def test_declared_weights_add_up_to_the_counts() -> None:
    """The canonical weight list (what checkpoints hold) agrees with `check` everywhere."""
    import cnnspec

    for name in cnnspec.zoo_names():
        graph = cnnspec.load_spec(name)
        for node in graph:
            shapes = [graph.input_shape if i == "input" else graph[i].output_shape for i in node.inputs]
            weights = node.layer.weights(shapes)
            size = {True: 0, False: 0}
            for spec in weights.values():
                count = 1
                for dim in spec.shape:
                    count *= dim
                size[spec.trainable] += count
            assert (size[True], size[False]) == (node.params, node.non_trainable), node.name
