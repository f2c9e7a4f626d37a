"""What ``cnnspec check`` shows: a Keras-style summary table, or one JSON object."""

from __future__ import annotations

import io
import sys
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, Literal, NamedTuple

from cnnspec.graph.dag import Graph
from cnnspec.layers import format_shape
from cnnspec.spec.grammar import INPUT
from cnnspec.views.textable import Justify, Terminal, table_lines

if TYPE_CHECKING:  # rich is imported by the commands that print its tables, not by `check`
    from rich.console import Console
    from rich.table import Table

    from cnnspec.spec.diagnostics import Diagnostic


def check_json(graph: Graph) -> dict[str, Any]:
    """The machine-readable summary: shapes channels-first, batch axis left out."""
    rf = graph.receptive_field
    return {
        "name": graph.name,
        "description": graph.description,
        "input_shape": list(graph.input_shape),
        "output_shape": list(graph.output_shape),
        "output": graph.output,
        "params": graph.params,
        "non_trainable": graph.non_trainable,
        "macs": graph.macs,
        "flops": graph.flops,
        "activation_bytes": graph.activation_bytes,
        "receptive_field": list(rf.size) if rf else None,
        "layers": [
            {
                "name": node.name,
                "kind": node.kind,
                "inputs": list(node.inputs),
                "output_shape": list(node.output_shape),
                "params": node.params,
                "non_trainable": node.non_trainable,
                "macs": node.macs,
                "receptive_field": list(node.receptive_field.size) if node.receptive_field else None,
            }
            for node in graph.nodes
        ],
    }


class CheckCells(NamedTuple):
    headers: list[str]
    justify: list[Justify]
    rows: list[list[str]]
    footer: list[str]


def check_cells(graph: Graph) -> CheckCells:
    """What the layer table holds. A network that is not a plain stack gets an Inputs
    column, filled where a layer reads something other than the layer above."""
    dag = not graph.is_sequential
    rows = [["input", "input", format_shape(graph.input_shape), "", "", *([""] if dag else [])]]
    previous = INPUT
    for node in graph.nodes:
        row = [node.name, node.kind, format_shape(node.output_shape), f"{node.params:,}", f"{node.macs:,}"]
        if dag:
            row.append("" if node.inputs == (previous,) else ", ".join(node.inputs))
        rows.append(row)
        previous = node.name
    footer = ["Total", "", format_shape(graph.output_shape), f"{graph.params:,}", f"{graph.macs:,}"]
    headers, justify = ["Layer", "Kind", "Output shape", "Params", "MACs"], ["left", "left", "left", "right", "right"]
    if dag:
        headers, justify, footer = [*headers, "Inputs"], [*justify, "left"], [*footer, ""]
    return CheckCells(headers, justify, rows, footer)  # type: ignore[arg-type]


def check_table(graph: Graph, width: int | None = None) -> list[str]:
    """The layer table's lines; the Inputs column is the only one that wraps, and only
    when ``width`` is given (a terminal)."""
    cells = check_cells(graph)
    return table_lines(*cells, wrap_last=not graph.is_sequential, width=width)


def check_totals(graph: Graph) -> list[str]:
    rf = graph.receptive_field
    lines = [
        f"Params:          {graph.params:,} learned ({_bytes(graph.params * 4)} float32), "
        f"{graph.non_trainable:,} non-trainable",
        f"MACs:            {si(graph.macs)} per sample (FLOPs = 2 x MACs = {si(graph.flops)})",
        f"Activations:     {_bytes(graph.activation_bytes)} per sample (float32, all layer outputs)",
    ]
    if rf is not None:
        lines.append(f"Receptive field: {rf.size[0]}x{rf.size[1]} input pixels (largest feature map)")
    train = graph.train_section
    if train is not None and (train.freeze or train.lr_mult or train.decay_mult):
        from cnnspec.graph.tuning import summary

        lines.append(f"Training:        {summary(graph, train)}")
    return lines


def render_check(graph: Graph, out: Terminal) -> None:
    out.write(f"{graph.name}: {format_shape(graph.input_shape)} -> {format_shape(graph.output_shape)}", style="bold")
    if graph.description:
        out.write(graph.description, style="dim", wrap=True)
    for line in check_table(graph, width=out.width if out.is_terminal else None):
        out.write(line)
    for line in check_totals(graph):
        out.write(line)


def check_text(graph: Graph, width: int = 120) -> str:
    """Plain-text rendering, as stored in tests/golden/."""
    buffer = io.StringIO()
    render_check(graph, Terminal(buffer, width=width))
    return buffer.getvalue()


def run_check(spec: str, format: Literal["table", "json"] = "table", input_size: tuple[int, int] | None = None, channels: int | None = None) -> int:
    """``cnnspec check SPEC``: the table (or JSON) on standard output, problems on
    standard error; returns the exit status (1 a problem in the spec, 2 no such spec).
    ``input_size`` and ``channels`` check the spec at another input (``with_input_size``)."""
    from cnnspec.graph.load import SpecNotFound, load_spec, with_input_size
    from cnnspec.spec.diagnostics import Diagnostic, SpecError

    try:
        graph = load_spec(spec)
        if input_size is not None or channels is not None:
            graph = with_input_size(graph, input_size, channels)
    except ValueError as exc:
        return report_diagnostics([Diagnostic.at_file(spec, str(exc))])
    except SpecNotFound as exc:
        sys.stderr.write(f"cnnspec: error: {exc}\n")
        return 2
    except SpecError as exc:
        return report_diagnostics(exc.diagnostics)
    except OSError as exc:
        return report_diagnostics([Diagnostic.at_file(spec, f"cannot read: {exc.strerror or exc}")])
    for warning in graph.warnings:
        sys.stderr.write(f"{warning}\n")
    if format == "json":
        from cnnspec.strictjson import strict_json

        sys.stdout.write(strict_json(check_json(graph), indent=2) + "\n")
    else:
        render_check(graph, Terminal())
    return 0


def report_diagnostics(diagnostics: Sequence[Diagnostic]) -> int:
    """Each ``PATH:LINE:COL: error: ...`` on standard error, then the count; returns 1."""
    for diagnostic in diagnostics:
        sys.stderr.write(f"{diagnostic}\n")
    errors = sum(d.severity == "error" for d in diagnostics)
    sys.stderr.write(f"{errors} error{'s' * (errors != 1)}\n")
    return 1


def print_table(console: Console, table: Table) -> None:
    """Print without cutting a name or a digit: a file or pipe gets the table's natural
    width, and a narrow terminal wraps long rows rather than cropping them."""
    from rich.console import Console

    if not console.is_terminal:
        natural = console.measure(table, options=console.options.update_width(10_000)).maximum
        console = Console(file=console.file, width=max(console.width, natural), color_system=None, highlight=False, emoji=False)
    console.print(table, crop=False)


def si(value: int) -> str:
    """416.52 K, 1.81 G: a count with an SI prefix."""
    for unit, scale in (("G", 10**9), ("M", 10**6), ("K", 10**3)):
        if value >= scale:
            return f"{value / scale:.2f} {unit}"
    return str(value)


def _bytes(value: int) -> str:
    for unit, scale in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if value >= scale:
            return f"{value / scale:.2f} {unit}"
    return f"{value} B"


def render_evaluation(result: dict[str, Any], console: Console) -> None:
    """Headline metrics, per-class accuracy, and the confusion matrix as a table."""
    top_key = f"top{result['k']}"
    console.print(
        f"{result['run']} ({result['checkpoint']}) on {result['data']}, {result['images']:,} images", markup=False, highlight=False
    )
    console.print(
        f"loss {result['loss']:.4f}   accuracy {result['accuracy']:.4f}   {top_key} {result['top_k']:.4f}", markup=False, highlight=False
    )
    from rich import box
    from rich.table import Table

    classes = result["classes"]
    matrix = result["confusion_matrix"]
    table = Table(title="confusion matrix (rows: true, columns: predicted)", box=box.SIMPLE_HEAD, pad_edge=False)
    table.add_column("class", no_wrap=True)
    for name in classes:
        table.add_column(name, justify="right", no_wrap=True)
    table.add_column("accuracy", justify="right", no_wrap=True)
    for name, row in zip(classes, matrix, strict=True):
        accuracy = result["per_class_accuracy"][name]
        table.add_row(name, *(str(v) for v in row), "" if accuracy is None else f"{accuracy:.3f}")
    print_table(console, table)
    console.print(f"confusion matrix image: {result['confusion_png']}", markup=False, highlight=False)


def render_verification(result: Any, console: Console) -> None:
    """Per layer, each backend's largest absolute and relative error against the reference."""
    others = result.backends[1:]
    devices = ", ".join(f"{b} on {d}" for b, d in result.devices.items())
    console.print(
        f"{result.graph.name} {format_shape(result.graph.input_shape)}: {result.weights_from}; {devices}; "
        f"reference {result.reference}, tolerance {result.tolerance:g} relative",
        markup=False, highlight=False, soft_wrap=True,
    )
    from rich import box
    from rich.table import Table

    table = Table(box=box.SIMPLE_HEAD, pad_edge=False)
    table.add_column("Layer", no_wrap=True)
    table.add_column("Kind", no_wrap=True)
    table.add_column("Shape", no_wrap=True)
    for backend in others:
        table.add_column(f"{backend} max abs", justify="right", no_wrap=True)
        table.add_column(f"{backend} max rel", justify="right", no_wrap=True)
    table.add_column("", no_wrap=True)
    first = result.first_divergence
    for layer in result.layers:
        cells = [f"{value:.2e}" for backend in others for value in layer.errors[backend]]
        mark = "<- first divergence" if layer is first else ("over" if layer.worst > result.tolerance else "")
        table.add_row(layer.layer, layer.kind, format_shape(layer.shape), *cells, mark)
    print_table(console, table)
    verdict = "all layers agree" if first is None else f"first divergence at '{first.layer}'"
    console.print(f"{verdict}; output max relative error: " + ", ".join(
        f"{b} {result.output.errors[b][1]:.2e}" for b in others), markup=False, highlight=False)
