"""What every importer shares: the refusal, argument spelling, layer names, and the spec
text an import writes. No framework here: the ONNX and Keras readers both use it."""

from __future__ import annotations

from typing import Any

from cnnspec.errors import CnnspecError
from cnnspec.spec.grammar import INPUT, NAME_PATTERN

Layer = dict[str, Any]  # {"kind", "args", "name", "inputs"}: one spec layer, as read


class ImportRefused(CnnspecError, ValueError):
    """The model uses something no spec layer expresses; the message names it."""


def decimal(value: float) -> float:
    """A float32 value as the decimal it was written as (0.01, not 0.0099999998)."""
    return float(f"{value:.7g}")


def pair(values: Any) -> Any:
    """(h, w) as one number when both agree."""
    h, w = (int(v) for v in values)
    return h if h == w else [h, w]


def padding_arg(pads: list[int]) -> Any:
    """ONNX order (top, left, bottom, right) as the spec's shortest spelling."""
    top, left, bottom, right = pads
    if top == bottom == left == right:
        return top
    if top == bottom and left == right:
        return [top, left]
    return [[top, bottom], [left, right]]


def rounding(size: Any, kernel: Any, stride: Any, pads: list[int], dilation: Any, ceil: bool) -> str:
    """The spec rounding for a window: 'exact' where the windows tile the padded input,
    else 'floor' (or 'ceil' where the source rounds up)."""
    if ceil:
        return "ceil"
    spans = [(size[i] + pads[i] + pads[i + 2] - dilation[i] * (kernel[i] - 1) - 1) for i in range(2)]
    return "exact" if all(span % s == 0 for span, s in zip(spans, stride, strict=True)) else "floor"


def layer_name(raw: str, kind: str, taken: dict[str, Any]) -> str:
    """A spec layer name from a source name: kept where valid, cleaned where not, the
    layer kind where nothing is left, and numbered where already taken."""
    base = raw if raw and NAME_PATTERN.match(raw) and raw != INPUT else ""
    if not base:
        base = "".join(c if c.isalnum() or c in "_.-" else "_" for c in raw).strip("._-") or kind
        if not NAME_PATTERN.match(base):
            base = kind
    name, count = base, 1
    while name in taken or name == INPUT:
        count += 1
        name = f"{base}_{count}"
    return name


def spec_name(stem: str) -> str:
    """A spec name from a file name's stem (``resnet-50.v2`` stays; odd characters go)."""
    clean = "".join(c if c.isalnum() or c in "_.-" else "_" for c in stem).lstrip(".-") or "imported"
    return clean if NAME_PATTERN.match(clean) else "imported"


def spec_text(name: str, description: str, input_shape: list[int], layers: list[Layer], train: dict[str, Any] | None = None) -> str:
    """The spec YAML for layers in order; ``inputs`` written only where a layer does not
    read the one before it; ``train``, where given, as the spec's train: section."""
    import yaml

    if not layers:
        raise ImportRefused("the model has no layers to import")
    lines = [f"name: {yaml.safe_dump(name, default_style=None).splitlines()[0]}",
             f"description: {yaml.safe_dump(description, width=10**6).splitlines()[0]}",
             f"input: {{shape: {input_shape}}}", "layers:"]
    previous = INPUT
    for layer in layers:
        args = yaml.safe_dump(layer["args"], default_flow_style=True, sort_keys=False, width=10**6).strip()
        lines.append(f"  - {layer['kind']}: {args}")
        lines.append(f"    name: {layer['name']}")
        if layer["inputs"] != [previous]:
            lines.append(f"    inputs: [{', '.join(layer['inputs'])}]")
        previous = layer["name"]
    if train:
        lines.append(yaml.safe_dump({"train": train}, sort_keys=False, width=100).rstrip())
    return "\n".join(lines) + "\n"
