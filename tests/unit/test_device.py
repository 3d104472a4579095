"""The CUDA worker thread: one long-lived thread runs every CUDA generate.

The executor and the routing are exercised on CPU with a fake CUDA bundle (a
``torch.device("cuda")`` needs no GPU); the GPU tests run the real thing.
"""

from __future__ import annotations

import gc
import signal
import threading
import time
import weakref
from collections.abc import Callable
from typing import Any

import pytest

from langchain_localllm._backends.transformers import backend as hf_backend
from langchain_localllm._backends.transformers import batch as hf_batch
from langchain_localllm._backends.transformers import device as _device
from langchain_localllm._backends.transformers import generate as hf_generate
from langchain_localllm._backends.transformers.backend import BATCH_SLOT, TransformersBackend
from langchain_localllm._backends.transformers.batch import BatchPlan
from langchain_localllm._backends.transformers.device import (
    call_on_device_thread,
    cuda_graphs_usable,
    device_executor,
    on_device_thread,
)
from langchain_localllm._backends.transformers.generate import generation_config
from langchain_localllm._backends.transformers.load import HFBundle
from langchain_localllm._backends.transformers.settings import LoadSpec, Sampling
from langchain_localllm._core.backend import ChatPrompt, GenerateRequest
from langchain_localllm._core.bridge import iterate_in_thread
from langchain_localllm._core.output import FinishInfo, Piece


def thread_name(cancel: threading.Event) -> str:
    return threading.current_thread().name


def test_one_long_lived_thread_runs_every_call() -> None:
    names = {call_on_device_thread(thread_name) for _ in range(5)}
    assert len(names) == 1
    (name,) = names
    assert name.startswith(_device.THREAD_NAME)
    assert name != threading.current_thread().name
    assert not on_device_thread()
    assert call_on_device_thread(lambda cancel: on_device_thread())


def test_errors_propagate_and_the_thread_survives_them() -> None:
    def fail(cancel: threading.Event) -> None:
        raise ValueError("generate failed")

    before = call_on_device_thread(thread_name)
    with pytest.raises(ValueError, match="generate failed"):
        call_on_device_thread(fail)
    assert call_on_device_thread(thread_name) == before


def test_a_call_from_the_worker_itself_runs_inline_instead_of_deadlocking() -> None:
    def outer(cancel: threading.Event) -> tuple[str, str]:
        return threading.current_thread().name, call_on_device_thread(thread_name)

    done: list[tuple[str, str]] = []
    runner = threading.Thread(target=lambda: done.append(call_on_device_thread(outer)))
    runner.start()
    runner.join(timeout=10)
    assert not runner.is_alive(), "nested call deadlocked"
    assert done[0][0] == done[0][1]


def test_an_interrupted_caller_cancels_the_job_and_waits_for_it() -> None:
    seen: list[str] = []

    def long_job(cancel: threading.Event) -> None:
        seen.append("started")
        if cancel.wait(timeout=10):
            time.sleep(0.05)  # still running when the caller is interrupted: it is waited for
            seen.append("cancelled")

    # A real SIGINT (Ctrl-C): it interrupts the blocked wait, which interrupt_main() would not.
    main = threading.main_thread().ident
    assert main is not None
    timer = threading.Timer(0.2, signal.pthread_kill, (main, signal.SIGINT))
    timer.start()
    start = time.perf_counter()
    with pytest.raises(KeyboardInterrupt):
        call_on_device_thread(long_job)
    timer.join()
    assert seen == ["started", "cancelled"]  # finished before the caller saw the interrupt
    assert time.perf_counter() - start < 5


def test_iterate_in_thread_on_the_executor() -> None:
    where: list[str] = []

    def producer(emit: Callable[[int], None], cancel: threading.Event) -> None:
        where.append(threading.current_thread().name)
        for i in range(1000):
            if cancel.is_set():
                where.append("stopped")
                return
            emit(i)
            time.sleep(0.001)

    stream = iterate_in_thread(producer, executor=device_executor())
    assert [next(stream) for _ in range(3)] == [0, 1, 2]
    stream.close()  # returns only once the job has ended
    assert where[0].startswith(_device.THREAD_NAME)
    assert where[-1] == "stopped"


def test_cuda_graphs_only_on_the_worker_thread() -> None:
    pytest.importorskip("torch")
    assert not cuda_graphs_usable()  # any other thread compiles without CUDA graphs
    # On the worker: the probe of torch's CUDA-graph trees (importable without a GPU).
    assert call_on_device_thread(lambda cancel: cuda_graphs_usable()) is True


# -- routing of the transformers backend ---------------------------------------------


class _FakeModel:
    def __init__(self, device: Any) -> None:
        transformers = pytest.importorskip("transformers")
        self.device = device
        self.generation_config = transformers.GenerationConfig()
        self._can_compile_fullgraph = True
        self.hf_quantizer = None


def fake_bundle(device_type: str) -> HFBundle:
    torch = pytest.importorskip("torch")
    return HFBundle(
        model=_FakeModel(torch.device(device_type)),
        tokenizer=None,
        name="fake",
        is_seq2seq=False,
        eos_ids=frozenset({0}),
        pad_id=0,
        context_window=None,
    )


@pytest.fixture
def recorded(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Replace generate_rows with one that records its thread and emits one answer per row."""
    threads: list[str] = []

    def fake_generate_rows(bundle: HFBundle, prompts: Any, budgets: Any, **kwargs: Any) -> None:
        threads.append(threading.current_thread().name)
        for row in kwargs.get("rows") or range(len(prompts)):
            kwargs["emit"](row, Piece("hi"))
            kwargs["emit"](row, Piece("", finish=FinishInfo("stop", 1, 1)))

    for module in (hf_backend, hf_batch):
        monkeypatch.setattr(module, "generate_rows", fake_generate_rows)
        monkeypatch.setattr(module, "render_prompt", lambda bundle, conversation, template, tools=None, **kw: [1, 2])
    return threads


@pytest.mark.parametrize(("device_type", "on_worker"), [("cuda", True), ("cpu", False)])
def test_cuda_generation_is_routed_to_the_worker(
    recorded: list[str], device_type: str, on_worker: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    bundle = fake_bundle(device_type)
    backend = TransformersBackend(LoadSpec(model="fake"), objects=(bundle.model, object()))
    monkeypatch.setattr(backend, "_load_model", lambda: bundle)
    try:
        conversation = [{"role": "user", "content": "a"}]
        request = GenerateRequest(ChatPrompt(conversation), Sampling(max_tokens=4))
        pieces = list(backend.stream(request))
        assert [(p.text, p.finish is not None) for p in pieces] == [("hi", False), ("", True)]
        plan = BatchPlan(backend, [conversation] * 2, None, {})
        batched = GenerateRequest(ChatPrompt(conversation), Sampling(max_tokens=4), extra={BATCH_SLOT: (plan, 0)})
        assert [p.text for p in backend.stream(batched)] == ["hi", ""]
        assert len(recorded) == 2
        assert [name.startswith(_device.THREAD_NAME) for name in recorded] == [on_worker, on_worker]
    finally:
        backend.unload()


def test_static_cache_compiles_with_cuda_graphs_only_on_the_worker() -> None:
    bundle = fake_bundle("cuda")
    sampling = Sampling()
    here = generation_config(sampling, bundle, 8, 4)[0]
    there = call_on_device_thread(lambda cancel: generation_config(sampling, bundle, 8, 4)[0])
    assert (here.cache_implementation, there.cache_implementation) == ("static", "static")
    assert here.compile_config.mode == "default"
    assert there.compile_config.mode == "reduce-overhead"
    on_cpu = call_on_device_thread(
        lambda cancel: generation_config(Sampling(static_cache=True), fake_bundle("cpu"), 8)[0]
    )
    assert on_cpu.compile_config.mode == "default"  # CUDA graphs exist only on CUDA


def test_a_stream_finalized_on_the_worker_itself_does_not_hang_it() -> None:
    """E.g. the garbage collector closing an abandoned stream during its own CUDA job."""
    holder: dict[str, Any] = {}
    taken = threading.Event()
    closed = threading.Event()

    def producer(emit: Callable[[int], None], cancel: threading.Event) -> None:
        emit(0)
        taken.wait(timeout=10)
        holder["stream"].close()  # on the worker, while this very job runs
        closed.set()

    stream = iterate_in_thread(producer, executor=device_executor())
    holder["stream"] = stream
    assert next(stream) == 0
    taken.set()
    assert closed.wait(timeout=10), "closing the stream on the worker deadlocked it"
    assert call_on_device_thread(thread_name).startswith(_device.THREAD_NAME)  # the worker still serves


def test_the_idle_worker_keeps_nothing_of_a_finished_job_alive() -> None:
    class Activations:
        pass

    refs: list[weakref.ref[Activations]] = []

    def failing_job(cancel: threading.Event) -> None:
        held = Activations()  # referenced from the traceback's frame
        refs.append(weakref.ref(held))
        raise RuntimeError("out of memory")

    with pytest.raises(RuntimeError):
        call_on_device_thread(failing_job)
    gc.collect()
    assert refs[0]() is None


def test_a_job_cancelled_while_queued_never_prefills() -> None:
    cancelled = threading.Event()
    cancelled.set()
    events: list[object] = []
    bundle = fake_bundle("cpu")
    bundle.model.generate = None  # would raise if anything got that far
    hf_generate.generate_rows(
        bundle, [[1, 2]], [4], sampling=Sampling(), stops=[], emit=lambda *e: events.append(e), cancels=[cancelled]
    )
    assert events == []
