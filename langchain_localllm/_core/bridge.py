"""Thread bridges shared by every backend: blocking generation, consumed sync or async.

Local backends generate in blocking native calls. Every bridge takes one producer
shape, ``producer(emit, cancel)``, which runs to completion in a worker and hands its
items over with ``emit``:

* :func:`iterate_in_thread` yields what the producer emits to the calling thread;
* :func:`aiterate_in_thread` yields it to an asyncio consumer, so the event loop never
  blocks;
* :func:`pull` turns a blocking iterator (llama.cpp's token loop) into a producer.

So a stream crosses one thread boundary and one queue per item, whichever way it is
consumed. In both bridges, a consumer that stops early (``break``, ``aclose()``, task
cancellation) sets the :class:`threading.Event` that the producer checks between
tokens, and ``emit`` raises :class:`Cancelled` from then on; the worker is always
waited for before the bridge returns, so no thread outlives the call, and an exception
raised in the worker reaches the consumer.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import functools
import queue
import threading
from collections.abc import AsyncGenerator, Callable, Generator, Iterator
from typing import Generic, TypeAlias, TypeVar

__all__ = ["Cancelled", "Producer", "aiterate_in_thread", "iterate_in_thread", "pull"]

T = TypeVar("T")

Producer: TypeAlias = Callable[[Callable[[T], None], threading.Event], None]
"""``producer(emit, cancel)``: blocking; calls ``emit(item)`` per item; may poll ``cancel``."""

_DONE = object()


class Cancelled(Exception):  # noqa: N818 - a control-flow signal, not an error
    """Raised inside a producer's ``emit`` once the consumer has gone away."""


class _Failure(Generic[T]):
    __slots__ = ("error",)

    def __init__(self, error: BaseException) -> None:
        self.error = error


def pull(make_iterator: Callable[[threading.Event], Iterator[T]]) -> Producer[T]:
    """A producer that iterates ``make_iterator(cancel)`` and emits each item.

    The iterator is closed when it ends, fails or the consumer goes away (``emit``
    raising :class:`Cancelled`), so a generator's ``finally`` releases what it holds.
    """

    def produce(emit: Callable[[T], None], cancel: threading.Event) -> None:
        iterator = make_iterator(cancel)
        try:
            for item in iterator:
                emit(item)
        finally:
            close = getattr(iterator, "close", None)
            if close is not None:
                close()

    return produce


def _owns_current_thread(executor: concurrent.futures.Executor | None) -> bool:
    owns = getattr(executor, "owns_current_thread", None)
    return bool(owns()) if callable(owns) else False


def iterate_in_thread(
    producer: Producer[T],
    *,
    name: str = "langchain-localllm-producer",
    executor: concurrent.futures.Executor | None = None,
) -> Generator[T, None, None]:
    """Run ``producer(emit, cancel)`` in a worker thread and yield what it emits.

    ``emit(item)`` hands an item to the consumer; after the consumer has stopped it
    raises :class:`Cancelled`, and ``cancel`` is set, so the producer can also poll
    it (e.g. from a stopping criterion). The producer runs in a new thread called
    ``name``, or as a job of ``executor`` (e.g. the long-lived CUDA worker of the
    transformers backend). Either is waited for when this generator finishes or is
    closed; an exception raised by the producer is re-raised here.
    """
    items: queue.SimpleQueue[object] = queue.SimpleQueue()
    cancel = threading.Event()

    def emit(item: T) -> None:
        if cancel.is_set():
            raise Cancelled
        items.put(item)

    join = _start(lambda: _run(producer, emit, cancel, items.put), name, executor)
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
        if not _owns_current_thread(executor):
            # Not when the garbage collector finalizes an abandoned stream on the
            # executor's own thread: waiting there for a job only that thread can run
            # would hang it. The job sees ``cancel`` and ends on its own.
            join()


def _run(
    producer: Producer[T], emit: Callable[[T], None], cancel: threading.Event, put: Callable[[object], None]
) -> None:
    """Run the producer in the worker: its failure, then the end marker, go to the consumer via ``put``."""
    try:
        producer(emit, cancel)
    except Cancelled:
        pass
    except BaseException as e:  # noqa: BLE001 - forwarded to the consumer
        put(_Failure(e))
    finally:
        put(_DONE)


def _start(run: Callable[[], None], name: str, executor: concurrent.futures.Executor | None) -> Callable[[], object]:
    """Start ``run`` in a new thread or on ``executor``; return the function that waits for it."""
    if executor is None:
        worker = threading.Thread(target=run, name=name, daemon=True)
        worker.start()
        return worker.join
    future = executor.submit(run)
    return functools.partial(concurrent.futures.wait, [future])


async def aiterate_in_thread(
    producer: Producer[T],
    *,
    name: str = "langchain-localllm-async",
    executor: concurrent.futures.Executor | None = None,
) -> AsyncGenerator[T, None]:
    """Run ``producer(emit, cancel)`` in a worker and yield what it emits to asyncio.

    Items are handed to the loop with ``call_soon_threadsafe``; the event loop never
    blocks. When the consumer stops early or is cancelled, ``cancel`` is set and
    ``emit`` raises :class:`Cancelled` (so generation stops within a token or two and
    releases the model), and the worker is awaited before this generator returns.

    A consumer task that is cancelled while this generator is suspended at ``yield``
    leaves it unclosed until garbage collection (and a traceback can keep it alive).
    ``emit`` therefore also stops the producer as soon as the task that last pulled an
    item is done, so an abandoned stream never keeps generating.
    """
    loop = asyncio.get_running_loop()
    items: asyncio.Queue[object] = asyncio.Queue()
    cancel = threading.Event()
    consumer: list[asyncio.Task[object] | None] = [asyncio.current_task()]

    def put(item: object) -> None:
        with contextlib.suppress(RuntimeError):  # the loop closed under us
            loop.call_soon_threadsafe(items.put_nowait, item)

    def emit(item: T) -> None:
        task = consumer[0]
        if cancel.is_set() or (task is not None and task.done()):
            cancel.set()
            raise Cancelled
        put(item)

    finished = loop.create_future()

    def run() -> None:
        try:
            _run(producer, emit, cancel, put)
        finally:
            with contextlib.suppress(RuntimeError):
                loop.call_soon_threadsafe(_resolve, finished)

    join = _start(run, name, executor)
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
        join()


def _resolve(future: asyncio.Future[None]) -> None:
    if not future.done():
        future.set_result(None)
