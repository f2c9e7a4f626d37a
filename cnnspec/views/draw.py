"""Pictures of a network: Graphviz DOT text, and SVG or PNG drawn with matplotlib (no
Graphviz binary needed). Each box shows a layer's name, kind, output shape and
parameters; arrows follow the data. Layers at the same depth (the longest path from the
input) share a row, so parallel branches (Inception, residual shortcuts) sit side by side.
"""

from __future__ import annotations

import json
from pathlib import Path

from cnnspec.graph.dag import Graph, Node
from cnnspec.layers.base import format_shape
from cnnspec.runs.files import atomic_write, write_text
from cnnspec.spec.grammar import INPUT
from cnnspec.views.check import si

ROW_HEIGHT, COLUMN_WIDTH = 0.9, 2.6  # inches per row and per column


def _label(node: Node) -> str:
    params = f"{node.params:,} params" if node.params else "no params"
    return f"{node.name}\n{node.kind}  {format_shape(node.output_shape)}\n{params}"


def to_dot(graph: Graph) -> str:
    lines = [f"digraph {json.dumps(graph.name)} {{", "  rankdir=TB;",
             '  node [shape=box, style="rounded,filled", fillcolor="#eef3fb", fontname="Helvetica", fontsize=10];',
             f'  {json.dumps(INPUT)} [label={json.dumps("input" + chr(10) + format_shape(graph.input_shape))}, fillcolor="#e8f5e9"];']
    for node in graph.nodes:
        lines.append(f"  {json.dumps(node.name)} [label={json.dumps(_label(node))}];")
        lines.extend(f"  {json.dumps(source)} -> {json.dumps(node.name)};" for source in node.inputs)
    lines.append(f'  label={json.dumps(f"{graph.name}: {graph.params:,} params, {si(graph.macs)} MACs")};')
    lines.append("}")
    return "\n".join(lines) + "\n"


def _layout(graph: Graph) -> dict[str, tuple[float, int]]:
    """(column, row) of each node, and the input's, by depth from the input."""
    depth = {INPUT: 0}
    for node in graph.nodes:
        depth[node.name] = 1 + max(depth[source] for source in node.inputs)
    rows: dict[int, list[str]] = {}
    for name, row in depth.items():
        rows.setdefault(row, []).append(name)
    widest = max(len(names) for names in rows.values())
    position = {}
    for row, names in rows.items():
        offset = (widest - len(names)) / 2
        for column, name in enumerate(names):
            position[name] = (offset + column, row)
    return position


def edge_paths(graph: Graph, position: dict[str, tuple[float, int]]) -> list[tuple[list[float], list[float]]]:
    """Each connection as a polyline (xs, ys), its arrowhead at the end. Between adjacent
    rows: straight, bottom of the source to top of the target. Across more rows (skip
    connections, projection shortcuts, short branches): down into the gap below the source,
    right past every box of the rows between in a lane of its own, down to the gap above
    the target, and in, crossing no box."""
    right: dict[int, float] = {}  # row -> the right edge of its rightmost box
    for x, y in position.values():
        right[y] = max(right.get(y, x + 0.45), x + 0.45)
    lanes: dict[int, float] = {}  # row -> how far right the lanes passing it already run
    paths = []
    for node in graph.nodes:
        x1, y1 = position[node.name]
        for source in node.inputs:
            x0, y0 = position[source]
            if y1 - y0 > 1:
                between = range(int(y0) + 1, int(y1))
                lane = max(max(right[y] for y in between), *(lanes.get(y, 0.0) for y in between)) + 0.12
                for y in between:
                    lanes[y] = lane
                paths.append(([x0, x0, lane, lane, x1, x1], [y0 + 0.33, y0 + 0.5, y0 + 0.5, y1 - 0.5, y1 - 0.5, y1 - 0.33]))
            else:
                paths.append(([x0, x1], [y0 + 0.33, y1 - 0.33]))
    return paths


def render(graph: Graph, path: Path) -> None:
    """Draw ``graph`` to ``path`` (.svg or .png), atomically."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.patches import FancyBboxPatch

    matplotlib.rcParams["svg.fonttype"] = "none"  # SVG text stays text: searchable, and far smaller
    position = _layout(graph)
    paths = edge_paths(graph, position)
    columns = max(x for x, _ in position.values()) + 1
    rows = max(y for _, y in position.values()) + 1
    widest = max([columns - 0.45, *(x for xs, _ in paths for x in xs)]) + 0.1  # the lanes of skip connections included
    figure = plt.figure(figsize=(max((widest + 0.55) * COLUMN_WIDTH, 4.0), rows * ROW_HEIGHT + 0.8))
    axes = figure.add_axes((0, 0, 1, 1))
    axes.set_xlim(-0.55, widest)
    axes.set_ylim(rows - 0.4, -1.0)
    axes.axis("off")
    axes.text((columns - 1) / 2, -0.75, f"{graph.name}: {graph.params:,} params, {si(graph.macs)} MACs",
              ha="center", va="center", fontsize=11, weight="bold")
    labels = {INPUT: f"input\n{format_shape(graph.input_shape)}"} | {node.name: _label(node) for node in graph.nodes}
    arrow = {"arrowstyle": "-|>", "color": "#607d8b", "lw": 0.8}
    for xs, ys in paths:
        if len(xs) > 2:
            axes.plot(xs[:-1], ys[:-1], color=arrow["color"], lw=arrow["lw"])
        axes.annotate("", xy=(xs[-1], ys[-1]), xytext=(xs[-2], ys[-2]), arrowprops=arrow)
    for name, (x, y) in position.items():
        colour = "#e8f5e9" if name == INPUT else "#eef3fb"
        axes.add_patch(FancyBboxPatch((x - 0.45, y - 0.33), 0.9, 0.66, boxstyle="round,pad=0.02",
                                      facecolor=colour, edgecolor="#90a4ae", lw=0.8))
        axes.text(x, y, labels[name], ha="center", va="center", fontsize=7, family="DejaVu Sans")
    suffix = path.suffix.lstrip(".")
    atomic_write(path, lambda p: figure.savefig(p, format=suffix, dpi=110))
    plt.close(figure)


def draw(graph: Graph, path: Path) -> None:
    """DOT, SVG or PNG by ``path``'s suffix."""
    if path.suffix == ".dot":
        write_text(path, to_dot(graph))
    elif path.suffix in (".svg", ".png"):
        render(graph, path)
    else:
        raise ValueError(f"{path}: draw writes .dot, .svg or .png, not '{path.suffix or 'no suffix'}'")
