"""What the server counts, in Prometheus' text format (version 0.0.4): counters, one gauge
and histograms with cumulative buckets, written without a client library (the format is
a few lines; a dependency would be larger than this file)."""

from __future__ import annotations

import bisect
import threading
from collections import defaultdict

# seconds: 0.5 ms to 10 s, each about 2.5x the last
SECONDS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
ROWS = (1, 2, 4, 8, 16, 32, 64, 128, 256)


class Histogram:
    def __init__(self, bounds: tuple[float, ...]) -> None:
        self.bounds, self.counts, self.total, self.count = bounds, [0] * (len(bounds) + 1), 0.0, 0

    def observe(self, value: float) -> None:
        self.counts[bisect.bisect_left(self.bounds, value)] += 1
        self.total += value
        self.count += 1

    def lines(self, name: str, labels: str = "") -> list[str]:
        out, running = [], 0
        for bound, count in zip((*self.bounds, float("inf")), self.counts, strict=True):
            running += count
            le = "+Inf" if bound == float("inf") else f"{bound:g}"
            out.append(f'{name}_bucket{{{labels}{"," if labels else ""}le="{le}"}} {running}')
        suffix = f"{{{labels}}}" if labels else ""
        return [*out, f"{name}_sum{suffix} {self.total:.6f}", f"{name}_count{suffix} {self.count}"]


class Metrics:
    """Thread-safe: the event loop counts requests, the engine's thread counts batches."""

    def __init__(self, model: str) -> None:
        self.model = model
        self._lock = threading.Lock()
        self.requests: dict[tuple[str, int], int] = defaultdict(int)  # (endpoint, status) -> count
        self.duration: dict[str, Histogram] = {}  # endpoint -> request seconds
        self.stages = {stage: Histogram(SECONDS) for stage in ("queue", "preprocess", "inference")}
        self.batch_rows = Histogram(ROWS)
        self.images = 0
        self.queued = 0  # rows waiting for the engine now

    def request(self, endpoint: str, status: int, seconds: float) -> None:
        with self._lock:
            self.requests[endpoint, status] += 1
            self.duration.setdefault(endpoint, Histogram(SECONDS)).observe(seconds)

    def stage(self, stage: str, seconds: float) -> None:
        with self._lock:
            self.stages[stage].observe(seconds)

    def batch(self, rows: int) -> None:
        with self._lock:
            self.batch_rows.observe(rows)
            self.images += rows

    def text(self) -> str:
        model = f'model="{self.model}"'
        with self._lock:
            lines = ["# HELP cnnspec_requests_total Requests answered, by endpoint and HTTP status.",
                     "# TYPE cnnspec_requests_total counter"]
            lines += [f'cnnspec_requests_total{{{model},endpoint="{e}",status="{s}"}} {n}' for (e, s), n in sorted(self.requests.items())]
            lines += ["# HELP cnnspec_request_duration_seconds Time from a request's arrival to its answer.",
                      "# TYPE cnnspec_request_duration_seconds histogram"]
            for endpoint, histogram in sorted(self.duration.items()):
                lines += histogram.lines("cnnspec_request_duration_seconds", f'{model},endpoint="{endpoint}"')
            lines += ["# HELP cnnspec_stage_duration_seconds Time in each stage: waiting for the engine, decoding images, computing.",
                      "# TYPE cnnspec_stage_duration_seconds histogram"]
            for stage, histogram in self.stages.items():
                lines += histogram.lines("cnnspec_stage_duration_seconds", f'{model},stage="{stage}"')
            lines += ["# HELP cnnspec_batch_rows Rows (images) the engine computed together.", "# TYPE cnnspec_batch_rows histogram"]
            lines += self.batch_rows.lines("cnnspec_batch_rows", model)
            lines += ["# HELP cnnspec_queue_rows Rows waiting for the engine.", "# TYPE cnnspec_queue_rows gauge",
                      f"cnnspec_queue_rows{{{model}}} {self.queued}",
                      "# HELP cnnspec_images_total Images (rows) computed.", "# TYPE cnnspec_images_total counter",
                      f"cnnspec_images_total{{{model}}} {self.images}"]
        return "\n".join(lines) + "\n"
