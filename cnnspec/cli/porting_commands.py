"""Commands that carry a run to other frameworks and back: verify, export, import."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated

import typer

from cnnspec.agreement import TOLERANCE
from cnnspec.cli.common import (
    FORMATS_HELP,
    DeviceOpt,
    Format,
    _fail_run,
    _input_size,
    _run_errors,
    _usage,
    stderr,
    stdout,
)
from cnnspec.graph.load import SpecNotFound
from cnnspec.strictjson import strict_json


def verify(
    target: Annotated[str, typer.Argument(help="a spec or zoo name (seeded weights), or a run directory/checkpoint")],
    backends: Annotated[
        str | None, typer.Option(help="comma-separated; the first is the reference [default: every installed backend]")
    ] = None,
    device: DeviceOpt = "cpu",
    input_size: Annotated[str | None, typer.Option("--input-size", help="H,W: check a big model at a smaller input")] = None,
    batch: Annotated[int, typer.Option(min=1, help="random inputs compared")] = 2,
    seed: Annotated[int, typer.Option(help="seeds the random inputs (and a spec's initial weights)")] = 0,
    tolerance: Annotated[float, typer.Option(min=0.0, help="largest relative error allowed")] = TOLERANCE,
    weights: Annotated[Path | None, typer.Option(help="a .safetensors checkpoint for the spec (from `cnnspec import`)")] = None,
    format: Annotated[Format, typer.Option("--format", "-f", help="table (for people) or json (for programs)")] = Format.table,
) -> None:
    """Run identical weights and inputs through several backends and compare every layer."""
    from cnnspec.porting.verify import load_target
    from cnnspec.porting.verify import verify as run_verification

    size = _input_size(input_size)
    try:
        graph, arrays, source = load_target(target, size, weights)
        from cnnspec.backends import installed_backends

        names = installed_backends() if backends is None else [b.strip() for b in backends.split(",") if b.strip()]
        result = run_verification(graph, names, weights=arrays,
                                  weights_from=source, device=device, batch=batch, seed=seed, tolerance=tolerance)
    except SpecNotFound as exc:
        _usage(str(exc))
    except _run_errors() as exc:
        _fail_run(exc)
    if format is Format.json:
        sys.stdout.write(strict_json(result.as_json(), indent=2) + "\n")
    else:
        from cnnspec.views.check import render_verification

        render_verification(result, stdout)
    first = result.first_divergence
    if first is not None:
        worst = max(first.errors, key=lambda b: first.errors[b][1])
        stderr.print(
            f"cnnspec: error: {worst} diverges from {result.reference} first at layer '{first.layer}' ({first.kind}): "
            f"relative error {first.errors[worst][1]:.2e} > {tolerance:g}",
            markup=False, soft_wrap=True,
        )
        raise typer.Exit(1)


def export(
    target: Annotated[str, typer.Argument(help="a spec or zoo name (fresh weights), or a run directory/checkpoint")],
    to: Annotated[str, typer.Option("--to", "-t", help=FORMATS_HELP)],
    out: Annotated[Path | None, typer.Option("--out", "-o", help="where to write [default: NAME.SUFFIX here, or RUN/exports/]")] = None,
    opset: Annotated[int | None, typer.Option(help="ONNX opset (13 and up) [default: 17]")] = None,
    weights: Annotated[Path | None, typer.Option(help="a .safetensors checkpoint for the spec (from `cnnspec import`)")] = None,
    input_size: Annotated[str | None, typer.Option("--input-size", help="H,W: export a spec at another input size")] = None,
    tolerance: Annotated[float, typer.Option(min=0.0, help="largest relative error allowed")] = TOLERANCE,
    no_preprocessing: Annotated[
        bool, typer.Option("--no-preprocessing", help="a run's export takes inputs already scaled and normalised (default: raw pixels in [0, 1], as predict)")
    ] = False,
) -> None:
    """Write a model another framework runs, verified against cnnspec before it is reported."""
    from cnnspec.porting import exporting
    from cnnspec.porting.verify import load_target

    if to not in exporting.FORMATS and to not in exporting.DIAGRAMS:
        from cnnspec.errors import did_you_mean

        _usage(f"unknown format '{to}'{did_you_mean(to, [*exporting.FORMATS, *exporting.DIAGRAMS])}; use {FORMATS_HELP}")
    try:
        graph, arrays, source = load_target(target, _input_size(input_size), weights)
        path = out or exporting.default_path(graph, to, target)
        if to in exporting.DIAGRAMS:
            from cnnspec.views.draw import draw

            draw(graph, path.with_suffix(exporting.DIAGRAMS[to]) if out is None else path)
            stdout.print(f"wrote {path}", markup=False)
            return
        if arrays is None:
            from cnnspec.graph.weights import initial_weights

            arrays = initial_weights(graph, 0)
            stderr.print(f"note: {target} is a spec, not a trained run: exporting freshly initialised weights (seed 0)",
                         markup=False, soft_wrap=True)
        extra = exporting.run_preprocessing(Path(target)) if Path(target).is_dir() else {}
        preprocessing = None
        if extra and not no_preprocessing:
            from cnnspec.runs.loading import load_run

            preprocessing = load_run(Path(target)).normalization
        with stderr.status(f"exporting {graph.name} to {to}: build, run, compare, write, reload, compare again"):
            report = exporting.export(graph, arrays, to, path, weights_from=source, options={"opset": opset},
                                      tolerance=tolerance, extra_metadata=extra, preprocessing=preprocessing)
    except SpecNotFound as exc:
        _usage(str(exc))
    except (*_run_errors(), exporting.ExportFailed, LookupError) as exc:  # type: ignore[misc]
        _fail_run(exc)
    stdout.print(
        f"wrote {report.path} ({report.format}, {report.bytes / 2**20:.1f} MiB): verified against the {report.reference} "
        f"backend on a batch of {report.batch[0]}, max abs error {report.max_abs_error:.2e}, "
        f"max relative {report.max_rel_error:.2e}; {report.metadata_in}",
        markup=False, soft_wrap=True,
    )
    if preprocessing is not None:
        stdout.print(
            f"inputs are N x {' x '.join(map(str, graph.input_shape))} float32 raw pixels in [0, 1] (8-bit images / 255), as `cnnspec predict` "
            f"takes .npy batches: the run's scaling and normalisation are the model's first layer, '{exporting.PREPROCESS}' "
            f"(--no-preprocessing leaves them to you); verified against predict's path on the same pixels",
            markup=False, soft_wrap=True,
        )
    elif extra:
        norm = json.loads(extra["cnnspec.preprocessing"])
        stdout.print(
            f"inputs are N x {' x '.join(map(str, graph.input_shape))} float32, prepared as in training: x * {norm['scale']:.6g}, "
            f"then (x - mean) / std per channel with mean {[round(m, 4) for m in norm['mean']]}, "
            f"std {[round(v, 4) for v in norm['std']]}" + ("" if report.metadata_in.startswith("no ") else " (stored in the metadata)"),
            markup=False, soft_wrap=True,
        )
    if extra:
        try:
            recipe = exporting.write_preparation(Path(target), report.path, preprocessing is not None) if len(graph.input_shape) == 3 else None
        except (*_run_errors(),) as exc:
            _fail_run(exc)
        stdout.print(f"image files are prepared first, as predict prepares them: {extra['cnnspec.image_preparation']}"
                     + (f"; in plain Pillow and NumPy: prepare(path) in {recipe}" if recipe is not None else "")
                     + f"; outputs are {extra['cnnspec.outputs']}", markup=False, soft_wrap=True)


def import_(
    model: Annotated[Path, typer.Argument(help="a model (.onnx, .keras, full-model .h5); or a PyTorch state_dict (.pt, .pth) or Keras .weights.h5 with --spec")],
    out: Annotated[Path | None, typer.Option("--out", "-o", help="the spec to write (.yaml; a model) or the checkpoint (.safetensors; weights)")] = None,
    spec: Annotated[str | None, typer.Option(help="the spec or zoo name the weights belong to (state_dict, .weights.h5)")] = None,
    run: Annotated[Path | None, typer.Option(help="with --spec: write the weights as a run directory, for predict, eval, inspect and export")] = None,
    classes: Annotated[Path | None, typer.Option(help="with --run: a text file of class names, one a line, in output order")] = None,
    normalize: Annotated[str, typer.Option(help="with --run: auto (ImageNet's mean and std for 3 channels, else [0, 1]), imagenet, unit or none")] = "auto",
) -> None:
    """Bring a model in: ONNX or Keras to a spec and checkpoint; torchvision or Keras weights to a checkpoint or a run."""
    from cnnspec.porting import importing

    if (classes is not None or normalize != "auto") and run is None:
        _usage("--classes and --normalize describe a run: add --run DIR")
    try:
        written = importing.import_model(model, out, spec, run, classes, normalize)
    except SpecNotFound as exc:
        _usage(str(exc))
    except (*_run_errors(), LookupError) as exc:  # type: ignore[misc]
        _fail_run(exc)
    for line in written:
        stdout.print(line, markup=False, soft_wrap=True)
