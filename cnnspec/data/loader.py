"""Images decoded by worker processes while the backend computes.

An ``ImageStream`` stands where an N x C x H x W uint8 array would: it has a length, a
shape and a dtype, and ``batches(x, order, size)`` gives the same (positions, images)
pairs for an array and for a stream, so the harness has one loop. A stream decodes each
batch in a pool of worker processes (its ``Transform`` in each), a few batches ahead, so
memory stays bounded by the prefetch depth whatever the size of the data set, and decoding
overlaps training. Each sample's random transform is seeded by (seed, epoch, sample) and
results come back in order, so the same seed gives the same batches whatever the number
of workers.

Pixels never cross a pipe: the stream owns ``prefetch + 1`` batch-sized buffers of
shared memory, a worker writes the images it decodes straight into the buffer of its
batch, and only positions and reasons come back. The consumer gets a copy, so a buffer
is free for the next batch as soon as it has been handed over.

A sample that cannot be decoded is dropped from its batch and remembered in
``ImageStream.skipped`` (with ``strict``, it is an error naming the file). The positions
returned with each batch are those of the images actually delivered, so labels stay aligned.
"""

from __future__ import annotations

import atexit
import gc
import os
import weakref
from collections import deque
from collections.abc import Iterator
from concurrent.futures import Future, ProcessPoolExecutor, wait
from typing import Any

import numpy as np

from cnnspec.data.decode import BadImage
from cnnspec.data.errors import DataError
from cnnspec.data.sources import Sample
from cnnspec.data.transforms import Transform, sample_generator

_POOLS: dict[int, ProcessPoolExecutor] = {}


def available_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def _pool(workers: int) -> ProcessPoolExecutor:
    """One pool per worker count for the life of the process (epochs reuse it).

    Workers are forked where the platform can (as torch's DataLoader does on Linux): a
    forked worker needs nothing from the user's script. A fork server or spawn would import
    the script that called cnnspec in every worker, and a script without an
    ``if __name__ == "__main__"`` guard would then start its training again there. The
    workers run only Pillow and NumPy, never a framework, so the framework threads a fork
    copies are never used in them.
    """
    if workers not in _POOLS:
        import multiprocessing

        method = "fork" if "fork" in multiprocessing.get_all_start_methods() else "spawn"
        # gc.freeze: the objects a forked worker inherits (a stream's samples, millions of
        # them) are never visited by its garbage collector, so their pages stay shared.
        _POOLS[workers] = ProcessPoolExecutor(max_workers=workers, mp_context=multiprocessing.get_context(method), initializer=gc.freeze)
    return _POOLS[workers]


@atexit.register
def _close_pools() -> None:
    for pool in _POOLS.values():
        pool.shutdown(wait=False, cancel_futures=True)
    _POOLS.clear()


def decode_into(
    out: np.ndarray, samples: list[Sample], transform: Transform, seed: tuple[int, ...] | None = None, indices: list[int] | None = None
) -> tuple[list[int], list[str]]:
    """Decode ``samples`` into the first rows of ``out``: the positions (in ``samples``) of
    the images written, in order, and "name: reason" for the others. With ``seed``, each
    sample's random transform uses the generator of (seed, its index in the data set)."""
    kept: list[int] = []
    bad: list[str] = []
    for position, sample in enumerate(samples):
        rng = None if seed is None or indices is None or not transform.random else sample_generator(seed, indices[position])
        try:
            out[len(kept)] = transform.from_file(sample.read(), rng)
        except (BadImage, OSError) as exc:
            reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
            bad.append(f"{sample.name}: {reason}")
            continue
        kept.append(position)
    return kept, bad


_ATTACHED: dict[str, Any] = {}  # in a worker: shared buffers by name, attached once


def _decode_shared(
    buffer: str, slot: int, samples: list[Sample], transform: Transform, seed: tuple[int, ...] | None, indices: list[int], size: int
) -> tuple[list[int], list[str]]:
    """In a worker: decode into slot ``slot`` of the shared buffer named ``buffer``."""
    if buffer not in _ATTACHED:
        from multiprocessing import shared_memory

        # Attaching registers the name with the resource tracker the stream's process
        # shares with its workers; that is a no-op (a set), and the stream unlinks it.
        _ATTACHED[buffer] = shared_memory.SharedMemory(name=buffer)
    batch = size * int(np.prod(transform.shape))
    out = np.ndarray((size, *transform.shape), np.uint8, buffer=_ATTACHED[buffer].buf, offset=slot * batch)
    return decode_into(out, samples, transform, seed, indices)


def _release(buffers: dict[int, Any]) -> None:
    for block in buffers.values():
        block.close()
        block.unlink()
    buffers.clear()


class ImageStream:
    """The images of ``samples`` prepared by ``transform``, decoded on demand."""

    def __init__(self, samples: list[Sample], transform: Transform, *, workers: int, strict: bool, prefetch: int | None = None) -> None:
        self.samples = samples
        self.transform = transform
        self.sample_shape: tuple[int, ...] = transform.shape
        self.workers = workers
        self.strict = strict
        self.prefetch = prefetch if prefetch is not None else 2 * max(1, workers)
        self.skipped: list[str] = []
        self._seen_bad: set[str] = set()
        self._buffers: dict[int, Any] = {}  # batch size -> SharedMemory of prefetch + 1 batches
        # Freed when the stream is collected, or at exit: never left behind in /dev/shm.
        self._release = weakref.finalize(self, _release, self._buffers)

    def _buffer(self, size: int) -> tuple[str, np.ndarray]:
        if size not in self._buffers:
            from multiprocessing import shared_memory

            nbytes = (self.prefetch + 1) * size * int(np.prod(self.sample_shape))
            self._buffers[size] = shared_memory.SharedMemory(create=True, size=max(1, nbytes))
        block = self._buffers[size]
        return block.name, np.ndarray((self.prefetch + 1, size, *self.sample_shape), np.uint8, buffer=block.buf)

    def close(self) -> None:
        """Free the shared buffers now (a later batch makes new ones)."""
        _release(self._buffers)

    def __len__(self) -> int:
        return len(self.samples)

    @property
    def shape(self) -> tuple[int, ...]:
        return (len(self.samples), *self.sample_shape)

    @property
    def dtype(self) -> np.dtype[Any]:
        return np.dtype(np.uint8)

    def head(self, count: int) -> ImageStream:
        return ImageStream(self.samples[:count], self.transform, workers=self.workers, strict=self.strict, prefetch=self.prefetch)

    def batches(
        self, order: np.ndarray, size: int, seed: tuple[int, ...] | None = None, *, views: bool = False
    ) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """(positions delivered, images) for each run of ``size`` positions of ``order``,
        decoded ``prefetch`` batches ahead; ``seed`` (the run's seed and epoch) seeds the
        random transforms, and without it images are prepared as for evaluation.

        With ``views``, the images are the stream's own buffer, valid until the next batch
        is asked for (no copy: for a consumer that is done with a batch by then)."""
        chunks = (order[start : start + size] for start in range(0, len(order), size))
        if self.workers == 0:
            out = np.empty((size, *self.sample_shape), np.uint8)
            for chunk in chunks:
                kept, bad = decode_into(out, [self.samples[i] for i in chunk], self.transform, seed, chunk.tolist())
                yield self._received(chunk, kept, bad, out, views)
            return
        pool = _pool(self.workers)
        name, slots = self._buffer(size)
        pending: deque[tuple[np.ndarray, int, Future[Any]]] = deque()
        submitted = 0

        def submit() -> None:
            nonlocal submitted
            chunk = next(chunks, None)
            if chunk is not None:
                slot = submitted % len(slots)
                samples = [self.samples[i] for i in chunk]
                pending.append((chunk, slot, pool.submit(_decode_shared, name, slot, samples, self.transform, seed, chunk.tolist(), size)))
                submitted += 1

        for _ in range(self.prefetch):
            submit()
        try:
            while pending:
                chunk, slot, future = pending.popleft()
                kept, bad = future.result()
                submit()  # into the slot handed over last time: copied, or its consumer has moved on
                yield self._received(chunk, kept, bad, slots[slot], views)
        finally:
            for *_, future in pending:
                future.cancel()
            wait([future for *_, future in pending])  # no worker still writes into a slot the next call reuses

    def load(self, order: np.ndarray | None = None, size: int = 64) -> tuple[np.ndarray, np.ndarray]:
        """Every image (of ``order``) decoded into one array, in parallel: (positions, images)."""
        order = np.arange(len(self)) if order is None else order
        images = np.empty((len(order), *self.sample_shape), np.uint8)
        positions = np.empty(len(order), np.int64)
        filled = 0
        for delivered, batch in self.batches(order, size):
            images[filled : filled + len(batch)] = batch
            positions[filled : filled + len(batch)] = delivered
            filled += len(batch)
        return positions[:filled], images[:filled]

    def _received(self, chunk: np.ndarray, kept: list[int], bad: list[str], out: np.ndarray, views: bool) -> tuple[np.ndarray, np.ndarray]:
        for entry in bad:
            if self.strict:

                raise DataError(entry)
            if entry not in self._seen_bad:
                self._seen_bad.add(entry)
                self.skipped.append(entry)
        return chunk[kept], out[: len(kept)] if views else out[: len(kept)].copy()


def batches(
    x: np.ndarray | ImageStream,
    order: np.ndarray,
    size: int,
    transform: Transform | None = None,
    seed: tuple[int, ...] | None = None,
    *,
    views: bool = False,
) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """(positions, images) for each run of ``size`` positions of ``order``, from an array
    in memory or from a stream: one loop for both. With ``seed``, each image gets the
    random part of its transform (a stream's own; ``transform`` for an array), drawn
    from the generator of (seed, its index). ``views``: see ``ImageStream.batches``."""
    if isinstance(x, ImageStream):
        yield from x.batches(order, size, seed, views=views)
        return
    for start in range(0, len(order), size):
        index = order[start : start + size]
        images = x[index]
        if transform is not None and transform.random and seed is not None:
            images = np.stack([transform.from_array(image, sample_generator(seed, int(i))) for i, image in zip(index, images, strict=True)])
        yield index, images
