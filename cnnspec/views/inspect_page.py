"""``cnnspec inspect``: a trained network seen from the inside, as one HTML page.

For each input image: the image as the network sees it (prepared as evaluation prepares
it); the top classes; for every layer, in order, its kind, output shape, parameter
formula, the range and mean of its activations and of their gradients with respect to
the predicted class's score, and its activation maps as tiles on one colour scale; the
first convolution's filters; and where the prediction came from (the input gradient's
saliency and Grad-CAM on the last feature map).

Two halves: ``inspect`` computes the figures (any backend with ``gradients``), and
``render`` writes the page (Pillow for the pictures, embedded as PNG; no scripts; the
figures also go in a JSON block that tools and tests read). The page opens from a file.
"""

from __future__ import annotations

import base64
import dataclasses
import html
import io
import json
import math
import time
from pathlib import Path
from typing import Any

import numpy as np

from cnnspec.errors import CnnspecError
from cnnspec.graph.dag import Graph, Node
from cnnspec.spec.grammar import INPUT

CHANNELS = 64  # activation maps shown per layer, at most
VALUES = 1024  # values of a vector layer shown, at most
FILTERS = 64  # first-layer filter tiles, at most
COLOURMAP = "viridis"


class InspectFailed(CnnspecError, ValueError):
    """Inspection cannot run as asked; the message says why."""


@dataclasses.dataclass(frozen=True)
class Stats:
    min: float
    max: float
    mean: float

    @staticmethod
    def of(array: np.ndarray) -> Stats:
        if not array.size:
            return Stats(0.0, 0.0, 0.0)
        return Stats(float(array.min()), float(array.max()), float(array.mean(dtype=np.float64)))


@dataclasses.dataclass(frozen=True)
class LayerView:
    name: str
    kind: str
    shape: tuple[int, ...]
    formula: str  # the parameters, e.g. "6x1x5x5 + 6 = 156"
    activations: Stats
    gradients: Stats
    values: np.ndarray  # this image's output, canonical layout


@dataclasses.dataclass(frozen=True)
class ImageView:
    name: str
    pixels: np.ndarray  # C x H x W, on the raw scale (0..255 for images), as the network sees it before normalising
    top: list[tuple[str, float]]  # (class, probability), best first
    predicted: int
    layers: list[LayerView]
    saliency: np.ndarray  # H x W: the largest |d score / d input| over channels
    cam: np.ndarray | None  # H x W in [0, 1]: Grad-CAM on the last feature map, at the input's size
    cam_layer: str | None


@dataclasses.dataclass(frozen=True)
class Inspection:
    graph: Graph
    run: str
    checkpoint: str
    backend: str
    device: str
    images: list[ImageView]
    filters: np.ndarray | None  # the first convolution's weights, O x I x kh x kw
    filters_layer: str | None
    seconds: float


def parameter_formula(graph: Graph, node: Node) -> str:
    """The layer's weights as shapes and their sum: "6x1x5x5 + 6 = 156"; running
    statistics after, as state."""
    specs = node.layer.weights(graph.input_shapes(node))
    learned = [spec.shape for spec in specs.values() if spec.trainable]
    state = [spec.shape for spec in specs.values() if not spec.trainable]
    if not learned and not state:
        return "no parameters"

    def terms(shapes: list[tuple[int, ...]]) -> str:
        return " + ".join("x".join(map(str, shape)) for shape in shapes)

    text = f"{terms(learned)} = {sum(math.prod(s) for s in learned):,}" if learned else "none learned"
    if state:
        text += f"; state {terms(state)} = {sum(math.prod(s) for s in state):,}"
    return text


def _grad_cam(graph: Graph, values: dict[str, np.ndarray], grads: dict[str, np.ndarray], size: tuple[int, int]) -> tuple[np.ndarray | None, str | None]:
    """Grad-CAM (Selvaraju et al. 2017): the last feature map larger than 1 x 1, its
    channels weighted by their mean gradient, summed, rectified, scaled to the input."""
    for node in reversed(graph.nodes):
        shape = node.output_shape
        if len(shape) == 3 and shape[1] * shape[2] > 1:
            act, grad = values[node.name][0], grads[node.name][0]
            cam = np.maximum((grad.mean(axis=(1, 2))[:, None, None] * act).sum(axis=0), 0.0)
            top = float(cam.max())
            cam = cam / top if top > 0 else cam
            from PIL import Image

            resized = Image.fromarray(cam.astype(np.float32), mode="F").resize((size[1], size[0]), Image.Resampling.BILINEAR)
            return np.clip(np.asarray(resized), 0.0, 1.0), node.name
    return None, None


def inspect(run: Path, inputs: list[Path], *, backend: str | None = None, device: str = "auto", top: int = 5) -> Inspection:
    """The figures of the page, for each input."""
    from cnnspec.backends import load_backend
    from cnnspec.inference.scorer import Scorer
    from cnnspec.runs.loading import load_run

    start = time.perf_counter()
    name = backend or load_run(Path(run)).info["backend"]
    scorer = Scorer(Path(run), load_backend(name).open_session, device)
    session, graph = scorer.session, scorer.loaded.graph
    if not hasattr(session, "gradients"):
        raise InspectFailed(f"the {name} backend cannot compute activation gradients; use --backend numpy, torch or tensorflow")
    arrays, names = scorer.read_inputs(inputs)
    images: list[ImageView] = []
    for batch in arrays:
        for pixels in batch:
            x = scorer.loaded.normalization.apply(pixels[None])
            outputs = session.predict(x)
            indices, probabilities = scorer.ranked(outputs, top)
            predicted = int(indices[0, 0])
            direction = np.zeros_like(outputs)
            direction[0, predicted] = 1.0  # d (predicted class's score)
            values, grads = session.gradients(x, direction)
            layers = [LayerView(node.name, node.kind, node.output_shape, parameter_formula(graph, node), Stats.of(values[node.name]),
                                Stats.of(grads[node.name]), values[node.name][0]) for node in graph.nodes]
            saliency = np.abs(grads[INPUT][0]).max(axis=0) if grads[INPUT].ndim == 4 else np.abs(grads[INPUT][0])[None]
            cam, cam_layer = _grad_cam(graph, values, grads, pixels.shape[1:]) if pixels.ndim == 3 else (None, None)
            images.append(ImageView(names[len(images)], pixels, [(scorer.classes[i], float(p)) for i, p in zip(indices[0], probabilities[0], strict=True)],
                                    predicted, layers, saliency, cam, cam_layer))
    weights = session.get_weights()
    from cnnspec.layers.conv import Conv2d

    first = next((node for node in graph.nodes if isinstance(node.layer, Conv2d)), None)
    filters = weights[f"{first.name}.weight"] if first is not None else None
    return Inspection(graph, str(scorer.loaded.run.path), scorer.loaded.checkpoint.name, name, str(getattr(session, "device", device)),
                      images, filters, first.name if first else None, time.perf_counter() - start)


# ---- pictures ------------------------------------------------------------------------------------


def png_uri(rgb: np.ndarray) -> str:
    """An H x W x 3 (or H x W) uint8 array as a data: URI."""
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(rgb).save(buffer, format="PNG", optimize=False, compress_level=6)
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def _lut(name: str = COLOURMAP) -> np.ndarray:
    import matplotlib

    return (matplotlib.colormaps[name](np.linspace(0.0, 1.0, 256))[:, :3] * 255).astype(np.uint8)


def _coloured(values: np.ndarray, low: float, high: float, lut: np.ndarray) -> np.ndarray:
    span = high - low if high > low else 1.0
    index = np.clip((values - low) / span * 255.0, 0, 255).astype(np.uint8)
    return lut[index]


def _scale_up(tile: np.ndarray, least: int) -> np.ndarray:
    """Nearest-neighbour enlargement so that the smaller side is at least ``least`` px."""
    factor = max(1, math.ceil(least / max(1, min(tile.shape[:2]))))
    return tile.repeat(factor, axis=0).repeat(factor, axis=1) if factor > 1 else tile


def tile_grid(tiles: np.ndarray, least: int = 32, gap: int = 1) -> np.ndarray:
    """N x h x w x 3 tiles in a near-square grid on white, each enlarged to ``least`` px."""
    tiles = np.stack([_scale_up(t, least) for t in tiles])
    count, height, width = tiles.shape[:3]
    columns = math.ceil(math.sqrt(count))
    rows = math.ceil(count / columns)
    grid = np.full((rows * (height + gap) - gap, columns * (width + gap) - gap, 3), 255, np.uint8)
    for i, tile in enumerate(tiles):
        r, c = divmod(i, columns)
        grid[r * (height + gap): r * (height + gap) + height, c * (width + gap): c * (width + gap) + width] = tile
    return grid


def activation_picture(values: np.ndarray, lut: np.ndarray) -> tuple[np.ndarray, str, tuple[float, float]]:
    """(the picture, what was left out, the colour scale's (low, high)) of one layer's
    output: one tile per channel of a map; a vector as a strip of cells."""
    if values.ndim == 3:
        shown = values[:CHANNELS]
        low, high = float(shown.min()), float(shown.max())
        note = f"first {CHANNELS} of {len(values)} channels" if len(values) > CHANNELS else f"{len(values)} channels"
        return tile_grid(_coloured(shown, low, high, lut)), note, (low, high)
    flat = values.reshape(-1)
    shown = flat[:VALUES]
    low, high = float(shown.min()), float(shown.max())
    columns = min(32, len(shown))
    rows = math.ceil(len(shown) / columns)
    padded = np.full(rows * columns, np.nan, np.float32)
    padded[: len(shown)] = shown
    cells = _coloured(np.nan_to_num(padded, nan=low).reshape(rows, columns), low, high, lut)
    cells[np.isnan(padded).reshape(rows, columns)] = 255
    note = f"first {VALUES} of {len(flat)} values" if len(flat) > VALUES else f"{len(flat)} values, 32 a row"
    return cells.repeat(10, axis=0).repeat(10, axis=1), note, (low, high)


def image_picture(pixels: np.ndarray, scale: float) -> np.ndarray:
    """C x H x W pixels on the raw scale as an RGB picture (one channel: grey)."""
    top = 255.0 if scale < 1.0 else 1.0  # images arrive on 0..255; arrays already in [0, 1]
    rgb = np.clip(pixels / top * 255.0, 0, 255).astype(np.uint8)
    rgb = np.repeat(rgb[:1], 3, axis=0) if len(rgb) != 3 else rgb
    return _scale_up(rgb.transpose(1, 2, 0), 160)


def filter_picture(weights: np.ndarray, lut: np.ndarray) -> tuple[np.ndarray, str]:
    """The first convolution's filters: RGB tiles for 3 input channels (one scale for
    all), else one tile per (filter, input channel) on the colour map."""
    out, channels = weights.shape[:2]
    if channels == 3:
        shown = weights[:FILTERS]
        low, high = float(shown.min()), float(shown.max())
        tiles = ((shown - low) / (high - low if high > low else 1.0) * 255).astype(np.uint8).transpose(0, 2, 3, 1)
        return tile_grid(tiles, least=28, gap=2), f"{min(out, FILTERS)} of {out} filters, RGB, one scale [{low:.3g}, {high:.3g}]"
    slices = weights.reshape(-1, *weights.shape[2:])[:FILTERS]
    low, high = float(slices.min()), float(slices.max())
    return (tile_grid(_coloured(slices, low, high, lut), least=28, gap=2),
            f"{len(slices)} of {out * channels} filter slices (filter x input channel), {COLOURMAP} on [{low:.3g}, {high:.3g}]")


def overlay(picture: np.ndarray, heat: np.ndarray, lut: np.ndarray) -> np.ndarray:
    """``heat`` (H x W, in [0, 1]) over an RGB picture, half and half, at the picture's size."""
    from PIL import Image

    resized = np.asarray(Image.fromarray(heat.astype(np.float32), mode="F").resize(picture.shape[1::-1], Image.Resampling.BILINEAR))
    coloured = _coloured(resized, 0.0, 1.0, lut).astype(np.float32)
    return (0.5 * picture.astype(np.float32) + 0.5 * coloured).astype(np.uint8)


# ---- the page ------------------------------------------------------------------------------------

STYLE = """
body { font: 14px/1.4 system-ui, sans-serif; margin: 2em; color: #222; }
table { border-collapse: collapse; margin: 0.5em 0 1.5em; }
td, th { border-bottom: 1px solid #ddd; padding: 4px 10px; text-align: left; vertical-align: top; }
td.num { text-align: right; font-variant-numeric: tabular-nums; white-space: nowrap; }
figure { display: inline-block; margin: 0 1.5em 1em 0; vertical-align: top; }
figcaption { font-size: 12px; color: #555; max-width: 420px; }
img { image-rendering: pixelated; }
.layer img { max-width: 640px; }
code { background: #f4f4f4; padding: 0 3px; }
"""


def escape(value: object) -> str:
    return html.escape(str(value))


def _number(value: float) -> str:
    return f"{value:.4g}"


def render(inspection: Inspection) -> str:
    """The page, as text."""
    lut, jet = _lut(), _lut("jet")
    graph = inspection.graph
    scale = 1.0 / 255.0
    parts = [f"<!doctype html><html lang='en'><head><meta charset='utf-8'><title>cnnspec inspect: {escape(graph.name)}</title>",
             f"<style>{STYLE}</style></head><body>",
             f"<h1>{escape(graph.name)}: inside the network</h1>",
             f"<p>Run <code>{escape(inspection.run)}</code>, checkpoint <code>{escape(inspection.checkpoint)}</code>; backend "
             f"{escape(inspection.backend)} on {escape(inspection.device)}; {len(graph.nodes)} layers, {graph.params:,} parameters. "
             f"Gradients are of the predicted class's score (its output before softmax). Each layer's tiles share one "
             f"colour scale ({COLOURMAP}, dark = the layer's minimum, yellow = its maximum, both stated).</p>"]
    if inspection.filters is not None:
        picture, note = filter_picture(inspection.filters, lut)
        parts.append(f"<h2>Filters of the first convolution, <code>{escape(inspection.filters_layer)}</code></h2>"
                     f"<figure><img alt='filters' src='{png_uri(picture)}'><figcaption>{escape(note)}</figcaption></figure>")
    data: dict[str, Any] = {"spec": graph.name, "run": inspection.run, "checkpoint": inspection.checkpoint,
                            "backend": inspection.backend, "images": []}
    for number, image in enumerate(inspection.images, start=1):
        picture = image_picture(image.pixels, scale)
        saliency = image.saliency / image.saliency.max() if image.saliency.max() > 0 else image.saliency
        parts.append(f"<h2 id='image-{number}'>Image {number}: <code>{escape(image.name)}</code></h2>")
        parts.append(f"<figure><img alt='input' src='{png_uri(picture)}'><figcaption>as the network sees it: "
                     f"{'x'.join(map(str, image.pixels.shape))}, prepared as evaluation prepares it</figcaption></figure>")
        parts.append(f"<figure><img alt='saliency' src='{png_uri(overlay(picture, saliency, jet))}'><figcaption>saliency: the largest "
                     f"|d score / d pixel| over channels, scaled to its maximum</figcaption></figure>")
        if image.cam is not None:
            parts.append(f"<figure><img alt='grad-cam' src='{png_uri(overlay(picture, image.cam, jet))}'><figcaption>Grad-CAM on "
                         f"<code>{escape(image.cam_layer)}</code>: its channels weighted by their mean gradient</figcaption></figure>")
        ranked = "".join(f"<tr><td>{escape(c)}</td><td class='num'>{p:.4f}</td></tr>" for c, p in image.top)
        parts.append(f"<table class='top'><tr><th>class</th><th>probability</th></tr>{ranked}</table>")
        rows = []
        layers = []
        for layer in image.layers:
            tiles, note, (low, high) = activation_picture(layer.values, lut)
            a, g = layer.activations, layer.gradients
            rows.append(
                f"<tr class='layer' id='image-{number}-{escape(layer.name)}'><td><b>{escape(layer.name)}</b><br>{escape(layer.kind)}<br>"
                f"{'x'.join(map(str, layer.shape))}</td><td>{escape(layer.formula)}</td>"
                f"<td class='num'>activation<br>min {_number(a.min)}<br>max {_number(a.max)}<br>mean {_number(a.mean)}</td>"
                f"<td class='num'>gradient<br>min {_number(g.min)}<br>max {_number(g.max)}<br>mean {_number(g.mean)}</td>"
                f"<td><img alt='{escape(layer.name)} activations' src='{png_uri(tiles)}'><br><small>{escape(note)}; scale "
                f"[{_number(low)}, {_number(high)}]</small></td></tr>")
            layers.append({"name": layer.name, "kind": layer.kind, "shape": list(layer.shape), "parameters": layer.formula,
                           "activation": dataclasses.asdict(a), "gradient": dataclasses.asdict(g), "shown": note})
        parts.append("<table><tr><th>layer</th><th>parameters</th><th>activations</th><th>gradients</th><th>activation maps</th></tr>"
                     + "".join(rows) + "</table>")
        data["images"].append({"input": image.name, "top": [{"class": c, "probability": p} for c, p in image.top],
                               "predicted": image.predicted, "grad_cam_layer": image.cam_layer, "layers": layers})
    figures = json.dumps(data).replace("</", "<\\/")
    parts.append(f"<script type='application/json' id='cnnspec-figures'>{figures}</script>")
    parts.append(f"<p><small>cnnspec inspect, {inspection.seconds:.1f} s</small></p></body></html>")
    return "\n".join(parts)


def figures(page: str) -> dict[str, Any]:
    """The figures a page embeds (its JSON block)."""
    start = page.index("id='cnnspec-figures'>") + len("id='cnnspec-figures'>")
    return dict(json.loads(page[start: page.index("</script>", start)].replace("<\\/", "</")))
