"""``cnnspec export``: a model another framework loads, verified before it is reported.

Each format is written by one backend module (its ``EXPORTS`` and ``LOADERS`` tables).
An export runs in this order, so that a failure leaves nothing behind:

1. build the artifact in memory (a layer the format cannot represent is refused here);
2. run it on a fixed batch and compare with the backend it must agree with;
3. write it to a temporary name beside the destination, with the spec, the weights'
   origin and the measured error as metadata where the format has room for them;
4. load that file back, run it again, compare again;
5. only then rename it into place.

An export of a trained run takes what ``cnnspec predict`` takes: its first operation is
the run's preprocessing (``with_preprocessing``), so raw pixels scaled to [0, 1] (a
``.npy`` batch for ``predict``) give ``predict``'s outputs, and verification compares with
``predict``'s path on the same raw input. ``--no-preprocessing`` leaves it out.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from cnnspec.agreement import TOLERANCE, agreement
from cnnspec.errors import CnnspecError
from cnnspec.graph.dag import Graph

if TYPE_CHECKING:
    from cnnspec.data.normalization import Normalization


@dataclasses.dataclass(frozen=True)
class Format:
    suffix: str  # of the file written; "" for a directory
    module: str  # the backend module under cnnspec.backends that writes it
    extra: str  # the pip extra that installs its framework
    reference: str  # the backend its outputs are compared with
    metadata: str  # where the spec and the measured error are stored, in words


FORMATS: dict[str, Format] = {
    "onnx": Format(".onnx", "onnx_backend", "onnx", "numpy", "metadata in the model's metadata_props"),
    "torchscript": Format(".pt", "torch_backend", "torch", "torch", "metadata in the archive's extra file cnnspec.json"),
    "torch-export": Format(".pt2", "torch_backend", "torch", "torch", "metadata in the archive's extra file cnnspec.json"),
    "savedmodel": Format("", "tensorflow_backend", "tensorflow", "tensorflow", "metadata in cnnspec.json in the directory"),
    "keras": Format(".keras", "tensorflow_backend", "tensorflow", "tensorflow", "no metadata (the format has no room for it)"),
    "tflite": Format(".tflite", "tensorflow_backend", "tensorflow", "tensorflow", "no metadata (the format has no room for it)"),
}
DIAGRAMS = {"dot": ".dot", "svg": ".svg", "png": ".png"}


class ExportFailed(CnnspecError, RuntimeError):
    """The artifact does not reproduce the reference; nothing was written."""


@dataclasses.dataclass(frozen=True)
class ExportReport:
    path: Path
    format: str
    reference: str
    max_abs_error: float
    max_rel_error: float
    batch: tuple[int, ...]
    bytes: int
    weights_from: str
    metadata_in: str


def default_path(graph: Graph, fmt: str, target: str) -> Path:
    suffix = FORMATS[fmt].suffix if fmt in FORMATS else DIAGRAMS[fmt]
    base = Path(target) / "exports" if Path(target).is_dir() else Path(".")
    return base / f"{graph.name}{suffix or '-' + fmt}"


def _errors(got: Any, expected: np.ndarray | dict[str, np.ndarray]) -> tuple[float, float]:
    """(largest absolute, largest relative) error; a model with several outputs is
    compared output by output, each relative to its own largest magnitude."""
    if isinstance(expected, dict):
        if not isinstance(got, dict) or set(got) != set(expected):
            raise ExportFailed(f"the exported model's outputs are {sorted(got) if isinstance(got, dict) else 'one'}, not {sorted(expected)}")
        pairs = [_errors(got[name], value) for name, value in expected.items()]
        return max(a for a, _ in pairs), max(r for _, r in pairs)
    got = np.asarray(got)
    if got.shape != expected.shape:
        raise ExportFailed(f"the exported model returns shape {got.shape}, the spec {expected.shape}")
    return agreement(got, expected)


def _size(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file()) if path.is_dir() else path.stat().st_size


def _remove(path: Path) -> None:
    if path.is_dir():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)


PREPROCESS = "preprocess"


def with_preprocessing(graph: Graph, weights: dict[str, np.ndarray], norm: Normalization) -> tuple[Graph, dict[str, np.ndarray]]:
    """``graph`` with the run's normalisation as its first layer: a per-channel 1x1
    convolution (groups = channels) computing (x - mean) / std on values in predict's
    .npy units, so every export format represents it with an operation it already has."""
    from cnnspec.graph.dag import Node
    from cnnspec.layers.conv import Conv2d
    from cnnspec.spec.diagnostics import Location
    from cnnspec.spec.grammar import INPUT

    if len(graph.input_shape) != 3:  # not an image: predict scales it back and forth, nothing to add
        return graph, weights
    channels = graph.input_shape[0]
    names = {node.name for node in graph.nodes}
    name = next(f"{PREPROCESS}{suffix}" for suffix in ("", *map(str, range(1, 100))) if f"{PREPROCESS}{suffix}" not in names)
    layer = Conv2d.model_validate({"filters": channels, "kernel": 1, "groups": channels, "bias": True})
    first = Node(name, layer, (INPUT,), layer.infer([graph.input_shape]), None, Location(graph.path, 1, 1))
    rest = (dataclasses.replace(node, inputs=tuple(name if source == INPUT else source for source in node.inputs)) for node in graph.nodes)
    std, mean = np.asarray(norm.std, np.float64), np.asarray(norm.mean, np.float64)
    scaled = {f"{name}.weight": (1.0 / std).reshape(channels, 1, 1, 1).astype(np.float32), f"{name}.bias": (-mean / std).astype(np.float32)}
    return dataclasses.replace(graph, nodes=(first, *rest)), {**weights, **scaled}


def export(graph: Graph, weights: dict[str, np.ndarray], fmt: str, out: Path, *, weights_from: str,
           options: dict[str, Any] | None = None, tolerance: float = TOLERANCE, batch: int = 2, seed: int = 0,
           extra_metadata: dict[str, str] | None = None, preprocessing: Normalization | None = None,
           outputs: tuple[str, ...] = ()) -> ExportReport:
    """Write ``graph`` with ``weights`` as ``fmt`` at ``out``, verified (see the module doc).
    With ``preprocessing`` (a run's), the model takes raw pixels in [0, 1] and is compared
    with the network fed those pixels prepared as ``predict`` prepares them. ``outputs``
    names layers the model outputs as well (ONNX only), each verified like the output."""
    from cnnspec import __version__
    from cnnspec.backends import import_module, load_backend
    from cnnspec.spec.training import TrainConfig

    spec = FORMATS[fmt]
    if outputs and fmt != "onnx":
        raise ValueError(f"layer outputs are exported to onnx only, not {fmt}")
    module: Any = import_module(spec.module, spec.extra, f"export to {fmt}")
    rng = np.random.default_rng(seed)
    session: Any = load_backend(spec.reference).open_session(graph, TrainConfig(), device="cpu", precision="fp32")
    session.set_weights(weights)
    names = list(dict.fromkeys([graph.output, *outputs]))

    def reference(x: np.ndarray) -> np.ndarray | dict[str, np.ndarray]:
        values: np.ndarray | dict[str, np.ndarray] = session.activations(x, names) if len(names) > 1 else session.predict(x)
        return values

    if preprocessing is not None:
        x = rng.random((batch, *graph.input_shape)).astype(np.float32)  # pixels in [0, 1], as predict's .npy batches
        expected = reference(preprocessing.apply(x / np.float32(preprocessing.scale)))  # predict's own path
        graph, weights = with_preprocessing(graph, weights, preprocessing)
    else:
        x = rng.standard_normal((batch, *graph.input_shape)).astype(np.float32)
        expected = reference(x)

    artifact = module.EXPORTS[fmt](graph, weights, (options or {}) | ({"outputs": tuple(outputs)} if outputs else {}))
    absolute, relative = _errors(artifact.run(x), expected)
    if relative > tolerance:
        raise ExportFailed(f"{fmt} export of '{graph.name}' differs from {spec.reference} by {relative:.2e} relative "
                           f"(max abs {absolute:.2e}) > {tolerance:g}; nothing was written")
    metadata = {
        "cnnspec.version": __version__, "cnnspec.spec": graph.source, "cnnspec.weights": weights_from,
        "cnnspec.reference": spec.reference, "cnnspec.max_abs_error": f"{absolute:.3e}",
        "cnnspec.max_rel_error": f"{relative:.3e}", "cnnspec.input": "N x " + " x ".join(map(str, graph.input_shape)),
        "cnnspec.input_prepared": "by the model (raw pixels in [0, 1], as cnnspec predict's .npy)" if preprocessing is not None else "by the caller",
    } | (extra_metadata or {})
    out.parent.mkdir(parents=True, exist_ok=True)
    # Written under its own name inside a staging folder beside it: archives name their root
    # folder after the file (TorchScript), so a temporary file name would travel inside.
    staging = out.parent / f".{out.name}.{os.getpid()}.partial"
    _remove(staging)
    staging.mkdir(parents=True)
    temporary = staging / out.name
    try:
        artifact.save(temporary, metadata)
        absolute_back, relative_back = _errors(module.LOADERS[fmt](temporary)(x), expected)
        if relative_back > tolerance:
            raise ExportFailed(f"{fmt} export of '{graph.name}', loaded back from disk, differs from {spec.reference} by "
                               f"{relative_back:.2e} relative > {tolerance:g}; nothing was written")
        if out.is_dir():
            shutil.rmtree(out)
        os.replace(temporary, out)
        write_checksums(out)
    finally:
        _remove(staging)
    return ExportReport(out, fmt, spec.reference, max(absolute, absolute_back), max(relative, relative_back),
                        tuple(x.shape), _size(out), weights_from, spec.metadata)


def checksum_file(out: Path) -> Path:
    return out.with_name(out.name + ".sha256")


def write_checksums(out: Path) -> None:
    """``OUT.sha256`` beside an export: the SHA-256 of every file it is made of, in
    ``sha256sum`` format (``sha256sum -c OUT.sha256`` checks them; so does ``check_export``)."""
    from cnnspec.runs.files import sha256, write_text

    files = sorted(p for p in out.rglob("*") if p.is_file()) if out.is_dir() else [out]
    write_text(checksum_file(out), "".join(f"{sha256(f)}  {f.relative_to(out.parent)}\n" for f in files))


def check_export(out: Path) -> None:
    """Raise DamagedFile naming the first file of an export that differs from what was
    written (an export without ``OUT.sha256`` passes)."""
    from cnnspec.runs.files import DamagedFile, sha256

    listing = checksum_file(out)
    if not listing.exists():
        return
    for line in listing.read_text().splitlines():
        digest, _, name = line.partition("  ")
        path = out.parent / name
        if not path.is_file():
            raise DamagedFile(f"{path}: missing (listed in {listing})")
        if sha256(path) != digest:
            raise DamagedFile(f"{path}: damaged (its SHA-256 differs from the one in {listing})")


def read_metadata(path: Path) -> dict[str, str]:
    """The cnnspec metadata an export stored (ONNX: metadata_props; others: cnnspec.json)."""
    if path.suffix == ".onnx":
        import onnx

        return {p.key: p.value for p in onnx.load(str(path), load_external_data=False).metadata_props}
    if path.is_dir():
        return dict(json.loads((path / "cnnspec.json").read_text()))
    import zipfile

    with zipfile.ZipFile(path) as archive:
        name = next(n for n in archive.namelist() if n.endswith("cnnspec.json"))
        return dict(json.loads(archive.read(name)))


def run_preprocessing(run: Path) -> dict[str, str]:
    """How a run's inputs were prepared in training, for the people who feed the export:
    x * scale, then (x - mean) / std per channel; and the class names."""
    from cnnspec.runs.loading import load_run

    loaded = load_run(run)
    norm = loaded.normalization
    return {
        "cnnspec.preprocessing": json.dumps({"scale": norm.scale, "mean": list(norm.mean), "std": list(norm.std)}),
        "cnnspec.image_preparation": image_preparation(loaded.config, loaded.graph.input_shape),
        "cnnspec.outputs": "probabilities: the spec's output ends in softmax" if loaded.spec is not loaded.graph else "logits: softmax gives the class probabilities",
        "cnnspec.classes": json.dumps(loaded.info.get("classes")),
    }


def image_preparation(config: Any, shape: tuple[int, ...]) -> str:
    """How an image file becomes the network's input size and channels, in words (as
    evaluation and predict prepare it)."""
    from cnnspec.data.errors import DataError
    from cnnspec.data.transforms import Transform

    try:
        return f"{shape[0]} channel(s); {Transform.evaluation(config.data, shape).describe()}"
    except DataError:
        return "none (not an image input)"


def write_preparation(run: Path, model: Path, preprocessing_inside: bool) -> Path:
    """``MODEL_prepare.py`` beside an exported model: ``prepare(path)``, the plain Pillow
    and NumPy that give an image file as the model takes it (``cnnspec.data.recipe``):
    raw pixels in [0, 1] when the run's normalisation is the model's first layer, else
    normalised as in training."""
    from cnnspec.data.recipe import run_preparation_code
    from cnnspec.runs.files import write_text
    from cnnspec.runs.loading import load_run

    loaded = load_run(run)
    norm = loaded.normalization
    code = run_preparation_code(loaded.config, loaded.graph.input_shape, None if preprocessing_inside else (norm.scale, list(norm.mean), list(norm.std)),
                                name=f"{model.name} (exported from {run})")
    target = model.with_name(f"{model.stem}_prepare.py")
    write_text(target, code)
    return target

