"""`cnnspec serve` under load, on loopback (`make bench`).

LeNet-5 (32x32, grey) and ResNet-18 at 64x64, each a short run on synthetic data (the
weights' values do not matter to speed). A load generator written here (asyncio, HTTP/1.1
keep-alive over raw sockets, so the client costs little) posts one UINT8 image per
request to the Open Inference Protocol's infer endpoint in binary form.

- Latency at one client: the median of `cnnspec serve` against in-process single-image
  prediction through the same engine (the scorer `predict` uses, onnxruntime).
- Throughput at 1 to 64 clients (closed loop): `cnnspec serve` against in-process batched
  prediction (batches of 32) and against the server a user writes in an afternoon:
  Starlette + onnxruntime, the same ONNX file, one request at a time, no batching
  (`HAND`, written below). Paired: each concurrency runs both servers back to back.
- Open loop at fixed rates up to saturation: p50 and p99 latency against offered load,
  drawn to serve-latency.png (`--plot PATH`).
- Memory: the server's RSS after 1,000 and after 10,000 requests.

On a 2-core machine the load generator shares the cores with the server; the figures are
then a floor.

    python benchmarks/bench_serve.py [--quick] [--spec lenet5|resnet18] [--plot PATH]
"""

from __future__ import annotations

import asyncio
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

import cnnspec
from cnnspec.graph.load import with_input_size

HAND = '''
import sys, json, numpy as np, onnxruntime as ort
from starlette.applications import Starlette
from starlette.responses import Response
from starlette.routing import Route
import uvicorn
session = ort.InferenceSession(sys.argv[1], providers=["CPUExecutionProvider"])
name = session.get_inputs()[0].name
scale, mean, std = (np.array(v, np.float32).reshape(-1, 1, 1) for v in json.loads(sys.argv[3]))
async def infer(request):
    body = await request.body()
    cut = int(request.headers["Inference-Header-Content-Length"])
    head = json.loads(body[:cut])
    shape = head["inputs"][0]["shape"]
    x = np.frombuffer(body[cut:], np.uint8).reshape(shape).astype(np.float32)
    logits = session.run(None, {name: (x * scale - mean) / std})[0]
    out = json.dumps({"outputs": [{"name": "logits", "datatype": "FP32", "shape": list(logits.shape), "parameters": {"binary_data_size": logits.nbytes}}]}).encode()
    return Response(out + logits.astype("<f4").tobytes(), headers={"Inference-Header-Content-Length": str(len(out))})
app = Starlette(routes=[Route("/v2/models/m/infer", infer, methods=["POST"])])
uvicorn.run(app, host="127.0.0.1", port=int(sys.argv[2]), log_level="warning")
'''


def _option(name: str, default: str) -> str:
    return sys.argv[sys.argv.index(name) + 1] if name in sys.argv else default


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def make_run(root: Path, spec: str) -> Path:
    graph = cnnspec.load_spec(spec) if spec == "lenet5" else with_input_size(cnnspec.load_spec(spec), (64, 64))
    run = root / spec
    cnnspec.train(graph, "torch", out=run, quiet=True, epochs=1, batch_size=16, classes=10, **{"data.source": "synthetic", "data.limit": 32})
    return run


def request_bytes(path: str, shape: tuple[int, ...], pixels: np.ndarray) -> bytes:
    head = json.dumps({"inputs": [{"name": "input", "datatype": "UINT8", "shape": [1, *shape], "parameters": {"binary_data_size": pixels.size}}],
                       "outputs": [{"name": "logits", "parameters": {"binary_data": True}}]}).encode()
    body = head + pixels.tobytes()
    return (f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/octet-stream\r\n"
            f"Inference-Header-Content-Length: {len(head)}\r\nContent-Length: {len(body)}\r\n\r\n").encode() + body


async def _one(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, message: bytes) -> float:
    start = time.perf_counter()
    writer.write(message)
    await writer.drain()
    status = await reader.readline()
    length = 0
    while (line := await reader.readline()) not in (b"\r\n", b""):
        if line.lower().startswith(b"content-length:"):
            length = int(line.split(b":")[1])
    await reader.readexactly(length)
    if b" 200 " not in status:
        raise RuntimeError(status.decode().strip())
    return time.perf_counter() - start


async def closed_loop(port: int, message: bytes, clients: int, seconds: float) -> tuple[float, list[float]]:
    """(requests/s, latencies) with ``clients`` connections each sending as soon as answered."""
    latencies: list[float] = []
    stop = time.perf_counter() + seconds

    async def client() -> None:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        while time.perf_counter() < stop:
            latencies.append(await _one(reader, writer, message))
        writer.close()

    start = time.perf_counter()
    await asyncio.gather(*(client() for _ in range(clients)))
    return len(latencies) / (time.perf_counter() - start), latencies


async def open_loop(port: int, message: bytes, rate: float, seconds: float) -> list[float]:
    """Latencies of requests started at ``rate`` per second whatever the answers (a pool of
    connections; a request waits for a free one, and that wait counts)."""
    pool: asyncio.Queue[tuple[asyncio.StreamReader, asyncio.StreamWriter]] = asyncio.Queue()
    for _ in range(64):
        pool.put_nowait(await asyncio.open_connection("127.0.0.1", port))
    latencies: list[float] = []

    async def fire() -> None:
        start = time.perf_counter()
        reader, writer = await pool.get()
        await _one(reader, writer, message)
        latencies.append(time.perf_counter() - start)
        pool.put_nowait((reader, writer))

    tasks, begin = [], time.perf_counter()
    for n in range(int(rate * seconds)):
        await asyncio.sleep(max(0.0, begin + n / rate - time.perf_counter()))
        tasks.append(asyncio.create_task(fire()))
    await asyncio.gather(*tasks)
    while not pool.empty():
        pool.get_nowait()[1].close()
    return latencies


def wait_ready(port: int, path: str, process: subprocess.Popen[bytes]) -> None:
    import urllib.request

    for _ in range(600):
        if process.poll() is not None:
            raise SystemExit(f"the server exited with {process.returncode}")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=1):
                return
        except OSError:
            time.sleep(0.1)
    raise SystemExit("the server never became ready")


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def percentile(values: list[float], q: float) -> float:
    return float(np.percentile(np.array(values) * 1000, q))


def main() -> None:
    quick = "--quick" in sys.argv
    seconds = 3.0 if quick else 8.0
    specs = [_option("--spec", "")] if "--spec" in sys.argv else ["lenet5", "resnet18"]
    plot: dict[str, list[tuple[float, float, float]]] = {}
    with tempfile.TemporaryDirectory() as folder:
        root = Path(folder)
        (root / "hand.py").write_text(HAND)
        for spec in specs:
            run = make_run(root, spec)
            from cnnspec.api import lazy_opener
            from cnnspec.inference.scorer import Scorer

            scorer = Scorer(run, lazy_opener("torch"), "cpu", batch_size=32)
            engine = scorer.use_runtime("onnxruntime", 1000)
            shape = tuple(scorer.loaded.graph.input_shape)
            rng = np.random.default_rng(0)
            one = rng.integers(0, 256, (1, *shape), dtype=np.uint8)
            many = rng.integers(0, 256, (512, *shape), dtype=np.uint8)
            scorer.outputs(many[:32])
            single = []
            for _ in range(300 if quick else 1000):
                start = time.perf_counter()
                scorer.outputs(one)
                single.append(time.perf_counter() - start)
            start = time.perf_counter()
            for _ in range(2 if quick else 5):
                scorer.outputs(many)
            batched = (2 if quick else 5) * len(many) / (time.perf_counter() - start)
            onnx_file = str(engine.split(", ", 1)[1].split(" ")[0])
            norm = scorer.loaded.normalization
            print(f"\n{spec} {'x'.join(map(str, shape))}; engine: {engine.split(',')[0]}; in process: single image p50 "
                  f"{percentile(single, 50):.2f} ms, batched {batched:,.0f} images/s", flush=True)
            ours_port, hand_port = _port(), _port()
            env = {**os.environ, "PYTHONUNBUFFERED": "1"}
            ours = subprocess.Popen([sys.executable, "-m", "cnnspec", "serve", str(run), "--port", str(ours_port), "--runtime", "onnxruntime"],
                                    stderr=subprocess.DEVNULL, env=env)
            hand = subprocess.Popen([sys.executable, str(root / "hand.py"), onnx_file, str(hand_port),
                                     json.dumps([[norm.scale] * shape[0], list(norm.mean), list(norm.std)])], env=env)
            try:
                wait_ready(ours_port, "/v2/health/ready", ours)
                message = request_bytes(f"/v2/models/{spec}/infer", shape, one)
                hand_message = request_bytes("/v2/models/m/infer", shape, one)
                asyncio.run(closed_loop(hand_port, hand_message, 1, 0.5))  # the hand server answers: warmed
                print(f"{'clients':>7} {'serve req/s':>12} {'p50 ms':>7} {'p99 ms':>7} {'hand req/s':>11} {'vs hand':>8} {'vs batched':>10}")
                for clients in (1, 4, 16, 32, 64):
                    served, latencies = asyncio.run(closed_loop(ours_port, message, clients, seconds))
                    by_hand, _ = asyncio.run(closed_loop(hand_port, hand_message, clients, seconds))
                    print(f"{clients:>7} {served:12,.0f} {percentile(latencies, 50):7.2f} {percentile(latencies, 99):7.2f} {by_hand:11,.0f} "
                          f"{served / by_hand:7.2f}x {served / batched:9.2f}x", flush=True)
                    if clients == 1:
                        print(f"        one client: p50 {percentile(latencies, 50):.2f} ms against in-process {percentile(single, 50):.2f} ms "
                              f"(+{percentile(latencies, 50) - percentile(single, 50):.2f} ms)", flush=True)
                saturation, _ = asyncio.run(closed_loop(ours_port, message, 32, seconds))
                rows = []
                for fraction in (0.1, 0.25, 0.5, 0.75, 0.9, 1.0, 1.1):
                    rate = fraction * saturation
                    latencies = asyncio.run(open_loop(ours_port, message, rate, seconds))
                    rows.append((rate, percentile(latencies, 50), percentile(latencies, 99)))
                    print(f"  offered {rate:8,.0f} req/s ({fraction:.0%} of saturation): p50 {rows[-1][1]:.2f} ms, p99 {rows[-1][2]:.2f} ms", flush=True)
                plot[spec] = rows
                asyncio.run(closed_loop(ours_port, message, 8, 0.1))
                count = 0
                while count < 1000:
                    count += len(asyncio.run(closed_loop(ours_port, message, 8, 0.5))[1])
                after_1k = rss_mib(ours.pid)
                while count < 10_000:
                    count += len(asyncio.run(closed_loop(ours_port, message, 8, 1.0))[1])
                after_10k = rss_mib(ours.pid)
                print(f"  RSS after {1000:,}+ requests {after_1k:.1f} MiB, after {count:,} {after_10k:.1f} MiB ({after_10k - after_1k:+.1f} MiB)", flush=True)
            finally:
                for process in (ours, hand):
                    process.terminate()
                    process.wait(timeout=30)
    out = Path(_option("--plot", "serve-latency.png"))
    out.parent.mkdir(parents=True, exist_ok=True)
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(1, len(plot), figsize=(6 * len(plot), 4), squeeze=False)
    for axis, (spec, rows) in zip(axes[0], plot.items(), strict=True):
        rates = [r for r, _, _ in rows]
        axis.plot(rates, [p for _, p, _ in rows], "o-", label="p50")
        axis.plot(rates, [p for _, _, p in rows], "s-", label="p99")
        axis.set(title=f"cnnspec serve: {spec}", xlabel="offered load (requests/s)", ylabel="latency (ms)", yscale="log")
        axis.legend()
    figure.tight_layout()
    figure.savefig(out, dpi=120)
    print(f"\nwrote {out}: p50 and p99 latency against offered load")


if __name__ == "__main__":
    main()
