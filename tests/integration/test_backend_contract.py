"""One contract for the three classes over the one backend interface.

Each test here failed on at least one class before the backend interface (the drifts
listed in the backend-interface issue), and is written against the public API only.
"""

from __future__ import annotations

import asyncio
import threading
from pathlib import Path
from typing import Any

import pytest
from langchain_core.language_models import BaseChatModel
from langchain_core.messages import HumanMessage, SystemMessage

from langchain_localllm import (
    GenerationError,
    HFLocalChatModel,
    InvalidParameterError,
    LocalGGMLChatModel,
    LocalGGMLLLM,
    LocalLLMError,
    ModelLoadError,
    UnsupportedContentError,
)

from .conftest import TINY_GGUF, TINY_HF, chat_answer

ROSE_Q = "Rose is which type of flower?"
STOP = " genus"  # inside the tiny model's answer to ROSE_Q


def get_flower_price(flower: str) -> str:
    """Get the price of a flower in yuan."""
    return f"{flower}: 10"


@pytest.fixture(scope="module", params=["llamacpp", "hf"])
def chat(request: pytest.FixtureRequest) -> BaseChatModel:
    if request.param == "llamacpp":
        return LocalGGMLChatModel(model_path=str(TINY_GGUF), temperature=0, max_tokens=64)
    return HFLocalChatModel(model=str(TINY_HF), device="cpu", max_tokens=64)


@pytest.fixture(scope="module")
def llm() -> LocalGGMLLLM:
    return LocalGGMLLLM(model_path=str(TINY_GGUF), temperature=0, max_tokens=64)


def reference_ids(chat_or_llm: Any, text: str) -> list[int]:
    """The backend's own tokenizer, loaded independently of the package."""
    if isinstance(chat_or_llm, HFLocalChatModel):
        transformers = pytest.importorskip("transformers")
        return list(transformers.AutoTokenizer.from_pretrained(TINY_HF).encode(text, add_special_tokens=False))
    llama_cpp = pytest.importorskip("llama_cpp")
    vocab = llama_cpp.Llama(model_path=str(TINY_GGUF), vocab_only=True, verbose=False)
    return list(vocab.tokenize(text.encode(), add_bos=False, special=True))


def reference_count(chat_or_llm: Any, text: str) -> int:
    return len(reference_ids(chat_or_llm, text))


# -- metadata and counting -----------------------------------------------------------


def test_stop_sequence_is_reported_by_every_class(chat: BaseChatModel, llm: LocalGGMLLLM) -> None:
    message = chat.invoke(ROSE_Q, stop=[STOP])
    assert message.content == chat_answer(ROSE_Q).split(STOP)[0]
    assert message.response_metadata["finish_reason"] == "stop"
    assert message.response_metadata["stop_sequence"] == STOP
    info = llm.generate([ROSE_Q], stop=[STOP]).generations[0][0].generation_info or {}
    assert (info["finish_reason"], info["stop_sequence"]) == ("stop", STOP)


@pytest.mark.parametrize("text", ["Rose is which type of flower?", "玫瑰 🌹 and <|im_end|>"])
def test_get_num_tokens_is_the_backend_tokenizers_count(chat: BaseChatModel, llm: LocalGGMLLLM, text: str) -> None:
    assert chat.get_num_tokens(text) == reference_count(chat, text)
    assert llm.get_num_tokens(text) == reference_count(llm, text)
    # get_token_ids too: LangChain's default would fetch GPT-2's tokenizer from the hub.
    assert chat.get_token_ids(text) == reference_ids(chat, text)
    assert llm.get_token_ids(text) == reference_ids(llm, text)


def test_get_num_tokens_from_messages_is_the_rendered_prompt(chat: BaseChatModel) -> None:
    messages = [SystemMessage("You are a florist."), HumanMessage(ROSE_Q)]
    assert chat.get_num_tokens_from_messages(messages) == chat.invoke(messages).usage_metadata["input_tokens"]
    with_tools = chat.get_num_tokens_from_messages(messages, tools=[get_flower_price])
    bound = chat.bind_tools([get_flower_price]).invoke(messages)
    assert with_tools == bound.usage_metadata["input_tokens"]
    assert with_tools > chat.get_num_tokens_from_messages(messages)  # the tiny template renders the tools


# -- call options ----------------------------------------------------------------------


@pytest.mark.parametrize(("option", "value"), [("temperature", float("nan")), ("top_p", float("inf"))])
def test_non_finite_call_options_are_refused_by_every_class(
    chat: BaseChatModel, llm: LocalGGMLLLM, option: str, value: float
) -> None:
    with pytest.raises(InvalidParameterError, match=option):
        chat.invoke(ROSE_Q, **{option: value})
    with pytest.raises(InvalidParameterError, match=option):
        llm.invoke(ROSE_Q, **{option: value})


def test_every_chat_model_takes_the_same_chat_options(chat: BaseChatModel) -> None:
    # LangChain passes ``stream`` through to the model (BaseChatModel._should_stream).
    assert chat.invoke(ROSE_Q, stream=True).content == chat_answer(ROSE_Q)


# -- errors: all under LocalLLMError ----------------------------------------------------


def test_media_content_is_a_package_error(chat: BaseChatModel) -> None:
    image = HumanMessage(content=[{"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA"}}])
    with pytest.raises(UnsupportedContentError) as caught:
        chat.invoke([image])
    assert isinstance(caught.value, LocalLLMError)
    assert isinstance(caught.value, ValueError)


def test_a_gguf_llama_cpp_refuses_is_a_load_error(tmp_path: Path) -> None:
    data = TINY_GGUF.read_bytes()
    value = b"\x05\x00\x00\x00\x00\x00\x00\x00llama"  # general.architecture = "llama" (length-prefixed)
    at = data.index(b"general.architecture") + len(b"general.architecture") + 4  # key, then the value type
    assert data[at : at + len(value)] == value
    path = tmp_path / "unknown-arch.gguf"
    path.write_bytes(data[:at] + value[:-1] + b"q" + data[at + len(value) :])  # "llamq"
    with pytest.raises(ModelLoadError, match=r"llama\.cpp could not load"):
        LocalGGMLLLM(model_path=str(path)).invoke("hi")


def test_an_unusable_hf_directory_is_a_load_error(tmp_path: Path) -> None:
    (tmp_path / "config.json").write_text('{"model_type": "no-such-architecture"}')
    with pytest.raises(ModelLoadError, match=r"no tokenizer files.*tokenizer\.save_pretrained"):
        HFLocalChatModel(model=str(tmp_path), device="cpu", local_files_only=True).invoke("hi")


def test_a_backend_failure_while_generating_is_a_generation_error(monkeypatch: pytest.MonkeyPatch) -> None:
    chat = HFLocalChatModel(model=str(TINY_HF), device="cpu", max_tokens=8)
    with chat._backend().hold() as bundle:  # the loaded model, to make its generate fail
        model = bundle.model

    def broken(*args: Any, **kwargs: Any) -> Any:
        raise RuntimeError("CUDA error: device-side assert triggered")

    monkeypatch.setattr(model, "generate", broken)
    with pytest.raises(GenerationError, match="device-side assert") as caught:
        chat.invoke(ROSE_Q)
    assert isinstance(caught.value.__cause__, RuntimeError)


# -- one worker thread per stream ----------------------------------------------------------


def stream_threads() -> list[str]:
    return [
        t.name
        for t in threading.enumerate()
        if t.name.startswith("langchain-localllm") and t.name != "langchain-localllm-cuda"
    ]


async def test_a_transformers_astream_uses_one_worker_thread() -> None:
    chat = HFLocalChatModel(model=str(TINY_HF), device="cpu", max_tokens=32)
    seen: list[list[str]] = []
    async for _ in chat.astream(ROSE_Q):
        seen.append(stream_threads())
    assert seen
    assert max(len(names) for names in seen) == 1, seen  # before: an async bridge thread plus a generate thread
    await asyncio.sleep(0)


def test_a_backend_failure_inside_batch_is_a_generation_error(monkeypatch: pytest.MonkeyPatch) -> None:
    chat = HFLocalChatModel(model=str(TINY_HF), device="cpu", max_tokens=8)
    with chat._backend().hold() as bundle:
        model = bundle.model

    def broken(*args: Any, **kwargs: Any) -> Any:
        raise RuntimeError("CUDA error: out of memory")

    monkeypatch.setattr(model, "generate", broken)
    with pytest.raises(GenerationError, match="out of memory"):
        chat.batch([ROSE_Q, "Hello"])
