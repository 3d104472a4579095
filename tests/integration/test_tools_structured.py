"""Tool calling and structured output on both chat models, on the tiny models.

The tiny model cannot follow instructions, so these tests prove the guarantees that do
not depend on understanding: a forced tool call is always a valid call of a bound tool,
and structured output always parses and validates against the schema (llama.cpp: GBNF
grammars; transformers: llguidance), in invoke and in stream. Where the tiny model was
trained on a tool conversation (the corpus), the exact call and the two-turn loop are
checked too.
"""

from __future__ import annotations

import json
from typing import Any, Literal

import pytest
from langchain_core.language_models import BaseChatModel
from langchain_core.messages import AIMessage, ToolMessage
from pydantic import BaseModel, Field
from typing_extensions import TypedDict

from langchain_localllm import ConstraintError, HFLocalChatModel, LocalGGMLChatModel

from .conftest import CN_Q, PRICE_TOOL, ROSE_Q, TINY_GGUF, TINY_HF, TOOL_EXAMPLES, as_messages, chat_answer

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(params=["llamacpp", "hf"])
def chat(request: pytest.FixtureRequest) -> BaseChatModel:
    if request.param == "llamacpp":
        return LocalGGMLChatModel(model_path=str(TINY_GGUF), temperature=0)
    return HFLocalChatModel(model=str(TINY_HF), device="cpu")


# -- tools -----------------------------------------------------------------------------


def test_auto_tool_choice_parses_the_models_call(chat: BaseChatModel) -> None:
    ex = TOOL_EXAMPLES[0]
    bound = chat.bind_tools([PRICE_TOOL])
    msg = bound.invoke(as_messages(ex.messages))
    assert msg.tool_calls == [
        {"name": "get_flower_price", "args": {"flower": "rose"}, "id": msg.tool_calls[0]["id"], "type": "tool_call"}
    ]
    assert msg.content == ""
    assert msg.response_metadata["finish_reason"] == "tool_calls"
    chunks = list(bound.stream(as_messages(ex.messages)))
    calls = [tc for c in chunks for tc in c.tool_call_chunks]
    assert [(c["name"], json.loads(c["args"] or "{}")) for c in calls] == [("get_flower_price", {"flower": "rose"})]


def test_two_turn_tool_loop(chat: BaseChatModel) -> None:
    ex = TOOL_EXAMPLES[0]
    bound = chat.bind_tools([PRICE_TOOL])
    first = bound.invoke(as_messages(ex.messages))
    call = first.tool_calls[0]
    history = [*as_messages(ex.messages), first, ToolMessage('{"price": 12}', tool_call_id=call["id"])]
    second = bound.invoke(history)
    assert second.content == "A rose costs 12 yuan."
    assert second.tool_calls == []


def test_tool_choice_none_sends_no_tools(chat: BaseChatModel) -> None:
    assert chat.bind_tools([PRICE_TOOL], tool_choice="none").invoke(ROSE_Q).content == chat_answer(ROSE_Q)


@pytest.mark.parametrize("choice", ["any", "required", "get_flower_price", True])
@pytest.mark.parametrize("question", [ROSE_Q, "Hello", CN_Q])
def test_forced_tool_calls_are_always_valid(chat: BaseChatModel, choice: Any, question: str) -> None:
    def get_flower_price(flower: str) -> str:
        """Get the price of a flower in yuan.

        Args:
            flower: The flower name
        """
        return flower

    class Bouquet(BaseModel):
        """Order a bouquet."""

        flower: Literal["rose", "tulip", "lily"]
        count: Literal[1, 3, 11, 99]

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


def _summary(message: Any) -> tuple[Any, ...]:
    """What a caller acts on: content, calls, invalid calls (without ids and errors), finish reason."""
    invalid = [(bad["name"], bad["args"]) for bad in message.invalid_tool_calls]
    calls = [(c["name"], c["args"]) for c in message.tool_calls]
    return message.content, calls, invalid, message.response_metadata["finish_reason"]


def _added(chunks: list[Any]) -> Any:
    total = chunks[0]
    for chunk in chunks[1:]:
        total = total + chunk
    return total


@pytest.mark.parametrize("max_tokens", [8, 24])
async def test_a_call_cut_off_by_max_tokens_is_invalid_never_a_call_named_empty(
    chat: BaseChatModel, max_tokens: int
) -> None:
    """Before: ``tool_calls=[{'name': '', 'args': {'name': 'get_flower_price', ...}}]``, finish ``length``."""
    ex = TOOL_EXAMPLES[0]
    bound = chat.bind_tools([PRICE_TOOL])
    msg = bound.invoke(as_messages(ex.messages), max_tokens=max_tokens)
    assert msg.tool_calls == []
    assert len(msg.invalid_tool_calls) == 1
    bad = msg.invalid_tool_calls[0]
    assert "cut off by max_tokens" in (bad["error"] or "")
    assert json.loads(bad["args"]).startswith('{"name')  # the text the model wrote
    assert msg.response_metadata["finish_reason"] == "length"
    streamed = _added(list(bound.stream(as_messages(ex.messages), max_tokens=max_tokens)))
    assert _summary(streamed) == _summary(msg)  # langchain-core's own `+` of the chunks agrees
    async_streamed = _added([c async for c in bound.astream(as_messages(ex.messages), max_tokens=max_tokens)])
    assert _summary(async_streamed) == _summary(msg)


@pytest.mark.parametrize("choice", ["any", "get_flower_price"])
def test_a_forced_call_cut_off_is_invalid_never_content(chat: BaseChatModel, choice: str) -> None:
    bound = chat.bind_tools([PRICE_TOOL], tool_choice=choice)
    for max_tokens in (1, 10):
        msg = bound.invoke("Hello", max_tokens=max_tokens)
        assert (msg.content, msg.tool_calls) == ("", [])
        assert len(msg.invalid_tool_calls) == 1
        assert "cut off by max_tokens" in (msg.invalid_tool_calls[0]["error"] or "")
        assert msg.response_metadata["finish_reason"] == "length"
        assert _summary(_added(list(bound.stream("Hello", max_tokens=max_tokens)))) == _summary(msg)


def test_unknown_tool_choice_is_an_error(chat: BaseChatModel) -> None:
    with pytest.raises(ValueError, match="tool_choice"):
        chat.bind_tools([PRICE_TOOL], tool_choice="no_such_tool")


# -- structured output -------------------------------------------------------------------
#
# Numbers: llama.cpp's converter caps a number at 16 digits but cannot express bounds (it
# refuses them, see below); llguidance enforces bounds but lets digits run on, so the HF
# schemas bound every number and the llama.cpp schemas bound none.


class Petal(BaseModel):
    color: Literal["red", "white", "pink"]
    size_cm: int


class Flower(BaseModel):
    name: str = Field(max_length=24)
    chinese_name: str = Field(max_length=8, description="中文名")
    petals: list[Petal] = Field(max_length=3)
    count: int
    fragrant: bool
    note: str | None = Field(default=None, max_length=16)


class BoundedPetal(BaseModel):
    color: Literal["red", "white", "pink"]
    size_cm: int = Field(ge=1, le=30)


class BoundedFlower(BaseModel):
    name: str = Field(max_length=24)
    chinese_name: str = Field(max_length=8, description="中文名")
    petals: list[BoundedPetal] = Field(max_length=3)
    count: int = Field(ge=0, le=1000)
    fragrant: bool
    note: str | None = Field(default=None, max_length=16)


class Order(TypedDict):
    flower: Literal["rose", "tulip"]
    stems: Literal[1, 3, 11, 99]


def order_schema(bounded: bool) -> dict[str, Any]:
    zip_code: dict[str, Any] = {"type": "integer"}
    if bounded:
        zip_code.update(minimum=0, maximum=99999)
    return {
        "title": "order",
        "type": "object",
        "properties": {
            "flower": {"type": "string", "enum": ["rose", "tulip", "玫瑰"]},
            "tags": {"type": "array", "items": {"type": "string", "maxLength": 10}, "maxItems": 3},
            "address": {
                "type": "object",
                "properties": {"city": {"type": "string", "maxLength": 12}, "zip": zip_code},
                "required": ["city", "zip"],
            },
        },
        "required": ["flower", "tags", "address"],
    }


def schema_for(chat: BaseChatModel, kind: str) -> Any:
    bounded = isinstance(chat, HFLocalChatModel)
    return {
        "pydantic": BoundedFlower if bounded else Flower,
        "typeddict": Order,
        "json-schema": order_schema(bounded),
    }[kind]


def _validate(schema: Any, value: Any) -> None:
    if isinstance(schema, type) and issubclass(schema, BaseModel):
        assert isinstance(value, schema)
        schema.model_validate(value.model_dump())
        return
    assert isinstance(value, dict)
    if schema is Order:
        assert value["flower"] in {"rose", "tulip"}
        assert value["stems"] in {1, 3, 11, 99}
    else:
        assert value["flower"] in {"rose", "tulip", "玫瑰"}
        assert len(value["tags"]) <= 3
        assert all(len(t) <= 10 for t in value["tags"])
        assert isinstance(value["address"]["zip"], int)
        assert len(value["address"]["city"]) <= 12
        if "minimum" in schema["properties"]["address"]["properties"]["zip"]:
            assert 0 <= value["address"]["zip"] <= 99999


@pytest.mark.parametrize("kind", ["pydantic", "typeddict", "json-schema"])
@pytest.mark.parametrize("method", ["json_schema", "function_calling"])
@pytest.mark.parametrize("question", [ROSE_Q, CN_Q, "Hello"])
def test_structured_output_always_parses(chat: BaseChatModel, kind: str, method: str, question: str) -> None:
    schema = schema_for(chat, kind)
    structured = chat.with_structured_output(schema, method=method)
    _validate(schema, structured.invoke(question))
    streamed = list(structured.stream(question))
    assert streamed
    _validate(schema, streamed[-1])


def test_json_mode_and_include_raw(chat: BaseChatModel) -> None:
    out = chat.with_structured_output(None, method="json_mode", include_raw=True).invoke(ROSE_Q)
    if out["raw"].response_metadata["finish_reason"] == "stop":
        assert isinstance(out["parsed"], dict)
        assert out["parsing_error"] is None
    else:  # "any JSON object" has no length bound: a cut-off answer is reported, not hidden
        assert out["parsed"] is None
        assert out["parsing_error"] is not None
    schema = schema_for(chat, "pydantic")
    raw = chat.with_structured_output(schema, include_raw=True).invoke(ROSE_Q)
    assert isinstance(raw["raw"], AIMessage)
    assert isinstance(raw["parsed"], schema)
    assert raw["parsing_error"] is None


def test_a_schema_the_engine_cannot_express_is_a_clear_error(chat: BaseChatModel) -> None:
    bad = {"title": "remote", "type": "object", "properties": {"x": {"$ref": "https://example.com/r.json"}}}
    with pytest.raises(ConstraintError, match="cannot express"):
        chat.with_structured_output(bad).invoke("hi")


class Measurement(BaseModel):
    size_cm: float = Field(gt=0, lt=100)
    stems: int = Field(ge=1)


def test_llamacpp_refuses_bounds_it_would_drop() -> None:
    chat = LocalGGMLChatModel(model_path=str(TINY_GGUF), temperature=0)
    with pytest.raises(ValueError, match=r"cannot express the JSON-schema keyword '\w+'.*llguidance"):
        chat.with_structured_output(Measurement).invoke("hi")


def test_llamacpp_enforces_small_integer_ranges_as_enums() -> None:
    chat = LocalGGMLChatModel(model_path=str(TINY_GGUF), temperature=0)
    for question in (ROSE_Q, CN_Q, "Hello"):
        flower = chat.with_structured_output(BoundedFlower).invoke(question)
        assert isinstance(flower, BoundedFlower)
        assert 0 <= flower.count <= 1000
