"""The process-wide model cache: load once, share, evict, never hand out a closed model."""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

from langchain_localllm._core.cache import ModelCache


class FakeModel:
    def __init__(self, name: str) -> None:
        self.name = name
        self.closed = False

    def close(self) -> None:
        self.closed = True


def test_second_lookup_hits_without_loading() -> None:
    cache = ModelCache()
    loads: list[str] = []

    def loader() -> FakeModel:
        loads.append("a")
        return FakeModel("a")

    first = cache.get_or_load("a", loader)
    for _ in range(100):
        assert cache.get_or_load("a", loader) is first
    assert loads == ["a"]
    info = cache.info()
    assert (info.loads, info.hits, info.size) == (1, 100, 1)


def test_concurrent_first_use_loads_once() -> None:
    cache = ModelCache()
    calls = 0
    lock = threading.Lock()

    def slow_loader() -> FakeModel:
        nonlocal calls
        with lock:
            calls += 1
        time.sleep(0.2)
        return FakeModel("x")

    with ThreadPoolExecutor(8) as pool:
        entries = list(pool.map(lambda _: cache.get_or_load("x", slow_loader), range(8)))
    assert calls == 1
    assert all(e is entries[0] for e in entries)


def test_failed_load_leaves_nothing_behind_and_retries() -> None:
    cache = ModelCache()

    def bad() -> FakeModel:
        raise OSError("disk on fire")

    with pytest.raises(OSError, match="disk on fire"):
        cache.get_or_load("k", bad)
    assert cache.info().size == 0
    assert cache.get_or_load("k", lambda: FakeModel("k")).model.name == "k"


def test_lru_bound_evicts_least_recently_used() -> None:
    cache = ModelCache(max_models=2)
    cache.get_or_load("a", lambda: FakeModel("a"))
    cache.get_or_load("b", lambda: FakeModel("b"))
    cache.get_or_load("a", lambda: FakeModel("a2"))  # touch a
    cache.get_or_load("c", lambda: FakeModel("c"))
    assert cache.peek("b") is None
    assert cache.peek("a") is not None
    assert cache.peek("c") is not None
    assert cache.info().evictions == 1


def test_resize_evicts_and_rejects_zero() -> None:
    cache = ModelCache(max_models=3)
    for k in "abc":
        cache.get_or_load(k, lambda k=k: FakeModel(k))
    cache.resize(1)
    assert cache.info().size == 1
    assert cache.peek("c") is not None
    with pytest.raises(ValueError, match="at least 1"):
        cache.resize(0)


def test_evict_closes_and_use_reloads_instead_of_using_a_closed_model() -> None:
    cache = ModelCache()
    made: list[FakeModel] = []

    def loader() -> FakeModel:
        made.append(FakeModel(str(len(made))))
        return made[-1]

    with cache.use("m", loader) as entry:
        assert entry.model is made[0]
    assert cache.evict("m") is True
    assert made[0].closed
    assert cache.evict("m") is False
    with cache.use("m", loader) as entry:
        assert entry.model is made[1]
        assert not entry.model.closed


def test_use_serializes_generations_on_one_model() -> None:
    cache = ModelCache()
    active = 0
    peak = 0
    guard = threading.Lock()

    def work() -> None:
        nonlocal active, peak
        with cache.use("m", lambda: FakeModel("m")):
            with guard:
                active += 1
                peak = max(peak, active)
            time.sleep(0.01)
            with guard:
                active -= 1

    with ThreadPoolExecutor(6) as pool:
        list(pool.map(lambda _: work(), range(24)))
    assert peak == 1


def test_evict_waits_for_an_in_flight_generation() -> None:
    cache = ModelCache()
    model = FakeModel("m")
    started = threading.Event()
    release = threading.Event()
    closed_during_use: list[bool] = []

    def generate() -> None:
        with cache.use("m", lambda: model):
            started.set()
            release.wait(5)
            closed_during_use.append(model.closed)

    t = threading.Thread(target=generate)
    t.start()
    started.wait(5)
    evicter = threading.Thread(target=cache.evict, args=("m",))
    evicter.start()
    time.sleep(0.05)
    assert not model.closed  # still generating
    release.set()
    t.join(5)
    evicter.join(5)
    assert closed_during_use == [False]
    assert model.closed


def test_clear_drops_everything() -> None:
    cache = ModelCache()
    models = [cache.get_or_load(k, lambda k=k: FakeModel(k)).model for k in "ab"]
    assert cache.clear() == 2
    assert all(m.closed for m in models)
    assert cache.info().size == 0
