"""Shared fixtures and helpers for the unit tests: no weights load here.

The fixture model paths and the bridge-thread guard come from ``tests.helpers``; test
modules import them from here. Modules whose tests must never load weights use
``pytestmark = pytest.mark.usefixtures("no_weights_load")``.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from langchain_localllm._core.cache import model_cache
from tests.helpers import CUDA_WORKER_THREAD, MODELS, TINY_GGUF, TINY_HF, TINY_T5, bridge_threads

__all__ = ["CUDA_WORKER_THREAD", "MODELS", "TINY_GGUF", "TINY_HF", "TINY_T5", "bridge_threads"]


@pytest.fixture
def no_weights_load() -> Iterator[None]:
    """Fail the test if it loaded model weights into the process-wide model cache."""
    before = model_cache.info().loads
    yield
    assert model_cache.info().loads == before, "a unit test loaded model weights"
