"""The engine that computes a run's outputs: its backend session or onnxruntime, chosen and verified."""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from cnnspec.backends.protocol import Session
from cnnspec.data.normalization import Normalization
from cnnspec.errors import TrainingError
from cnnspec.graph.weights import check_weights
from cnnspec.runs.files import (
    DamagedFile,
    write_json,
)
from cnnspec.runs.loading import LoadedRun
from cnnspec.runs.weight_files import load_weights
from cnnspec.spec.training import TrainConfig


def open_run_session(loaded: LoadedRun, open_session: Callable[..., Session], device: str) -> Session:
    session = open_session(loaded.graph, loaded.config, device=device)
    weights = load_weights(loaded.checkpoint)
    check_weights(loaded.graph, weights, str(loaded.checkpoint))
    session.set_weights(weights)
    return session


class _EngineSession:
    """An inference engine (``inference_engine``) where evaluation wants a session: inputs
    normalised on the host, the loss computed from the engine's logits as the NumPy
    backend computes it."""

    def __init__(self, engine: Any, config: TrainConfig) -> None:
        from cnnspec.backends.numpy_backend import LOSSES

        self._engine, self._loss, self._smoothing = engine, LOSSES[config.loss], config.label_smoothing

    def inputs(self, x: np.ndarray, scale: float, mean: tuple[float, ...], std: tuple[float, ...]) -> np.ndarray:
        return Normalization(scale, mean, std).apply(x)

    def evaluate(self, x: np.ndarray, y: np.ndarray) -> tuple[float, np.ndarray]:
        logits = np.asarray(self._engine.predict(x), np.float32)
        loss, _ = self._loss(logits, y, self._smoothing)
        return float(loss) * len(x), logits


RUNTIMES = ("auto", "backend", "onnxruntime")


AUTO_RUNTIME_IMAGES = 64  # from this many images, building the ONNX engine once pays (benchmarks/bench_runtime.py)


def _gpu_may_be_used(device: str) -> bool:
    """Whether ``device`` may put the backend on a GPU, answered without importing a
    framework: asked for by name, or ``auto`` on a machine with an NVIDIA device node."""
    return device != "cpu" and (device != "auto" or Path("/dev/nvidiactl").exists())


def _cache_folders(loaded: LoadedRun) -> tuple[Path, Path]:
    """Where a run's inference engines are cached: RUN/.runtime; and, for a run this user
    cannot write (shared, read-only), a folder of the user's own in the temp dir."""
    import hashlib

    key = hashlib.sha256(str(loaded.run.path.resolve()).encode()).hexdigest()[:16]
    user = os.getuid() if hasattr(os, "getuid") else "user"
    return loaded.run.path / ".runtime", Path(tempfile.gettempdir()) / f"cnnspec-runtime-{user}" / key


def runtime_folder(loaded: LoadedRun) -> Path:
    """The run's engine cache (``_cache_folders``), created: its own if writable, else the fallback."""
    own, fallback = _cache_folders(loaded)
    try:
        own.mkdir(exist_ok=True)
        if os.access(own, os.W_OK):
            return own
    except OSError:
        pass
    fallback.mkdir(parents=True, exist_ok=True)
    return fallback


def _extra_outputs(loaded: LoadedRun, layers: tuple[str, ...]) -> tuple[str, ...]:
    """``layers`` an engine outputs besides the network's own output, each once, in order."""
    return tuple(layer for layer in dict.fromkeys(layers) if layer != loaded.graph.output)


def _engine_file(loaded: LoadedRun, layers: tuple[str, ...]) -> str:
    """The cached engine's file name: the checkpoint's, then '+layer' for each extra output."""
    return loaded.checkpoint.name + "".join(f"+{layer}" for layer in _extra_outputs(loaded, layers)) + ".onnx"


def chosen_runtime(loaded: LoadedRun, device: str, runtime: str, images: int, layers: tuple[str, ...] = ()) -> str:
    """``backend`` or ``onnxruntime``: what ``inference_engine`` uses for ``runtime``
    (``auto`` decided as it says), without building or opening anything."""
    import importlib.util

    if runtime not in RUNTIMES:
        raise TrainingError(f"--runtime {runtime!r}: use {', '.join(RUNTIMES)}")
    if runtime != "auto":
        return runtime
    name = _engine_file(loaded, layers)
    usable = importlib.util.find_spec("onnxruntime") is not None and not _gpu_may_be_used(device)
    built = usable and any((folder / name).exists() for folder in _cache_folders(loaded))
    return "onnxruntime" if usable and (built or images >= AUTO_RUNTIME_IMAGES) else "backend"


def inference_engine(loaded: LoadedRun, session: Callable[[], Session], device: str, runtime: str, images: int,
                     layers: tuple[str, ...] = ()) -> tuple[Any, str]:
    """(what computes the outputs, in words which) for ``runtime``: ``backend`` (the
    session, its outputs checked against the NumPy backend the first time it serves a
    checkpoint), ``onnxruntime`` (the run's ONNX lowering, built once per checkpoint and
    set of ``layers`` into RUN/.runtime/, verified against the NumPy backend as ``export``
    verifies, checked by its checksum when reused), or ``auto``: onnxruntime where it is
    installed, the backend would run on the CPU, and either its engine is built already or
    ``images`` are enough to pay for building it; else the backend. ``layers`` are the
    layer outputs wanted besides the network's (``activations``). ``session`` opens the
    backend's session, only when it is the engine (onnxruntime never imports its framework)."""
    runtime = chosen_runtime(loaded, device, runtime, images, layers)
    if runtime == "backend":
        opened = session()
        return opened, f"{backend_of(opened)} backend ({opened.device}), {_verified(loaded, opened)}"
    from cnnspec.backends import import_module

    onnx_backend = import_module("onnx_backend", "onnx", "--runtime onnxruntime")
    path, how = onnx_engine(loaded, layers)
    return onnx_backend.RuntimeSession(str(path)), f"onnxruntime, {path} {how}"


def onnx_engine(loaded: LoadedRun, layers: tuple[str, ...] = ()) -> tuple[Path, str]:
    """The run's ONNX lowering for its checkpoint, giving ``layers``' outputs besides the
    network's: reused from the engine cache while its checksum holds, else built and
    verified against the NumPy backend (``export``). (its path, "reused" or how it was built)"""
    from cnnspec.porting.exporting import check_export, export

    path = runtime_folder(loaded) / _engine_file(loaded, layers)
    try:
        check_export(path)  # a damaged cache is rebuilt, never used
        if not path.exists():
            raise DamagedFile(f"{path}: missing")
        return path, "reused"
    except DamagedFile:
        weights = load_weights(loaded.checkpoint)
        report = export(loaded.graph, weights, "onnx", path, weights_from=str(loaded.checkpoint), outputs=_extra_outputs(loaded, layers))
        return path, f"built and verified against {report.reference} ({report.max_rel_error:.1e} relative)"


def backend_of(session: Session) -> str:
    """The name of the backend a session comes from ('torch' for cnnspec.backends.torch_backend)."""
    return type(session).__module__.rsplit(".", 1)[-1].removesuffix("_backend")


LOW_PRECISION_TOLERANCE = 3e-2  # relative, for a bf16 or fp16 session (fp32: export's TOLERANCE)


def _verified(loaded: LoadedRun, session: Session) -> str:
    """Check ``session``'s outputs against the NumPy backend's on a fixed batch, once per
    checkpoint, backend, device and precision (remembered in the run's engine folder);
    raise if they differ. Returns what was found, in words."""
    backend, precision = backend_of(session), str(getattr(session, "precision", "fp32"))
    if backend == "numpy" and session.device == "cpu":
        return "the reference"
    weights_file = loaded.checkpoint / "weights.safetensors"
    stat = weights_file.stat()
    key = f"{loaded.checkpoint.name}|{backend}|{session.device}|{precision}"
    stamp = f"{stat.st_size}:{stat.st_mtime_ns}"
    folder = runtime_folder(loaded)
    record = folder / "verified.json"
    try:
        known = json.loads(record.read_text()) if record.exists() else {}
        known = known if isinstance(known, dict) else {}
    except (OSError, ValueError):
        known = {}
    entry = known.get(key)
    if isinstance(entry, dict) and entry.get("weights") == stamp and isinstance(entry.get("max_rel_error"), float):
        return f"verified against numpy ({entry['max_rel_error']:.1e} relative)"
    from cnnspec.agreement import TOLERANCE, agreement
    from cnnspec.backends import load_backend

    reference = load_backend("numpy").open_session(loaded.graph, TrainConfig(), device="cpu", precision="fp32")
    reference.set_weights(load_weights(loaded.checkpoint))
    x = np.random.default_rng(0).standard_normal((2, *loaded.graph.input_shape)).astype(np.float32)
    expected = np.asarray(reference.predict(x), np.float32)
    got = np.asarray(session.predict(x), np.float32)
    _, relative = agreement(got, expected)
    tolerance = TOLERANCE if precision == "fp32" else LOW_PRECISION_TOLERANCE
    if not relative <= tolerance:
        raise TrainingError(f"the {backend} backend ({session.device}, {precision}) computes {loaded.checkpoint.name}'s outputs "
                            f"{relative:.1e} relative away from the NumPy reference (> {tolerance:g}): not used; try --runtime onnxruntime or --backend numpy")
    known[key] = {"weights": stamp, "max_rel_error": relative}
    try:
        write_json(record, known)
    except OSError:
        pass  # checked again next time
    return f"verified against numpy ({relative:.1e} relative)"
