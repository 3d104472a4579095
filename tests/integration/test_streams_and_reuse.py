"""Streams never hold a model hostage, and llama.cpp's prefix reuse never changes an answer.

A llama.cpp generation holds the model's lock one step at a time, so a stream that is
started and then left alone cannot block other calls; a displaced stream's KV cells
are saved and restored bit for bit. Prefix reuse is exact by default: the same input
gives the same logits whatever ran before (checked through ``logprobs``, which exposes
the raw values rather than only the greedy choice).
"""

from __future__ import annotations

import asyncio
import gc
import sys
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from langchain_core.language_models import BaseLanguageModel

from langchain_localllm import (
    GenerationError,
    HFLocalChatModel,
    LocalGGMLChatModel,
    LocalGGMLLLM,
    clear_model_cache,
)
from langchain_localllm._backends.llamacpp import sequence

from .conftest import CN_Q, POEM_Q, ROSE_Q

LLAMA_CLASSES = [LocalGGMLLLM, LocalGGMLChatModel]
TIMEOUT = 60.0


def _text(output: Any) -> str:
    return output if isinstance(output, str) else str(output.content)


def _streamed(model: BaseLanguageModel[Any], prompt: str) -> str:
    return "".join(_text(chunk) for chunk in model.stream(prompt))


def _within(seconds: float, fn: Callable[[], Any]) -> Any:
    """Run ``fn`` in a thread; fail (instead of hanging the suite) if it does not return in time."""
    result: list[Any] = []
    errors: list[BaseException] = []

    def run() -> None:
        try:
            result.append(fn())
        except BaseException as e:
            errors.append(e)

    worker = threading.Thread(target=run, daemon=True)
    worker.start()
    worker.join(seconds)
    if worker.is_alive():
        pytest.fail(f"the call did not return within {seconds} s: an unconsumed stream blocks the model")
    if errors:
        raise errors[0]
    return result[0]


def _llama(cls: type[BaseLanguageModel[Any]], gguf_path: Path, **kwargs: Any) -> Any:
    return cls(model_path=str(gguf_path), temperature=0, max_tokens=64, **kwargs)


# -- an unconsumed stream blocks nobody -------------------------------------------------------


@pytest.mark.parametrize("cls", LLAMA_CLASSES, ids=lambda c: c.__name__)
def test_an_unconsumed_stream_does_not_block_the_same_thread(cls: Any, gguf_path: Path) -> None:
    model = _llama(cls, gguf_path)

    def scenario() -> str:
        gen = model.stream(ROSE_Q)
        next(gen)
        answer = _text(model.invoke(POEM_Q))  # same thread, the stream still open
        gen.close()
        return answer

    answer = _within(TIMEOUT, scenario)
    assert answer
    assert answer == _text(model.invoke(POEM_Q))


@pytest.mark.parametrize("cls", LLAMA_CLASSES, ids=lambda c: c.__name__)
def test_an_unconsumed_stream_does_not_block_other_threads_and_instances(cls: Any, gguf_path: Path) -> None:
    model = _llama(cls, gguf_path)
    other = _llama(cls, gguf_path)  # another instance sharing the loaded model
    gen = model.stream(ROSE_Q)
    next(gen)
    try:
        answer = _within(TIMEOUT, lambda: _text(other.invoke(POEM_Q)))
        assert answer == _text(_within(TIMEOUT, lambda: other.invoke(POEM_Q)))
        assert answer
    finally:
        gen.close()


def test_an_unconsumed_hf_stream_does_not_block_other_calls(hf_path: Path) -> None:
    model = HFLocalChatModel(model=str(hf_path), temperature=0, max_tokens=32)
    gen = model.stream(ROSE_Q)
    next(gen)
    try:
        assert _within(TIMEOUT, lambda: model.invoke(POEM_Q)).content
    finally:
        gen.close()


@pytest.mark.parametrize("cls", LLAMA_CLASSES, ids=lambda c: c.__name__)
def test_an_exception_kept_with_its_traceback_inside_a_stream_loop_does_not_block(cls: Any, gguf_path: Path) -> None:
    model = _llama(cls, gguf_path)
    kept: list[Any] = []
    try:
        for _chunk in model.stream(ROSE_Q):
            raise RuntimeError("consumer failed")  # noqa: TRY301 - the consumer's own error
    except RuntimeError:
        kept.append(sys.exc_info())  # the traceback keeps the stream's frame (and generator) alive
    assert _text(_within(TIMEOUT, lambda: model.invoke(POEM_Q)))
    kept.clear()


# -- a displaced stream resumes exactly -------------------------------------------------------


@pytest.mark.parametrize("cls", LLAMA_CLASSES, ids=lambda c: c.__name__)
def test_a_displaced_stream_resumes_with_the_answer_it_would_have_given(cls: Any, gguf_path: Path) -> None:
    model = _llama(cls, gguf_path)
    expected = _streamed(model, ROSE_Q)
    gen = model.stream(ROSE_Q)
    head = [_text(next(gen)) for _ in range(3)]
    other = _text(model.invoke(POEM_Q))  # takes the context over and fills it with another prompt
    rest = [_text(chunk) for chunk in gen]
    assert "".join(head + rest) == expected
    assert other == _text(model.invoke(POEM_Q))


@pytest.mark.parametrize("cls", LLAMA_CLASSES, ids=lambda c: c.__name__)
def test_two_streams_consumed_alternately_give_their_sequential_answers(cls: Any, gguf_path: Path) -> None:
    model = _llama(cls, gguf_path)
    expected = [_streamed(model, ROSE_Q), _streamed(model, CN_Q)]
    streams = [model.stream(ROSE_Q), model.stream(CN_Q)]
    texts = ["", ""]
    live = [True, True]
    while any(live):
        for i, gen in enumerate(streams):
            if live[i]:
                try:
                    texts[i] += _text(next(gen))
                except StopIteration:
                    live[i] = False
    assert texts == expected


def test_a_garbage_collected_stream_releases_the_context(gguf_path: Path) -> None:
    model = _llama(LocalGGMLLLM, gguf_path)
    gen = model.stream(ROSE_Q)
    next(gen)
    with model._backend().hold() as loaded:
        owner = loaded.kv.owner
        assert owner is not None
        assert owner() is not None
    del gen
    gc.collect()
    with model._backend().hold() as loaded:
        assert loaded.kv.owner is None or loaded.kv.owner() is None or loaded.kv.owner().finished


def test_a_stream_paused_across_an_unload_fails_clearly(gguf_path: Path) -> None:
    model = _llama(LocalGGMLLLM, gguf_path)
    gen = model.stream(POEM_Q)
    next(gen)
    assert model.unload()  # not blocked by the paused stream
    with pytest.raises(GenerationError, match="unloaded while this generation was paused"):
        list(gen)
    assert model.invoke(POEM_Q)  # the next call reloads


def test_astream_is_not_blocked_by_an_unconsumed_sync_stream(gguf_path: Path) -> None:
    model = _llama(LocalGGMLChatModel, gguf_path)
    gen = model.stream(ROSE_Q)
    next(gen)

    async def collect() -> str:
        return "".join([_text(c) async for c in model.astream(POEM_Q)])

    try:
        assert _within(TIMEOUT, lambda: asyncio.run(collect())) == _text(model.invoke(POEM_Q))
    finally:
        gen.close()


# -- exact prefix reuse -----------------------------------------------------------------------


def _logprobs(llm: LocalGGMLLLM, prompt: str) -> list[tuple[int, float]]:
    info = llm.generate([prompt]).generations[0][0].generation_info or {}
    return [(entry["token"], entry["logprob"]) for entry in info["logprobs"]]


def test_the_same_input_gives_bit_identical_logits_whatever_ran_before(gguf_path: Path) -> None:
    clear_model_cache()
    llm = LocalGGMLLLM(model_path=str(gguf_path), temperature=0, max_tokens=8, logprobs=1)
    first = _logprobs(llm, ROSE_Q)
    assert _logprobs(llm, ROSE_Q) == first  # a full-prompt cache hit (used to re-evaluate the last token alone)
    _logprobs(llm, POEM_Q)
    assert _logprobs(llm, ROSE_Q) == first  # after another prompt
    streamed = llm.stream(ROSE_Q)
    assert "".join(streamed) == llm.invoke(ROSE_Q)


def test_exact_reuse_keeps_the_aligned_prefix_of_a_long_conversation(
    gguf_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    reused: list[tuple[int, int]] = []
    start = sequence.Generation.start

    def recording(self: sequence.Generation) -> int:
        token = start(self)
        reused.append((self.reused, len(self._prompt)))
        return token

    monkeypatch.setattr(sequence.Generation, "start", recording)
    llm = LocalGGMLLLM(model_path=str(gguf_path), temperature=0, max_tokens=4, prompt_format="raw")
    history = " ".join([ROSE_Q] * 22)
    llm.invoke(history)
    llm.invoke(history + " and tulips?")
    with llm._backend().hold() as loaded:
        align = loaded.reuse_align
    (_, n_first), (kept, n_second) = reused
    assert n_first > 2 * align
    assert kept == (n_first // align) * align  # every full aligned chunk of the first prompt is reused
    assert kept < n_second


def test_longest_reuse_is_a_documented_switch(gguf_path: Path) -> None:
    llm = LocalGGMLLLM(model_path=str(gguf_path), temperature=0, max_tokens=32, prefix_cache="longest")
    assert llm.invoke(ROSE_Q) == llm.invoke(ROSE_Q, prefix_cache="exact")
    with pytest.raises(ValueError, match="prefix_cache"):
        LocalGGMLLLM(model_path=str(gguf_path), prefix_cache="everything")
