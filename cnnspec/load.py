"""Reading specs: from a path or a zoo name to a validated Graph."""

from __future__ import annotations

import dataclasses
import os
from importlib import resources
from pathlib import Path

from pydantic import ValidationError

from cnnspec.diagnostics import Diagnostic, Location, SpecError, did_you_mean
from cnnspec.graph import Graph, build_graph
from cnnspec.spec import Expander, SpecHeader, pydantic_diagnostics
from cnnspec.yamlmarks import MarkedDict, load_yaml


class SpecNotFound(LookupError):
    """Neither a file nor a zoo name; the message lists the zoo."""


def zoo_names() -> list[str]:
    return sorted(p.name.removesuffix(".yaml") for p in resources.files("cnnspec.specs").iterdir() if p.name.endswith(".yaml"))


def zoo_path(name: str) -> Path:
    return Path(str(resources.files("cnnspec.specs").joinpath(f"{name}.yaml")))


def resolve_spec_path(source: str | os.PathLike[str]) -> Path:
    """A path as given when it exists, else the zoo spec of that name ('vgg16',
    'vgg16.yaml')."""
    path = Path(source)
    if path.is_file():
        return path
    name = path.name.removesuffix(".yaml").removesuffix(".yml")
    if path.parent == Path(".") and name in zoo_names():
        return zoo_path(name)
    if path.exists():
        raise SpecNotFound(f"{source}: not a file")
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
    expander = Expander(path, raw, header)
    expanded = expander.run()
    problems.update(dict.fromkeys(expander.diagnostics))
    try:
        graph = build_graph(expanded)
    except SpecError as exc:
        problems.update(dict.fromkeys(exc.diagnostics))
    if problems:
        raise SpecError(problems)
    source = text if isinstance(text, str) else text.decode("utf-8")
    return dataclasses.replace(graph, source=source)


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


def with_input_size(graph: Graph, size: tuple[int, int]) -> Graph:
    """The same spec at another input height and width, without its ``expect:``
    assertions (they describe the original size): for fast checks of big models."""
    import yaml

    document = yaml.safe_load(graph.source)
    document["input"]["shape"] = [graph.input_shape[0], *size]
    document.pop("expect", None)

    def strip(layers: list[dict[str, object]]) -> None:
        for entry in layers:
            entry.pop("expect", None)

    strip(document["layers"])
    for block in (document.get("blocks") or {}).values():
        strip(block["layers"])
    return parse_spec(yaml.safe_dump(document, sort_keys=False), f"{graph.path} at {size[0]}x{size[1]}")
