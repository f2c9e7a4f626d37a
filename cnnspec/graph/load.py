"""Reading specs: from a path or a zoo name to a validated Graph."""

from __future__ import annotations

import dataclasses
import os
import re
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pydantic import ValidationError

from cnnspec.errors import CnnspecError, did_you_mean
from cnnspec.graph.dag import Graph, build_graph
from cnnspec.spec.diagnostics import Diagnostic, Location, SpecError
from cnnspec.spec.grammar import INPUT, Expander, SpecHeader, pydantic_diagnostics
from cnnspec.spec.marks import MarkedDict, MarkedList, load_yaml

if TYPE_CHECKING:
    from cnnspec.spec.training import TrainConfig
    from cnnspec.spec.tune_section import TuneConfig


class SpecNotFound(CnnspecError, LookupError):
    """Neither a file nor a zoo name; the message lists the zoo."""


def _zoo_folder() -> Path:
    # The package's folder, not importlib.resources: cnnspec installs as plain files (never
    # a zip), and resources' import is 3 ms of `cnnspec check`'s start-up.
    import importlib

    return Path(importlib.import_module("cnnspec.specs").__path__[0])


def zoo_names() -> list[str]:
    return sorted(p.name.removesuffix(".yaml") for p in _zoo_folder().iterdir() if p.name.endswith(".yaml"))


def zoo_path(name: str) -> Path:
    return _zoo_folder() / f"{name}.yaml"


def resolve_spec_path(source: str | os.PathLike[str]) -> Path:
    """A path as given when it exists (a run directory or one of its checkpoint folders:
    the run's spec.yaml), else the zoo spec of that name ('vgg16', 'vgg16.yaml')."""
    path = Path(source)
    if path.is_file():
        return path
    if path.is_dir():
        for run in (path, path.parent.parent):  # a run; a checkpoint folder, run/checkpoints/epoch-N
            if (run / "spec.yaml").is_file() and (run / "run.json").is_file():
                return run / "spec.yaml"
    name = path.name.removesuffix(".yaml").removesuffix(".yml")
    if path.parent == Path(".") and name in zoo_names():
        return zoo_path(name)
    if path.exists():
        raise SpecNotFound(f"{source}: not a spec file, a run directory or a checkpoint folder")
    zoo = zoo_names()
    raise SpecNotFound(f"no such file '{source}', and no zoo spec named '{name}'{did_you_mean(name, zoo)} (zoo: {', '.join(zoo)})")


def parse_spec(text: str | bytes, path: str = "<spec>") -> Graph:
    """Validate spec text; raises SpecError listing every problem."""
    raw = load_yaml(text, path)
    top = Location(path, 1, 1)
    if not isinstance(raw, MarkedDict):
        kind = "a list" if isinstance(raw, list) else f"a {type(raw).__name__} scalar"
        raise SpecError([Diagnostic(top, f"a spec must be a mapping with 'name', 'input' and 'layers', got {kind}")])
    header: SpecHeader | None = None
    problems: dict[Diagnostic, None] = {}  # ordered, without repeats
    try:
        header = SpecHeader.model_validate(dict(raw))
    except ValidationError as exc:
        problems.update(dict.fromkeys(pydantic_diagnostics(exc, raw, top, "", model=SpecHeader)))
    train = _train_section(raw, top, problems)
    tune = _tune_section(raw, top, problems)
    expander = Expander(path, raw, header)
    expanded = expander.run()
    problems.update(dict.fromkeys(expander.diagnostics))
    try:
        graph = dataclasses.replace(build_graph(expanded), train_section=train, tune_section=tune)
    except SpecError as exc:
        problems.update(dict.fromkeys(exc.diagnostics))
    source = text if isinstance(text, str) else text.decode("utf-8")
    if not problems:
        graph = dataclasses.replace(graph, source=source)
        problems.update(dict.fromkeys(_tuning_problems(graph, raw, top)))
    if not problems and tune is not None:
        from cnnspec.graph.search_space import space_problems

        problems.update(dict.fromkeys(space_problems(graph, tune, raw["tune"], top)))
    if problems:
        hint = _channels_last(tuple(header.input.shape), raw, top) if header is not None else None
        raise SpecError([hint, *problems] if hint is not None else problems)  # the likely cause before its knock-on errors
    return dataclasses.replace(graph, warnings=graph.warnings + tuple(_habits(graph, raw, top)))  # its source set above


def _habits(graph: Graph, raw: MarkedDict, top: Location) -> list[Diagnostic]:
    """Warnings for what a Keras habit writes into a spec: a channels-last input shape, a
    softmax output under a loss that applies softmax itself."""
    hint = _channels_last(graph.input_shape, raw, top)
    found = [hint] if hint is not None else []
    last = graph[graph.output]
    loss = graph.train_section.loss if graph.train_section is not None else "cross_entropy"  # the default loss
    if ends_in_softmax(graph) and loss == "cross_entropy":
        found.append(Diagnostic(last.location, f"{last.kind} '{last.name}' ends in softmax, and the cross-entropy loss takes logits (as "
                                               "PyTorch's and Keras' from_logits=True do): training, eval and predict use the network "
                                               "without this softmax, exports keep it; drop it to make the spec say what trains", "warning"))
    return found


def _channels_last(shape: tuple[int, ...], raw: MarkedDict, top: Location) -> Diagnostic | None:
    """A warning when the input shape reads as height, width, channels."""
    if not (len(shape) == 3 and shape[2] in (1, 3, 4) and min(shape[0], shape[1]) > 4):
        return None
    section = raw.get("input")
    where = section.value_locations.get("shape", top) if isinstance(section, MarkedDict) else top
    return Diagnostic(where, f"input shape {list(shape)} looks channels-last (height, width, channels, as Keras writes it); "
                             f"a spec's input is channels-first: [{shape[2]}, {shape[0]}, {shape[1]}]", "warning")


def _train_section(raw: MarkedDict, top: Location, problems: dict[Diagnostic, None]) -> TrainConfig | None:
    """The ``train:`` section validated, its errors added to ``problems``; None when the
    spec has none (or it is not a mapping, which the header's check reports). The
    training models are built only here, so checking a spec without one skips them."""
    section = raw.get("train")
    if not isinstance(section, MarkedDict):
        return None
    from cnnspec.spec.training import SpecTraining

    try:
        return SpecTraining.model_validate({"train": section}).train
    except ValidationError as exc:
        problems.update(dict.fromkeys(pydantic_diagnostics(exc, raw, top, "", model=SpecTraining)))
        return None


def _tune_section(raw: MarkedDict, top: Location, problems: dict[Diagnostic, None]) -> TuneConfig | None:
    """The ``tune:`` section's fixed keys validated (its space needs the network: see
    ``search_space``), errors added to ``problems``; None when the spec has none."""
    section = raw.get("tune")
    if not isinstance(section, MarkedDict):
        return None
    from cnnspec.spec.tune_section import SpecTune

    try:
        return SpecTune.model_validate({"tune": section}).tune
    except ValidationError as exc:
        problems.update(dict.fromkeys(pydantic_diagnostics(exc, raw, top, "", model=SpecTune)))
        return None


def _tuning_problems(graph: Graph, raw: MarkedDict, top: Location) -> list[Diagnostic]:
    """``train.freeze``, ``lr_mult`` and ``decay_mult`` patterns that name no layer (or
    freeze them all), at the line of the pattern."""
    train = raw.get("train")
    if not isinstance(train, MarkedDict):
        return []
    from cnnspec.graph.tuning import TuningError, frozen_layers, match_layers

    problems = []
    for option in ("freeze", "lr_mult", "decay_mult"):
        entries = train.get(option)
        where = train.value_locations.get(option, top)
        patterns = entries if isinstance(entries, list) else list(entries or {})
        for index, pattern in enumerate(patterns):
            try:
                match_layers(graph, str(pattern), option)
            except TuningError as exc:
                at = entries.item_locations[index] if isinstance(entries, MarkedList) else (entries.key_locations.get(pattern, where) if isinstance(entries, MarkedDict) else where)
                problems.append(Diagnostic(at, str(exc)))
    if not problems:
        try:
            frozen_layers(graph, graph.train)
        except TuningError as exc:
            problems.append(Diagnostic(train.value_locations.get("freeze", top), str(exc)))
    return problems


def load_spec(source: str | os.PathLike[str]) -> Graph:
    """Load and validate a spec file or zoo name (``load_spec("lenet5")``)."""
    path = resolve_spec_path(source)
    return parse_spec(path.read_bytes(), _display_path(path))


def _display_path(path: Path) -> str:
    """Relative to the working directory when inside it, so errors read 'specs/x.yaml:3:5'."""
    try:
        return str(path.resolve().relative_to(Path.cwd().resolve()))
    except ValueError:
        return str(path)


def with_input_size(graph: Graph, size: tuple[int, int] | None, channels: int | None = None) -> Graph:
    """The same spec at another input height and width (and, with ``channels``, another
    channel count), without its ``expect:`` assertions (they describe the original size):
    a zoo network trained at 64 x 64, or a big model checked fast. The spec's text is
    rewritten, so a run records the size it was trained at."""
    height, width = size or graph.input_shape[1:3]
    wanted = (channels or graph.input_shape[0], height, width)
    if len(graph.input_shape) != 3:
        raise ValueError(f"'{graph.name}' takes a {len(graph.input_shape)}-d input {graph.input_shape}, not an image: it has no input size to set")
    if wanted == graph.input_shape:
        return graph
    document = _without_expectations(graph)
    document["input"]["shape"] = list(wanted)
    changed = f"{wanted[1]}x{wanted[2]}" + (f" with {wanted[0]} channels" if wanted[0] != graph.input_shape[0] else "")
    return _reparsed(document, f"{graph.path} at {changed}")


def parse_input_size(text: str) -> tuple[int, int]:
    """'64,64', '64x64' or '64' (square) -> (64, 64); ValueError for anything else."""
    parts = [p.strip() for p in re.split(r"[,x]", text.strip().lower())]
    if len(parts) == 1:
        parts *= 2
    if len(parts) != 2 or not all(p.isdigit() and int(p) > 0 for p in parts):
        raise ValueError(f"--input-size takes H,W (e.g. 64,64), got '{text}'")
    return int(parts[0]), int(parts[1])


def with_output_width(graph: Graph, width: int) -> Graph:
    """The same spec with its classifier (the last top-level dense layer) ``width``
    wide: a pretrained network given a new head for another set of classes."""
    if graph.output_shape == (width,):
        return graph
    document = _without_expectations(graph)
    from cnnspec.layers.activation import Softmax
    from cnnspec.layers.core import Dense

    for entry in reversed(document["layers"]):
        if isinstance(entry, dict) and isinstance(entry.get(Dense.kind), dict):
            entry[Dense.kind]["units"] = width
            activation = entry[Dense.kind].get("activation")
            if activation == Softmax.kind or (isinstance(activation, dict) and Softmax.kind in activation):
                del entry[Dense.kind]["activation"]  # a new head gives logits, as the loss takes them
            break
    else:
        raise ValueError(f"'{graph.name}' has no top-level {Dense.kind} layer to resize to {width} classes; set its width in the spec")
    resized = _reparsed(document, graph.path)
    if resized.output_shape != (width,):
        raise ValueError(f"resizing the last {Dense.kind} layer of '{graph.name}' does not make its output {width} wide (it gives {resized.output_shape}); set its width in the spec")
    return resized


def ends_in_softmax(graph: Graph) -> bool:
    """The network's output is a softmax: a ``softmax`` layer last, or the last layer's
    ``activation: softmax`` (as Keras applications, and so their imports, end)."""
    from cnnspec.layers.activation import Softmax

    last = graph[graph.output].layer
    return isinstance(last, Softmax) or isinstance(getattr(last, "activation", None), Softmax)


def logits_graph(graph: Graph) -> Graph:
    """``graph`` giving the logits where its output ends in softmax: the last layer without
    its softmax activation, or the network without its last ``softmax`` layer. The
    cross-entropy loss takes logits, and ``predict`` applies the softmax itself, so the
    harness trains, evaluates and predicts with this network while exports keep the
    spec's probabilities. The weights are the same (a softmax has none); any other
    network is returned as it is."""
    if not ends_in_softmax(graph):
        return graph
    last = graph[graph.output]
    if hasattr(last.layer, "activation"):
        plain = dataclasses.replace(last, layer=last.layer.model_copy(update={"activation": None}))
        return dataclasses.replace(graph, nodes=tuple(plain if node.name == last.name else node for node in graph.nodes))
    source = last.inputs[0]
    if source == INPUT or any(last.name in node.inputs for node in graph.nodes):
        return graph
    return dataclasses.replace(graph, nodes=tuple(node for node in graph.nodes if node.name != last.name), output=source)


def classifier_name(graph: Graph) -> str:
    """The classifier's node: the last top-level dense layer, the one ``with_output_width``
    resizes and ``--head-only`` trains."""
    from cnnspec.layers.core import Dense

    for node in reversed(graph.nodes):
        if node.kind == Dense.kind and "." not in node.name:
            return node.name
    raise ValueError(f"'{graph.name}' has no top-level {Dense.kind} layer to serve as the classifier; name the layers to train with --freeze before:NAME")


def _without_expectations(graph: Graph) -> dict[str, Any]:
    import yaml

    document: dict[str, Any] = yaml.safe_load(graph.source)
    document.pop("expect", None)
    for layers in [document["layers"], *(block["layers"] for block in (document.get("blocks") or {}).values())]:
        for entry in layers:
            if isinstance(entry, dict):
                entry.pop("expect", None)
    return document


def _reparsed(document: dict[str, Any], path: str) -> Graph:
    import yaml

    return parse_spec(yaml.safe_dump(document, sort_keys=False), path)
