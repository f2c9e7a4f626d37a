"""Dynamic batching: requests that arrive while the engine is busy are computed together.

The engine runs on one thread of its own, so the event loop never waits for it. Each
request's rows join a queue; the thread takes the first waiting request and every
request behind it that still fits in ``max_batch`` rows (a request larger than that runs
alone, whole), computes them as one batch and hands each request its own rows back, in
order. With ``max_delay`` 0 (the default) the thread never waits for more work: a lone
request is computed at once, and batches form only from requests that queued while the
engine was busy, so batching adds no delay. A positive ``max_delay`` waits up to that long
for a batch to fill. The queue holds at most ``max_queue`` rows: past that ``submit``
raises ``QueueFull`` (the server answers 503), so memory stays bounded under any load.
"""

from __future__ import annotations

import asyncio
import collections
import dataclasses
import threading
import time
from collections.abc import Callable

import numpy as np

from cnnspec.serving.metrics import Metrics


class QueueFull(Exception):
    """The queue holds ``max_queue`` rows already."""


class Closed(Exception):
    """The server is shutting down: no new work."""


@dataclasses.dataclass
class _Job:
    rows: np.ndarray
    future: asyncio.Future[np.ndarray]
    loop: asyncio.AbstractEventLoop
    queued: float


def _hand(job: _Job, value: np.ndarray | BaseException) -> None:
    try:
        job.loop.call_soon_threadsafe(_resolve, job.future, value)
    except RuntimeError:  # its event loop is closed: nobody waits for the answer
        pass


def _resolve(future: asyncio.Future[np.ndarray], value: np.ndarray | BaseException) -> None:
    if future.done():  # the request timed out or its client went away
        return
    if isinstance(value, BaseException):
        future.set_exception(value)
    else:
        future.set_result(value)


class Batcher:
    def __init__(self, compute: Callable[[np.ndarray], np.ndarray], metrics: Metrics, max_batch: int = 32,
                 max_delay: float = 0.0, max_queue: int = 1024) -> None:
        self._compute, self._metrics = compute, metrics
        self.max_batch, self.max_delay, self.max_queue = max_batch, max_delay, max_queue
        self._jobs: collections.deque[_Job] = collections.deque()
        self._rows = 0
        self._closing = False
        self._changed = threading.Condition()
        self._thread = threading.Thread(target=self._run, name="cnnspec-engine", daemon=True)
        self._thread.start()

    def submit(self, rows: np.ndarray) -> asyncio.Future[np.ndarray]:
        """A future of ``rows``' outputs; called on the event loop."""
        loop = asyncio.get_running_loop()
        future: asyncio.Future[np.ndarray] = loop.create_future()
        with self._changed:
            if self._closing:
                raise Closed("the server is shutting down")
            if self._rows and self._rows + len(rows) > self.max_queue:
                raise QueueFull(f"{self._rows} rows are waiting (--max-queue {self.max_queue})")
            self._jobs.append(_Job(rows, future, loop, time.perf_counter()))
            self._rows += len(rows)
            self._metrics.queued = self._rows
            self._changed.notify()
        return future

    def close(self, timeout: float | None = None) -> None:
        """Refuse new work, finish what is queued, stop the thread."""
        with self._changed:
            self._closing = True
            self._changed.notify()
        self._thread.join(timeout)

    def _drop_abandoned(self) -> None:
        """Leave out the queued requests nobody waits for any more (timed out with 504, or
        their client gone): their rows are never computed. Called holding the lock."""
        kept = [job for job in self._jobs if not job.future.done()]
        if len(kept) != len(self._jobs):
            self._rows -= sum(len(job.rows) for job in self._jobs if job.future.done())
            self._jobs = collections.deque(kept)
            self._metrics.queued = self._rows

    def _take(self) -> list[_Job] | None:
        with self._changed:
            while True:
                self._drop_abandoned()
                if self._jobs or self._closing:
                    break
                self._changed.wait()
            if not self._jobs:
                return None
            taken = [self._jobs.popleft()]
            rows = len(taken[0].rows)
            deadline = time.perf_counter() + self.max_delay
            while True:
                self._drop_abandoned()
                while self._jobs and rows + len(self._jobs[0].rows) <= self.max_batch:
                    job = self._jobs.popleft()
                    taken.append(job)
                    rows += len(job.rows)
                left = deadline - time.perf_counter()
                if rows >= self.max_batch or left <= 0 or self._closing or (self._jobs and rows + len(self._jobs[0].rows) > self.max_batch):
                    break
                self._changed.wait(left)
            self._rows -= rows
            self._metrics.queued = self._rows
            return taken

    def _run(self) -> None:
        while (taken := self._take()) is not None:
            started = time.perf_counter()
            for job in taken:
                self._metrics.stage("queue", started - job.queued)
            try:
                x = taken[0].rows if len(taken) == 1 else np.concatenate([job.rows for job in taken])
                outputs = self._compute(x)
            except Exception as exc:  # the engine failed: every request of the batch hears why
                for job in taken:
                    _hand(job, exc)
                continue
            self._metrics.stage("inference", time.perf_counter() - started)
            self._metrics.batch(len(x))
            start = 0
            for job in taken:
                part = outputs[start : start + len(job.rows)]
                start += len(job.rows)
                _hand(job, part)
