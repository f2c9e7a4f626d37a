"""One sample of a ``tune:`` space made concrete: the network with its layer arguments set
(checked as any spec is: shapes, then the budget) and the training settings it overrides;
and the spec with a sample folded in, ready for ``cnnspec train``."""

from __future__ import annotations

from typing import Any

import yaml

from cnnspec.graph.dag import Graph
from cnnspec.graph.load import parse_spec
from cnnspec.graph.search_space import LAYER_KEY, layer_entries
from cnnspec.spec.grammar import META_KEYS
from cnnspec.spec.training import with_overrides
from cnnspec.spec.tune_section import Budget


class Infeasible(ValueError):
    """A sample that cannot train: its network does not build, or is over the budget."""


def split_sample(params: dict[str, Any]) -> tuple[dict[str, dict[str, Any]], dict[str, Any]]:
    """({layer name: {argument: value}}, {train setting: value}) of a sample."""
    layers: dict[str, dict[str, Any]] = {}
    settings = {}
    for key, value in params.items():
        if key.startswith(LAYER_KEY):
            name, _, argument = key[len(LAYER_KEY) :].rpartition(".")
            layers.setdefault(name, {})[argument] = value
        else:
            settings[key] = value
    return layers, settings


def sampled_document(graph: Graph, params: dict[str, Any]) -> dict[str, Any]:
    """The spec's document with the sample's values in place: layer arguments in their
    entries (``expect:`` assertions, which describe the spec as written, dropped when any
    is set), training settings in ``train:``; without ``tune:``."""
    layers, settings = split_sample(params)
    document: dict[str, Any] = yaml.safe_load(graph.source)
    document.pop("tune", None)
    if layers:
        _set_layer_arguments(graph, document, layers)
    if settings:
        document["train"] = with_overrides(document.get("train") or {}, settings)
    return document


def sampled_graph(graph: Graph, params: dict[str, Any], budget: Budget, label: str) -> Graph:
    """The network a sample describes, checked; Infeasible (saying why) when it does not
    build or is over ``budget``."""
    from cnnspec.spec.diagnostics import SpecError

    layers, _ = split_sample(params)
    sampled = graph
    if layers:
        try:
            sampled = parse_spec(yaml.safe_dump(sampled_document(graph, {f"{LAYER_KEY}{n}.{a}": v for n, args in layers.items() for a, v in args.items()}),
                                                sort_keys=False), f"{graph.path} ({label})")
        except SpecError as exc:
            first = exc.diagnostics[0]
            raise Infeasible(f"the network does not build: {first.message} (line {first.location.line})") from None
    over = budget_excess(sampled, budget)
    if over:
        raise Infeasible(over)
    return sampled


def budget_excess(graph: Graph, budget: Budget) -> str:
    """What a network exceeds of ``budget``, or ''."""
    over = []
    if budget.params is not None and graph.params > budget.params:
        over.append(f"{graph.params:,} parameters, over the budget of {budget.params:,.0f}")
    if budget.macs is not None and graph.macs > budget.macs:
        over.append(f"{graph.macs:,} MACs, over the budget of {budget.macs:,.0f}")
    return "; ".join(over)


def folded_spec(graph: Graph, params: dict[str, Any], header: str) -> str:
    """The spec text with ``params`` folded in, under a ``# header`` comment."""
    body = yaml.safe_dump(sampled_document(graph, params), sort_keys=False)
    return "".join(f"# {line}\n" for line in header.splitlines()) + body


def _set_layer_arguments(graph: Graph, document: dict[str, Any], layers: dict[str, dict[str, Any]]) -> None:
    entries = layer_entries(graph)
    document.pop("expect", None)
    for entry in document["layers"]:
        if isinstance(entry, dict):
            entry.pop("expect", None)
    for name, arguments in layers.items():
        entry = document["layers"][entries[name].index]
        kind = next(key for key in entry if key not in META_KEYS)
        entry[kind] = {**(entry[kind] or {}), **arguments}
