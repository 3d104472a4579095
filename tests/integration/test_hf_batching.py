"""Continuous batching on transformers (``HFLocalChatModel(max_parallel > 1)``): calls share forward passes.

Every call on a model with ``max_parallel > 1`` goes through the loaded model's one scheduler
thread. On the tiny trained checkpoint: batching changes no greedy answer (each equals its
corpus answer, which the sequential path gives), per-request settings stay per request
(seeded sampling equals the same seed alone), cancelling one request frees its row without
touching the others, nothing grows over many requests, errors stay with their request, and
requests the step loop does not implement run alone with the same answer as without it.
"""

from __future__ import annotations

import asyncio
import resource
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from langchain_localllm import (
    ContextWindowExceededError,
    GenerationError,
    HFLocalChatModel,
    clear_model_cache,
)
from langchain_localllm._backends.transformers import scheduler as scheduler_module
from langchain_localllm._backends.transformers.scheduler import Job, Scheduler

from .conftest import POEM_Q, ROSE_Q, SINGLE, TINY_HF, bridge_threads, chat_answer

pytest.importorskip("torch")
pytestmark = pytest.mark.usefixtures("one_torch_thread")

SLOTS = 8
TIMEOUT = 120.0


def _chat(**kwargs: Any) -> HFLocalChatModel:
    kwargs = {"temperature": 0, "max_parallel": SLOTS, **kwargs}
    return HFLocalChatModel(model=str(TINY_HF), device="cpu", **kwargs)


def _scheduler(model: HFLocalChatModel) -> Scheduler:
    with model._backend().hold() as bundle:
        scheduler = bundle.scheduler
    assert isinstance(scheduler, Scheduler)
    return scheduler


def hf_scheduler_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name == scheduler_module.THREAD_NAME]


def _wait(condition: Callable[[], bool], seconds: float = 10.0) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.005)
    return condition()


def _recorded(scheduler: Scheduler) -> list[Job]:
    jobs: list[Job] = []
    submit = scheduler.submit

    def recording(job: Job) -> None:
        jobs.append(job)
        submit(job)

    scheduler.submit = recording  # type: ignore[method-assign]
    return jobs


@pytest.fixture(autouse=True)
def _fresh() -> Iterator[None]:
    clear_model_cache()
    yield
    clear_model_cache()
    assert _wait(lambda: not hf_scheduler_threads())  # an unloaded model's worker ends


# -- answers under batching equal the sequential answers ------------------------------------


def test_sixteen_concurrent_mixed_calls_give_their_sequential_answers() -> None:
    prompts = SINGLE[:16]
    expected = [chat_answer(p) for p in prompts]
    chat = _chat()
    results: dict[int, str] = {}
    errors: list[BaseException] = []
    start = threading.Barrier(11)

    def by_thread(i: int) -> None:
        try:
            start.wait()
            if i % 2:
                results[i] = str(chat.invoke(prompts[i]).content)
            else:
                results[i] = "".join(str(c.content) for c in chat.stream(prompts[i]))
        except BaseException as e:
            errors.append(e)

    async def by_loop(indices: list[int]) -> None:
        async def one(i: int) -> None:
            if i % 2:
                results[i] = str((await chat.ainvoke(prompts[i])).content)
            else:
                results[i] = "".join([str(c.content) async for c in chat.astream(prompts[i])])

        await asyncio.gather(*(one(i) for i in indices))

    threads = [threading.Thread(target=by_thread, args=(i,)) for i in range(10)]
    loop_thread = threading.Thread(target=lambda: (start.wait(), asyncio.run(by_loop(list(range(10, 16))))))
    for t in [*threads, loop_thread]:
        t.start()
    for t in [*threads, loop_thread]:
        t.join(TIMEOUT)
    assert not errors
    assert [results.get(i) for i in range(16)] == expected
    scheduler = _scheduler(chat)
    assert scheduler.max_rows > 1  # rows really shared forward passes
    assert scheduler.steps < sum(chat.get_num_tokens(a) for a in expected)
    assert bridge_threads() == []
    assert len(hf_scheduler_threads()) == 1


def test_batch_and_abatch_submit_everything_at_once_and_match_the_corpus() -> None:
    prompts = SINGLE[:12]
    chat = _chat()
    assert [m.content for m in chat.batch(prompts)] == [chat_answer(p) for p in prompts]
    assert _scheduler(chat).max_rows > SLOTS // 2
    assert [m.content for m in asyncio.run(chat.abatch(prompts))] == [chat_answer(p) for p in prompts]


def test_a_row_freed_by_one_request_answers_the_next_as_a_fresh_model() -> None:
    chat = _chat()
    assert [m.content for m in chat.batch([POEM_Q] * SLOTS)] == [chat_answer(POEM_Q)] * SLOTS
    assert chat.invoke(ROSE_Q).content == chat_answer(ROSE_Q)
    with chat._backend().hold() as bundle:
        assert bundle.scheduler._running == []
        assert bundle.scheduler._cache is None  # nothing kept between requests


def test_usage_and_finish_reasons_are_per_row() -> None:
    alone = HFLocalChatModel(model=str(TINY_HF), device="cpu", temperature=0)
    chat = _chat()
    for message, reference in zip(chat.batch([ROSE_Q, POEM_Q]), alone.batch([ROSE_Q, POEM_Q]), strict=True):
        assert message.usage_metadata == reference.usage_metadata
        assert message.response_metadata["finish_reason"] == reference.response_metadata["finish_reason"]


# -- per-request settings ---------------------------------------------------------------------


def test_per_request_settings_inside_one_batch() -> None:
    chat = _chat(max_tokens=64)
    alone = HFLocalChatModel(model=str(TINY_HF), device="cpu", temperature=0, max_tokens=64)
    poem = chat_answer(POEM_Q)
    schema = {
        "title": "Flower",
        "type": "object",
        "properties": {"flower": {"type": "string", "enum": ["rose", "tulip"]}},
        "required": ["flower"],
    }
    structured = chat.with_structured_output(schema, method="json_schema")
    outcomes: dict[str, Any] = {}
    start = threading.Barrier(7)

    def run(name: str, fn: Callable[[], Any]) -> threading.Thread:
        def target() -> None:
            start.wait()
            outcomes[name] = fn()

        return threading.Thread(target=target)

    jobs = [
        run("short", lambda: chat.invoke(POEM_Q, max_tokens=3)),
        run("stopped", lambda: chat.invoke(POEM_Q, stop=["\nViolets"])),
        run("free", lambda: chat.invoke(ROSE_Q)),
        run("seeded_a", lambda: chat.invoke(POEM_Q, temperature=1.5, seed=7)),
        run("seeded_b", lambda: chat.invoke(POEM_Q, temperature=1.5, seed=7, top_k=20)),
        run("penalized", lambda: chat.invoke(POEM_Q, repetition_penalty=1.3)),
        run("structured", lambda: structured.invoke(ROSE_Q)),
    ]
    for t in jobs:
        t.start()
    for t in jobs:
        t.join(TIMEOUT)
    assert outcomes["short"].usage_metadata["output_tokens"] == 3
    assert outcomes["short"].response_metadata["finish_reason"] == "length"
    assert outcomes["stopped"].content == poem[: poem.find("\nViolets")]
    assert outcomes["free"].content == chat_answer(ROSE_Q)
    # Sampling with a seed equals generate's with the same seed: each row has its own generator.
    assert outcomes["seeded_a"].content == alone.invoke(POEM_Q, temperature=1.5, seed=7).content
    assert outcomes["seeded_b"].content == alone.invoke(POEM_Q, temperature=1.5, seed=7, top_k=20).content
    assert outcomes["penalized"].content == alone.invoke(POEM_Q, repetition_penalty=1.3).content
    assert outcomes["structured"]["flower"] in {"rose", "tulip"}


def test_requests_the_step_loop_does_not_implement_run_alone_with_the_same_answer() -> None:
    chat = _chat()
    alone = HFLocalChatModel(model=str(TINY_HF), device="cpu", temperature=0)
    options = {"generate_kwargs": {"no_repeat_ngram_size": 2}}
    scheduler_jobs: list[Job] = []
    chat.invoke(ROSE_Q)  # the scheduler exists
    scheduler_jobs = _recorded(_scheduler(chat))
    assert chat.invoke(POEM_Q, **options).content == alone.invoke(POEM_Q, **options).content
    assert scheduler_jobs == []  # it never entered the step loop


# -- cancellation -----------------------------------------------------------------------------


@pytest.fixture
def slow_steps(monkeypatch: pytest.MonkeyPatch) -> None:
    """Decode steps take 20 ms more: the tiny model's answers must still be running mid-test."""
    decode = Scheduler._decode

    def slow(self: Scheduler, bundle: Any) -> None:
        time.sleep(0.02)
        decode(self, bundle)

    monkeypatch.setattr(Scheduler, "_decode", slow)


@pytest.mark.usefixtures("slow_steps")
def test_breaking_a_stream_frees_its_row_and_leaves_the_others_unchanged() -> None:
    chat = _chat(max_tokens=256)
    chat.invoke(ROSE_Q)
    scheduler = _scheduler(chat)
    jobs = _recorded(scheduler)
    others = SINGLE[:6]
    results: dict[int, str] = {}

    def answer(i: int) -> None:
        results[i] = str(chat.invoke(others[i]).content)

    threads = [threading.Thread(target=answer, args=(i,)) for i in range(len(others))]
    stream = chat.stream(POEM_Q)
    next(stream)
    for t in threads:
        t.start()
    next(stream)
    stream.close()  # the consumer goes away mid-generation
    cancelled = jobs[0]
    assert cancelled.cancel.is_set()
    for t in threads:
        t.join(TIMEOUT)
    assert [results[i] for i in range(len(others))] == [chat_answer(q) for q in others]
    assert _wait(lambda: cancelled not in scheduler._running)
    assert cancelled.row is not None
    assert cancelled.row.generated < chat.get_num_tokens(chat_answer(POEM_Q))  # it stopped early
    assert bridge_threads() == []


def test_a_cancelled_task_frees_its_row() -> None:
    chat = _chat(max_tokens=256)
    chat.invoke(ROSE_Q)
    scheduler = _scheduler(chat)
    jobs = _recorded(scheduler)

    async def main() -> str:
        async def consume() -> None:
            async for _ in chat.astream(POEM_Q):
                await asyncio.sleep(0.05)

        task = asyncio.create_task(consume())
        await asyncio.sleep(0.2)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        return str((await chat.ainvoke(ROSE_Q)).content)

    assert asyncio.run(main()) == chat_answer(ROSE_Q)
    assert _wait(lambda: jobs[0].cancel.is_set() and jobs[0] not in scheduler._running)


# -- no growth, errors, lifetime ------------------------------------------------------------


def test_many_short_requests_through_eight_rows_leave_nothing_behind() -> None:
    chat = _chat(max_tokens=6)
    prompts = SINGLE[:10]
    chat.batch(prompts)
    threads_before = threading.active_count()
    rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    for _ in range(30):  # 300 requests
        assert len(chat.batch(prompts)) == len(prompts)
    scheduler = _scheduler(chat)
    assert scheduler._running == []
    assert scheduler._cache is None
    assert len(scheduler._waiting) == 0
    assert threading.active_count() <= threads_before + 1
    growth_mib = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - rss_before) / 1024
    assert growth_mib < 64, growth_mib


def test_a_context_overflow_fails_only_its_request() -> None:
    chat = _chat()
    huge = "rose " * 5000
    results = chat.batch([ROSE_Q, huge, POEM_Q], return_exceptions=True)
    assert results[0].content == chat_answer(ROSE_Q)
    assert isinstance(results[1], ContextWindowExceededError)
    assert results[2].content == chat_answer(POEM_Q)


@pytest.mark.usefixtures("slow_steps")
def test_unloading_fails_a_running_stream_clearly_and_ends_the_worker() -> None:
    chat = _chat(max_tokens=256)
    stream = chat.stream(POEM_Q)
    next(stream)
    chat.unload()
    with pytest.raises(GenerationError, match="unloaded"):
        for _ in stream:
            pass
    assert _wait(lambda: not hf_scheduler_threads())
    assert chat.invoke(ROSE_Q).content == chat_answer(ROSE_Q)  # loads again, a new worker


def test_the_worker_exits_when_idle_and_the_next_request_starts_another(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(scheduler_module, "IDLE_SECONDS", 0.05)
    chat = _chat()
    assert chat.invoke(ROSE_Q).content == chat_answer(ROSE_Q)
    assert _wait(lambda: not hf_scheduler_threads())
    assert chat.invoke(POEM_Q).content == chat_answer(POEM_Q)


def test_max_parallel_does_not_reload_the_weights() -> None:
    from langchain_localllm import model_cache_info

    HFLocalChatModel(model=str(TINY_HF), device="cpu").invoke(ROSE_Q)
    loads = model_cache_info().loads
    assert _chat().invoke(ROSE_Q).content == chat_answer(ROSE_Q)
    assert model_cache_info().loads == loads


def test_the_default_max_parallel_makes_no_scheduler() -> None:
    chat = HFLocalChatModel(model=str(TINY_HF), device="cpu", temperature=0)
    assert [m.content for m in chat.batch([ROSE_Q, POEM_Q])] == [chat_answer(ROSE_Q), chat_answer(POEM_Q)]
    assert chat.invoke(ROSE_Q).content == chat_answer(ROSE_Q)
    with chat._backend().hold() as bundle:
        assert bundle.scheduler is None
    assert hf_scheduler_threads() == []


@pytest.mark.usefixtures("slow_steps")
def test_an_event_loop_closed_under_a_running_astream_fails_nobody_else() -> None:
    chat = _chat(max_tokens=256)
    chat.invoke(ROSE_Q)
    scheduler = _scheduler(chat)
    jobs = _recorded(scheduler)
    loop = asyncio.new_event_loop()
    stream = chat.astream(POEM_Q).__aiter__()
    loop.run_until_complete(stream.__anext__())
    loop.close()  # abandoned without aclose(): the worker can no longer reach its consumer
    assert chat.invoke(ROSE_Q).content == chat_answer(ROSE_Q)  # shares steps with the orphan
    assert _wait(lambda: jobs[0].cancel.is_set() and jobs[0] not in scheduler._running)
    del stream
