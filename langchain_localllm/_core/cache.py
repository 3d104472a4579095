"""One process-wide, thread-safe cache of loaded models, shared by every model class.

Loading weights is the expensive step of running a local model, so each distinct
(file identity, load settings) pair is loaded once per process and shared by every
instance that asks for it. Entries are evicted explicitly (``unload()`` on an
instance, :func:`clear_model_cache`) or when more than ``max_models`` are held
(least recently used first).

Each entry carries a lock: the backends' contexts are not thread-safe, so callers
hold :attr:`LoadedModel.lock` for the whole of one generation.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Hashable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

from langchain_localllm.errors import InvalidParameterError

__all__ = [
    "CacheInfo",
    "LoadedModel",
    "ModelCache",
    "clear_model_cache",
    "model_cache",
    "model_cache_info",
    "set_model_cache_size",
]

logger = logging.getLogger("langchain_localllm")

T = TypeVar("T")

DEFAULT_MAX_MODELS = 4
"""How many loaded models the process-wide cache keeps before evicting the oldest."""


@dataclass
class LoadedModel(Generic[T]):
    """A loaded backend object plus what the package keeps beside it.

    Attributes:
        model: The backend object (``llama_cpp.Llama``, a transformers bundle, ...).
        lock: Held for the whole of one generation: calls on one model are serialized.
        load_seconds: Wall time the load took.
        extra: Per-model state derived once after loading (metadata, token sets...).
    """

    model: T
    lock: threading.Lock = field(default_factory=threading.Lock)
    load_seconds: float = 0.0
    extra: dict[str, Any] = field(default_factory=dict)
    closed: bool = False


@dataclass(frozen=True)
class CacheInfo:
    """A snapshot of the cache counters.

    Attributes:
        loads: How many times a loader ran (a cache miss that loaded weights).
        hits: How many lookups found a model already loaded.
        evictions: How many entries were dropped (unload, clear or LRU bound).
        size: How many models are loaded now.
        max_models: The LRU bound.
    """

    loads: int
    hits: int
    evictions: int
    size: int
    max_models: int


class ModelCache:
    """A thread-safe LRU of loaded models with at-most-once loading per key."""

    def __init__(self, max_models: int = DEFAULT_MAX_MODELS) -> None:
        """Create an empty cache holding at most ``max_models`` models."""
        self._lock = threading.Lock()
        self._entries: OrderedDict[Hashable, LoadedModel[Any]] = OrderedDict()
        self._loading: dict[Hashable, threading.Lock] = {}
        self._max_models = max(1, max_models)
        self._loads = 0
        self._hits = 0
        self._evictions = 0

    def get_or_load(self, key: Hashable, loader: Callable[[], T]) -> LoadedModel[T]:
        """Return the model for ``key``, running ``loader`` only if it is not loaded.

        Two threads asking for the same key at once run the loader once; the second
        waits for the first and shares its result. A loader that raises leaves no
        entry behind, so the next call tries again.
        """
        with self._lock:
            entry = self._entries.get(key)
            if entry is not None:
                self._entries.move_to_end(key)
                self._hits += 1
                return entry
            key_lock = self._loading.setdefault(key, threading.Lock())
        with key_lock:
            with self._lock:
                entry = self._entries.get(key)
                if entry is not None:
                    self._entries.move_to_end(key)
                    self._hits += 1
                    return entry
            start = time.perf_counter()
            try:
                model = loader()
            finally:
                with self._lock:
                    self._loading.pop(key, None)
            entry = LoadedModel(model=model, load_seconds=time.perf_counter() - start)
            with self._lock:
                self._loads += 1
                self._entries[key] = entry
                self._entries.move_to_end(key)
                self._evict_over_bound()
            logger.debug("loaded model %r in %.3f s", key, entry.load_seconds)
            return entry

    @contextmanager
    def use(self, key: Hashable, loader: Callable[[], T]) -> Iterator[LoadedModel[T]]:
        """Hold the model for ``key`` (loading it if needed) for one generation.

        The entry's lock is held inside the ``with`` block. An entry that was closed
        by :meth:`evict` while this caller waited is skipped and the model reloaded,
        so a closed backend object is never used.
        """
        entry = self.acquire(key, loader)
        try:
            yield entry
        finally:
            entry.lock.release()

    def acquire(self, key: Hashable, loader: Callable[[], T]) -> LoadedModel[T]:
        """The open entry for ``key`` (loading it if needed), returned with its lock held.

        The caller releases ``entry.lock``. An entry closed by :meth:`evict` while this
        caller waited is skipped and the model reloaded, so a closed backend object is
        never used.
        """
        while True:
            entry = self.get_or_load(key, loader)
            entry.lock.acquire()
            if not entry.closed:
                return entry
            entry.lock.release()

    def peek(self, key: Hashable) -> LoadedModel[Any] | None:
        """Return the entry for ``key`` if loaded, without counting a hit."""
        with self._lock:
            return self._entries.get(key)

    def evict(self, key: Hashable) -> bool:
        """Drop ``key`` from the cache. Returns whether it was loaded."""
        with self._lock:
            entry = self._entries.pop(key, None)
            if entry is None:
                return False
            self._evictions += 1
        _close(entry)
        return True

    def clear(self) -> int:
        """Drop every entry. Returns how many were dropped."""
        with self._lock:
            entries = list(self._entries.values())
            self._entries.clear()
            self._evictions += len(entries)
        for entry in entries:
            _close(entry)
        return len(entries)

    def resize(self, max_models: int) -> None:
        """Set the LRU bound, evicting the oldest entries beyond it."""
        if max_models < 1:
            msg = f"max_models must be at least 1, got {max_models}"
            raise InvalidParameterError(msg)
        with self._lock:
            self._max_models = max_models
            self._evict_over_bound()

    def info(self) -> CacheInfo:
        """Return the counters."""
        with self._lock:
            return CacheInfo(
                loads=self._loads,
                hits=self._hits,
                evictions=self._evictions,
                size=len(self._entries),
                max_models=self._max_models,
            )

    def _evict_over_bound(self) -> None:
        # Caller holds self._lock. Entries in use stay alive through the references
        # their callers hold; the cache only stops handing them out.
        while len(self._entries) > self._max_models:
            key, _ = self._entries.popitem(last=False)
            self._evictions += 1
            logger.debug("evicted model %r (cache bound %d)", key, self._max_models)


def _close(entry: LoadedModel[Any]) -> None:
    """Release an evicted model's memory once no generation is using it.

    Waiting on the entry's lock means an in-flight generation finishes first.
    """
    with entry.lock:
        entry.closed = True
        close = getattr(entry.model, "close", None)
        if callable(close):
            close()


model_cache = ModelCache()
"""The process-wide cache used by every model class in this package."""


def clear_model_cache() -> int:
    """Unload every cached model (of every class). Returns how many were unloaded."""
    return model_cache.clear()


def set_model_cache_size(max_models: int) -> None:
    """Set how many loaded models the process keeps (default 4; LRU eviction)."""
    model_cache.resize(max_models)


def model_cache_info() -> CacheInfo:
    """Return the process-wide cache's counters (loads, hits, evictions, size)."""
    return model_cache.info()
