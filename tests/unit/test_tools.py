"""Tool-call parsing, tool_choice, call schemas and schema checks: no model needed."""

from __future__ import annotations

import json
from typing import Any

import pytest
from pydantic import BaseModel, Field

from langchain_localllm._backends.llamacpp.grammar import _check_gbnf_expressible
from langchain_localllm._backends.transformers.grammar import _closed
from langchain_localllm._core.tools import (
    HermesToolCallParser,
    JsonToolCallParser,
    convert_tools,
    normalize_tool_choice,
    parser_for_template,
    tool_call_schema,
)


def get_price(flower: str) -> str:
    """Get the price of a flower.

    Args:
        flower: The flower name
    """
    return flower


class Order(BaseModel):
    """Order flowers."""

    flower: str
    stems: int = Field(ge=1)


TOOLS = convert_tools([get_price, Order])


def test_hermes_parses_blocks_and_keeps_surrounding_text() -> None:
    text = 'Let me check.\n<tool_call>\n{"name": "get_price", "arguments": {"flower": "rose"}}\n</tool_call>'
    content, calls, invalid = HermesToolCallParser().parse(text)
    assert content == "Let me check."
    assert [(c["name"], c["args"]) for c in calls] == [("get_price", {"flower": "rose"})]
    assert calls[0]["id"]
    assert invalid == []


def test_hermes_is_not_fooled_by_a_closing_tag_inside_a_string() -> None:
    text = '<tool_call>{"name": "get_price", "arguments": {"flower": "</tool_call> rose"}}</tool_call>'
    _, calls, invalid = HermesToolCallParser().parse(text)
    assert calls[0]["args"] == {"flower": "</tool_call> rose"}
    assert invalid == []


def test_hermes_several_calls_string_arguments_and_bad_json() -> None:
    text = (
        '<tool_call>{"name": "a", "arguments": "{\\"x\\": 1}"}</tool_call>'
        '<tool_call>{"name": "b", "arguments": {}}</tool_call>'
        "<tool_call>{not json</tool_call>"
    )
    content, calls, invalid = HermesToolCallParser().parse(text)
    assert [(c["name"], c["args"]) for c in calls] == [("a", {"x": 1}), ("b", {})]
    assert len(invalid) == 1
    assert "invalid JSON" in (invalid[0]["error"] or "")
    assert content == ""


def test_plain_text_is_content() -> None:
    assert HermesToolCallParser().parse("Roses are red.") == ("Roses are red.", [], [])
    assert JsonToolCallParser().parse("Roses are red.") == ("Roses are red.", [], [])


def test_json_parser_object_and_list() -> None:
    _, calls, _ = JsonToolCallParser().parse('{"name": "get_price", "parameters": {"flower": "lily"}}')
    assert calls[0]["args"] == {"flower": "lily"}
    _, calls, _ = JsonToolCallParser().parse('[{"name": "a", "arguments": {}}, {"name": "b", "arguments": {}}]')
    assert [c["name"] for c in calls] == ["a", "b"]
    assert JsonToolCallParser().parse('{"answer": 4}')[1] == []  # JSON, but not a call


def test_may_be_call_holds_back_only_possible_calls() -> None:
    hermes = HermesToolCallParser()
    assert hermes.may_be_call("")
    assert hermes.may_be_call("<tool")
    assert hermes.may_be_call("  <tool_call>{")
    assert not hermes.may_be_call("Roses")
    assert JsonToolCallParser().may_be_call("{")
    assert not JsonToolCallParser().may_be_call("Hello")


def test_parser_for_template() -> None:
    assert parser_for_template("... <tool_call> ...").name == "hermes"
    assert parser_for_template("{{ messages }}").name == "json"
    assert parser_for_template(None).name == "json"


@pytest.mark.parametrize(
    ("choice", "expected"),
    [
        (None, "auto"),
        ("auto", "auto"),
        ("none", "none"),
        ("any", "required"),
        ("required", "required"),
        (True, "required"),
        ("get_price", "get_price"),
        ({"type": "function", "function": {"name": "Order"}}, "Order"),
    ],
)
def test_normalize_tool_choice(choice: Any, expected: str) -> None:
    assert normalize_tool_choice(choice, TOOLS) == expected


def test_unknown_tool_choice() -> None:
    with pytest.raises(ValueError, match="not 'auto'"):
        normalize_tool_choice("nope", TOOLS)


def test_tool_call_schema_is_closed_and_names_each_tool() -> None:
    schema = tool_call_schema(TOOLS)
    names = [option["properties"]["name"]["const"] for option in schema["anyOf"]]
    assert names == ["get_price", "Order"]
    assert all(option["additionalProperties"] is False for option in schema["anyOf"])
    only = tool_call_schema(TOOLS, only="Order")
    assert only["properties"]["name"] == {"const": "Order"}
    with pytest.raises(ValueError, match="no bound tool"):
        tool_call_schema(TOOLS, only="nope")


def test_wrap_round_trips_through_the_parser() -> None:
    call = json.dumps({"name": "get_price", "arguments": {"flower": "玫瑰"}}, ensure_ascii=False)
    for parser in (HermesToolCallParser(), JsonToolCallParser()):
        _, calls, _ = parser.parse(parser.wrap(call))
        assert calls[0]["args"] == {"flower": "玫瑰"}


def test_gbnf_check_refuses_dropped_keywords_but_not_property_names() -> None:
    _check_gbnf_expressible({"type": "object", "properties": {"minimum": {"type": "integer"}}})
    with pytest.raises(ValueError, match=r"'minimum' \(at \$\.stems\)"):
        _check_gbnf_expressible({"properties": {"stems": {"minimum": 1}}})


def test_llguidance_schemas_are_closed() -> None:
    closed = _closed({"type": "object", "properties": {"a": {"type": "object", "properties": {}}}})
    assert closed["additionalProperties"] is False
    assert closed["properties"]["a"]["additionalProperties"] is False
    kept = _closed({"type": "object", "additionalProperties": True})
    assert kept["additionalProperties"] is True


def test_small_integer_ranges_become_enums_for_llamacpp() -> None:
    from langchain_localllm._backends.llamacpp.grammar import _enumerate_small_int_ranges

    schema = {"type": "object", "properties": {"n": {"type": "integer", "exclusiveMinimum": -3, "maximum": 2.5}}}
    out = _enumerate_small_int_ranges(schema)
    assert out["properties"]["n"] == {"type": "integer", "enum": [-2, -1, 0, 1, 2]}
    _check_gbnf_expressible(out)
    open_range = {"type": "integer", "minimum": 1}
    assert _enumerate_small_int_ranges(open_range) == open_range  # left alone, then refused
    huge = {"type": "integer", "minimum": 0, "maximum": 10**9}
    assert _enumerate_small_int_ranges(huge) == huge


def _chunks(
    parser: Any, pieces: list[str], *, choice: str = "auto", reason: str = "stop", stop_sequence: str | None = None
) -> list[Any]:
    """The chat chunks a plan makes of ``pieces`` (the last piece ends the answer)."""
    from langchain_localllm._core.output import FinishInfo, Piece
    from langchain_localllm._core.tools import ToolPlan

    plan = ToolPlan({"tools": TOOLS, "tool_choice": choice, "tool_parser": parser})
    finish = FinishInfo(reason, 3, len(pieces), stop_sequence)  # type: ignore[arg-type]
    chunks = []
    for i, text in enumerate(pieces):
        last = i == len(pieces) - 1
        chunk = plan.chunk(Piece(text, finish=finish if last else None), model_name="m", provider="test")
        if chunk is not None:
            chunks.append(chunk)
    return chunks


def _run_plan(parser: Any, pieces: list[str]) -> tuple[list[str], Any]:
    streamed: list[str] = []
    final = None
    for chunk in _chunks(parser, pieces):
        if chunk.message.response_metadata.get("finish_reason"):
            final = chunk.message
        else:
            streamed.append(str(chunk.message.content))
    return streamed, final


def test_plan_streams_text_then_holds_a_hermes_call_that_follows_it() -> None:
    call = '{"name": "get_price", "arguments": {"flower": "rose"}}'
    pieces = ["Let me ", "check. <to", "ol_call>", call[:10], call[10:], "</tool_call>", ""]
    streamed, final = _run_plan(HermesToolCallParser(), pieces)
    assert "".join(streamed) == "Let me check. "
    assert all("<" not in s for s in streamed)
    assert [(c["name"], json.loads(c["args"])) for c in final.tool_call_chunks] == [("get_price", {"flower": "rose"})]
    assert final.response_metadata["finish_reason"] == "tool_calls"


def test_plan_releases_text_that_only_looked_like_a_marker() -> None:
    streamed, final = _run_plan(HermesToolCallParser(), ["a <to", "y> b", " c"])
    assert "".join(streamed) + str(final.content) == "a <toy> b c"
    assert final.tool_call_chunks == []
    assert final.response_metadata["finish_reason"] == "stop"


def test_plan_with_the_json_parser_streams_plain_text_and_parses_a_whole_json_call() -> None:
    streamed, final = _run_plan(JsonToolCallParser(), ["Hello", " there", ""])
    assert "".join(streamed) + str(final.content) == "Hello there"
    streamed, final = _run_plan(
        JsonToolCallParser(), ['{"name": "get_price", ', '"arguments": {"flower": "lily"}}', ""]
    )
    assert streamed == []
    assert json.loads(final.tool_call_chunks[0]["args"]) == {"flower": "lily"}


# -- calls that do not parse are reported, never invented ------------------------------------


def _outcomes(chunks: list[Any]) -> dict[str, Any]:
    """What the last chunk, langchain-core's ``+`` of all chunks and the package's aggregate say."""
    from langchain_localllm._core.output import ChunkAggregate

    added = chunks[0].message
    for chunk in chunks[1:]:
        added = added + chunk.message
    acc = ChunkAggregate()
    for chunk in chunks:
        acc.add(chunk)
    return {"last": chunks[-1].message, "added": added, "invoke": acc.chat_result().generations[0].message}


CUT_HERMES = '<tool_call>\n{"name": "get_price", "arguments": {"flower": "ro'


@pytest.mark.parametrize("choice", ["auto", "required"])
def test_a_hermes_call_cut_off_by_max_tokens_is_invalid_however_it_is_aggregated(choice: str) -> None:
    chunks = _chunks(HermesToolCallParser(), [CUT_HERMES[:15], CUT_HERMES[15:]], choice=choice, reason="length")
    for how, message in _outcomes(chunks).items():
        assert message.tool_calls == [], how  # langchain-core's lenient parser used to "complete" it
        assert len(message.invalid_tool_calls) == 1, how
        bad = message.invalid_tool_calls[0]
        assert bad["name"] == "get_price", how
        assert json.loads(bad["args"]) == '{"name": "get_price", "arguments": {"flower": "ro', how
        assert message.content == "", how
        assert message.response_metadata["finish_reason"] == "length", how
    outcomes = _outcomes(chunks)
    for how in ("last", "invoke"):
        assert "cut off by max_tokens" in outcomes[how].invalid_tool_calls[0]["error"]
        assert "invalid JSON" in outcomes[how].invalid_tool_calls[0]["error"]


@pytest.mark.parametrize(
    "text",
    [
        '<tool_call>{"foo": 1}</tool_call>',  # JSON, not a call: its text used to become a call named ''
        "<tool_call>{not json</tool_call>",  # completed to {} before
        '<tool_call>{"name": "", "arguments": {}}</tool_call>',  # a call named '' is no call
        '<tool_call>{"name": "get_price", "arguments": {"flower": "rose",}}</tool_call>',
    ],
)
def test_malformed_hermes_calls_are_invalid_and_the_finish_reason_is_stop(text: str) -> None:
    for how, message in _outcomes(_chunks(HermesToolCallParser(), [text])).items():
        assert message.tool_calls == [], how
        assert len(message.invalid_tool_calls) == 1, how
        assert message.response_metadata["finish_reason"] == "stop", how


def test_a_json_call_cut_off_is_invalid_but_cut_off_json_text_stays_text() -> None:
    cut = '{"name": "get_price", "arguments": {"fl'
    for how, message in _outcomes(_chunks(JsonToolCallParser(), [cut[:9], cut[9:]], reason="length")).items():
        assert message.tool_calls == [], how
        assert [c["name"] for c in message.invalid_tool_calls] == ["get_price"], how
        assert json.loads(message.invalid_tool_calls[0]["args"]) == cut, how
        assert message.content == "", how
    answer = '{"answer": "roses are'
    message = _outcomes(_chunks(JsonToolCallParser(), [answer], reason="length"))["invoke"]
    assert (message.content, message.tool_calls, message.invalid_tool_calls) == (answer, [], [])


@pytest.mark.parametrize(
    ("parser", "text"),
    [
        (JsonToolCallParser(), '{"name":"get_price'),  # what a template without tools gave: plain text before
        (JsonToolCallParser(), '{ "argu'),
        (HermesToolCallParser(), "<tool_"),
        (HermesToolCallParser(), ""),
    ],
)
def test_a_forced_call_cut_off_is_never_content(parser: Any, text: str) -> None:
    for how, message in _outcomes(_chunks(parser, [text, ""], choice="get_price", reason="length")).items():
        assert message.content == "", how
        assert message.tool_calls == [], how
        assert len(message.invalid_tool_calls) == 1, how
        assert json.loads(message.invalid_tool_calls[0]["args"]) == text, how
        assert message.response_metadata["finish_reason"] == "length", how


def test_a_valid_call_next_to_an_invalid_one_finishes_with_tool_calls() -> None:
    text = '<tool_call>{"name": "get_price", "arguments": {"flower": "rose"}}</tool_call><tool_call>{"na'
    outcomes = _outcomes(_chunks(HermesToolCallParser(), [text], reason="stop", stop_sequence="END"))
    for how, message in outcomes.items():
        assert [(c["name"], c["args"]) for c in message.tool_calls] == [("get_price", {"flower": "rose"})], how
        assert len(message.invalid_tool_calls) == 1, how
        assert message.response_metadata["finish_reason"] == "tool_calls", how
    assert "stop sequence 'END'" in outcomes["invoke"].invalid_tool_calls[0]["error"]
