"""LangChain messages → chat-template dicts (``langchain_localllm._core.messages``)."""

from __future__ import annotations

import pytest
from langchain_core.messages import (
    AIMessage,
    ChatMessage,
    FunctionMessage,
    HumanMessage,
    SystemMessage,
    ToolMessage,
)

from langchain_localllm._core.messages import (
    UnsupportedContentError,
    content_text,
    fold_system,
    plain_text_prompt,
    to_chat_dicts,
)


def test_roles_and_plain_content() -> None:
    out = to_chat_dicts([SystemMessage("Be brief."), HumanMessage("Hi"), AIMessage("Hello!"), HumanMessage("Bye")])
    assert out == [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Hi"},
        {"role": "assistant", "content": "Hello!"},
        {"role": "user", "content": "Bye"},
    ]


def test_name_is_kept() -> None:
    assert to_chat_dicts([HumanMessage("hello", name="example_user")]) == [
        {"role": "user", "content": "hello", "name": "example_user"}
    ]


def test_ai_tool_calls_and_tool_results() -> None:
    ai = AIMessage("", tool_calls=[{"name": "add", "args": {"a": 1, "b": 2}, "id": "c1", "type": "tool_call"}])
    tool = ToolMessage('{"result": 3}', tool_call_id="c1", name="add")
    out = to_chat_dicts([HumanMessage("What is 1 + 2"), ai, tool])
    assert out[1] == {
        "role": "assistant",
        "content": "",
        "tool_calls": [{"id": "c1", "type": "function", "function": {"name": "add", "arguments": {"a": 1, "b": 2}}}],
    }
    assert out[2] == {"role": "tool", "content": '{"result": 3}', "tool_call_id": "c1", "name": "add"}


def test_invalid_tool_calls_are_sent_back_as_written() -> None:
    ai = AIMessage(
        "",
        invalid_tool_calls=[
            {"name": "add", "args": '{"a": 1', "id": "c9", "error": "bad json", "type": "invalid_tool_call"}
        ],
    )
    (out,) = to_chat_dicts([ai])
    assert out["tool_calls"] == [{"id": "c9", "type": "function", "function": {"name": "add", "arguments": '{"a": 1'}}]


def test_list_content_blocks() -> None:
    ai = AIMessage(
        [
            {"type": "text", "text": "some text"},
            {"type": "tool_use", "id": "abc123", "name": "add", "input": {"a": 1}},
            {"type": "reasoning", "reasoning": "hidden"},
        ],
        tool_calls=[{"name": "add", "args": {"a": 1}, "id": "abc123", "type": "tool_call"}],
    )
    human = HumanMessage(["Describe ", {"type": "text", "text": "this"}])
    out = to_chat_dicts([human, ai])
    assert out[0]["content"] == "Describe this"
    assert out[1]["content"] == "some text"
    assert out[1]["tool_calls"][0]["function"]["name"] == "add"


@pytest.mark.parametrize(
    "block",
    [
        {"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA"}},
        {"type": "image", "base64": "AAAA", "mime_type": "image/png"},
        {"type": "file", "base64": "AAAA", "mime_type": "application/pdf"},
        {"type": "input_audio", "input_audio": {"data": "AAAA", "format": "wav"}},
    ],
)
def test_media_blocks_are_rejected_clearly(block: dict[str, object]) -> None:
    with pytest.raises(UnsupportedContentError, match="text only"):
        to_chat_dicts([HumanMessage([{"type": "text", "text": "What is this?"}, block])])


def test_unknown_block_type_is_rejected() -> None:
    with pytest.raises(UnsupportedContentError, match="mystery"):
        content_text([{"type": "mystery"}])


def test_consecutive_same_role_messages_are_merged() -> None:
    out = to_chat_dicts(
        [
            SystemMessage("hello"),
            SystemMessage("hello"),
            HumanMessage("hello"),
            HumanMessage("hello"),
            AIMessage("hello"),
            AIMessage("hello"),
            HumanMessage("how are you"),
        ]
    )
    assert out == [
        {"role": "system", "content": "hello\n\nhello"},
        {"role": "user", "content": "hello\n\nhello"},
        {"role": "assistant", "content": "hello\n\nhello"},
        {"role": "user", "content": "how are you"},
    ]


def test_merging_keeps_tool_calls_and_drops_conflicting_names() -> None:
    call = {"name": "f", "args": {}, "id": "1", "type": "tool_call"}
    out = to_chat_dicts(
        [AIMessage("a", name="x", tool_calls=[call]), AIMessage("", name="y", tool_calls=[{**call, "id": "2"}])]
    )
    assert len(out) == 1
    assert out[0]["content"] == "a"
    assert [c["id"] for c in out[0]["tool_calls"]] == ["1", "2"]
    assert "name" not in out[0]
    same = to_chat_dicts([HumanMessage("a", name="u"), HumanMessage("b", name="u")])
    assert same == [{"role": "user", "content": "a\n\nb", "name": "u"}]


def test_tool_results_are_never_merged() -> None:
    out = to_chat_dicts([ToolMessage("1", tool_call_id="a"), ToolMessage("2", tool_call_id="b")])
    assert [m["tool_call_id"] for m in out] == ["a", "b"]


def test_chat_and_function_messages() -> None:
    out = to_chat_dicts([ChatMessage(role="human", content="hi"), ChatMessage(role="critic", content="meh")])
    assert out == [{"role": "user", "content": "hi"}, {"role": "critic", "content": "meh"}]
    assert to_chat_dicts([FunctionMessage("42", name="f")]) == [{"role": "tool", "content": "42", "name": "f"}]


def test_fold_system_into_first_user_turn() -> None:
    messages = [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Hi"},
        {"role": "assistant", "content": "Hello"},
        {"role": "system", "content": "Answer in French."},
        {"role": "user", "content": "Bye"},
    ]
    assert fold_system(messages) == [
        {"role": "user", "content": "Be brief.\n\nAnswer in French.\n\nHi"},
        {"role": "assistant", "content": "Hello"},
        {"role": "user", "content": "Bye"},
    ]
    assert messages[1]["content"] == "Hi"  # the input is not modified
    assert fold_system([{"role": "system", "content": "S"}]) == [{"role": "user", "content": "S"}]
    assert fold_system([{"role": "user", "content": "U"}]) == [{"role": "user", "content": "U"}]


def test_plain_text_prompt_for_seq2seq_models() -> None:
    assert plain_text_prompt([{"role": "user", "content": "Translate to German: rose"}]) == "Translate to German: rose"
    assert plain_text_prompt([{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}]) == (
        "Be brief.\n\nHi"
    )
    conversation = [
        {"role": "user", "content": "hello"},
        {"role": "assistant", "content": "hi"},
        {"role": "user", "content": "how are you"},
    ]
    assert plain_text_prompt(conversation) == "User: hello\nAssistant: hi\nUser: how are you"
