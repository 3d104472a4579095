"""One long-lived worker thread for all CUDA generation in the process.

transformers compiles the static-cache decoding step with ``torch.compile`` in
``"reduce-overhead"`` mode, i.e. with CUDA graphs: on an H200 a 0.43B Llama decodes
at 305 tokens/s that way, 85 with the default compile mode and 44-60 without a
static cache (see ``docs/performance.md``).
torch keeps its CUDA-graph trees per host thread:

* up to torch 2.12 only the thread that first imported
  ``torch._inductor.cudagraph_trees`` can replay them; any other thread fails with an
  ``AssertionError`` in ``cudagraph_trees.get_obj`` (pytorch/pytorch#123177);
* later versions (pytorch/pytorch#184357) initialise that state lazily per thread,
  so every *new* thread records its graphs again.

Streaming and async generation run ``generate`` off the caller's thread, so a fresh
thread per call would fail (old torch) or re-record graphs on every call (new torch).
All CUDA generation therefore runs on one worker thread, created on first use and kept
for the life of the process. Generation on one model was already serialized by the
model cache's per-model lock; this also serializes generation across CUDA models,
first come first served, even on different GPUs (with torch up to 2.12 only one
thread can own CUDA graphs at all).

The worker is a daemon thread that is never joined or stopped, on purpose: torch
keeps Python objects in the C++ thread-local storage of a thread that used CUDA-graph
trees, and when such a thread *exits* while the interpreter shuts down, their
destructor cannot take the GIL and the process aborts ("terminate called without an
active exception"; seen with torch 2.13 when a ``ThreadPoolExecutor`` worker was
joined at exit, about one run in six). Idle, the worker waits on a queue without the
GIL and simply ends with the process. It holds no work at exit: every job is waited
for by the caller that submitted it.

CUDA graphs are used only on that thread, and only when it can own them
(:func:`cuda_graphs_usable`); otherwise decoding is compiled without them.
"""

from __future__ import annotations

import concurrent.futures
import functools
import importlib
import logging
import os
import queue
import threading
from collections.abc import Callable
from typing import Any, TypeVar

__all__ = ["call_on_device_thread", "cuda_graphs_usable", "device_executor", "on_device_thread"]

logger = logging.getLogger("langchain_localllm")

T = TypeVar("T")

THREAD_NAME = "langchain-localllm-cuda"

_lock = threading.Lock()
_executor: _DeviceThread | None = None
_local = threading.local()
_graphs_usable: bool | None = None


class _DeviceThread(concurrent.futures.Executor):
    """An executor with one long-lived daemon thread (see the module docstring)."""

    def __init__(self) -> None:
        self._jobs: queue.SimpleQueue[tuple[concurrent.futures.Future[Any], Callable[[], Any]]] = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._work, name=THREAD_NAME, daemon=True)
        self._thread.start()

    def submit(self, fn: Callable[..., T], /, *args: Any, **kwargs: Any) -> concurrent.futures.Future[T]:
        """Queue ``fn(*args, **kwargs)``; jobs run one at a time, in order."""
        future: concurrent.futures.Future[T] = concurrent.futures.Future()
        self._jobs.put((future, functools.partial(fn, *args, **kwargs)))
        return future

    @staticmethod
    def owns_current_thread() -> bool:
        """Whether the calling thread is this executor's worker (used by the thread bridges)."""
        return on_device_thread()

    def _work(self) -> None:
        _local.device_thread = True
        while True:
            # One job per call, so that idle, this thread holds nothing: a finished job's
            # result, or an error's traceback, could keep a model's tensors alive.
            self._run_one(*self._jobs.get())

    @staticmethod
    def _run_one(future: concurrent.futures.Future[Any], job: Callable[[], Any]) -> None:
        if not future.set_running_or_notify_cancel():
            return
        try:
            result = job()
        except BaseException as e:  # noqa: BLE001 - handed to the waiting caller
            future.set_exception(e)
        else:
            future.set_result(result)


def on_device_thread() -> bool:
    """Whether the calling thread is the CUDA worker thread."""
    return bool(getattr(_local, "device_thread", False))


def device_executor() -> concurrent.futures.Executor:
    """The process-wide executor whose single thread runs CUDA generation."""
    global _executor  # noqa: PLW0603 - one worker per process, created on first use
    with _lock:
        if _executor is None:
            _executor = _DeviceThread()
        return _executor


def _forget_after_fork() -> None:
    # A forked child has no worker thread; it creates its own on first use.
    global _executor, _lock, _graphs_usable  # noqa: PLW0603 - reset of the module's singletons
    _executor = None
    _lock = threading.Lock()
    _graphs_usable = None


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_forget_after_fork)


def call_on_device_thread(fn: Callable[[threading.Event], T]) -> T:
    """Run ``fn(cancel)`` on the CUDA worker thread and return its result.

    Exceptions raised by ``fn`` propagate. If the caller is interrupted while waiting
    (``KeyboardInterrupt``, ...), ``cancel`` is set so ``fn`` can stop early, and the
    call still waits for it to finish before re-raising: nothing keeps running behind
    the caller's back. Called on the worker thread itself, ``fn`` runs inline.
    """
    cancel = threading.Event()
    if on_device_thread():
        return fn(cancel)
    future = device_executor().submit(fn, cancel)
    try:
        return future.result()
    except BaseException:
        cancel.set()
        concurrent.futures.wait([future])
        raise


def cuda_graphs_usable() -> bool:
    """Whether decoding compiled on the calling thread may use CUDA graphs.

    True only on the CUDA worker thread, and only if that thread can own torch's
    CUDA-graph trees: with a torch that keeps them in the importing thread's storage,
    another thread that imported them first (e.g. the application's own
    ``torch.compile(mode="reduce-overhead")``) rules them out, and decoding is then
    compiled without CUDA graphs (logged once as a warning).
    """
    global _graphs_usable  # noqa: PLW0603 - probed once per process, on the worker thread
    if not on_device_thread():
        return False
    if _graphs_usable is None:
        _graphs_usable = _probe_graph_trees()
    return _graphs_usable


def _probe_graph_trees() -> bool:
    try:
        trees = importlib.import_module("torch._inductor.cudagraph_trees")
        torch_c = importlib.import_module("torch._C")
        if hasattr(trees, "_initialize_tls"):  # per-thread state is created lazily
            return True
        owned = hasattr(trees.local, "tree_manager_containers") or bool(
            torch_c._is_key_in_tls("tree_manager_containers")  # noqa: SLF001 - torch's own check
        )
    except (ImportError, AttributeError) as e:
        logger.warning("CUDA graphs are not used for decoding: cannot inspect torch's CUDA-graph trees (%s)", e)
        return False
    if not owned:
        logger.warning(
            "CUDA graphs are not used for decoding: another thread used torch's CUDA-graph trees first, and "
            "this torch version binds them to that thread (pytorch/pytorch#123177). Decoding is compiled "
            "without CUDA graphs (several times slower at batch 1); create and use the model before any "
            "other torch.compile(mode='reduce-overhead') in the process, or upgrade torch."
        )
    return owned
