"""The thread bridges: errors propagate, early exit stops the producer, no thread survives."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable, Iterator

import pytest

from langchain_localllm._core.bridge import aiterate_in_thread, iterate_in_thread, pull

from .conftest import CUDA_WORKER_THREAD, bridge_threads


def counting_producer(limit: int, produced: list[int]) -> Callable[[Callable[[int], None], threading.Event], None]:
    def producer(emit: Callable[[int], None], cancel: threading.Event) -> None:
        for i in range(limit):
            if cancel.is_set():
                return
            produced.append(i)
            emit(i)
            time.sleep(0.001)

    return producer


def test_iterate_in_thread_yields_everything_in_order() -> None:
    produced: list[int] = []
    assert list(iterate_in_thread(counting_producer(50, produced))) == list(range(50))
    assert bridge_threads() == []


def test_iterate_in_thread_reraises_producer_errors() -> None:
    def producer(emit: Callable[[int], None], cancel: threading.Event) -> None:
        emit(1)
        raise RuntimeError("generate failed")

    it = iterate_in_thread(producer)
    assert next(it) == 1
    with pytest.raises(RuntimeError, match="generate failed"):
        next(it)
    assert bridge_threads() == []


def test_iterate_in_thread_early_exit_stops_the_producer_and_joins() -> None:
    produced: list[int] = []
    it = iterate_in_thread(counting_producer(100_000, produced))
    for i in it:
        if i == 3:
            break
    it.close()
    assert bridge_threads() == []
    assert len(produced) < 100  # it stopped soon after, not at the end


def slow_iter(n: int, seen: list[int], delay: float = 0.002) -> Callable[[threading.Event], Iterator[int]]:
    def make(cancel: threading.Event) -> Iterator[int]:
        for i in range(n):
            if cancel.is_set():
                return
            time.sleep(delay)
            seen.append(i)
            yield i

    return make


async def test_aiterate_yields_everything() -> None:
    seen: list[int] = []
    got = [i async for i in aiterate_in_thread(pull(slow_iter(20, seen, 0)))]
    assert got == list(range(20))
    assert bridge_threads() == []


async def test_aiterate_does_not_block_the_event_loop() -> None:
    ticks = 0

    async def ticker() -> None:
        nonlocal ticks
        while True:
            ticks += 1
            await asyncio.sleep(0.001)

    task = asyncio.create_task(ticker())
    seen: list[int] = []

    def blocking(cancel: threading.Event) -> Iterator[int]:
        time.sleep(0.2)  # a blocking native call, e.g. prompt prefill
        yield 1

    assert [i async for i in aiterate_in_thread(pull(blocking))] == [1]
    task.cancel()
    assert ticks > 20, "the event loop was blocked while the worker ran"
    del seen


async def test_aiterate_reraises_worker_errors() -> None:
    def failing(cancel: threading.Event) -> Iterator[int]:
        yield 1
        raise ValueError("bad prompt")

    got = []
    with pytest.raises(ValueError, match="bad prompt"):
        async for i in aiterate_in_thread(pull(failing)):
            got.append(i)
    assert got == [1]
    assert bridge_threads() == []


async def test_aiterate_early_break_stops_the_worker() -> None:
    seen: list[int] = []
    gen = aiterate_in_thread(pull(slow_iter(10_000, seen)))
    async for i in gen:
        if i == 2:
            break
    await gen.aclose()
    assert bridge_threads() == []
    assert len(seen) < 50


async def test_aiterate_task_cancellation_stops_the_worker() -> None:
    seen: list[int] = []

    async def consume() -> None:
        async for _ in aiterate_in_thread(pull(slow_iter(10_000, seen))):
            pass

    task = asyncio.create_task(consume())
    await asyncio.sleep(0.05)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert bridge_threads() == []
    n = len(seen)
    await asyncio.sleep(0.05)
    assert len(seen) == n  # nothing runs after cancellation


def test_the_thread_guard_ignores_only_the_long_lived_cuda_worker() -> None:
    # The guard every suite uses: a live per-call bridge thread counts, the process-wide
    # CUDA worker (alive for good after any GPU test) does not.
    release = threading.Event()
    worker = threading.Thread(target=release.wait, name=CUDA_WORKER_THREAD, daemon=True)
    leaked = threading.Thread(target=release.wait, name="langchain-localllm-producer", daemon=True)
    worker.start()
    leaked.start()
    try:
        assert bridge_threads() == [leaked]
    finally:
        release.set()
        worker.join()
        leaked.join()
    assert bridge_threads() == []
