"""Thread bridges shared by every backend: blocking generation, consumed sync or async.

Local backends generate in blocking native calls. Two bridges cover every case:

* :func:`iterate_in_thread` runs a blocking *producer* (e.g. transformers'
  ``generate`` pushing tokens into a streamer) in a worker thread and yields what it
  emits to the calling thread.
* :func:`aiterate_in_thread` runs a blocking *iterator* (any ``_stream``) in a worker
  thread and yields its items to an asyncio consumer, so the event loop never blocks.

In both, a consumer that stops early (``break``, ``aclose()``, task cancellation)
sets a :class:`threading.Event` that the producer checks between tokens, and the
worker thread is always joined before the bridge returns: no thread outlives the
call, and an exception raised in the worker reaches the consumer.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import functools
import queue
import threading
from collections.abc import AsyncGenerator, Callable, Iterator
from typing import Generic, TypeVar

from langchain_localllm._device import on_device_thread

__all__ = ["Cancelled", "aiterate_in_thread", "iterate_in_thread"]

T = TypeVar("T")

_DONE = object()


class Cancelled(Exception):  # noqa: N818 - a control-flow signal, not an error
    """Raised inside a producer's ``emit`` once the consumer has gone away."""


class _Failure(Generic[T]):
    __slots__ = ("error",)

    def __init__(self, error: BaseException) -> None:
        self.error = error


def iterate_in_thread(
    producer: Callable[[Callable[[T], None], threading.Event], None],
    *,
    name: str = "langchain-localllm-producer",
    executor: concurrent.futures.Executor | None = None,
) -> Iterator[T]:
    """Run ``producer(emit, cancel)`` in a worker thread and yield what it emits.

    ``emit(item)`` hands an item to the consumer; after the consumer has stopped it
    raises :class:`Cancelled`, and ``cancel`` is set, so the producer can also poll
    it (e.g. from a stopping criterion). The producer runs in a new thread called
    ``name``, or as a job of ``executor`` (e.g. the long-lived CUDA worker of
    :mod:`langchain_localllm._device`). Either is waited for when this generator
    finishes or is closed; an exception raised by the producer is re-raised here.
    """
    items: queue.SimpleQueue[object] = queue.SimpleQueue()
    cancel = threading.Event()

    def emit(item: T) -> None:
        if cancel.is_set():
            raise Cancelled
        items.put(item)

    def run() -> None:
        try:
            producer(emit, cancel)
        except Cancelled:
            pass
        except BaseException as e:  # noqa: BLE001 - forwarded to the consumer below
            items.put(_Failure(e))
        finally:
            items.put(_DONE)

    join = _start(run, name, executor)
    try:
        while True:
            item = items.get()
            if item is _DONE:
                break
            if isinstance(item, _Failure):
                raise item.error
            yield item  # type: ignore[misc]
    finally:
        cancel.set()
        if executor is None or not on_device_thread():
            # Not when the garbage collector finalizes an abandoned stream on the CUDA
            # worker itself: waiting there for a job only that thread can run would hang
            # it. The job sees ``cancel`` and ends on its own.
            join()


def _start(run: Callable[[], None], name: str, executor: concurrent.futures.Executor | None) -> Callable[[], object]:
    """Start ``run`` in a new thread or on ``executor``; return the function that waits for it."""
    if executor is None:
        worker = threading.Thread(target=run, name=name, daemon=True)
        worker.start()
        return worker.join
    future = executor.submit(run)
    return functools.partial(concurrent.futures.wait, [future])


async def aiterate_in_thread(  # noqa: C901, PLR0915 - one bridge, kept in one place
    make_iterator: Callable[[threading.Event], Iterator[T]],
    *,
    name: str = "langchain-localllm-async",
) -> AsyncGenerator[T, None]:
    """Consume a blocking iterator from asyncio without blocking the event loop.

    ``make_iterator(cancel)`` is called in a worker thread and iterated there; items
    are handed to the loop with ``call_soon_threadsafe``. When the consumer stops
    early or is cancelled, ``cancel`` is set, the iterator is closed after its current
    item (so generation stops within a token or two and releases the model), and the
    worker thread is awaited before this generator returns.

    A consumer task that is cancelled while this generator is suspended at ``yield``
    leaves it unclosed until garbage collection (and a traceback can keep it alive).
    The worker therefore also stops as soon as the task that last pulled an item is
    done, so an abandoned stream never keeps generating.
    """
    loop = asyncio.get_running_loop()
    items: asyncio.Queue[object] = asyncio.Queue()
    cancel = threading.Event()
    consumer: list[asyncio.Task[object] | None] = [asyncio.current_task()]

    def abandoned() -> bool:
        task = consumer[0]
        return cancel.is_set() or (task is not None and task.done())

    def put(item: object) -> None:
        with contextlib.suppress(RuntimeError):  # the loop closed under us
            loop.call_soon_threadsafe(items.put_nowait, item)

    def run() -> None:
        try:
            iterator = make_iterator(cancel)
            try:
                for item in iterator:
                    if abandoned():
                        cancel.set()
                        break
                    put(item)
            finally:
                close = getattr(iterator, "close", None)
                if close is not None:
                    close()
        except BaseException as e:  # noqa: BLE001 - forwarded to the consumer below
            put(_Failure(e))
        finally:
            put(_DONE)

    finished = loop.create_future()

    def run_and_signal() -> None:
        try:
            run()
        finally:
            with contextlib.suppress(RuntimeError):
                loop.call_soon_threadsafe(_resolve, finished)

    worker = threading.Thread(target=run_and_signal, name=name, daemon=True)
    worker.start()
    try:
        while True:
            consumer[0] = asyncio.current_task()
            item = await items.get()
            if item is _DONE:
                break
            if isinstance(item, _Failure):
                raise item.error
            yield item  # type: ignore[misc]
    finally:
        cancel.set()
        # Wait for the worker without blocking the loop; shield so a second
        # cancellation cannot leave the thread running unobserved.
        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.shield(finished)
        worker.join()


def _resolve(future: asyncio.Future[None]) -> None:
    if not future.done():
        future.set_result(None)
