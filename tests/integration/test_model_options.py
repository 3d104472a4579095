"""Options real clients pass, on the tiny models: ``model_kwargs``, ``generate_kwargs``, ``response_format``, metadata.

* ``model_kwargs`` reach ``llama_cpp.Llama``; the context every prompt is checked against is
  the one the loaded ``Llama`` has.
* ``generate_kwargs`` that are generation settings go on the copied ``GenerationConfig``:
  no transformers deprecation warning, and the setting takes effect.
* langchain's ``create_agent(..., response_format=ProviderStrategy(Schema))`` works on both
  chat models (the answer's content is JSON constrained to the schema).
* The package version is in every run's metadata (``lc_versions``), and the answers carry
  ``model_name`` and ``model_provider``.
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Iterator
from typing import Any
from uuid import UUID

import pytest
from langchain_core.callbacks import BaseCallbackHandler
from langchain_core.language_models import BaseChatModel
from pydantic import BaseModel, Field

import langchain_localllm
from langchain_localllm import (
    ContextWindowExceededError,
    HFLocalChatModel,
    InvalidParameterError,
    LocalGGMLChatModel,
    LocalGGMLLLM,
)

from .conftest import ROSE_Q, TINY_GGUF, TINY_HF, chat_answer

pytestmark = pytest.mark.usefixtures("one_torch_thread")


# -- llama.cpp: model_kwargs and the real context ------------------------------------------


def test_llama_kwargs_pass_through_and_the_context_is_the_loaded_one() -> None:
    from langchain_localllm._backends.llamacpp.load import usable_context

    chat = LocalGGMLChatModel(
        model_path=str(TINY_GGUF), temperature=0, n_ctx=64, model_kwargs={"last_n_tokens_size": 16}
    )
    assert chat.invoke("Hello").content == chat_answer("Hello")
    with chat._backend().hold() as model:
        assert model.llama.last_n_tokens_size == 16  # reached Llama()
        assert model.n_ctx == usable_context(model.llama) == len(model.llama.input_ids) == 64
        assert model.llama.n_ctx() >= 64  # llama.cpp may round its context up; the token buffer does not
    # Before: model_kwargs={"n_ctx": 64} skipped this check and failed in numpy
    # ("could not broadcast input array from shape (56,) into shape (0,)").
    with pytest.raises(ContextWindowExceededError, match="64 tokens"):
        chat.invoke("flower " * 80)


def test_a_name_llama_does_not_take_is_refused_at_load() -> None:
    llm = LocalGGMLLLM(model_path=str(TINY_GGUF), model_kwargs={"n_ctxx": 64})
    with pytest.raises(InvalidParameterError, match="n_ctxx"):
        llm.invoke("Hello")


# -- transformers: generate_kwargs on the generation config -----------------------------------


class _Records(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())


@pytest.fixture
def transformers_log() -> Iterator[_Records]:
    """Every transformers log record (its warnings go to its own stderr handler, not to the root logger)."""
    transformers_logging = pytest.importorskip("transformers.utils.logging")
    transformers_logging.warning_once.cache_clear()  # a warning logged earlier in the process would hide it
    handler = _Records()
    logger = logging.getLogger("transformers")
    logger.addHandler(handler)
    try:
        yield handler
    finally:
        logger.removeHandler(handler)


def _no_repeated_trigram(ids: list[int]) -> bool:
    grams = [tuple(ids[i : i + 3]) for i in range(len(ids) - 2)]
    return len(grams) == len(set(grams))


def test_generate_kwargs_take_effect_without_a_deprecation_warning(
    transformers_log: _Records, monkeypatch: pytest.MonkeyPatch
) -> None:
    chat = HFLocalChatModel(model=str(TINY_HF), device="cpu", max_tokens=64)
    with chat._backend().hold() as bundle:
        model = bundle.model
        eos = sorted(bundle.eos_ids)
    calls: list[tuple[dict[str, Any], list[int]]] = []
    real = model.generate

    def generate(**kwargs: Any) -> Any:
        out = real(**kwargs)
        calls.append((kwargs, out[0][kwargs["input_ids"].shape[1] :].tolist()))
        return out

    monkeypatch.setattr(model, "generate", generate)
    question = "Tell me a story."  # out of the corpus: the tiny model repeats itself
    default = chat.invoke(question).content
    assert not _no_repeated_trigram(calls[-1][1])
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        # The documented example, and eos_token_id (both used to log the warning).
        out = chat.invoke(question, generate_kwargs={"no_repeat_ngram_size": 3, "eos_token_id": eos})
    kwargs, ids = calls[-1]
    assert "no_repeat_ngram_size" not in kwargs
    assert "eos_token_id" not in kwargs
    assert kwargs["generation_config"].no_repeat_ngram_size == 3
    assert _no_repeated_trigram(ids)  # the setting took effect
    assert out.content != default
    deprecated = [m for m in transformers_log.messages if "generation_config" in m and "deprecated" in m]
    assert deprecated == []
    assert [str(w.message) for w in caught if "generation_config" in str(w.message)] == []


# -- response_format: langchain's provider strategy --------------------------------------------


class Flower(BaseModel):
    """A flower."""

    name: str = Field(max_length=20)
    color: str = Field(max_length=20)


@pytest.fixture(params=["llamacpp", "hf"])
def chat(request: pytest.FixtureRequest) -> BaseChatModel:
    if request.param == "llamacpp":
        return LocalGGMLChatModel(model_path=str(TINY_GGUF), temperature=0)
    return HFLocalChatModel(model=str(TINY_HF), device="cpu")


def test_create_agent_with_provider_strategy(chat: BaseChatModel) -> None:
    agents = pytest.importorskip("langchain.agents")
    structured = pytest.importorskip("langchain.agents.structured_output")
    # Before: TypeError / InvalidParameterError "unknown call options ['response_format']".
    agent = agents.create_agent(chat, tools=[], response_format=structured.ProviderStrategy(Flower))
    out = agent.invoke({"messages": [("user", ROSE_Q)]})
    assert isinstance(out["structured_response"], Flower)
    assert Flower.model_validate_json(str(out["messages"][-1].content)) == out["structured_response"]
    # The default (AutoStrategy) reads the profile: structured_output False picks the tool strategy.
    auto = agents.create_agent(chat, tools=[], response_format=Flower).invoke({"messages": [("user", ROSE_Q)]})
    assert isinstance(auto["structured_response"], Flower)


def test_response_format_forms_on_a_plain_call(chat: BaseChatModel) -> None:
    schema = Flower.model_json_schema()
    provider = {"type": "json_schema", "json_schema": {"name": "Flower", "schema": schema, "strict": True}}
    assert Flower.model_validate_json(str(chat.invoke(ROSE_Q, response_format=provider).content))
    streamed = "".join(str(c.content) for c in chat.stream(ROSE_Q, response_format=provider))
    assert Flower.model_validate_json(streamed)
    assert chat.invoke(ROSE_Q, response_format={"type": "text"}).content == chat_answer(ROSE_Q)


# -- metadata ------------------------------------------------------------------------------------


class _RunMetadata(BaseCallbackHandler):
    def __init__(self) -> None:
        self.metadata: list[dict[str, Any]] = []

    def on_chat_model_start(self, serialized: Any, messages: Any, *, run_id: UUID, **kwargs: Any) -> None:
        self.metadata.append(kwargs.get("metadata") or {})

    def on_llm_start(self, serialized: Any, prompts: Any, *, run_id: UUID, **kwargs: Any) -> None:
        self.metadata.append(kwargs.get("metadata") or {})


@pytest.mark.parametrize("kind", ["llm", "llamacpp", "hf"])
def test_runs_carry_the_package_version_and_answers_the_model(kind: str) -> None:
    handler = _RunMetadata()
    if kind == "llm":
        llm = LocalGGMLLLM(model_path=str(TINY_GGUF), temperature=0, max_tokens=8)
        result = llm.generate(["Hello"], callbacks=[handler])
        assert result.llm_output is not None
        assert result.llm_output["model_name"] == "tiny-chat"
        assert result.llm_output["model_provider"] == "llamacpp"
    else:
        model: BaseChatModel = (
            LocalGGMLChatModel(model_path=str(TINY_GGUF), temperature=0, max_tokens=8)
            if kind == "llamacpp"
            else HFLocalChatModel(model=str(TINY_HF), device="cpu", max_tokens=8)
        )
        message = model.invoke("Hello", config={"callbacks": [handler]})
        assert message.response_metadata["model_provider"] == ("llamacpp" if kind == "llamacpp" else "huggingface")
        assert message.response_metadata["model_name"]
    assert len(handler.metadata) == 1
    versions = handler.metadata[0]["lc_versions"]
    assert versions["langchain-localllm"] == langchain_localllm.__version__
    assert "langchain-core" in versions
