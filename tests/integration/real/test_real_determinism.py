"""Answers that do not depend on what ran before, and streams that hold no model hostage, on a published model.

llama.cpp's naive prefix reuse changes real models' logits (a one-token re-evaluation is not
bit-identical to a fresh prefill; measured up to 0.64 on SmolLM2-135M Q4_1); the package reuses
only cells of full aligned prefill chunks (``prefix_cache="exact"``), so the same input gives the
same logits whatever ran before. See docs/real-models.md.
"""

from __future__ import annotations

import concurrent.futures

from langchain_core.messages import HumanMessage

from tests.integration.real.conftest import Side

ROSE = [HumanMessage("Rose is which type of flower?")]
OTHER = [HumanMessage("How do I keep cut flowers fresh?")]


def _logprobs(message: object) -> list[float]:
    return [entry["logprob"] for entry in message.response_metadata["logprobs"]]  # type: ignore[attr-defined]


def test_the_same_prompt_gives_bit_identical_logprobs_whatever_ran_before(gguf_side: Side) -> None:
    chat = gguf_side.make(logprobs=0, max_tokens=24)
    first = chat.invoke(ROSE)
    again = chat.invoke(ROSE)  # a full-prompt cache hit
    chat.invoke(OTHER)
    after_other = chat.invoke(ROSE)  # a partial hit (the template's shared prefix)
    assert (
        first.content
        == again.content
        == after_other.content
        == gguf_side.raw_chat([{"role": "user", "content": "Rose is which type of flower?"}], max_tokens=24).text
    )
    assert _logprobs(first) == _logprobs(again) == _logprobs(after_other)


def test_an_unconsumed_stream_blocks_no_other_call(side: Side) -> None:
    chat = side.make()
    expected = side.raw_chat([{"role": "user", "content": "Rose is which type of flower?"}]).text
    other = side.raw_chat([{"role": "user", "content": "How do I keep cut flowers fresh?"}]).text
    stream = chat.stream(ROSE)
    first = str(next(stream).content)
    with concurrent.futures.ThreadPoolExecutor(1) as pool:  # another thread, another instance
        assert pool.submit(side.make().invoke, OTHER).result(timeout=120).content == other
    assert chat.invoke(OTHER).content == other  # the same thread
    assert first + "".join(str(c.content) for c in stream) == expected  # and the paused stream resumes exactly
