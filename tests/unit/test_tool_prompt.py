"""The tool prompt for chat templates that ignore tools: detection, the warning, the rewritten conversation."""

from __future__ import annotations

import copy
import json
import logging
import uuid
from collections.abc import Mapping, Sequence
from typing import Any

import pytest

from langchain_localllm._core.template import render_chat_template
from langchain_localllm._core.toolprompt import (
    fallback_messages,
    has_tool_history,
    template_ignores_tools,
    warn_ignored_tools,
)
from langchain_localllm._core.tools import HermesToolCallParser, convert_tools
from langchain_localllm.errors import ChatTemplateError
from tests.helpers import TINY_HF

CHATML = (
    "{% for m in messages %}<|im_start|>{{ m.role }}\n{{ m.content }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
"""A ChatML template without any tool handling (like SmolLM2's)."""
QWEN = json.loads((TINY_HF / "tokenizer_config.json").read_text(encoding="utf-8"))["chat_template"]
"""The tiny model's template: Qwen 2.5's tool format."""


def get_price(flower: str) -> str:
    """Get the price of a flower.

    Args:
        flower: The flower name
    """
    return flower


TOOLS = convert_tools([get_price])
CALL = {"id": "call_1", "type": "function", "function": {"name": "get_price", "arguments": {"flower": "玫瑰"}}}
HISTORY: list[dict[str, Any]] = [
    {"role": "system", "content": "You are a helpful assistant."},
    {"role": "user", "content": "How much are roses and lilies?"},
    {"role": "assistant", "content": "Let me check.", "tool_calls": [CALL, {**CALL, "id": "call_2"}]},
    {"role": "tool", "content": '{"price": 12}', "tool_call_id": "call_1"},
    {"role": "tool", "content": '{"price": 8}', "tool_call_id": "call_2"},
    {"role": "assistant", "content": "12 and 8 yuan."},
    {"role": "user", "content": "And tulips?"},
]


def render(template: str, messages: Sequence[Mapping[str, Any]], tools: Any = None) -> str:
    return render_chat_template(template, messages, tools=tools)


def test_the_fallback_on_a_template_without_tools_is_qwens_own_tool_prompt() -> None:
    """ChatML plus the fallback renders exactly what Qwen 2.5's template renders with tools and history."""
    native = render(QWEN, HISTORY, TOOLS)
    assert "<tool_call>" in native
    assert render(CHATML, HISTORY, TOOLS) == render(CHATML, HISTORY)  # the template ignores them
    assert render(CHATML, fallback_messages(HISTORY, TOOLS)) == native


def test_fallback_messages_shape() -> None:
    before = copy.deepcopy(HISTORY)
    out = fallback_messages(HISTORY, TOOLS)
    assert before == HISTORY  # the caller's messages are not changed
    assert [m["role"] for m in out] == ["system", "user", "assistant", "user", "assistant", "user"]
    assert all("tool_calls" not in m for m in out)
    assert out[0]["content"].startswith("You are a helpful assistant.\n\n# Tools")
    assert json.dumps(TOOLS[0], ensure_ascii=False) in out[0]["content"]
    assert out[2]["content"].startswith("Let me check.\n<tool_call>\n")
    _, calls, invalid = HermesToolCallParser().parse(out[2]["content"])  # the format the parser reads back
    assert [(c["name"], c["args"]) for c in calls] == [("get_price", {"flower": "玫瑰"})] * 2
    assert invalid == []
    assert (
        out[3]["content"]
        == '<tool_response>\n{"price": 12}\n</tool_response>\n<tool_response>\n{"price": 8}\n</tool_response>'
    )


def test_fallback_without_a_system_message_adds_one_and_joins_a_user_turn_after_results() -> None:
    messages = [
        {"role": "user", "content": "Price?"},
        {"role": "assistant", "content": "", "tool_calls": [CALL]},
        {"role": "tool", "content": "12", "tool_call_id": "call_1"},
        {"role": "user", "content": "Thanks. And lilies?"},
    ]
    out = fallback_messages(messages, TOOLS)
    assert [m["role"] for m in out] == ["system", "user", "assistant", "user"]
    assert out[0]["content"].startswith("# Tools")
    assert out[2]["content"].startswith("<tool_call>\n")
    assert out[3]["content"] == "<tool_response>\n12\n</tool_response>\n\nThanks. And lilies?"
    assert fallback_messages(messages, None)[0]["role"] == "user"  # history only: no tools section


def test_an_unparsed_call_in_history_is_sent_back_as_written() -> None:
    bad = {"id": "c", "type": "function", "function": {"name": "get_price", "arguments": '{"flower": "ro'}}
    out = fallback_messages([{"role": "assistant", "content": "", "tool_calls": [bad]}], None)
    assert out[0]["content"] == '<tool_call>\n{"name": "get_price", "arguments": {"flower": "ro}\n</tool_call>'


def test_has_tool_history() -> None:
    assert has_tool_history(HISTORY)
    assert has_tool_history([{"role": "tool", "content": "1"}])
    assert not has_tool_history([{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}])


def test_detection_renders_twice_per_template_and_caches() -> None:
    calls: list[Any] = []

    def ignoring(tools: Any) -> str:
        calls.append(tools)
        return render(CHATML, [{"role": "user", "content": "hi"}], tools)

    key = ("test", uuid.uuid4().hex)
    assert template_ignores_tools(key, ignoring)
    assert template_ignores_tools(key, ignoring)
    assert len(calls) == 2  # with and without the probe tool, once

    def native(tools: Any) -> str:
        return render(QWEN, [{"role": "user", "content": "hi"}], tools)

    assert not template_ignores_tools(("test", uuid.uuid4().hex), native)


def test_detection_when_the_template_fails() -> None:
    def fails_with_tools(tools: Any) -> str:
        if tools:
            msg = "tools are not supported"
            raise ChatTemplateError(msg)
        return "prompt"

    def fails_always(tools: Any) -> str:
        raise ChatTemplateError(str(tools))

    assert template_ignores_tools(("test", uuid.uuid4().hex), fails_with_tools)  # it cannot take them
    assert not template_ignores_tools(("test", uuid.uuid4().hex), fails_always)  # the real render reports it


def test_the_warning_is_logged_once_per_template_and_mode(caplog: pytest.LogCaptureFixture) -> None:
    key = ("test", uuid.uuid4().hex)
    with caplog.at_level(logging.WARNING, logger="langchain_localllm"):
        for _ in range(3):
            warn_ignored_tools(key, "auto", "'m'")
        warn_ignored_tools(key, "template", "'m'")
    records = [r for r in caplog.records if r.name == "langchain_localllm"]
    assert len(records) == 2
    assert "tool_prompt='template'" in records[0].getMessage()
    assert "cannot see the bound tools" in records[1].getMessage()
