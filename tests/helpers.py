"""Helpers shared by the unit and the integration tests (re-exported by their conftest files).

Model paths and the thread guards: nothing here loads a model or imports a heavy backend.
"""

from __future__ import annotations

import asyncio
import threading
from pathlib import Path

from langchain_localllm._backends.llamacpp.scheduler import THREAD_NAME as SCHEDULER_THREAD
from langchain_localllm._backends.transformers.device import THREAD_NAME as CUDA_WORKER_THREAD
from langchain_localllm._backends.transformers.scheduler import THREAD_NAME as HF_SCHEDULER_THREAD

__all__ = [
    "BAD",
    "CORPUS",
    "CUDA_WORKER_THREAD",
    "MODELS",
    "SCHEDULER_THREAD",
    "TINY_GGUF",
    "TINY_HF",
    "TINY_T5",
    "bridge_threads",
    "no_bridge_threads_soon",
    "scheduler_threads",
]

MODELS = Path(__file__).resolve().parent / "fixtures" / "models"
CORPUS = MODELS / "corpus.jsonl"
TINY_GGUF = MODELS / "tiny-chat.gguf"
TINY_HF = MODELS / "tiny-chat"
TINY_T5 = MODELS / "tiny-t5"
BAD = MODELS / "bad"


def bridge_threads() -> list[threading.Thread]:
    """Per-call bridge threads still alive.

    The process-wide CUDA worker (``CUDA_WORKER_THREAD``) is not one: it is started on
    first use and lives for the rest of the process, so after a GPU test it is always there.
    Nor is a llama.cpp scheduler (``SCHEDULER_THREAD``): one per loaded model with
    ``max_parallel > 1``, joined when the model is unloaded (see :func:`scheduler_threads`), nor a
    transformers one (``HF_SCHEDULER_THREAD``), which ends soon after its model is unloaded.
    """
    return [
        t
        for t in threading.enumerate()
        if t.name.startswith("langchain-localllm")
        and not t.name.startswith(CUDA_WORKER_THREAD)
        and not t.name.startswith(SCHEDULER_THREAD)
        and t.name != HF_SCHEDULER_THREAD
    ]


def scheduler_threads() -> list[threading.Thread]:
    """The llama.cpp scheduler threads alive (at most one per loaded model with ``max_parallel > 1``)."""
    return [t for t in threading.enumerate() if t.name.startswith(SCHEDULER_THREAD)]


async def no_bridge_threads_soon(seconds: float = 2.0) -> bool:
    """True once no bridge thread is left, waiting up to ``seconds``.

    An abandoned async generator is closed by the event loop's finalizer hook a loop
    iteration or two after it is dropped, so allow a moment; a worker that kept
    generating would still be alive after seconds of a never-ending grammar.
    """
    for _ in range(int(seconds / 0.01)):
        if not bridge_threads():
            return True
        await asyncio.sleep(0.01)
    return not bridge_threads()
