"""Tools, structured output and a real client (langchain's ``create_agent``) on a published model.

SmolLM2's chat template ignores ``tools``: the package warns once and writes its own tool
prompt (``tool_prompt="auto"``), so bound tools and tool history reach the model. Forced calls
are constrained to the schema, so they are valid whatever the model's size; cut off, they are
invalid calls, never plain text.
"""

from __future__ import annotations

import logging
from typing import Any

import pytest
from langchain_core.messages import AIMessage, HumanMessage, ToolMessage
from pydantic import BaseModel, Field

from langchain_localllm._core import toolprompt
from tests.integration.real.conftest import Side

PRICE_TOOL = {
    "type": "function",
    "function": {
        "name": "get_flower_price",
        "description": "Get the price of a flower in yuan.",
        "parameters": {
            "type": "object",
            "properties": {"flower": {"type": "string", "description": "the flower's name"}},
            "required": ["flower"],
        },
    },
}
QUESTION = [HumanMessage("How much is a rose?")]
CALL = {"name": "get_flower_price", "args": {"flower": "rose"}, "id": "call_1", "type": "tool_call"}


class Flower(BaseModel):
    """A flower and what it means."""

    name: str = Field(max_length=40)
    meaning: str = Field(max_length=80)


def test_bound_tools_and_tool_history_reach_the_prompt(
    side: Side, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(toolprompt, "_probes", toolprompt._Probes())  # forget earlier tests' warnings
    chat = side.make()
    with caplog.at_level(logging.WARNING, logger="langchain_localllm"):
        with_tools = chat.get_num_tokens_from_messages(QUESTION, tools=[PRICE_TOOL])
    plain = chat.get_num_tokens_from_messages(QUESTION)
    assert plain == len(side.hand_ids([{"role": "user", "content": "How much is a rose?"}]))
    assert with_tools > plain + 20
    assert any("ignores tools" in r.getMessage() for r in caplog.records)
    history = [*QUESTION, AIMessage("", tool_calls=[CALL]), ToolMessage('{"price": 12}', tool_call_id="call_1")]
    assert chat.get_num_tokens_from_messages(history) > plain + 10


@pytest.mark.parametrize("choice", ["any", "get_flower_price"])
def test_forced_calls_are_valid_and_cut_off_ones_invalid(side: Side, choice: str) -> None:
    forced = side.make(max_tokens=64).bind_tools([PRICE_TOOL], tool_choice=choice)
    whole = forced.invoke(QUESTION)
    assert [c["name"] for c in whole.tool_calls] == ["get_flower_price"]
    assert isinstance(whole.tool_calls[0]["args"]["flower"], str)
    assert whole.response_metadata["finish_reason"] == "tool_calls"
    cut = forced.invoke(QUESTION, max_tokens=6)
    assert (cut.content, cut.tool_calls, len(cut.invalid_tool_calls)) == ("", [], 1)
    assert cut.response_metadata["finish_reason"] == "length"
    streamed: Any = None
    for chunk in forced.stream(QUESTION):
        streamed = chunk if streamed is None else streamed + chunk
    assert [(c["name"], c["args"]) for c in streamed.tool_calls] == [(c["name"], c["args"]) for c in whole.tool_calls]


@pytest.mark.parametrize("method", ["json_schema", "function_calling"])
def test_structured_output_is_valid(side: Side, method: str) -> None:
    structured = side.make(max_tokens=96).with_structured_output(Flower, method=method)
    out = structured.invoke("Name one flower and what it means.")
    assert isinstance(out, Flower)
    assert out.name.strip()


def test_create_agent_with_provider_strategy(side: Side) -> None:
    agents = pytest.importorskip("langchain.agents")
    strategy = pytest.importorskip("langchain.agents.structured_output")
    agent = agents.create_agent(side.make(max_tokens=96), tools=[], response_format=strategy.ProviderStrategy(Flower))
    out = agent.invoke({"messages": [("user", "Name one flower and what it means.")]})
    assert isinstance(out["structured_response"], Flower)
    assert Flower.model_validate_json(str(out["messages"][-1].content)) == out["structured_response"]
