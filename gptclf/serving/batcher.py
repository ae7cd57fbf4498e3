"""Dynamic batching: the texts of concurrent requests gathered into batches for the one model.

Every request puts its texts in one FIFO queue (:meth:`Batcher.submit`). One task takes the oldest
waiting text, then waits until ``max_batch`` texts that can share its batch are waiting or
``max_wait`` seconds have passed since that text arrived, whichever is first, and runs the batch
through ``compute`` in a thread of its own (the event loop keeps accepting requests meanwhile). The
batch's rows are handed back to the requests they came from; a request is answered when all its
texts are done, and a request larger than a batch is split across several. Texts can share a batch
only when they are read the same way (``key``: the request's long-text setting): the logits of a
text never depend on which texts shared its batch beyond the engine's own rounding.

The queue is bounded in texts (``max_queue``): a request that would overflow it is refused at once
(:class:`QueueFull`, the server's 503) rather than held in memory. A request that gave up
(:meth:`Batcher.submit`'s timeout) has its texts that were not yet taken dropped from the queue.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import Callable, Hashable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import torch


class QueueFull(Exception):
    """The queue holds too many texts to take this request's (the server answers 503)."""


class Draining(Exception):
    """The batcher is stopping and takes no new request (the server answers 503)."""


@dataclass(eq=False)
class _Job:
    """One request's texts in the queue, and its logits as they come."""

    texts: Sequence[str]
    key: Hashable
    arrived: float
    done: asyncio.Future[torch.Tensor]
    taken: int = 0  # texts handed to a batch so far (the rest wait in the queue)
    finished: int = 0
    parts: dict[int, torch.Tensor] = field(default_factory=dict)  # first text's index -> its rows
    dropped: bool = False  # gave up (timed out): its waiting texts are not run

    @property
    def waiting(self) -> int:
        return len(self.texts) - self.taken


@dataclass
class BatchStats:
    """What the batcher has done, for the server's metrics hooks."""

    on_batch: Callable[[int], None] = lambda n: None
    on_queue: Callable[[int], None] = lambda n: None


class Batcher:
    """Gathers texts from concurrent callers into batches of at most ``max_batch``.

    Args:
        compute: ``(texts, key) -> (N, K) logits`` in the texts' order; runs in the batcher's own
            thread, one batch at a time.
        max_batch: The most texts in one batch.
        max_wait: Seconds a batch waits for more texts after its oldest text arrived.
        max_queue: The most texts waiting (not yet in a batch) at any moment.
        stats: Hooks called with each batch's size and the queue's depth.
    """

    def __init__(
        self,
        compute: Callable[[list[str], Any], torch.Tensor],
        *,
        max_batch: int,
        max_wait: float,
        max_queue: int,
        stats: BatchStats | None = None,
    ) -> None:
        if max_batch < 1 or max_queue < 1 or max_wait < 0:
            raise ValueError("max_batch and max_queue must be >= 1 and max_wait >= 0")
        self.compute = compute
        self.max_batch = max_batch
        self.max_wait = max_wait
        self.max_queue = max_queue
        self.stats = stats or BatchStats()
        self.queued = 0  # texts waiting, over every job
        self._jobs: deque[_Job] = deque()
        self._wake = asyncio.Event()
        self._closing = False
        self._task: asyncio.Task[None] | None = None
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="gptclf-batch")

    def start(self) -> None:
        """Start the batching task on the running event loop."""
        self._task = asyncio.get_running_loop().create_task(self._run(), name="gptclf-batcher")

    async def stop(self) -> None:
        """Finish every text already queued, then stop; :meth:`submit` refuses new ones."""
        self._closing = True
        self._wake.set()
        if self._task is not None:
            await self._task
        self._pool.shutdown(wait=True)

    @property
    def closing(self) -> bool:
        return self._closing

    async def submit(self, texts: Sequence[str], key: Hashable, timeout: float | None = None) -> torch.Tensor:
        """The (N, K) logits of ``texts``, in order, once every batch holding them has run.

        Raises:
            QueueFull: Taking the texts would put more than ``max_queue`` in the queue.
            Draining: The batcher is stopping.
            TimeoutError: ``timeout`` seconds passed first; the texts not yet run are dropped.
        """
        if self._closing:
            raise Draining()
        if not texts:
            raise ValueError("no texts")
        if self.queued + len(texts) > self.max_queue:
            raise QueueFull()
        job = _Job(texts, key, time.monotonic(), asyncio.get_running_loop().create_future())
        self._jobs.append(job)
        self._add_queued(len(texts))
        self._wake.set()
        try:
            return await asyncio.wait_for(asyncio.shield(job.done), timeout)
        except (TimeoutError, asyncio.CancelledError):
            self._drop(job)
            raise

    def _add_queued(self, n: int) -> None:
        self.queued += n
        self.stats.on_queue(self.queued)

    def _drop(self, job: _Job) -> None:
        if not job.dropped:
            job.dropped = True
            self._add_queued(-job.waiting)
            job.taken = len(job.texts)
            if not job.done.done():
                job.done.cancel()

    def _front(self) -> _Job | None:
        """The oldest job with texts waiting (jobs fully taken or dropped leave the queue)."""
        while self._jobs and (self._jobs[0].dropped or self._jobs[0].waiting == 0):
            self._jobs.popleft()
        return self._jobs[0] if self._jobs else None

    def _ready(self, key: Hashable) -> int:
        return sum(j.waiting for j in self._jobs if j.key == key and not j.dropped)

    async def _gather(self, first: _Job) -> None:
        """Wait until a full batch of ``first``'s key is waiting or its time is up."""
        deadline = first.arrived + self.max_wait
        while not self._closing and not first.dropped and self._ready(first.key) < self.max_batch:
            left = deadline - time.monotonic()
            if left <= 0:
                return
            self._wake.clear()
            try:
                await asyncio.wait_for(self._wake.wait(), left)
            except TimeoutError:
                return

    def _take(self, key: Hashable) -> list[tuple[_Job, int, int]]:
        """Up to ``max_batch`` waiting texts of ``key``, oldest first: (job, start, end) slices."""
        room, out = self.max_batch, []
        for job in self._jobs:
            if room == 0:
                break
            if job.dropped or job.key != key or job.waiting == 0:
                continue
            n = min(room, job.waiting)
            out.append((job, job.taken, job.taken + n))
            job.taken += n
            room -= n
        self._add_queued(-(self.max_batch - room))
        return out

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            first = self._front()
            if first is None:
                if self._closing:
                    return
                self._wake.clear()
                await self._wake.wait()
                continue
            await self._gather(first)
            if first.dropped:
                continue
            slices = self._take(first.key)
            texts = [t for job, a, b in slices for t in job.texts[a:b]]
            self.stats.on_batch(len(texts))
            try:
                logits = await loop.run_in_executor(self._pool, self.compute, texts, first.key)
            except Exception as exc:  # every request of the batch fails alike; the server goes on
                for job, _, _ in slices:
                    if not job.done.done():
                        job.done.set_exception(exc)
                    self._drop(job)
                continue
            row = 0
            for job, a, b in slices:
                job.parts[a] = logits[row : row + b - a]
                row += b - a
                job.finished += b - a
                if job.finished == len(job.texts) and not job.done.done():
                    job.done.set_result(torch.cat([job.parts[i] for i in sorted(job.parts)]))
