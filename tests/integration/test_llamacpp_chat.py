"""LocalGGMLChatModel on the tiny GGUF: chat, tools, and structured output that always parses."""

from __future__ import annotations

import pytest

from langchain_localllm import ContextWindowExceededError, model_cache_info
from langchain_localllm._core.backend import ChatPrompt
from langchain_localllm.chat_models import LocalGGMLChatModel

from .conftest import CHATS, CN_Q, POEM_Q, ROSE_Q, TINY_GGUF, as_messages, chat_answer


@pytest.fixture
def chat() -> LocalGGMLChatModel:
    return LocalGGMLChatModel(model_path=str(TINY_GGUF), temperature=0)


def test_every_corpus_conversation_without_tools(chat: LocalGGMLChatModel) -> None:
    cases = [ex for ex in CHATS if not ex.tools]
    assert len(cases) >= 40
    wrong = [
        (ex.messages, out, ex.answer)
        for ex in cases
        if (out := chat.invoke(as_messages(ex.messages)).content) != ex.answer
    ]
    assert wrong == [], f"{len(wrong)} of {len(cases)} corpus conversations not answered exactly"


def test_stream_equals_invoke_and_usage_is_on_the_last_chunk(chat: LocalGGMLChatModel) -> None:
    chunks = list(chat.stream(CN_Q))
    assert "".join(str(c.content) for c in chunks) == chat.invoke(CN_Q).content == chat_answer(CN_Q)
    with_usage = [c for c in chunks if c.usage_metadata]
    assert len(with_usage) == 1
    assert with_usage[0] is chunks[-1]
    assert chunks[-1].response_metadata["finish_reason"] == "stop"
    assert chunks[-1].response_metadata["model_provider"] == "llamacpp"


def test_stops_merge_and_never_appear(chat: LocalGGMLChatModel) -> None:
    answer = chat_answer(POEM_Q)
    cut = answer[: answer.find("\nViolets")]
    assert chat.invoke(POEM_Q, stop=["\nViolets"]).content == cut
    assert "".join(str(c.content) for c in chat.stream(POEM_Q, stop=["\nViolets"])) == cut


def test_shares_the_cached_model_with_the_llm(chat: LocalGGMLChatModel) -> None:
    from langchain_localllm import LocalGGMLLLM

    chat.invoke("Hello")
    loads = model_cache_info().loads
    LocalGGMLLLM(model_path=str(TINY_GGUF), temperature=0).invoke("Hello")
    assert model_cache_info().loads == loads


def test_chat_template_override_is_used(chat: LocalGGMLChatModel) -> None:
    override = (
        "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
        "{{ '<|im_start|>assistant\\n' }}"
    )
    custom = LocalGGMLChatModel(model_path=str(TINY_GGUF), temperature=0, chat_template=override)
    with custom._backend().hold() as model:
        hi = [{"role": "user", "content": "hi"}]
        ours = custom._backend()._render(model, ChatPrompt(hi, chat_template=custom.chat_template))
        default = chat._backend()._render(model, ChatPrompt(hi))
        assert model.llama.detokenize(ours, special=True).decode() == (
            "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n"
        )
    assert ours != default


def test_context_overflow(chat: LocalGGMLChatModel) -> None:
    small = LocalGGMLChatModel(model_path=str(TINY_GGUF), n_ctx=64)
    with pytest.raises(ContextWindowExceededError):
        small.invoke("roses " * 200)


async def test_async(chat: LocalGGMLChatModel) -> None:
    assert (await chat.ainvoke(ROSE_Q)).content == chat_answer(ROSE_Q)
    chunks = [c async for c in chat.astream(ROSE_Q)]
    assert "".join(str(c.content) for c in chunks) == chat_answer(ROSE_Q)


def test_logprobs_in_response_metadata() -> None:
    chat = LocalGGMLChatModel(model_path=str(TINY_GGUF), temperature=0, logprobs=2)
    msg = chat.invoke(ROSE_Q)
    assert msg.content == chat_answer(ROSE_Q)
    entries = msg.response_metadata["logprobs"]
    assert len(entries) == msg.usage_metadata["output_tokens"]
    assert all(e["top_logprobs"][0]["token"] == e["token"] for e in entries)
