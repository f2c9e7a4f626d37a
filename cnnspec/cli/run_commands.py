"""Commands on a trained run, through cnnspec.inference: eval, predict, features, embed, similar, inspect, report."""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Annotated

import typer

from cnnspec.cli.common import (
    DeviceOpt,
    Engine,
    Format,
    RuntimeOpt,
    _fail_run,
    _run_errors,
    _said,
    _usage,
    stderr,
    stdout,
)
from cnnspec.errors import plural
from cnnspec.strictjson import strict_json


def eval_(
    run: Annotated[Path, typer.Argument(help="a run directory or one of its checkpoints")],
    data: Annotated[str | None, typer.Option(help="evaluate on other data (default: the run's validation split)")] = None,
    backend: Annotated[str | None, typer.Option("--backend", "-b", help="default: the run's backend")] = None,
    device: DeviceOpt = "auto",
    format: Annotated[Format, typer.Option("--format", "-f", help="table (for people) or json (for programs)")] = Format.table,
    runtime: RuntimeOpt = "auto",
) -> None:
    """Loss, accuracy, top-k, per-class accuracy and the confusion matrix of a run."""
    from cnnspec import api

    try:
        result = api.evaluate(run, data=data, backend=backend, device=device, runtime=runtime, said=_said if format is Format.table else None)
    except _run_errors() as exc:
        _fail_run(exc)
    if format is Format.json:
        sys.stdout.write(strict_json(result, indent=2) + "\n")
        return
    from cnnspec.views.check import render_evaluation

    render_evaluation(result, stdout)


def features(
    run: Annotated[Path, typer.Argument(help="a run directory or one of its checkpoints")],
    data: Annotated[str, typer.Option(help="images: class folders, a manifest, tar shards, or array data")],
    layer: Annotated[str, typer.Option(help="the layer whose output is wanted (e.g. the one before the classifier)")],
    out: Annotated[Path, typer.Option("--output", "-o", help="the safetensors file to write")] = Path("features.safetensors"),
    backend: Annotated[str | None, typer.Option("--backend", "-b", help="default: the run's backend")] = None,
    device: DeviceOpt = "auto",
    runtime: RuntimeOpt = "auto",
) -> None:
    """A layer's output for every image (bottleneck features), saved with labels, class names and paths."""
    from cnnspec import api

    try:
        result = api.features(run, data, layer, out=out, backend=backend, device=device, runtime=runtime, said=_said)
    except _run_errors() as exc:
        _fail_run(exc)
    shape = " x ".join(map(str, result.values.shape))
    stdout.print(f"{out}: features {shape} from '{layer}', {len(result.classes)} classes", markup=False, soft_wrap=True)


def embed(
    run: Annotated[Path, typer.Argument(help="a run directory or one of its checkpoints")],
    data: Annotated[str, typer.Option(help="images: class folders, a manifest, tar shards, or array data")],
    out: Annotated[Path, typer.Option("--output", "-o", help="the index file")] = Path("embeddings.index"),
    layer: Annotated[str | None, typer.Option(help="the layer whose output is the embedding [default: the input of the last dense layer]")] = None,
    update: Annotated[bool, typer.Option("--update", help="embed only new and changed images of the index at -o; drop deleted ones")] = False,
    metric: Annotated[str, typer.Option(help="cosine (embeddings L2-normalised) or l2")] = "cosine",
    dtype: Annotated[str, typer.Option(help="float32 or float16 storage")] = "float32",
    approximate: Annotated[
        bool | None, typer.Option("--approximate/--exact-only", help="also build an approximate (FAISS) structure [default: from 200,000 images]")
    ] = None,
    backend: Annotated[str | None, typer.Option("--backend", "-b", help="default: the run's backend")] = None,
    device: DeviceOpt = "auto",
    runtime: RuntimeOpt = "auto",
    engine: Annotated[Engine, typer.Option(help="local, or spark: embed on Spark and write Parquet (path, embedding) to --output")] = Engine.local,
    master: Annotated[str | None, typer.Option(help="--engine spark: the Spark master URL [default: local[*]]")] = None,
) -> None:
    """Embed a collection of images into a searchable index (see `similar`)."""
    if engine is Engine.spark:
        from cnnspec.runs.loading import load_run
        from cnnspec.search.index import default_layer

        try:
            chosen = layer or default_layer(load_run(run).graph)
        except _run_errors() as exc:
            _fail_run(exc)
        _score_on_spark(run, data, out, layer=chosen, embed_only=True, master=master, backend=backend, runtime=runtime)
        return
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    from cnnspec import api

    bar = Progress(TextColumn("embedding"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(), console=stderr, transient=True,
                   disable=not stderr.is_terminal)
    task = bar.add_task("embed", total=None)
    try:
        with bar:
            report = api.embed(run, data, layer=layer, out=out, update=update, metric=metric, dtype=dtype, approximate=approximate, backend=backend,
                               device=device, progress=lambda done, total: bar.update(task, completed=done, total=total), runtime=runtime, said=_said)
    except _run_errors() as exc:
        _fail_run(exc)
    index = report.index
    what = (f"{report.added} added, {report.changed} changed, {report.removed} removed, {report.kept} kept" if update
            else f"{len(index):,} images")
    structure = f"; approximate structure {out.name}.ivf" if index.approximate is not None else ""
    stdout.print(f"{out}: {what}; {index.embeddings.shape[1]} values each from '{index.meta['layer']}' ({index.metric}, {index.meta['dtype']}){structure}",
                 markup=False, soft_wrap=True)
    if report.skipped:
        stdout.print(f"skipped {len(report.skipped)} unreadable: {', '.join(report.skipped[:3])}", markup=False, soft_wrap=True)


def similar(
    index: Annotated[Path, typer.Argument(help="an index written by `cnnspec embed`")],
    queries: Annotated[list[Path] | None, typer.Argument(help="query images")] = None,
    k: Annotated[int, typer.Option("-k", min=1, help="neighbours per query")] = 10,
    sheet: Annotated[Path | None, typer.Option(help="also draw a contact sheet PNG: each query and its neighbours")] = None,
    duplicates: Annotated[bool, typer.Option("--duplicates", help="instead of queries: groups of near-duplicates in the index")] = False,
    threshold: Annotated[float, typer.Option(help="--duplicates: the cosine similarity that makes two images duplicates")] = 0.95,
    exact: Annotated[bool, typer.Option("--exact", help="search every embedding even where an approximate structure exists")] = False,
    backend: Annotated[str | None, typer.Option("--backend", "-b", help="default: the run's backend")] = None,
    device: DeviceOpt = "auto",
    format: Annotated[Format, typer.Option("--format", "-f", help="table (for people) or json (for programs)")] = Format.table,
) -> None:
    """The images of an index nearest to each query, embedded the way the index was."""
    from cnnspec import api
    from cnnspec.search.index import Index, contact_sheet, duplicate_groups

    if duplicates:
        try:
            loaded = Index.load(index)
            groups = duplicate_groups(loaded, threshold)
        except _run_errors() as exc:
            _fail_run(exc)
        if format is Format.json:
            sys.stdout.write(strict_json([[loaded.paths[i] for i in group] for group in groups], indent=2) + "\n")
            return
        stdout.print(f"{len(groups)} group(s) of near-duplicates (cosine similarity >= {threshold:g}) among {len(loaded):,} images", markup=False)
        for number, group in enumerate(groups, 1):
            stdout.print(f"group {number} ({len(group)} images):", markup=False)
            for i in group:
                stdout.print(f"  {loaded.paths[i]}", markup=False, soft_wrap=True)
        return
    if not queries:
        _usage("similar needs query images (or --duplicates)")
    try:
        scores, positions, loaded = api.similar(index, list(queries), k=k, exact=exact, backend=backend, device=device)
        if sheet is not None:
            contact_sheet(list(queries), scores, positions, loaded, sheet)
    except _run_errors() as exc:
        _fail_run(exc)
    name = "similarity" if loaded.metric == "cosine" else "distance"
    results = loaded.neighbours([str(query) for query in queries], scores, positions)
    if format is Format.json:
        sys.stdout.write(strict_json(results, indent=2) + "\n")
        return
    width = max((len(n["class"]) for item in results for n in item["neighbours"]), default=0)
    for item in results:
        stdout.print(f"{item['query']}:", markup=False, soft_wrap=True)
        for rank, neighbour in enumerate(item["neighbours"], 1):
            stdout.print(f"  {rank:>3}  {neighbour[name]:.4f}  {neighbour['class']:<{width}}  {neighbour['path']}", markup=False, soft_wrap=True)


def _score_on_spark(run: Path, data: str | None, out: Path | None, *, top: int = 5, layer: str | None = None, embed_only: bool = False,
                    master: str | None, backend: str | None, runtime: str = "auto") -> None:
    from cnnspec.distributed.spark import SparkError, score

    if data is None or out is None:
        _usage("--engine spark needs --data (a folder, file or glob of images) and --output (a .parquet folder to write)")
    failures: tuple[type[BaseException], ...] = (SparkError, *_run_errors())
    try:
        rows = score(run, data, out, top=top, layer=layer, embed_only=embed_only, master=master, backend=backend, runtime=runtime, said=_said)
    except failures as exc:
        _fail_run(exc)
    what = f"embeddings from '{layer}'" if embed_only else f"top {top} classes" + (f" and embeddings from '{layer}'" if layer else "")
    stdout.print(f"{out}: {rows:,} images, {what} (Parquet; unreadable images have their reason in 'error')", markup=False, soft_wrap=True)


def predict(
    run: Annotated[Path, typer.Argument(help="a run directory or one of its checkpoints")],
    inputs: Annotated[list[str] | None, typer.Argument(help="image files, folders (searched recursively), globs, or .npy batches (N x C x H x W, float32 in [0, 1])")] = None,
    top: Annotated[int, typer.Option("--top", "-k", min=1, help="how many of the most likely classes to show")] = 5,
    backend: Annotated[str | None, typer.Option("--backend", "-b", help="default: the run's backend")] = None,
    device: DeviceOpt = "auto",
    format: Annotated[Format, typer.Option("--format", "-f", help="table (for people) or json (for programs)")] = Format.table,
    output: Annotated[Path | None, typer.Option("--output", "-o", help="save the raw network outputs as .npy (--engine spark: the Parquet output)")] = None,
    runtime: RuntimeOpt = "auto",
    batch_size: Annotated[int | None, typer.Option("--batch-size", min=1, help="images per engine call [default: the run's train.batch_size]")] = None,
    engine: Annotated[Engine, typer.Option(help="local, or spark: score --data on Spark and write Parquet to --output")] = Engine.local,
    data: Annotated[str | None, typer.Option(help="--engine spark: a folder (searched recursively), file or glob of images")] = None,
    master: Annotated[str | None, typer.Option(help="--engine spark: the Spark master URL [default: local[*]]")] = None,
) -> None:
    """The top classes, with probabilities, for each input."""
    if engine is Engine.spark:
        _score_on_spark(run, data, output, top=top, master=master, backend=backend, runtime=runtime)
        return
    if not inputs:
        _usage("predict needs INPUTS (image files, folders, globs or .npy batches), or --engine spark --data PATH --output scores.parquet")
    from cnnspec import api

    try:
        results, outputs = api.predict(run, list(inputs), top=top, backend=backend, device=device, runtime=runtime,
                                       said=_said if format is Format.table else None, batch_size=batch_size)
        if output is not None:
            import numpy as np

            from cnnspec.runs.files import atomic_write

            atomic_write(output, lambda p: np.save(open(p, "wb"), outputs))
    except _run_errors() as exc:
        _fail_run(exc)
    failed = [item for item in results if item["error"] is not None]
    if format is Format.json:
        sys.stdout.write(strict_json(results, indent=2) + "\n")
    else:
        for item in results:
            if item["error"] is None:
                ranked = ", ".join(f"{entry['class']} {entry['probability']:.3f}" for entry in item["top"])
                stdout.print(f"{item['input']}: {ranked}", markup=False, soft_wrap=True)
            else:
                stderr.print(f"{item['input']}: {item['error']}", markup=False, soft_wrap=True)
    if failed:
        stderr.print(f"{len(failed)} of {len(results)} inputs could not be read (named above); the others were scored", markup=False, soft_wrap=True)
        raise typer.Exit(1)


def inspect(
    run: Annotated[Path, typer.Argument(help="a run directory or one of its checkpoints")],
    inputs: Annotated[list[Path], typer.Argument(help="image files, or .npy batches (N x C x H x W, float32 in [0, 1])")],
    out: Annotated[Path, typer.Option("--out", "-o", help="the page to write")] = Path("inspect.html"),
    top: Annotated[int, typer.Option("--top", "-k", min=1, help="how many of the most likely classes to show")] = 5,
    backend: Annotated[str | None, typer.Option("--backend", "-b", help="default: the run's backend")] = None,
    device: DeviceOpt = "auto",
) -> None:
    """One HTML page of the network from the inside, for each input: every layer's
    activations and gradients, the first filters, saliency and Grad-CAM."""
    from cnnspec.runs.files import write_text
    from cnnspec.views import inspect_page as inspection

    start = time.perf_counter()
    try:
        seen = inspection.inspect(run, list(inputs), backend=backend, device=device, top=top)
        page = inspection.render(seen)
        write_text(out, page)
    except _run_errors() as exc:
        _fail_run(exc)
    stdout.print(f"wrote {out} ({len(page.encode()) / 2**20:.1f} MiB): {len(seen.images)} image(s), {len(seen.graph.nodes)} layers each, "
                 f"{time.perf_counter() - start:.1f} s", markup=False, soft_wrap=True)


def report(
    run: Annotated[Path, typer.Argument(help="a run directory or one of its checkpoints")],
    out: Annotated[Path | None, typer.Option("--out", "-o", help="the page to write [default: RUN/report.html]")] = None,
    data: Annotated[str | None, typer.Option(help="evaluate on other data than the run's validation split")] = None,
    backend: Annotated[str | None, typer.Option("--backend", "-b", help="default: the run's backend")] = None,
    device: DeviceOpt = "auto",
) -> None:
    """The run on one HTML page: network, hyperparameters, curves, confusion matrix,
    per-class accuracy, the most confident mistakes, timings, environment."""
    from cnnspec.runs.files import write_text
    from cnnspec.runs.folder import RunDir
    from cnnspec.views import run_page as reporting

    try:
        page, figures = reporting.report(run, backend=backend, device=device, data=data)
        target = out or RunDir.find(run)[0].path / "report.html"
        write_text(target, page)
    except _run_errors() as exc:
        _fail_run(exc)
    evaluation = figures["evaluation"]
    stdout.print(f"wrote {target} ({len(page.encode()) / 2**20:.1f} MiB): {plural(figures['epochs'], 'epoch')}, accuracy {evaluation['accuracy']:.4f} on "
                 f"{evaluation['images']:,} images of {figures['data']}", markup=False, soft_wrap=True)
