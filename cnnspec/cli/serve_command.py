"""``cnnspec serve``: a trained run as a model server (``cnnspec.serving``)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from cnnspec.cli.common import DeviceOpt, RuntimeOpt, _fail_run, _run_errors, _said, _usage


def serve(
    run: Annotated[Path, typer.Argument(help="a run folder (its best checkpoint) or one of its checkpoints")],
    host: Annotated[str, typer.Option(help="the address to listen on; 0.0.0.0 for every interface")] = "127.0.0.1",
    port: Annotated[int, typer.Option(min=0, max=65535, help="the port to listen on")] = 8000,
    name: Annotated[str | None, typer.Option(help="the model's name in URLs [default: the spec's name]")] = None,
    index: Annotated[Path | None, typer.Option(help="an index from cnnspec embed: POST .../similar answers with its nearest images")] = None,
    backend: Annotated[str | None, typer.Option("--backend", "-b", help="default: the run's backend")] = None,
    runtime: RuntimeOpt = "auto",
    device: DeviceOpt = "auto",
    max_batch: Annotated[int, typer.Option(min=1, help="images the engine computes together")] = 32,
    max_delay_ms: Annotated[float, typer.Option(min=0, help="how long a batch may wait to fill (0: never waits)")] = 0.0,
    max_queue: Annotated[int, typer.Option(min=0, help="images waiting, past which requests get 503 (0: 32 x --max-batch)")] = 0,
    timeout: Annotated[float, typer.Option(min=0.001, help="seconds a request may take, past which it gets 504")] = 30.0,
    max_body: Annotated[int, typer.Option(min=1, help="bytes a request body may have, past which it gets 413")] = 16 * 2**20,
    token: Annotated[str | None, typer.Option(envvar="CNNSPEC_TOKEN", help="require 'Authorization: Bearer TOKEN' (not for health or the page)")] = None,
) -> None:
    """Serve a trained run over HTTP: the Open Inference Protocol (KServe v2), image
    classification, Prometheus metrics and a page, with dynamic batching."""
    import importlib.util

    if importlib.util.find_spec("starlette") is None or importlib.util.find_spec("uvicorn") is None:
        _usage("cnnspec serve needs the serve extra: pip install 'cnnspec[serve]'")
    if host not in ("127.0.0.1", "localhost", "::1") and token is None:
        _said(f"warning: listening on {host} without --token: anyone who reaches this address can use the model")
    from cnnspec.serving.model import Limits
    from cnnspec.serving.server import build, listenable
    from cnnspec.serving.server import run as run_server

    limits = Limits(max_batch=max_batch, max_delay=max_delay_ms / 1000, max_queue=max_queue or 32 * max_batch, timeout=timeout,
                    max_body=max_body)
    try:
        listenable(host, port)  # before the model loads: a busy port is said at once
        server = build(run, backend=backend, name=name, runtime=runtime, device=device, limits=limits, token=token, index=index)
        run_server(server, host, port, _said)
    except _run_errors() as exc:
        _fail_run(exc)
