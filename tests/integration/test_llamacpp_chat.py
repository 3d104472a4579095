"""LocalGGMLChatModel on the tiny GGUF: chat, tools, and structured output that always parses."""

from __future__ import annotations

import json
from typing import Any, Literal

import pytest
from langchain_core.messages import AIMessage, HumanMessage, SystemMessage, ToolMessage
from pydantic import BaseModel, Field
from typing_extensions import TypedDict

from langchain_localllm import ContextWindowExceededError, model_cache_info
from langchain_localllm.chat_models import LocalGGMLChatModel

from .conftest import CHATS, TINY_GGUF, chat_answer

POEM_Q = "Write a short poem about flowers."
ROSE_Q = "Rose is which type of flower?"
CN_Q = "昨天有一个客户抱怨他买了花给女朋友之后，两天花就枯了，你说作为客服我应该怎么解释？"
TOOL_EXAMPLES = [ex for ex in CHATS if ex.tools]
PRICE_TOOL = TOOL_EXAMPLES[0].tools[0] if TOOL_EXAMPLES and TOOL_EXAMPLES[0].tools else {}


@pytest.fixture
def chat() -> LocalGGMLChatModel:
    return LocalGGMLChatModel(model_path=str(TINY_GGUF), temperature=0)


def test_every_corpus_conversation_without_tools(chat: LocalGGMLChatModel) -> None:
    cases = [ex for ex in CHATS if not ex.tools]
    matched = 0
    for ex in cases:
        out = chat.invoke(_messages(ex.messages)).content
        matched += out == ex.answer
        assert out == ex.answer, ex.messages
    print(f"LocalGGMLChatModel: {matched}/{len(cases)} corpus conversations answered exactly")


def _messages(dicts: list[dict[str, Any]]) -> list[Any]:
    kinds = {"system": SystemMessage, "user": HumanMessage, "assistant": AIMessage}
    return [kinds[d["role"]](d["content"]) for d in dicts]


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
    with custom._use_model() as entry:
        ours = custom._render(entry.model, [{"role": "user", "content": "hi"}], None)
        default = chat._render(entry.model, [{"role": "user", "content": "hi"}], None)
        assert entry.model.llama.detokenize(ours, special=True).decode() == (
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


# -- tools -----------------------------------------------------------------------------


def test_auto_tool_choice_parses_the_models_call(chat: LocalGGMLChatModel) -> None:
    ex = TOOL_EXAMPLES[0]
    bound = chat.bind_tools([PRICE_TOOL])
    msg = bound.invoke(_messages(ex.messages))
    assert msg.tool_calls == [
        {"name": "get_flower_price", "args": {"flower": "rose"}, "id": msg.tool_calls[0]["id"], "type": "tool_call"}
    ]
    assert msg.content == ""
    assert msg.response_metadata["finish_reason"] == "tool_calls"
    chunks = list(bound.stream(_messages(ex.messages)))
    calls = [tc for c in chunks for tc in c.tool_call_chunks]
    assert [(c["name"], json.loads(c["args"] or "{}")) for c in calls] == [("get_flower_price", {"flower": "rose"})]


def test_two_turn_tool_loop(chat: LocalGGMLChatModel) -> None:
    ex = TOOL_EXAMPLES[0]
    bound = chat.bind_tools([PRICE_TOOL])
    first = bound.invoke(_messages(ex.messages))
    call = first.tool_calls[0]
    history = [*_messages(ex.messages), first, ToolMessage('{"price": 12}', tool_call_id=call["id"])]
    second = bound.invoke(history)
    assert second.content == "A rose costs 12 yuan."
    assert second.tool_calls == []


def test_tool_choice_none_sends_no_tools(chat: LocalGGMLChatModel) -> None:
    assert chat.bind_tools([PRICE_TOOL], tool_choice="none").invoke(ROSE_Q).content == chat_answer(ROSE_Q)


@pytest.mark.parametrize("choice", ["any", "required", "get_flower_price", True])
@pytest.mark.parametrize("question", [ROSE_Q, "Hello", CN_Q])
def test_forced_tool_calls_are_always_valid(chat: LocalGGMLChatModel, choice: Any, question: str) -> None:
    def get_flower_price(flower: str) -> str:
        """Get the price of a flower in yuan.

        Args:
            flower: The flower name
        """
        return flower

    class Bouquet(BaseModel):
        """Order a bouquet."""

        flower: Literal["rose", "tulip", "lily"]
        count: int = Field(ge=1, le=99)

    bound = chat.bind_tools([get_flower_price, Bouquet], tool_choice=choice)
    msg = bound.invoke(question, max_tokens=256)
    assert msg.invalid_tool_calls == []
    assert len(msg.tool_calls) == 1
    call = msg.tool_calls[0]
    if choice == "get_flower_price":
        assert call["name"] == "get_flower_price"
    if call["name"] == "Bouquet":
        Bouquet.model_validate(call["args"])
    else:
        assert set(call["args"]) == {"flower"}
        assert isinstance(call["args"]["flower"], str)


def test_unknown_tool_choice_is_an_error(chat: LocalGGMLChatModel) -> None:
    with pytest.raises(ValueError, match="tool_choice"):
        chat.bind_tools([PRICE_TOOL], tool_choice="no_such_tool")


# -- structured output -------------------------------------------------------------------


class Petal(BaseModel):
    color: Literal["red", "white", "pink"]
    size_cm: float


class Flower(BaseModel):
    name: str = Field(max_length=24)
    chinese_name: str = Field(max_length=8, description="中文名")
    petals: list[Petal] = Field(max_length=3)
    count: int
    fragrant: bool
    note: str | None = Field(default=None, max_length=16)


class Order(TypedDict):
    flower: Literal["rose", "tulip"]
    stems: int


ORDER_SCHEMA = {
    "title": "order",
    "type": "object",
    "properties": {
        "flower": {"type": "string", "enum": ["rose", "tulip", "玫瑰"]},
        "tags": {"type": "array", "items": {"type": "string", "maxLength": 10}, "maxItems": 3},
        "address": {
            "type": "object",
            "properties": {"city": {"type": "string", "maxLength": 12}, "zip": {"type": "integer"}},
            "required": ["city", "zip"],
        },
    },
    "required": ["flower", "tags", "address"],
}


def _validate(schema: Any, value: Any) -> None:
    if isinstance(schema, type) and issubclass(schema, BaseModel):
        assert isinstance(value, schema)
        return
    assert isinstance(value, dict)
    if schema is Order:
        assert value["flower"] in {"rose", "tulip"}
        assert isinstance(value["stems"], int)
    elif schema is ORDER_SCHEMA:
        assert value["flower"] in {"rose", "tulip", "玫瑰"}
        assert len(value["tags"]) <= 3
        assert isinstance(value["address"]["zip"], int)


@pytest.mark.parametrize("schema", [Flower, Order, ORDER_SCHEMA], ids=["pydantic", "typeddict", "json-schema"])
@pytest.mark.parametrize("method", ["json_schema", "function_calling"])
@pytest.mark.parametrize("question", [ROSE_Q, CN_Q, "Hello"])
def test_structured_output_always_parses(chat: LocalGGMLChatModel, schema: Any, method: str, question: str) -> None:
    structured = chat.with_structured_output(schema, method=method)
    _validate(schema, structured.invoke(question))
    streamed = list(structured.stream(question))
    assert streamed
    _validate(schema, streamed[-1])


def test_json_mode_and_include_raw(chat: LocalGGMLChatModel) -> None:
    out = chat.with_structured_output(None, method="json_mode", include_raw=True).invoke(ROSE_Q, max_tokens=512)
    if out["raw"].response_metadata["finish_reason"] == "stop":
        assert isinstance(out["parsed"], dict)
        assert out["parsing_error"] is None
    raw = chat.with_structured_output(Flower, include_raw=True).invoke(ROSE_Q)
    assert isinstance(raw["raw"], AIMessage)
    assert isinstance(raw["parsed"], Flower)
    assert raw["parsing_error"] is None


def test_a_schema_llamacpp_cannot_express_is_a_clear_error(chat: LocalGGMLChatModel) -> None:
    bad = {"title": "remote", "type": "object", "properties": {"x": {"$ref": "https://example.com/r.json"}}}
    with pytest.raises(ValueError, match="cannot express this JSON schema"):
        chat.with_structured_output(bad).invoke("hi")


def test_logprobs_in_response_metadata() -> None:
    chat = LocalGGMLChatModel(model_path=str(TINY_GGUF), temperature=0, logprobs=2)
    msg = chat.invoke(ROSE_Q)
    assert msg.content == chat_answer(ROSE_Q)
    entries = msg.response_metadata["logprobs"]
    assert len(entries) == msg.usage_metadata["output_tokens"]
    assert all(e["top_logprobs"][0]["token"] == e["token"] for e in entries)
