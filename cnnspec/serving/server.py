"""Running the application: uvicorn on the address asked for, the model warmed on a
thread while ``ready`` says 503, and SIGTERM (or Ctrl-C) handled as a load balancer
expects: ``ready`` turns 503 and new work is refused, the requests already in flight and
their queued rows finish, then the process exits 0."""

from __future__ import annotations

import errno
import signal
import socket
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

from cnnspec.errors import CnnspecError
from cnnspec.serving.app import Server
from cnnspec.serving.model import Limits, Neighbours, ServedModel


def build(run: Path, *, backend: str | None = None, name: str | None = None, runtime: str = "auto", device: str = "auto",
          limits: Limits | None = None, token: str | None = None, index: Path | None = None) -> Server:
    """The application over ``run``'s best checkpoint (or the checkpoint ``run`` names),
    with ``index`` (from ``cnnspec embed``) searched by the similar endpoint."""
    from cnnspec.api import lazy_opener
    from cnnspec.runs.loading import load_run

    chosen = backend or load_run(run).info["backend"]
    neighbours = None if index is None else Neighbours(index, lambda name: lazy_opener(backend or name), runtime=runtime, device=device)
    model = ServedModel(run, lazy_opener(chosen), name=name, runtime=runtime, device=device, limits=limits or Limits(), neighbours=neighbours)
    return Server(model, token)


def curl_lines(server: Server, address: str) -> list[str]:
    auth = " -H 'Authorization: Bearer $TOKEN'" if server.token else ""
    base = f"{address}/v2/models/{server.model.name}"
    return [f"curl{auth} --data-binary @image.jpg -H 'Content-Type: image/jpeg' '{base}/classify?top_k=5'",
            f"curl{auth} -F files=@a.png -F files=@b.png '{base}/classify'",
            *([f"curl{auth} --data-binary @image.jpg -H 'Content-Type: image/jpeg' '{base}/similar?k=10'"] if server.model.neighbours else []),
            f"curl {address}/v2/health/ready",
            f"curl{auth} {address}/metrics"]


def listenable(host: str, port: int) -> None:
    """Refuse, before anything starts, an address this process cannot listen on."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as uvicorn does
        try:
            probe.bind((host, port))
        except OSError as exc:
            hint = ": choose another with --port" if exc.errno == errno.EADDRINUSE else ""
            raise CnnspecError(f"cannot listen on {host}:{port} ({exc.strerror or exc}){hint}") from None


def run(server: Server, host: str, port: int, said: Callable[[str], None]) -> None:
    import uvicorn

    listenable(host, port)

    class _Draining(uvicorn.Server):
        def handle_exit(self, sig: int, frame: Any) -> None:
            server.draining = True  # ready: 503, POST: 503; in-flight requests finish
            super().handle_exit(sig, frame)

    config = uvicorn.Config(server.app, host=host, port=port, log_level="warning", lifespan="off")
    address = f"http://{'[' + host + ']' if ':' in host else host}:{port}"
    said(f"serving '{server.model.name}' at {address} ({server.model.runtime}); page: {address}/")
    for line in curl_lines(server, address):
        said(f"  {line}")
    warming = threading.Thread(target=server.model.warm, name="cnnspec-warm", daemon=True)
    warming.start()
    # uvicorn hands the signal that stopped it to the handler found before it started: a
    # drained stop is a success, so that handler does nothing (exit 0, not death by SIGTERM)
    for number in (signal.SIGTERM, signal.SIGINT):
        signal.signal(number, lambda sig, frame: None)
    try:
        _Draining(config).run()
    finally:
        warming.join()  # an engine thread still running at exit aborts the process
        server.model.close()
    said("stopped: every request in flight was answered")
