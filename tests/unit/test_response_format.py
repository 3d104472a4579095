"""The ``response_format`` call option (langchain's ProviderStrategy), parsed without loading a model."""

from __future__ import annotations

from typing import Any

import pytest
from langchain_core.messages import HumanMessage
from pydantic import BaseModel
from typing_extensions import TypedDict

from langchain_localllm import HFLocalChatModel, InvalidParameterError, LocalGGMLChatModel
from langchain_localllm._core.tools import ToolPlan, convert_tools

from .conftest import TINY_GGUF, TINY_HF

pytestmark = pytest.mark.usefixtures("no_weights_load")

SCHEMA = {"type": "object", "properties": {"name": {"type": "string"}}, "required": ["name"]}
PROVIDER = {"type": "json_schema", "json_schema": {"name": "Flower", "schema": SCHEMA, "strict": True}}


class Flower(BaseModel):
    name: str


class FlowerDict(TypedDict):
    name: str


def test_the_accepted_forms() -> None:
    from langchain_localllm.chat_models._response_format import response_format_schema

    assert response_format_schema(PROVIDER) == SCHEMA  # what ProviderStrategy.to_model_kwargs() binds
    assert response_format_schema({"type": "json_schema", "json_schema": {"schema": SCHEMA}}) == SCHEMA
    assert response_format_schema({"type": "json_object"}) == {"type": "object"}
    assert response_format_schema({"type": "text"}) is None
    assert response_format_schema(None) is None
    assert response_format_schema(Flower)["properties"] == {"name": {"type": "string"}}
    assert response_format_schema(FlowerDict)["required"] == ["name"]


@pytest.mark.parametrize(
    "bad",
    [
        {"type": "xml"},
        {"json_schema": {"schema": SCHEMA}},
        {"type": "json_schema"},
        {"type": "json_schema", "json_schema": {"name": "x"}},
        {"type": "json_schema", "json_schema": {"schema": "not an object"}},
        "json",
        42,
    ],
)
def test_malformed_forms_are_refused(bad: Any) -> None:
    from langchain_localllm.chat_models._response_format import response_format_schema

    with pytest.raises(InvalidParameterError, match="response_format must be"):
        response_format_schema(bad)


def test_requested_schema_combinations() -> None:
    from langchain_localllm.chat_models._response_format import requested_schema

    none = ToolPlan({})
    assert requested_schema({"response_format": PROVIDER}, none) == SCHEMA
    assert requested_schema({"json_schema": SCHEMA}, none) == SCHEMA
    assert requested_schema({"json_schema": SCHEMA, "response_format": {"type": "text"}}, none) == SCHEMA
    assert requested_schema({}, none) is None
    with pytest.raises(InvalidParameterError, match="not both"):
        requested_schema({"json_schema": SCHEMA, "response_format": PROVIDER}, none)
    tools = convert_tools([Flower])
    # bind_tools([], response_format=...) is what create_agent does without tools: no tools bound.
    assert (
        requested_schema({"tools": [], "tool_choice": "auto", "response_format": PROVIDER}, ToolPlan({"tools": []}))
        == SCHEMA
    )
    # Tools the model may call cannot be combined with a schema constraint on the whole answer.
    auto = ToolPlan({"tools": tools, "tool_choice": "auto"})
    with pytest.raises(InvalidParameterError, match="ToolStrategy"):
        requested_schema({"response_format": PROVIDER}, auto)
    forced = ToolPlan({"tools": tools, "tool_choice": "Flower"})  # the forced call's own grammar applies
    assert requested_schema({"response_format": PROVIDER}, forced) == SCHEMA
    off = ToolPlan({"tools": tools, "tool_choice": "none"})
    assert requested_schema({"response_format": PROVIDER}, off) == SCHEMA


@pytest.mark.parametrize(
    "make", [lambda: LocalGGMLChatModel(model_path=str(TINY_GGUF)), lambda: HFLocalChatModel(model=str(TINY_HF))]
)
def test_both_chat_models_take_response_format_as_a_call_option(make: Any) -> None:
    chat = make()
    # Before: InvalidParameterError("unknown call options ['response_format']").
    _, request, _ = chat._request([HumanMessage("hi")], None, {"response_format": PROVIDER})
    assert request.json_schema == SCHEMA
    bound = chat.bind_tools([], response_format=PROVIDER)  # as langchain's ProviderStrategy binds it
    _, request, plan = chat._request([HumanMessage("hi")], None, bound.kwargs)
    assert request.json_schema == SCHEMA
    assert not plan.active
    _, request, _ = chat._request([HumanMessage("hi")], None, {"response_format": {"type": "json_object"}})
    assert request.json_schema == {"type": "object"}
