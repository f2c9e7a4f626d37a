"""`cnnspec serve`: the Open Inference Protocol (JSON and binary tensors), image
classification in three encodings, the limits and their statuses, the token, metrics, the
page, dynamic batching, and SIGTERM on a real server. Answers are compared with what
`cnnspec predict` computes for the same inputs, by the project's agreement rule."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import io
import json
import os
import signal
import socket
import struct
import subprocess
import sys
import threading
import time
import urllib.request
import zlib
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("starlette", reason="cnnspec serve needs the serve extra")
pytest.importorskip("httpx2", reason="Starlette's test client needs httpx2 (the dev extra)")
from browser import Browser, chromium
from PIL import Image
from starlette.testclient import TestClient

import cnnspec
from cnnspec import api
from cnnspec.agreement import assert_agrees
from cnnspec.serving import protocol
from cnnspec.serving.batcher import Batcher, QueueFull
from cnnspec.serving.metrics import Metrics
from cnnspec.serving.model import Limits
from cnnspec.serving.server import build

pytest.importorskip("torch")


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("serve") / "lenet"
    cnnspec.train("lenet5", out=out, epochs=1, **{"data.limit": 256, "batch_size": 32})  # type: ignore[arg-type]
    return out


@pytest.fixture(scope="module")
def images(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    folder = tmp_path_factory.mktemp("images")
    rng = np.random.default_rng(0)
    paths = []
    for i in range(3):  # of other sizes and modes than the network's 1 x 32 x 32: prepared as predict prepares them
        path = folder / f"digit{i}.png"
        Image.fromarray(rng.integers(0, 255, (28 + 4 * i, 30, 3), dtype=np.uint8)).save(path)
        paths.append(path)
    return paths


def client_for(run: Path, **options: object) -> TestClient:
    limits = {key: options.pop(key) for key in list(options) if key in Limits.__dataclass_fields__}
    server = build(run, runtime=str(options.pop("runtime", "backend")), limits=Limits(**limits), **options)  # type: ignore[arg-type]
    server.model.warm()
    return TestClient(server.app)


@pytest.fixture(scope="module")
def client(run: Path) -> TestClient:
    return client_for(run)


def test_health_and_metadata_follow_the_protocol(run: Path) -> None:
    server = build(run, runtime="backend")
    c = TestClient(server.app)
    assert c.get("/v2/health/live").json() == {"live": True}
    assert c.get("/v2/health/ready").status_code == 503  # not warmed yet
    assert c.post("/v2/models/lenet5/infer", json={}).status_code == 503
    server.model.warm()
    assert c.get("/v2/health/ready").json() == {"ready": True} and c.get("/v2/models/lenet5/ready").status_code == 200
    assert c.get("/v2").json()["extensions"] == ["binary_tensor_data", "classify"]
    meta = c.get("/v2/models/lenet5").json()
    assert meta["inputs"] == [{"name": "input", "datatype": "FP32", "shape": [-1, 1, 32, 32], "parameters": {"range": "[0, 1]; or UINT8 pixels 0..255"}}]
    assert [(o["name"], o["shape"]) for o in meta["outputs"]] == [("logits", [-1, 10]), ("probabilities", [-1, 10])]
    assert c.get("/v2/models/other").json()["error"].startswith("no endpoint /v2/models/other")
    server.draining = True  # what SIGTERM sets: the balancer stops sending, new work is refused
    assert c.get("/v2/health/ready").status_code == 503
    refused = c.post("/v2/models/lenet5/infer", json={})
    assert refused.status_code == 503 and refused.json() == {"error": "shutting down: no new work"} and refused.headers["retry-after"] == "5"


def test_infer_gives_predicts_numbers_in_json_and_binary(run: Path, client: TestClient, tmp_path: Path) -> None:
    x = np.random.default_rng(1).uniform(0, 1, (3, 1, 32, 32)).astype(np.float32)
    np.save(tmp_path / "x.npy", x)
    _, expected = api.predict(run, [tmp_path / "x.npy"], runtime="backend")
    answer = client.post("/v2/models/lenet5/infer", json={"id": "7", "inputs": [
        {"name": "input", "datatype": "FP32", "shape": list(x.shape), "data": x.reshape(-1).tolist()}]})
    assert answer.status_code == 200, answer.text
    body = answer.json()
    assert body["id"] == "7" and body["model_name"] == "lenet5"
    logits, probabilities = (np.array(o["data"], np.float32).reshape(o["shape"]) for o in body["outputs"])
    assert_agrees(logits, expected)
    assert np.allclose(probabilities.sum(axis=1), 1, atol=1e-5)
    # the binary extension, both ways, as Triton's clients write it; UINT8 pixels too
    pixels = np.round(x * 255).astype(np.uint8)
    head = json.dumps({"inputs": [{"name": "input", "datatype": "UINT8", "shape": list(x.shape), "parameters": {"binary_data_size": pixels.size}}],
                       "outputs": [{"name": "logits", "parameters": {"binary_data": True}}]}).encode()
    answer = client.post("/v2/models/lenet5/infer", content=head + pixels.tobytes(),
                         headers={protocol.HEADER: str(len(head)), "content-type": "application/octet-stream"})
    assert answer.status_code == 200, answer.text
    cut = int(answer.headers[protocol.HEADER])
    header = json.loads(answer.content[:cut])
    assert [o["name"] for o in header["outputs"]] == ["logits"]
    binary = np.frombuffer(answer.content[cut:], "<f4").reshape(header["outputs"][0]["shape"])
    assert_agrees(binary, expected, 1e-2)  # the pixels were rounded to 8 bits


def test_classify_prepares_images_as_predict_does(run: Path, client: TestClient, images: list[Path]) -> None:
    results, _ = api.predict(run, images, runtime="backend", top=3)
    raw = client.post("/v2/models/lenet5/classify?top_k=3", content=images[0].read_bytes(), headers={"content-type": "image/png"})
    upload = client.post("/v2/models/lenet5/classify?top_k=3", files=[("files", (p.name, p.read_bytes(), "image/png")) for p in images])
    encoded = client.post("/v2/models/lenet5/classify?top_k=3", json={"images": [
        {"name": p.name, "data": base64.b64encode(p.read_bytes()).decode()} for p in images]})
    for answer, count in ((raw, 1), (upload, 3), (encoded, 3)):
        assert answer.status_code == 200, answer.text
        got = answer.json()["results"]
        assert len(got) == count
        for mine, theirs in zip(got, results, strict=False):
            assert [e["index"] for e in mine["top"]] == [e["index"] for e in theirs["top"]]
            assert_agrees(np.array([e["probability"] for e in mine["top"]]), np.array([e["probability"] for e in theirs["top"]]))
    assert [r["input"] for r in upload.json()["results"]] == [p.name for p in images]


def _bomb() -> bytes:
    """A PNG whose header claims 20,000 x 20,000 pixels: refused before decoding."""
    buffer = io.BytesIO()
    Image.new("L", (8, 8)).save(buffer, format="PNG")
    data = bytearray(buffer.getvalue())
    ihdr = data[12:29]
    ihdr[4:12] = struct.pack(">II", 20000, 20000)
    data[12:29] = ihdr
    data[29:33] = struct.pack(">I", zlib.crc32(bytes(ihdr)))
    return bytes(data)


def test_bad_requests_get_their_status_and_the_next_request_is_served(run: Path, images: list[Path]) -> None:
    c = client_for(run, max_body=50_000)
    url = "/v2/models/lenet5/classify"
    cases = [
        (c.post(url, content=b"x" * 60_000, headers={"content-type": "image/png"}), 413, "takes at most 50,000"),
        (c.post(url, content=b"hello", headers={"content-type": "text/plain"}), 415, "content type 'text/plain'"),
        (c.post(url, content=images[0].read_bytes()[:100], headers={"content-type": "image/png"}), 400, "truncated or corrupt image"),
        (c.post(url, content=_bomb(), headers={"content-type": "image/png"}), 400, "decompression bomb"),
        (c.post(url, json={"images": ["not base64!"]}), 400, "images[0] is not base64"),
        (c.post("/v2/models/lenet5/infer", json={"inputs": [{"name": "input", "datatype": "FP32", "shape": [1, 2], "data": [1, 2]}]}), 400,
         "input is [1, 2], the model takes [N, 1, 32, 32]"),
        (c.post("/v2/models/lenet5/infer", content=b"{", headers={"content-type": "application/json"}), 400, "the body is not JSON"),
        (c.get("/v2/models/lenet5/infer"), 405, "GET is not allowed"),
    ]
    for answer, status, said in cases:
        assert answer.status_code == status and said in answer.json()["error"], (status, answer.text)
    good = c.post(url, content=images[0].read_bytes(), headers={"content-type": "image/png"})
    assert good.status_code == 200 and len(good.json()["results"]) == 1


def test_a_token_guards_everything_but_health_and_the_page(run: Path, images: list[Path]) -> None:
    c = client_for(run, token="s3cret")
    assert c.get("/v2/health/ready").status_code == 200 and c.get("/").status_code == 200
    for headers in ({}, {"Authorization": "Bearer wrong"}):
        answer = c.get("/v2/models/lenet5", headers=headers)
        assert answer.status_code == 401 and answer.headers["www-authenticate"] == "Bearer"
    assert c.get("/metrics").status_code == 401
    assert c.get("/v2/models/lenet5", headers={"Authorization": "Bearer s3cret"}).status_code == 200


def test_a_slow_engine_gives_504_and_a_full_queue_503(run: Path) -> None:
    server = build(run, runtime="backend", limits=Limits(timeout=0.2, max_queue=2, max_batch=1))
    server.model.warm()
    real = server.model.batcher._compute
    server.model.batcher._compute = lambda x: (time.sleep(0.5), real(x))[1]
    c = TestClient(server.app)
    body = {"inputs": [{"name": "input", "datatype": "UINT8", "shape": [1, 1, 32, 32], "data": [0] * 1024}]}
    assert c.post("/v2/models/lenet5/infer", json=body).status_code == 504
    answers: list[int] = []
    threads = [threading.Thread(target=lambda: answers.append(c.post("/v2/models/lenet5/infer", json=body).status_code)) for _ in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert 503 in answers, answers
    server.model.batcher._compute = real
    for _ in range(100):  # the queue drains (requests that timed out are dropped from it, not computed)
        if server.model.metrics.queued == 0:
            break
        time.sleep(0.1)
    time.sleep(0.6)
    assert c.post("/v2/models/lenet5/infer", json=body).status_code == 200  # nothing lasting


def test_requests_that_wait_together_are_computed_together_each_as_alone() -> None:
    calls: list[int] = []
    gate = threading.Event()

    def compute(x: np.ndarray) -> np.ndarray:
        calls.append(len(x))
        gate.wait(5)
        return x.reshape(len(x), -1).sum(axis=1, keepdims=True) * 2

    batcher = Batcher(compute, Metrics("m"), max_batch=4, max_queue=6)

    async def main() -> list[np.ndarray]:
        first = batcher.submit(np.ones((1, 2)))
        await asyncio.sleep(0.05)  # the engine is busy with the first
        rest = [batcher.submit(np.full((1, 2), i, np.float32)) for i in range(2, 6)] + [batcher.submit(np.full((2, 2), 9, np.float32))]
        with pytest.raises(QueueFull):
            batcher.submit(np.zeros((1, 2)))  # 6 rows wait: --max-queue
        gate.set()
        return [await f for f in (first, *rest)]

    answers = asyncio.run(main())
    batcher.close()
    assert calls == [1, 4, 2]  # the first alone, then up to max_batch rows of those that waited, in order
    assert [a[:, 0].tolist() for a in answers] == [[4.0], [8.0], [12.0], [16.0], [20.0], [36.0, 36.0]]


def test_metrics_and_the_page(run: Path, client: TestClient, images: list[Path]) -> None:
    client.post("/v2/models/lenet5/classify", content=images[1].read_bytes(), headers={"content-type": "image/png"})
    text = client.get("/metrics").text
    assert 'cnnspec_requests_total{model="lenet5",endpoint="classify",status="200"}' in text
    for name in ("cnnspec_request_duration_seconds_bucket", 'stage="queue"', 'stage="preprocess"', 'stage="inference"',
                 "cnnspec_batch_rows_bucket", "cnnspec_queue_rows", "cnnspec_images_total"):
        assert name in text
    page = client.get("/").text
    assert "<title>cnnspec serve: lenet5</title>" in page and "/classify?top_k=5" in page
    assert "<script src" not in page and "http://" not in page and "https://" not in page  # self-contained
    card = client.get("/v2/models/lenet5/card").json()
    assert card["params"] == cnnspec.load_spec("lenet5").params and card["input"] == [1, 32, 32]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _start(run: Path, *options: str) -> tuple[subprocess.Popen[str], str]:
    """A real `cnnspec serve` process on a free port, once it is ready; and its address."""
    port = _free_port()
    process = subprocess.Popen([sys.executable, "-m", "cnnspec", "serve", str(run), "--port", str(port), "--runtime", "backend", *options],
                               stderr=subprocess.PIPE, text=True, env={**os.environ, "PYTHONUNBUFFERED": "1"})
    base = f"http://127.0.0.1:{port}"
    for _ in range(300):
        try:
            with urllib.request.urlopen(f"{base}/v2/health/ready", timeout=1) as answer:
                if answer.status == 200:
                    break
        except OSError:
            time.sleep(0.1)
    return process, base


@contextlib.contextmanager
def serving(run: Path, *options: str) -> Iterator[str]:
    process, base = _start(run, *options)
    try:
        yield base
    finally:
        process.kill()
        process.wait()


def test_sigterm_drains_and_exits_0(run: Path, images: list[Path]) -> None:
    """A real server with requests in flight (held 300 ms in the batcher): SIGTERM lets each
    finish with its answer, then the process exits 0."""
    process, base = _start(run, "--max-delay-ms", "300", "--max-batch", "64")
    try:
        statuses: list[int] = []

        def classify() -> None:
            request = urllib.request.Request(f"{base}/v2/models/lenet5/classify", data=images[0].read_bytes(), headers={"Content-Type": "image/png"})
            with urllib.request.urlopen(request, timeout=20) as answer:
                assert json.loads(answer.read())["results"][0]["top"]
                statuses.append(answer.status)

        threads = [threading.Thread(target=classify) for _ in range(8)]
        for t in threads:
            t.start()
        time.sleep(0.15)  # all eight are waiting in the batcher now
        process.send_signal(signal.SIGTERM)
        for t in threads:
            t.join()
        assert process.wait(timeout=30) == 0
        assert statuses == [200] * 8
    finally:
        process.kill()
    said = process.stderr.read() if process.stderr else ""
    assert f"serving 'lenet5' at {base}" in said and "curl --data-binary @image.jpg" in said and "stopped:" in said


def test_similar_answers_as_the_similar_command(run: Path, images: list[Path], tmp_path: Path) -> None:
    _indexed(run, images, tmp_path)
    expected_scores, expected_rows, index = api.similar(tmp_path / "x.index", [images[1]], k=2)
    expected = index.neighbours([images[1].name], expected_scores, expected_rows)
    server = build(run, runtime="backend", index=tmp_path / "x.index")
    server.model.warm()
    c = TestClient(server.app)
    answer = c.post("/v2/models/lenet5/similar?k=2", files=[("files", (images[1].name, images[1].read_bytes(), "image/png"))])
    assert answer.status_code == 200, answer.text
    got = answer.json()["results"]
    assert [n["path"] for n in got[0]["neighbours"]] == [n["path"] for n in expected[0]["neighbours"]]
    assert got[0]["neighbours"][0]["path"].endswith(images[1].name)  # itself first
    assert_agrees(np.array([n["similarity"] for n in got[0]["neighbours"]]), np.array([n["similarity"] for n in expected[0]["neighbours"]]))
    assert client_for(run).post("/v2/models/lenet5/similar", content=b"", headers={"content-type": "image/png"}).status_code == 404
    row = got[0]["neighbours"][0]["row"]
    picture = c.get(f"/v2/models/lenet5/similar/{row}")
    assert picture.status_code == 200 and picture.headers["content-type"] == "image/png" and picture.content == images[1].read_bytes()
    assert c.get("/v2/models/lenet5/similar/99").json() == {"error": "the index has rows 0 to 2"}


def _indexed(run: Path, images: list[Path], folder: Path) -> Path:
    for i, image in enumerate(images):  # an image collection: folders by class
        (folder / "photos" / f"c{i % 2}").mkdir(parents=True, exist_ok=True)
        (folder / "photos" / f"c{i % 2}" / image.name).write_bytes(image.read_bytes())
    cnnspec.embed(run, str(folder / "photos"), out=folder / "x.index")
    return folder / "x.index"


def test_the_page_classifies_an_image_in_a_headless_browser(run: Path, images: list[Path], tmp_path: Path) -> None:
    """The page as a person uses it: loaded from a real server with an index, the model
    card filled in, an image handed to its classify function as a dropped file is, its bars
    drawn with predict's classes and its nearest images shown, the live panel reading
    /metrics, and no script error."""
    index = _indexed(run, images, tmp_path)
    executable = chromium()
    if executable is None:
        pytest.skip("no Chromium or Chrome on PATH to open the page with (.ci/run installs Debian's chromium)")
    expected, _ = api.predict(run, [images[0]], runtime="backend", top=5)
    with serving(run, "--index", str(index)) as base:
        browser = Browser(executable)
        try:
            target = browser.call("Target.createTarget", url=f"{base}/")["targetId"]
            session = str(browser.call("Target.attachToTarget", targetId=target, flatten=True)["sessionId"])
            browser.call("Runtime.enable", session)
            picture = base64.b64encode(images[0].read_bytes()).decode()
            script = (f"(async () => {{ for (let i = 0; i < 100 && !document.querySelector('#card dd'); i++) await new Promise(r => setTimeout(r, 50));"
                      f" const bytes = Uint8Array.from(atob('{picture}'), c => c.charCodeAt(0));"
                      f" await classify([new File([bytes], '{images[0].name}', {{type: 'image/png'}})]); await live();"
                      " for (let i = 0; i < 100 && [...document.querySelectorAll('.near img')].some(im => !im.complete || !im.naturalWidth); i++)"
                      " await new Promise(r => setTimeout(r, 50));"
                      " return {card: document.getElementById('card').innerText, results: document.getElementById('results').innerText,"
                      " live: document.getElementById('live').innerText, bars: document.querySelectorAll('#results .bar').length,"
                      " near: [...document.querySelectorAll('.near img')].map(im => im.naturalWidth)}; })()")
            found = browser.call("Runtime.evaluate", session, expression=script, awaitPromise=True, returnByValue=True)
        finally:
            browser.close()
    assert "exceptionDetails" not in found, found
    value = found["result"]["value"]  # type: ignore[index]
    assert "lenet5" in value["card"] and "61,706" in value["card"].replace(".", ",") and "engine" in value["card"]
    assert value["bars"] == 5 and images[0].name in value["results"]
    assert "nearest in the index" in value["results"] and "3 images" in value["card"]
    assert len(value["near"]) == 3 and all(width > 0 for width in value["near"])  # each neighbour's picture loaded
    first = expected[0]["top"][0]
    assert f"{first['probability']:.3f}" in value["results"]
    assert "images served" in value["live"] and "\n1\n" in f"\n{value['live']}\n"
    assert not [e for e in browser.events if e.get("method") == "Runtime.exceptionThrown"]


def test_concurrent_requests_are_batched_and_each_answer_is_its_own(run: Path) -> None:
    """Sixteen requests in flight at once (the batch waits up to 200 ms to fill): computed in
    batches of several rows, each request answered with what it gets alone."""
    server = build(run, runtime="backend", limits=Limits(max_batch=8, max_delay=0.2))
    server.model.warm()
    rng = np.random.default_rng(5)
    inputs = [rng.integers(0, 256, (1 + i % 3, 1, 32, 32), dtype=np.uint8) for i in range(16)]
    alone = [server.model.scorer.outputs(x) for x in inputs]
    answers: dict[int, np.ndarray] = {}

    def send(c: TestClient, i: int) -> None:
        x = inputs[i]
        body = {"inputs": [{"name": "input", "datatype": "UINT8", "shape": list(x.shape), "data": x.reshape(-1).tolist()}], "outputs": [{"name": "logits"}]}
        reply = c.post("/v2/models/lenet5/infer", json=body)
        assert reply.status_code == 200, reply.text
        output = reply.json()["outputs"][0]
        answers[i] = np.array(output["data"], np.float32).reshape(output["shape"])

    with TestClient(server.app) as c:  # one event loop for every request, as uvicorn has
        threads = [threading.Thread(target=send, args=(c, i)) for i in range(16)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    for i, expected in enumerate(alone):
        assert_agrees(answers[i], expected)
    batches = server.model.metrics.batch_rows
    assert batches.total == sum(len(x) for x in inputs) and batches.count < 16  # several requests a batch
    server.model.close()


def test_a_busy_port_is_said_plainly_before_the_model_loads(run: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        done = subprocess.run([sys.executable, "-m", "cnnspec", "serve", str(run), "--port", str(port)], capture_output=True, text=True, timeout=120)
    assert done.returncode == 1 and "Traceback" not in done.stderr
    assert f"cnnspec: error: cannot listen on 127.0.0.1:{port} (Address already in use): choose another with --port" in done.stderr


def test_a_request_nobody_waits_for_is_never_computed() -> None:
    calls: list[list[float]] = []
    gate = threading.Event()

    def compute(x: np.ndarray) -> np.ndarray:
        calls.append(x[:, 0].tolist())
        gate.wait(5)
        return x

    batcher = Batcher(compute, Metrics("m"), max_batch=8)

    async def main() -> np.ndarray:
        first = batcher.submit(np.zeros((1, 1)))
        await asyncio.sleep(0.05)
        gone = batcher.submit(np.full((3, 1), 7.0))
        kept = batcher.submit(np.full((1, 1), 2.0))
        with pytest.raises(TimeoutError):
            await asyncio.wait_for(gone, 0.01)  # what a 504 does
        gate.set()
        await first
        return await kept

    assert asyncio.run(main()).tolist() == [[2.0]]
    batcher.close()
    assert calls == [[0.0], [2.0]]  # the abandoned three rows never reached the engine
