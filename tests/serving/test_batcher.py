"""The dynamic batcher on its own: batches across callers, the size and time bounds, the queue
bound, keys that may not share a batch, requests that give up, and failures."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Awaitable, Callable
from typing import Any

import pytest
import torch

from gptclf.serving.batcher import Batcher, BatchStats, Draining, QueueFull


class Recorder:
    """A ``compute`` that returns each text's number as its logit row and remembers its batches."""

    def __init__(self, delay: float = 0.0, fail_on: str | None = None) -> None:
        self.batches: list[tuple[list[str], Any]] = []
        self.delay = delay
        self.fail_on = fail_on
        self.release = threading.Event()
        self.release.set()

    def __call__(self, texts: list[str], key: Any) -> torch.Tensor:
        self.release.wait(10)
        time.sleep(self.delay)
        if self.fail_on in texts:
            raise RuntimeError("broken batch")
        self.batches.append((list(texts), key))
        return torch.tensor([[float(t.split("-")[-1]), 0.0] for t in texts])


def run(body: Callable[[], Awaitable[Any]]) -> Any:
    return asyncio.run(body())


def numbers(logits: torch.Tensor) -> list[int]:
    return [int(v) for v in logits[:, 0].tolist()]


def test_concurrent_requests_share_batches_and_each_gets_its_own_rows_in_order() -> None:
    rec = Recorder()
    sizes: list[int] = []

    async def body() -> list[torch.Tensor]:
        b = Batcher(rec, max_batch=8, max_wait=0.05, max_queue=100, stats=BatchStats(on_batch=sizes.append))
        b.start()
        jobs = [b.submit([f"r{r}-{r * 10 + i}" for i in range(3)], "k") for r in range(6)]
        out = await asyncio.gather(*jobs)
        await b.stop()
        return out

    out = run(body)
    for r, logits in enumerate(out):
        assert numbers(logits) == [r * 10 + i for i in range(3)]
    assert sizes == [8, 8, 2]  # 18 texts, split across requests where a batch fills
    assert all(len(texts) <= 8 for texts, _ in rec.batches)


def test_a_lone_text_waits_at_most_max_wait() -> None:
    rec = Recorder()

    async def body() -> float:
        b = Batcher(rec, max_batch=64, max_wait=0.05, max_queue=100)
        b.start()
        start = time.monotonic()
        await b.submit(["a-1"], None)
        took = time.monotonic() - start
        await b.stop()
        return took

    took = run(body)
    assert 0.04 <= took < 1.0


def test_a_full_batch_goes_at_once() -> None:
    rec = Recorder()

    async def body() -> float:
        b = Batcher(rec, max_batch=4, max_wait=5.0, max_queue=100)
        b.start()
        start = time.monotonic()
        await b.submit([f"a-{i}" for i in range(4)], None)
        took = time.monotonic() - start
        await b.stop()
        return took

    assert run(body) < 2.0  # not the 5 s of max_wait


def test_texts_of_different_keys_never_share_a_batch() -> None:
    rec = Recorder()

    async def body() -> None:
        b = Batcher(rec, max_batch=16, max_wait=0.02, max_queue=100)
        b.start()
        got = await asyncio.gather(
            b.submit(["a-1", "a-2"], "truncate"), b.submit(["b-3"], "window"), b.submit(["a-4"], "truncate")
        )
        assert [numbers(g) for g in got] == [[1, 2], [3], [4]]
        await b.stop()

    run(body)
    assert sorted((texts, key) for texts, key in rec.batches) == [
        (["a-1", "a-2", "a-4"], "truncate"),
        (["b-3"], "window"),
    ]


def test_the_queue_bound_refuses_what_would_overflow_it_and_is_never_exceeded() -> None:
    rec = Recorder()
    rec.release.clear()  # the first batch blocks: the queue fills behind it
    depths: list[int] = []

    async def body() -> None:
        b = Batcher(rec, max_batch=2, max_wait=0.0, max_queue=5, stats=BatchStats(on_queue=depths.append))
        b.start()
        first = asyncio.ensure_future(b.submit(["a-1", "a-2"], None))
        await asyncio.sleep(0.05)  # taken into the blocked batch
        waiting = [asyncio.ensure_future(b.submit([f"w-{i}"], None)) for i in range(5)]
        await asyncio.sleep(0.01)
        with pytest.raises(QueueFull):
            await b.submit(["x-9"], None)
        rec.release.set()
        await asyncio.gather(first, *waiting)
        await b.submit(["x-9"], None)  # room again
        await b.stop()
        with pytest.raises(Draining):
            await b.submit(["late-1"], None)

    run(body)
    assert max(depths) == 5 and depths[-1] == 0


def test_a_request_that_times_out_leaves_the_queue_and_the_rest_go_on() -> None:
    rec = Recorder()
    rec.release.clear()

    async def body() -> None:
        b = Batcher(rec, max_batch=2, max_wait=0.0, max_queue=100)
        b.start()
        blocked = asyncio.ensure_future(b.submit(["a-1", "a-2"], None))
        await asyncio.sleep(0.05)
        with pytest.raises(TimeoutError):
            await b.submit([f"t-{i}" for i in range(10)], None, timeout=0.05)
        assert b.queued == 0  # its waiting texts were dropped
        later = asyncio.ensure_future(b.submit(["c-7"], None))
        rec.release.set()
        assert numbers(await blocked) == [1, 2]
        assert numbers(await later) == [7]
        await b.stop()

    run(body)
    assert all(not t.startswith("t-") for texts, _ in rec.batches for t in texts)


def test_a_failing_batch_fails_its_requests_only() -> None:
    rec = Recorder(fail_on="bad-0")

    async def body() -> None:
        b = Batcher(rec, max_batch=1, max_wait=0.0, max_queue=100)
        b.start()
        with pytest.raises(RuntimeError, match="broken batch"):
            await b.submit(["bad-0"], None)
        assert numbers(await b.submit(["ok-5"], None)) == [5]
        await b.stop()

    run(body)


def test_stop_finishes_what_is_queued() -> None:
    rec = Recorder(delay=0.01)

    async def body() -> list[torch.Tensor]:
        b = Batcher(rec, max_batch=2, max_wait=0.0, max_queue=100)
        b.start()
        jobs = [asyncio.ensure_future(b.submit([f"s-{i}"], None)) for i in range(6)]
        await asyncio.sleep(0)
        await b.stop()
        return await asyncio.gather(*jobs)

    assert [numbers(x) for x in run(body)] == [[i] for i in range(6)]
