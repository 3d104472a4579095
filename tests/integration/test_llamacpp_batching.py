"""Continuous batching on llama.cpp (``max_parallel > 1``): concurrent calls share decode steps.

Every call on a model loaded with ``max_parallel > 1`` goes through its one scheduler
thread. These tests check, on the tiny trained model, that batching changes no answer
(every concurrent greedy answer equals its sequential corpus answer), that per-request
settings stay per request, that cancelling one request frees its slot without touching the
others, that nothing grows over many requests, and that errors stay with their request.
"""

from __future__ import annotations

import asyncio
import gc
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from langchain_localllm import (
    ConstraintError,
    ContextWindowExceededError,
    GenerationError,
    LocalGGMLChatModel,
    LocalGGMLLLM,
    clear_model_cache,
    model_cache_info,
    set_model_cache_size,
)
from langchain_localllm._backends.llamacpp import scheduler as scheduler_module
from langchain_localllm._backends.llamacpp.scheduler import Scheduler

from .conftest import POEM_Q, ROSE_Q, SINGLE, TINY_GGUF, bridge_threads, chat_answer, scheduler_threads

SLOTS = 8
TIMEOUT = 120.0
ENDLESS = "root ::= [a-z] root"
"""A grammar that never lets the answer end: with ``max_tokens=None`` it runs to the context window."""


def _chat(**kwargs: Any) -> LocalGGMLChatModel:
    return LocalGGMLChatModel(model_path=str(TINY_GGUF), temperature=0, max_parallel=SLOTS, **kwargs)


def _llm(**kwargs: Any) -> LocalGGMLLLM:
    kwargs = {"temperature": 0, "max_parallel": SLOTS, **kwargs}
    return LocalGGMLLLM(model_path=str(TINY_GGUF), **kwargs)


def _scheduler(model: LocalGGMLLLM | LocalGGMLChatModel) -> Scheduler:
    with model._backend().hold() as loaded:
        scheduler = loaded.scheduler
    assert isinstance(scheduler, Scheduler)
    return scheduler


def _wait(condition: Callable[[], bool], seconds: float = 10.0) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.005)
    return condition()


@pytest.fixture(autouse=True)
def _fresh() -> Iterator[None]:
    clear_model_cache()
    yield
    clear_model_cache()
    assert scheduler_threads() == []  # unloading joins every scheduler


def _prompts(n: int) -> list[str]:
    assert len(SINGLE) >= n
    return SINGLE[:n]


# -- answers under batching equal the sequential answers ------------------------------------


def test_sixteen_concurrent_mixed_calls_give_their_sequential_answers() -> None:
    prompts = _prompts(16)
    expected = [chat_answer(p) for p in prompts]  # the corpus answers: what the sequential path gives
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
    assert scheduler.steps < sum(chat.get_num_tokens(a) for a in expected)  # steps were shared
    assert bridge_threads() == []


def test_llm_batch_submits_every_prompt_at_once_and_matches_the_sequential_path() -> None:
    prompts = [f"Q: {q} A:" for q in _prompts(16)]
    sequential = LocalGGMLLLM(model_path=str(TINY_GGUF), temperature=0, max_tokens=48, prompt_format="raw")
    expected = [sequential.invoke(p) for p in prompts]
    llm = _llm(max_tokens=48, prompt_format="raw")
    result = llm.generate(prompts)
    assert [g[0].text for g in result.generations] == expected
    usage = result.llm_output["token_usage"] if result.llm_output else {}
    steps = _scheduler(llm).steps
    assert steps < usage["completion_tokens"]  # one step decoded several prompts
    assert llm.batch(prompts) == expected


def test_chat_batch_and_abatch_match_the_corpus() -> None:
    prompts = _prompts(12)
    chat = _chat()
    assert [m.content for m in chat.batch(prompts)] == [chat_answer(p) for p in prompts]
    assert [m.content for m in asyncio.run(chat.abatch(prompts))] == [chat_answer(p) for p in prompts]
    llm = _llm()
    assert asyncio.run(llm.abatch(prompts)) == [chat_answer(p) for p in prompts]


def test_a_slot_reused_by_the_next_request_answers_as_on_a_fresh_model() -> None:
    chat = _chat()
    first = [str(m.content) for m in chat.batch([POEM_Q] * SLOTS)]  # every slot holds the poem now
    assert first == [chat_answer(POEM_Q)] * SLOTS
    assert chat.invoke(ROSE_Q).content == chat_answer(ROSE_Q)
    assert [m.content for m in chat.batch(_prompts(SLOTS))] == [chat_answer(p) for p in _prompts(SLOTS)]


def test_multi_turn_prefix_is_reused_within_a_slot() -> None:
    llm = _llm(max_tokens=4, prompt_format="raw")
    history = " ".join([ROSE_Q] * 22)
    llm.invoke(history)
    scheduler = _scheduler(llm)
    reused: list[int] = []
    submit = scheduler.submit

    def recording(job: Any) -> None:
        submit(job)
        _wait(lambda: job.slot is not None or job.done)
        reused.append(job.reused)

    scheduler.submit = recording  # type: ignore[method-assign]
    assert llm.invoke(history + " and tulips?") == LocalGGMLLLM(
        model_path=str(TINY_GGUF), temperature=0, max_tokens=4, prompt_format="raw"
    ).invoke(history + " and tulips?")
    assert reused
    assert reused[0] >= 64


# -- per-request settings ---------------------------------------------------------------------


def test_per_request_settings_inside_one_batch() -> None:
    chat = _chat(max_tokens=64)
    poem = chat_answer(POEM_Q)
    schema = {
        "title": "Flower",
        "type": "object",
        "properties": {"flower": {"type": "string", "enum": ["rose", "tulip"]}},
        "required": ["flower"],
    }
    structured = chat.with_structured_output(schema, method="json_schema")
    outcomes: dict[str, Any] = {}

    def run(name: str, fn: Callable[[], Any]) -> threading.Thread:
        def target() -> None:
            outcomes[name] = fn()

        return threading.Thread(target=target)

    jobs = [
        run("short", lambda: chat.invoke(POEM_Q, max_tokens=3)),
        run("stopped", lambda: chat.invoke(POEM_Q, stop=["\nViolets"])),
        run("free", lambda: chat.invoke(ROSE_Q)),
        run("seeded_a", lambda: chat.invoke(POEM_Q, temperature=1.5, seed=7)),
        run("seeded_b", lambda: chat.invoke(POEM_Q, temperature=1.5, seed=7)),
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
    assert outcomes["seeded_a"].content == outcomes["seeded_b"].content  # each its own seeded chain
    assert outcomes["seeded_a"].content == chat.invoke(POEM_Q, temperature=1.5, seed=7).content
    assert outcomes["structured"]["flower"] in {"rose", "tulip"}


def test_logprobs_come_from_each_sequences_own_row() -> None:
    expected = LocalGGMLLLM(model_path=str(TINY_GGUF), temperature=0, max_tokens=8, logprobs=1)
    llm = _llm(max_tokens=8, logprobs=1)
    batched = llm.generate([ROSE_Q, POEM_Q]).generations
    for prompt, (generation,) in zip([ROSE_Q, POEM_Q], batched, strict=True):
        want = expected.generate([prompt]).generations[0][0].generation_info or {}
        got = generation.generation_info or {}
        assert [e["token"] for e in got["logprobs"]] == [e["token"] for e in want["logprobs"]]
        assert all(e["top_logprobs"][0]["token"] == e["token"] for e in got["logprobs"])


# -- cancellation -----------------------------------------------------------------------------


def test_breaking_a_stream_frees_its_slot_and_leaves_the_others_unchanged() -> None:
    chat = _chat(max_tokens=256)
    others = _prompts(6)
    results: dict[int, str] = {}

    def answer(i: int) -> None:
        results[i] = str(chat.invoke(others[i]).content)

    threads = [threading.Thread(target=answer, args=(i,)) for i in range(len(others))]
    stream = chat.stream(POEM_Q, max_tokens=None, grammar=ENDLESS)
    next(stream)
    for t in threads:
        t.start()
    next(stream)
    stream.close()  # the consumer goes away mid-generation
    for t in threads:
        t.join(TIMEOUT)
    assert [results[i] for i in range(len(others))] == [chat_answer(q) for q in others]
    scheduler = _scheduler(chat)
    assert _wait(scheduler.idle)  # the cancelled request is gone, its slot free
    assert scheduler.steps < 1000  # it did not run on towards its 2,000-token window
    assert bridge_threads() == []
    assert len(scheduler_threads()) == 1


def test_a_garbage_collected_stream_is_cancelled() -> None:
    chat = _chat(max_tokens=None)
    stream = chat.stream(POEM_Q, grammar=ENDLESS)
    next(stream)
    scheduler = _scheduler(chat)
    assert not scheduler.idle()
    del stream
    gc.collect()
    assert _wait(scheduler.idle)
    assert scheduler.steps < 1000


def test_cancelling_a_task_frees_its_slot_and_leaves_the_others_unchanged() -> None:
    chat = _chat(max_tokens=256)

    async def scenario() -> list[str]:
        async def endless() -> None:
            async for _ in chat.astream(POEM_Q, max_tokens=None, grammar=ENDLESS):
                pass

        victim = asyncio.create_task(endless())
        await asyncio.sleep(0)
        answers = asyncio.gather(*(chat.ainvoke(q) for q in _prompts(4)))
        await asyncio.sleep(0.05)
        victim.cancel()
        with pytest.raises(asyncio.CancelledError):
            await victim
        return [str(m.content) for m in await answers]

    assert asyncio.run(scenario()) == [chat_answer(q) for q in _prompts(4)]
    scheduler = _scheduler(chat)
    assert _wait(scheduler.idle)
    assert scheduler.steps < 1000  # the cancelled task's request stopped, far short of its window
    assert bridge_threads() == []


# -- no growth --------------------------------------------------------------------------------


def _rss() -> int:
    with Path("/proc/self/status").open() as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    return 0


def test_a_thousand_short_requests_through_eight_slots_grow_nothing() -> None:
    llm = _llm(max_tokens=2, prompt_format="raw")
    prompts = [f"Q: {SINGLE[i % len(SINGLE)]} #{i} A:" for i in range(1000)]
    llm.batch(prompts[:100])
    scheduler = _scheduler(llm)
    assert _wait(scheduler.idle)
    cells, rss, threads = scheduler.used_cells(), _rss(), threading.active_count()
    for start in range(100, 1000, 300):
        outputs = llm.batch(prompts[start : start + 300])
        assert len(outputs) == len(prompts[start : start + 300])
    assert _wait(scheduler.idle)
    with llm._backend().hold() as loaded:
        n_ctx = loaded.n_ctx
    assert scheduler.used_cells() <= SLOTS * n_ctx
    assert scheduler.used_cells() <= cells + SLOTS * 8  # only idle slots' last prompts stay cached
    assert threading.active_count() <= threads
    assert _rss() - rss < 64 * 2**20
    assert len(scheduler_threads()) == 1


# -- errors stay per request ------------------------------------------------------------------


def test_a_context_overflow_or_a_bad_grammar_fails_that_request_only() -> None:
    chat = _chat(n_ctx=256)
    outcomes: dict[str, Any] = {}

    def run(name: str, fn: Callable[[], Any]) -> threading.Thread:
        def target() -> None:
            try:
                outcomes[name] = fn()
            except Exception as e:
                outcomes[name] = e

        return threading.Thread(target=target)

    jobs = [
        run("overflow", lambda: chat.invoke("roses " * 400)),
        run("grammar", lambda: chat.invoke(ROSE_Q, grammar="root ::= (")),
        *(run(q, lambda q=q: chat.invoke(q)) for q in _prompts(4)),
    ]
    for t in jobs:
        t.start()
    for t in jobs:
        t.join(TIMEOUT)
    assert isinstance(outcomes["overflow"], ContextWindowExceededError)
    assert isinstance(outcomes["grammar"], ConstraintError)
    for q in _prompts(4):
        assert outcomes[q].content == chat_answer(q)


def test_a_stream_across_an_unload_fails_clearly_and_the_worker_is_joined() -> None:
    chat = _chat(max_tokens=None)
    stream = chat.stream(POEM_Q, grammar=ENDLESS)
    next(stream)
    assert len(scheduler_threads()) == 1
    assert chat.unload()
    assert scheduler_threads() == []
    with pytest.raises(GenerationError, match="unloaded"):
        for _ in stream:
            pass
    assert chat.invoke(ROSE_Q).content == chat_answer(ROSE_Q)  # the next call reloads


def test_max_parallel_one_keeps_the_step_wise_path() -> None:
    llm = LocalGGMLLLM(model_path=str(TINY_GGUF), temperature=0, max_tokens=16)
    assert llm.max_parallel == 1
    llm.batch([ROSE_Q, POEM_Q])
    with llm._backend().hold() as loaded:
        assert loaded.scheduler is None
        assert loaded.batch is None
    assert scheduler_threads() == []


# -- the worker's lifetime --------------------------------------------------------------------


def test_an_idle_worker_ends_and_the_next_call_starts_a_new_one(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(scheduler_module, "IDLE_SECONDS", 0.1)
    chat = _chat()
    assert chat.invoke(ROSE_Q).content == chat_answer(ROSE_Q)
    scheduler = _scheduler(chat)
    first = scheduler.thread()
    assert first is not None
    assert _wait(lambda: not first.is_alive())
    assert scheduler_threads() == []  # nothing keeps a thread for an idle model
    assert [m.content for m in chat.batch(_prompts(4))] == [chat_answer(p) for p in _prompts(4)]
    assert _scheduler(chat) is scheduler  # the same scheduler, a new worker
    assert scheduler.thread() not in {None, first}


def test_an_evicted_model_frees_its_batch_context_and_worker_when_collected() -> None:
    set_model_cache_size(1)
    try:
        chat = _chat()
        assert chat.invoke(ROSE_Q).content == chat_answer(ROSE_Q)
        scheduler = _scheduler(chat)
        with chat._backend().hold() as loaded:
            batch = loaded.batch
        worker = scheduler.thread()
        assert worker is not None
        assert worker.is_alive()
        evictions = model_cache_info().evictions
        other = _llm(max_parallel=2, max_tokens=4)  # another load key: the cache (bound 1) evicts the chat model
        other.invoke(ROSE_Q)
        assert model_cache_info().evictions == evictions + 1
        del chat, loaded
        gc.collect()
        assert _wait(lambda: not worker.is_alive())  # joined when the model was collected, not left idling
        assert batch.ctx is None  # its multi-sequence context was freed
        assert len(scheduler_threads()) == 1  # the other model's worker only
        with pytest.raises(GenerationError, match="unloaded"):
            scheduler.submit(
                scheduler_module.Job(
                    prompt=[1], sampler=None, budget=1, stops=(), sink=lambda _: None, pieces={}, eog=()
                )
            )
    finally:
        set_model_cache_size(4)
