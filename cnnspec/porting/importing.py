"""``cnnspec import``: models and weights from elsewhere, into specs and checkpoints.

- ``MODEL.onnx``: the graph becomes a spec (``-o spec.yaml``) and its initializers a
  checkpoint beside it (``spec.safetensors``); the spec is validated, and the imported
  network's outputs are compared with onnxruntime's on the original file.
- ``MODEL.keras`` or a full-model ``MODEL.h5``: a Keras model, loaded in safe mode, the
  same way: spec and checkpoint, written once the spec computes what Keras computes.
- A PyTorch ``state_dict`` (``.pt``, ``.pth``, ``.bin``), loaded with ``weights_only``
  (tensors, never code), for a spec whose layer names are the model's module names (the
  zoo uses torchvision's).
- A Keras ``.weights.h5`` saved from the model the tensorflow backend builds for a spec
  (any ``.h5`` given ``--spec``).

Checkpoints are canonical safetensors files: ``--weights`` for ``verify`` and ``export``,
``--init`` for ``train``.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from cnnspec.errors import CnnspecError
from cnnspec.graph.dag import Graph
from cnnspec.graph.weights import check_weights
from cnnspec.runs.files import save_arrays, write_text


class ImportFailed(CnnspecError, ValueError):
    """The file cannot become what was asked; the message says why."""


def import_model(model: Path, out: Path | None, spec: str | None, run: Path | None = None, classes: Path | None = None,
                 normalize: str = "auto") -> list[str]:
    """Import ``model``; returns what was written, one line each. With ``run``, weights for
    a spec become a run directory (no training: its one checkpoint is epoch 0), so that
    predict, eval, inspect, embed and export take pretrained weights as they take a run."""
    if not model.is_file():
        raise ImportFailed(f"{model}: no such file")
    from cnnspec.porting.exporting import check_export

    check_export(model)  # a file cnnspec exported: as written, or refused by name
    name = model.name.lower()
    whole_model = name.endswith((".onnx", ".keras")) or (name.endswith(".h5") and not name.endswith(".weights.h5") and spec is None)
    if whole_model:
        if spec is not None:
            raise ImportFailed(f"{model}: a whole model brings its own graph: leave out --spec")
        target = out or Path(f"{_stem(model)}.yaml")
        if target.suffix not in (".yaml", ".yml"):
            raise ImportFailed(f"{target}: importing a model writes a spec (.yaml) and a checkpoint beside it")
        return (_import_onnx if name.endswith(".onnx") else _import_keras)(model, target)
    if spec is None:
        raise ImportFailed(f"{model}: weights need the spec they belong to: add --spec NAME_OR_FILE")
    from cnnspec.graph.load import load_spec

    graph = load_spec(spec)
    target = out or Path(f"{graph.name}.safetensors")
    if target.suffix != ".safetensors":
        raise ImportFailed(f"{target}: a checkpoint is written as .safetensors")
    if name.endswith((".pt", ".pth", ".bin")):
        weights, ignored = _from_state_dict(graph, model)
    elif name.endswith(".safetensors"):  # a canonical checkpoint (this command's own output): checked, and made a run
        from cnnspec.runs.files import load_arrays

        weights, ignored = load_arrays(model), []
    elif name.endswith(".h5"):
        from cnnspec.backends import import_module

        backend = import_module("tensorflow_backend", "tensorflow", "importing Keras weights")
        try:
            weights, ignored = backend.load_keras_weights(graph, model), []
        except (ValueError, KeyError) as exc:
            raise ImportFailed(f"{model} does not fit the Keras model of '{graph.name}': {exc}") from None
    else:
        raise ImportFailed(f"{model}: import reads a model (.onnx, .keras, .h5) or weights for a spec (a PyTorch state_dict .pt, .pth, .bin, Keras .weights.h5, or a checkpoint .safetensors)")
    check_weights(graph, weights, str(model))
    if run is not None:
        lines = _as_run(graph, weights, model, run, classes, normalize)
    else:
        save_arrays(target, weights, {"spec": graph.name, "source": str(model)})
        lines = [f"wrote {target}: {len(weights)} arrays for '{graph.name}' from {model}"]
    if ignored:
        lines.append(f"ignored {len(ignored)} array(s) the spec has no place for: {', '.join(ignored[:8])}"
                     f"{' ...' if len(ignored) > 8 else ''}")
    return lines


def _as_run(graph: Graph, weights: dict[str, np.ndarray], model: Path, folder: Path, classes: Path | None, normalize: str) -> list[str]:
    """A run directory holding ``weights`` as its epoch-0 checkpoint, with the input
    normalisation and class names given (or the convention: ImageNet's statistics for 3
    channels, [0, 1] for others; classes numbered)."""
    import dataclasses
    from datetime import datetime

    from cnnspec.data.normalization import Normalization
    from cnnspec.runs.checkpoints import save_checkpoint
    from cnnspec.runs.files import seal, write_json
    from cnnspec.runs.folder import RunDir, command_line
    from cnnspec.runs.versions import versions
    from cnnspec.spec.training import IMAGENET_MEAN, IMAGENET_STD, Normalize

    if folder.exists() and any(folder.iterdir()):
        raise ImportFailed(f"{folder} exists and is not empty: choose another --run")
    width, channels = graph.output_shape[0], graph.input_shape[0]
    names = [str(i) for i in range(width)]
    if classes is not None:
        try:
            names = [line.strip() for line in classes.read_text(encoding="utf-8").splitlines() if line.strip()]
        except (OSError, UnicodeDecodeError) as exc:
            raise ImportFailed(f"{classes}: cannot read the class names ({exc})") from None
        if len(names) != width:
            raise ImportFailed(f"{classes}: {len(names)} class names, but '{graph.name}' has {width} outputs; one name a line")
    if normalize == "auto":
        normalize = "imagenet" if channels == 3 else "unit"
    if normalize == "imagenet":
        if channels != 3:
            raise ImportFailed(f"--normalize imagenet needs 3 input channels; '{graph.name}' has {channels}")
        norm = Normalization(1 / 255, IMAGENET_MEAN, IMAGENET_STD)
        setting: object = Normalize(mean=list(IMAGENET_MEAN), std=list(IMAGENET_STD))
    elif normalize in ("unit", "none"):
        norm = Normalization(1 / 255 if normalize == "unit" else 1.0, (0.0,) * channels, (1.0,) * channels)
        setting = normalize
    else:
        raise ImportFailed(f"--normalize {normalize!r}: use auto, imagenet, unit or none")
    config = graph.train
    config = config.model_copy(update={"data": config.data.model_copy(update={"normalize": setting})})
    run = RunDir(folder)
    folder.mkdir(parents=True, exist_ok=True)
    write_text(folder / "spec.yaml", graph.source)
    write_json(folder / "run.json", {
        "spec": graph.name, "backend": "numpy", "device": "cpu", "precision": "fp32", "data": f"none: weights imported from {model}",
        "classes": names, "skipped": [], "normalization": dataclasses.asdict(norm), "train": config.model_dump(mode="json"),
        "init": str(model), "processes": 1, "created": datetime.now().isoformat(timespec="seconds"), "command": command_line(),
        "versions": versions(), "imported": True,
    })
    seal(folder, ["spec.yaml", "run.json"])
    write_text(folder / "metrics.jsonl", "")

    class _Held:  # the one thing save_checkpoint asks of a session here
        def get_weights(self) -> dict[str, np.ndarray]:
            return weights

        def optimizer_state(self) -> tuple[dict[str, np.ndarray], dict[str, object]]:
            return {}, {}

    save_checkpoint(run, 0, _Held(), {"epoch": 0, "best": None, "bad_epochs": 0, "plateau": {"lr": config.optimizer.lr, "best": None, "bad_epochs": 0}})  # type: ignore[arg-type]
    means, stds = (", ".join(f"{v:g}" for v in values) for values in (norm.mean, norm.std))
    return [f"wrote {folder}: a run of '{graph.name}' with {len(weights)} arrays from {model} as its checkpoint (epoch 0, not trained here)",
            f"inputs ({normalize}): pixels x {norm.scale:.6g}, minus mean [{means}], divided by std [{stds}], per channel; classes: "
            f"{', '.join(names[:5])}{' ...' if len(names) > 5 else ''}",
            f"next: cnnspec predict {folder} IMAGE...; cnnspec eval {folder} --data DATA; cnnspec inspect {folder} IMAGE"]


def _from_state_dict(graph: Graph, path: Path) -> tuple[dict[str, np.ndarray], list[str]]:
    from cnnspec.backends import import_module

    torch_backend = import_module("torch_backend", "torch", "importing a PyTorch state_dict")
    try:
        state = torch_backend.load_state_dict(path)
    except Exception as exc:  # torch raises UnpicklingError for anything but plain tensors
        raise ImportFailed(f"{path}: not a state_dict of tensors that loads safely (weights_only): "
                           f"{str(exc).splitlines()[0] if str(exc) else type(exc).__name__}") from None
    if not isinstance(state, dict):
        raise ImportFailed(f"{path}: expected a state_dict (a mapping of names to tensors)")
    expected = graph.weights()
    if not any(name in expected for name in state):  # torch's DataParallel and DDP save every name under "module."
        for prefix in _prefixes(state):
            if any(name[len(prefix):] in expected for name in state):
                state = {name[len(prefix):] if name.startswith(prefix) else name: array for name, array in state.items()}
                break
    state = _spelled_as_spec(state, expected)
    weights = {name: array for name, array in state.items() if name in expected}
    ignored = [name for name in state if name not in expected and not name.endswith("num_batches_tracked")]
    missing = [name for name in expected if name not in weights]
    if missing:
        held = [f"{name} {tuple(array.shape)}" for name, array in state.items() if not name.endswith("num_batches_tracked")]
        raise ImportFailed(
            f"{path} does not fit the spec '{graph.name}': it lacks {len(missing)} of the spec's {len(expected)} arrays "
            f"({', '.join(f'{name} {expected[name].shape}' for name in missing[:5])}{' ...' if len(missing) > 5 else ''}); "
            f"the file holds {len(held)}: {', '.join(held[:8])}{' ...' if len(held) > 8 else ''}. "
            f"Its names must be the spec's: a layer's name, then .weight, .bias, ... (`cnnspec check` lists the layers)"
        )
    return weights, ignored


def _spelled_as_spec(state: dict[str, np.ndarray], expected: dict[str, Any]) -> dict[str, np.ndarray]:
    """The two ways PyTorch spells what a spec holds differently, read as the spec does: a
    bare parameter (ConvNeXt's ``layer_scale``) as the layer's ``.weight``, and an array
    whose shape differs only by axes of size one (a ``Linear``'s O x I as a 1x1 conv's
    O x I x 1 x 1, a C x 1 x 1 layer scale as an affine's C) reshaped. Nothing else moves."""
    state = dict(state)
    for name, want in expected.items():
        bare = name.removesuffix(".weight")
        if name not in state and bare != name and bare in state and bare not in expected:
            state[name] = state.pop(bare)
        given = state.get(name)
        if given is not None and tuple(given.shape) != tuple(want.shape) and \
                [d for d in given.shape if d != 1] == [d for d in want.shape if d != 1]:
            state[name] = given.reshape(want.shape)
    return state


def _prefixes(state: dict[str, Any]) -> list[str]:
    """The first dotted parts the names share ("module.", "model.backbone."), longest last."""
    names = list(state)
    parts = names[0].split(".")[:-1] if names else []
    shared = [".".join(parts[: i + 1]) + "." for i in range(len(parts))]
    return [prefix for prefix in shared if all(name.startswith(prefix) for name in names)]


def _import_onnx(model: Path, out: Path) -> list[str]:
    from cnnspec.backends import import_module

    onnx_backend = import_module("onnx_backend", "onnx", "importing ONNX")
    onnx_import = import_module("onnx_import", "onnx", "importing ONNX")
    normalising = import_module("onnx_normalise", "onnx", "importing ONNX")
    import onnx

    from cnnspec.backends.import_common import ImportRefused, spec_name
    from cnnspec.spec.grammar import NAME_PATTERN

    try:
        loaded = onnx.load(str(model))
    except Exception as exc:  # protobuf's DecodeError and friends
        raise ImportFailed(f"{model}: not an ONNX model ({type(exc).__name__})") from None
    # cnnspec's own exports carry the spec's name; other exporters' graph names are generic
    ours = loaded.producer_name == "cnnspec" and NAME_PATTERN.match(loaded.graph.name or "")
    try:
        imported = onnx_import.import_onnx(loaded, name=loaded.graph.name if ours else spec_name(_stem(model)))
    except ImportRefused as exc:
        raise ImportFailed(f"{model}: {exc}") from None
    source, notes = normalising.without_unused_inputs(loaded), list(imported.notes)
    if normalising.opset(source) >= normalising.ORT_OLDEST_OPSET:
        engine, theirs = "onnxruntime", lambda x: next(iter(onnx_backend.run(source, x).values()))
    else:  # onnxruntime has dropped these operator versions; onnx's own evaluator still runs them as written
        engine, theirs = "onnx's reference evaluator", lambda x: normalising.evaluate(source, x)
        notes.append(f"opset {normalising.opset(source)} is older than onnxruntime runs: checked with onnx's reference evaluator")
    return _checked_and_written(model, out, imported.text, imported.weights, engine, theirs, imported.batch, notes)


def _import_keras(model: Path, out: Path) -> list[str]:
    from cnnspec.backends import import_module

    keras_import = import_module("keras_import", "tensorflow", "importing a Keras model")
    from cnnspec.backends.import_common import ImportRefused, spec_name

    try:
        loaded = keras_import.load(model)
        imported = keras_import.import_keras(loaded, spec_name(_stem(model)))
    except ImportRefused as exc:
        raise ImportFailed(f"{model}: {exc}") from None
    return _checked_and_written(model, out, imported.text, imported.weights, "Keras", lambda x: keras_import.predict(loaded, imported, x))


def _checked_and_written(model: Path, out: Path, text: str, weights: dict[str, np.ndarray], engine: str,
                         theirs: Callable[[np.ndarray], np.ndarray], batch: int | None = None, notes: list[str] | None = None) -> list[str]:
    """Validate the imported spec, prove it computes what ``engine`` computes from the
    source file (NumPy backend against ``theirs`` on the same random inputs, at the batch
    size the file fixes, or 2 where it does not), then write the spec and its checkpoint;
    nothing is written when either fails. A source whose outputs hardly change from one
    input to the next makes the comparison prove little: the result says so."""
    from cnnspec.agreement import TOLERANCE, agreement, spread
    from cnnspec.backends import load_backend
    from cnnspec.graph.load import parse_spec
    from cnnspec.spec.diagnostics import SpecError
    from cnnspec.spec.training import TrainConfig

    try:
        graph = parse_spec(text, str(out))
    except SpecError as exc:  # the importer wrote what the language cannot hold: refuse, not crash
        raise ImportFailed(f"{model}: the imported network is no valid spec: {str(exc).splitlines()[0]}") from None
    check_weights(graph, weights, str(model))
    session = load_backend("numpy").open_session(graph, TrainConfig())
    session.set_weights(weights)
    rng = np.random.default_rng(0)
    size = batch or 2
    ours, expected = [], []
    for _ in range(1 if size > 1 else 2):  # at least two inputs, to see whether the outputs follow them
        x = rng.standard_normal((size, *graph.input_shape)).astype(np.float32)
        try:
            given = np.asarray(theirs(x), np.float32)
        except Exception as exc:  # the engine's own errors (onnxruntime's InvalidArgument, Keras's ValueError)
            raise ImportFailed(f"{model}: {engine} cannot run the source file on a batch of {size}: "
                               f"{str(exc).strip().splitlines()[0][:300] if str(exc).strip() else type(exc).__name__}") from None
        mine = session.predict(x)
        ours.append(mine)
        expected.append(given.reshape(mine.shape) if given.size == mine.size else given)
    _, error = agreement(np.concatenate(ours), np.concatenate(expected))
    if not error <= TOLERANCE:  # NaN included
        raise ImportFailed(f"{model}: the imported spec computes differently from {engine} on the source "
                           f"(relative error {error:.2e}); nothing was written")
    varies = spread(np.concatenate(expected))
    checkpoint = out.with_suffix(".safetensors")
    write_text(out, text)
    save_arrays(checkpoint, weights, {"spec": graph.name, "source": str(model)})
    count = sum(len(o) for o in ours)
    lines = [f"wrote {out}: spec '{graph.name}', {len(graph.nodes)} layers, {graph.params:,} params",
             f"wrote {checkpoint}: {len(weights)} arrays; outputs agree with {engine} to {error:.1e} relative on {count} random inputs"]
    if not varies > INFORMATIVE_SPREAD:
        lines.append(f"note: that check proves little: {engine} gives the same outputs for every input (they differ by "
                     f"{varies:.0e} of their size), as an untrained network or one whose output saturates does; "
                     f"compare on your own images with cnnspec verify")
    lines += [f"note: {note}" for note in notes or []]
    lines.append(f"next: cnnspec check {out}; cnnspec verify {out} --weights {checkpoint}")
    return lines


# Outputs that vary across inputs by less than this (relative to their size) make an
# output comparison at TOLERANCE uninformative: a constant function would pass it.
INFORMATIVE_SPREAD = 1e-3


def _stem(model: Path) -> str:
    name = model.name
    for suffix in (".onnx", ".keras", ".h5"):
        if name.lower().endswith(suffix):
            return name[: -len(suffix)]
    return model.stem
