"""The HTTP application (Starlette): the Open Inference Protocol's endpoints, image
classification, metrics and the page, with the server's limits applied before any work.

Every error is ``{"error": "..."}`` with its status: 400 (a malformed request, an image
that does not decode), 401 (a missing or wrong token), 404, 413 (a body over
``max_body``), 415 (a content type the endpoint does not read), 503 (not ready, shutting
down, or the queue full: with ``Retry-After``), 504 (past ``timeout``). None of them harms
the next request: nothing is queued before it is checked.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import hmac
import json
import mimetypes
import time
from collections.abc import Awaitable, Callable, MutableMapping
from pathlib import Path
from typing import Any

import numpy as np
from starlette.applications import Starlette
from starlette.datastructures import UploadFile
from starlette.requests import ClientDisconnect, Request
from starlette.responses import FileResponse, HTMLResponse, JSONResponse, PlainTextResponse, Response
from starlette.routing import Route

from cnnspec.serving import protocol
from cnnspec.serving.batcher import Closed, QueueFull
from cnnspec.serving.model import ServedModel
from cnnspec.serving.page import page

OPEN = {"/", "/v2/health/live", "/v2/health/ready"}  # served without the token: the page's static part and the probes


class Refused(Exception):
    def __init__(self, status: int, message: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status, self.headers = status, headers or {}


def _error(status: int, message: str, headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status, headers=headers)


async def _body(request: Request, limit: int) -> bytes:
    """The body, refused with 413 as soon as it passes ``limit`` bytes (never read whole first)."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise Refused(413, f"the body is {int(declared):,} bytes; this server takes at most {limit:,} (--max-body)")
    chunks, size = [], 0
    try:
        async for chunk in request.stream():
            size += len(chunk)
            if size > limit:
                raise Refused(413, f"the body is over {limit:,} bytes; this server takes at most {limit:,} (--max-body)")
            chunks.append(chunk)
    except ClientDisconnect:
        raise Refused(400, "the client went away before the body arrived") from None
    return b"".join(chunks)


def _pixels_from_tensor(model: ServedModel, tensor: np.ndarray) -> np.ndarray:
    """An input tensor as raw pixels: UINT8 as they are; floats in [0, 1] scaled back (what
    ``predict`` does with a .npy batch)."""
    shape = model.input_shape
    if tensor.ndim == len(shape):
        tensor = tensor[None]
    if tuple(tensor.shape[1:]) != shape:
        raise protocol.BadRequest(f"input is {list(tensor.shape)}, the model takes [N, {', '.join(map(str, shape))}]")
    if tensor.dtype == np.uint8:
        return tensor
    scale = model.scorer.loaded.normalization.scale
    return tensor.astype(np.float32) / np.float32(scale)


async def _computed(model: ServedModel, pixels: np.ndarray) -> np.ndarray:
    try:
        future = model.batcher.submit(pixels)
    except QueueFull as exc:
        raise Refused(503, f"busy: {exc}; try again shortly", {"Retry-After": "1"}) from None
    except Closed:
        raise Refused(503, "shutting down: no new work", {"Retry-After": "5"}) from None
    try:
        return await asyncio.wait_for(future, model.limits.timeout)
    except TimeoutError:
        raise Refused(504, f"no answer within {model.limits.timeout:g} s (--timeout)") from None


def _images(request: Request, body: bytes, content_type: str) -> list[tuple[str, bytes]]:
    """(name, bytes) of each image a classify request carries."""
    if content_type.startswith("image/"):
        return [(request.query_params.get("name", "image"), body)]
    if content_type == "application/json":
        try:
            document = json.loads(body)
        except (ValueError, UnicodeDecodeError) as exc:
            raise protocol.BadRequest(f"the body is not JSON ({exc})") from None
        items = document.get("images") if isinstance(document, dict) else None
        if not isinstance(items, list) or not items:
            raise protocol.BadRequest('JSON needs "images": a list of base64 strings, or of {"name", "data"} objects')
        found: list[tuple[str, bytes]] = []
        for number, item in enumerate(items):
            name, data = (f"images[{number}]", item) if isinstance(item, str) else (
                (str(item.get("name") or f"images[{number}]"), item.get("data")) if isinstance(item, dict) else ("", None))
            if not isinstance(data, str):
                raise protocol.BadRequest(f"images[{number}] has no base64 data")
            try:
                found.append((name, base64.b64decode(data.split(",", 1)[-1] if data.startswith("data:") else data, validate=True)))
            except (binascii.Error, ValueError):
                raise protocol.BadRequest(f"images[{number}] is not base64") from None
        return found
    raise AssertionError(content_type)


def _count(request: Request, key: str, default: int) -> int:
    text = request.query_params.get(key, str(default))
    if not text.isdigit() or int(text) < 1:
        raise protocol.BadRequest(f"{key} is {text!r}: a whole number from 1")
    return int(text)


class Server:
    """The routes over one ``ServedModel``."""

    def __init__(self, model: ServedModel, token: str | None = None) -> None:
        self.model, self.token, self.draining = model, token, False
        prefix = f"/v2/models/{model.name}"
        routes = [
            Route("/", self.page),
            Route("/metrics", self.metrics),
            Route("/v2", self.server_metadata),
            Route("/v2/health/live", self.live),
            Route("/v2/health/ready", self.ready),
            Route(prefix, self.model_metadata),
            Route(f"{prefix}/ready", self.model_ready),
            Route(f"{prefix}/card", self.card),
            Route(f"{prefix}/infer", self.infer, methods=["POST"]),
            Route(f"{prefix}/classify", self.classify, methods=["POST"]),
            Route(f"{prefix}/similar", self.similar, methods=["POST"]),
            Route(f"{prefix}/similar/{{row:int}}", self.indexed_image),
        ]
        self.app = Starlette(routes=routes, exception_handlers={404: self._not_found, 405: self._not_allowed})
        self.app.add_middleware(_Guard, server=self)

    async def _not_found(self, request: Request, exc: Exception) -> Response:
        return _error(404, f"no endpoint {request.url.path}; the model is served at /v2/models/{self.model.name}")

    async def _not_allowed(self, request: Request, exc: Exception) -> Response:
        return _error(405, f"{request.method} is not allowed on {request.url.path}")

    # ---- metadata and health ----
    async def page(self, request: Request) -> Response:
        return HTMLResponse(page(self.model.name))

    async def metrics(self, request: Request) -> Response:
        return PlainTextResponse(self.model.metrics.text(), media_type="text/plain; version=0.0.4")

    async def server_metadata(self, request: Request) -> Response:
        from importlib.metadata import version

        return JSONResponse({"name": "cnnspec", "version": version("cnnspec"), "extensions": ["binary_tensor_data", "classify"]})

    async def live(self, request: Request) -> Response:
        return JSONResponse({"live": True})

    async def ready(self, request: Request) -> Response:
        ok = self.model.ready and not self.draining
        return JSONResponse({"ready": ok}, status_code=200 if ok else 503)

    async def model_ready(self, request: Request) -> Response:
        return await self.ready(request)

    async def model_metadata(self, request: Request) -> Response:
        return JSONResponse(self.model.metadata())

    async def card(self, request: Request) -> Response:
        return JSONResponse(self.model.card())

    # ---- work ----
    async def infer(self, request: Request) -> Response:
        body = await _body(request, self.model.limits.max_body)
        request_json, tensors = protocol.parse_request(body, request.headers.get(protocol.HEADER))
        if len(tensors) != 1:
            raise protocol.BadRequest(f"{len(tensors)} inputs; the model takes one, 'input'")
        names = protocol.wanted(request_json, ["logits", "probabilities"])
        logits = await _computed(self.model, _pixels_from_tensor(self.model, tensors[0]))
        outputs = {"logits": logits, "probabilities": self.model.probabilities(logits)}
        content, headers = protocol.response(self.model.name, request_json, {n: outputs[n] for n in names})
        return Response(content, headers=headers)

    async def classify(self, request: Request) -> Response:
        top = _count(request, "top_k", 5)
        items, pixels = await self._prepared(request)
        logits = await _computed(self.model, pixels)
        indices, probabilities = self.model.ranked(logits, top)
        results = [{"input": name, "top": [{"class": self.model.classes[i], "index": int(i), "probability": float(p)}
                                           for i, p in zip(indices[row], probabilities[row], strict=True)],
                    "row": row, "error": None} for row, (name, _) in enumerate(items)]
        return JSONResponse({"results": results})

    async def similar(self, request: Request) -> Response:
        if self.model.neighbours is None:
            raise Refused(404, "this server has no index: start it with --index X.index (from cnnspec embed)")
        k = _count(request, "k", 10)
        items, pixels = await self._prepared(request)
        return JSONResponse({"results": await self.model.neighbours.search([name for name, _ in items], pixels, k)})

    async def indexed_image(self, request: Request) -> Response:
        """The file of one of the index's images, by its row (the page shows neighbours with
        it): only the files the index lists, never a path the request names."""
        if self.model.neighbours is None:
            raise Refused(404, "this server has no index: start it with --index X.index (from cnnspec embed)")
        index, row = self.model.neighbours.index, int(request.path_params["row"])
        if not 0 <= row < len(index):
            raise Refused(404, f"the index has rows 0 to {len(index) - 1}")
        path = Path(index.paths[row])
        if not path.is_file():
            raise Refused(404, f"{path} is no longer there")
        kind = mimetypes.guess_type(path.name)[0] or "application/octet-stream"
        return FileResponse(path, media_type=kind if kind.startswith("image/") else "application/octet-stream")

    async def _prepared(self, request: Request) -> tuple[list[tuple[str, bytes]], np.ndarray]:
        """The images a request carries, by name, and their pixels as ``predict`` prepares them."""
        content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
        if content_type == "multipart/form-data":
            items = await self._uploads(request)
        elif content_type.startswith("image/") or content_type == "application/json":
            items = _images(request, await _body(request, self.model.limits.max_body), content_type)
        else:
            raise Refused(415, f"content type {content_type or 'none'!r}; classify reads image/* (one image), "
                               "multipart/form-data (uploads) or application/json (base64 images)")
        if len(items) > self.model.limits.max_images:
            raise Refused(413, f"{len(items)} images; one request may carry {self.model.limits.max_images}")
        prepared = await self.model.prepare([content for _, content in items])
        bad = [(name, why) for (name, _), why in zip(items, prepared, strict=True) if isinstance(why, str)]
        if bad:
            raise protocol.BadRequest("; ".join(f"{name}: {why}" for name, why in bad))
        return items, np.stack([p for p in prepared if isinstance(p, np.ndarray)])

    async def _uploads(self, request: Request) -> list[tuple[str, bytes]]:
        declared = request.headers.get("content-length")
        limit = self.model.limits.max_body
        if declared is None or not declared.isdigit():
            raise Refused(411, "an upload needs a Content-Length")
        if int(declared) > limit:
            raise Refused(413, f"the body is {int(declared):,} bytes; this server takes at most {limit:,} (--max-body)")
        form = await request.form(max_files=self.model.limits.max_images, max_fields=self.model.limits.max_images)
        items = [(value.filename or key, await value.read()) for key, value in form.multi_items() if isinstance(value, UploadFile)]
        await form.close()
        if not items:
            raise protocol.BadRequest("the upload holds no files")
        return items


class _Guard:
    """ASGI middleware: the token, readiness, the timing of every request, and errors as
    ``{"error": ...}``."""

    def __init__(self, app: Callable[..., Awaitable[None]], server: Server) -> None:
        self.app, self.server = app, server

    async def __call__(self, scope: MutableMapping[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started, status = time.perf_counter(), [500]
        path = scope["path"]

        async def sending(message: MutableMapping[str, Any]) -> None:
            if message["type"] == "http.response.start":
                status[0] = message["status"]
            await send(message)

        response: Response | None = None
        if self.server.token is not None and path not in OPEN:
            given = dict(scope["headers"]).get(b"authorization", b"").decode("latin-1")
            if not hmac.compare_digest(given.encode(), f"Bearer {self.server.token}".encode()):
                response = _error(401, "this server needs 'Authorization: Bearer TOKEN' (--token)", {"WWW-Authenticate": "Bearer"})
        if response is None and scope["method"] == "POST" and (self.server.draining or not self.server.model.ready):
            response = _error(503, "shutting down: no new work" if self.server.draining else "warming up", {"Retry-After": "5"})
        try:
            if response is None:
                await self.app(scope, receive, sending)
        except Refused as exc:
            response = _error(exc.status, str(exc), exc.headers)
        except protocol.BadRequest as exc:
            response = _error(400, str(exc))
        if response is not None:
            await response(scope, receive, sending)
        endpoint = path.rsplit("/", 1)[-1] if path.startswith("/v2/models/") else path
        self.server.model.metrics.request(endpoint or "/", status[0], time.perf_counter() - started)
