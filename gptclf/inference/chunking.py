"""Reading an iterable a chunk at a time: fixed-size chunks, or chunks that also end on a pause.

:class:`gptclf.inference.predict.Predictor` classifies a stream chunk by chunk through these, so that memory
stays flat on a stream of any length and a slow producer sees its results when it pauses.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any, TypeVar

T = TypeVar("T")


def chunks(items: Iterable[T], size: int) -> Iterator[list[T]]:
    """Lists of ``size`` items (the last shorter). An error while reading comes after the chunk of
    the items before it, so every item that was read gets its result."""
    it = iter(items)
    while True:
        chunk: list[T] = []
        try:
            for item in it:
                chunk.append(item)
                if len(chunk) == size:
                    break
        except Exception:
            if chunk:
                yield chunk
            raise
        if not chunk:
            return
        yield chunk


#: What the reader thread puts on the queue when its input ends.
_END = object()


def waiting_chunks(items: Iterable[T], size: int, pause: float) -> Iterator[list[T]]:
    """Like :func:`chunks`, but a chunk also ends when no item came for ``pause`` seconds.

    A daemon thread reads ``items`` into a queue of ``size`` places, so no more than two chunks
    are ever held (flat memory on an endless stream), and this side waits on the queue with a
    timeout instead of on the input. The thread's error is raised here, after the items before it.
    """
    box: queue.Queue[Any] = queue.Queue(maxsize=size)
    stop = threading.Event()

    def put(item: object) -> None:
        # A timeout, so that the thread ends when the consumer has gone (error, broken pipe).
        while not stop.is_set():
            try:
                return box.put(item, timeout=0.5)
            except queue.Full:
                continue

    def read() -> None:
        try:
            for item in items:
                put(item)
                if stop.is_set():
                    return
            put(_END)
        except BaseException as exc:  # passed on, raised in the consumer's thread
            put(_Failure(exc))

    threading.Thread(target=read, name="gptclf-input", daemon=True).start()
    try:
        yield from _gather(box, size, pause)
    finally:
        stop.set()


def _gather(box: queue.Queue[Any], size: int, pause: float) -> Iterator[list[Any]]:
    """The consumer side of :func:`_waiting_chunks`."""
    chunk: list[Any] = []
    while True:
        try:
            item = box.get(timeout=pause) if chunk else box.get()
        except queue.Empty:  # the input paused: serve what has come so far
            yield chunk
            chunk = []
            continue
        if item is _END or isinstance(item, _Failure):
            if chunk:
                yield chunk
            if isinstance(item, _Failure):
                raise item.exc
            return
        chunk.append(item)
        if len(chunk) == size:
            yield chunk
            chunk = []


@dataclass(frozen=True)
class _Failure:
    exc: BaseException
