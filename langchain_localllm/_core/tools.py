"""Tool calling shared by the chat models: tool specs, ``tool_choice``, output parsers.

Local models write tool calls as text in the format their chat template taught
them. A parser turns that text back into LangChain ``tool_calls``:

* :class:`HermesToolCallParser` - ``<tool_call>{"name": ..., "arguments": {...}}</tool_call>``
  blocks (Hermes, Qwen 2/2.5/3, and this project's tiny model);
* :class:`JsonToolCallParser` - the whole answer is one JSON object (or a list of them)
  with ``name`` and ``arguments`` (or ``parameters``).

:func:`parser_for_template` picks one from the template; any object with the
:class:`ToolCallParser` methods can be passed instead (``tool_parser=``).
:func:`tool_call_schema` gives the JSON schema of "a valid call of one of these
tools", which the backends compile into constrained decoding.
"""

from __future__ import annotations

import json
import re
import uuid
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Protocol, runtime_checkable

from langchain_core.messages import InvalidToolCall, ToolCall
from langchain_core.messages.tool import invalid_tool_call, tool_call
from langchain_core.outputs import ChatGenerationChunk
from langchain_core.utils.function_calling import convert_to_openai_tool
from langchain_core.utils.json import parse_partial_json

from langchain_localllm._core.output import FinishInfo, Piece, chat_chunk
from langchain_localllm._core.stop import StopBuffer
from langchain_localllm.errors import InvalidParameterError

__all__ = [
    "HermesToolCallParser",
    "JsonToolCallParser",
    "ParsedOutput",
    "ToolCallParser",
    "ToolPlan",
    "call_sequence",
    "convert_tools",
    "normalize_tool_choice",
    "parser_for_template",
    "tool_call_schema",
]

ParsedOutput = tuple[str, list[ToolCall], list[InvalidToolCall]]
"""(remaining text content, parsed calls, calls that could not be parsed)."""


@runtime_checkable
class ToolCallParser(Protocol):
    """How a model writes tool calls: parse them, and recognise their start while streaming."""

    name: str
    marker: str | None
    """A string that starts every call when calls may follow text (held back while
    streaming); ``None`` when the whole answer is either a call or text."""

    def parse(self, text: str) -> ParsedOutput:
        """Split a finished answer into text content and tool calls."""
        ...

    def may_be_call(self, text: str) -> bool:
        """Whether ``text`` (the answer so far) is, or could still become, a tool call."""
        ...

    def wrap(self, call_json: str) -> str:
        """The text the model writes for one call given as JSON (for constrained decoding)."""
        ...


def _new_id() -> str:
    return f"call_{uuid.uuid4().hex[:24]}"


def _call_from_obj(obj: Any, raw: str) -> ToolCall | InvalidToolCall:
    if isinstance(obj, Mapping) and isinstance(obj.get("name"), str) and obj["name"]:
        args = obj.get("arguments", obj.get("parameters", {}))
        if isinstance(args, str):
            try:
                args = json.loads(args, strict=False)
            except json.JSONDecodeError:
                return invalid_tool_call(name=obj["name"], args=args, id=_new_id(), error="arguments are not JSON")
        if isinstance(args, Mapping):
            return tool_call(name=obj["name"], args=dict(args), id=_new_id())
    return invalid_tool_call(name=None, args=raw, id=_new_id(), error="not a {name, arguments} object with a tool name")


def _split(results: Sequence[ToolCall | InvalidToolCall]) -> tuple[list[ToolCall], list[InvalidToolCall]]:
    calls = [r for r in results if r.get("type") == "tool_call"]
    invalid = [r for r in results if r.get("type") == "invalid_tool_call"]
    return calls, invalid  # type: ignore[return-value]


_NAME = re.compile(r'\A\s*\{\s*"name"\s*:\s*("(?:[^"\\]|\\.)*")')


def _written_name(raw: str) -> str | None:
    """The tool name of a call that does not parse, when the model wrote it out in full first."""
    match = _NAME.match(raw)
    if match is None:
        return None
    try:
        name = json.loads(match.group(1), strict=False)
    except json.JSONDecodeError:
        return None
    return name if isinstance(name, str) else None


def _call_shaped(text: str) -> bool:
    """Whether JSON text that does not parse starts like a call: an object (or a list of them) with ``name``."""
    try:
        partial = parse_partial_json(text, strict=False)
    except (json.JSONDecodeError, ValueError, TypeError):
        return False
    first = partial[0] if isinstance(partial, list) and partial else partial
    return isinstance(first, Mapping) and "name" in first


class HermesToolCallParser:
    """``<tool_call>{"name": ..., "arguments": {...}}</tool_call>`` blocks (Hermes / Qwen).

    Each block's JSON is read with a JSON decoder, not a regular expression, so a
    ``</tool_call>`` written inside a string argument cannot cut a call short.
    """

    name = "hermes"
    marker: str | None = "<tool_call>"
    """Calls may follow text; each starts with this marker."""
    _OPEN = "<tool_call>"
    _CLOSE = "</tool_call>"

    def parse(self, text: str) -> ParsedOutput:
        """Parse every block; text outside the blocks stays content."""
        if self._OPEN not in text:
            return text, [], []
        decoder = json.JSONDecoder(strict=False)
        results: list[ToolCall | InvalidToolCall] = []
        content: list[str] = []
        pos = 0
        while (start := text.find(self._OPEN, pos)) != -1:
            content.append(text[pos:start])
            body = start + len(self._OPEN)
            while body < len(text) and text[body].isspace():
                body += 1
            try:
                obj, end = decoder.raw_decode(text, body)
            except json.JSONDecodeError as e:
                close = text.find(self._CLOSE, body)
                end = len(text) if close == -1 else close
                raw = text[body:end].strip()
                name = _written_name(raw)
                results.append(invalid_tool_call(name=name, args=raw, id=_new_id(), error=f"invalid JSON: {e}"))
            else:
                results.append(_call_from_obj(obj, text[body:end]))
            rest = text[end:].lstrip()
            pos = len(text) - len(rest)
            if rest.startswith(self._CLOSE):
                pos += len(self._CLOSE)
        content.append(text[pos:])
        calls, invalid = _split(results)
        return "".join(content).strip(), calls, invalid

    def may_be_call(self, text: str) -> bool:
        """True while the answer is a (prefix of a) ``<tool_call>`` block."""
        stripped = text.lstrip()
        return stripped.startswith(self._OPEN) or self._OPEN.startswith(stripped)

    def wrap(self, call_json: str) -> str:
        """The call between ``<tool_call>`` and ``</tool_call>`` lines."""
        return f"{self._OPEN}\n{call_json}\n{self._CLOSE}"


class JsonToolCallParser:
    """The whole answer is a JSON object ``{"name", "arguments"}`` or a list of them."""

    name = "json"
    marker: str | None = None
    """No marker: the whole answer is the call."""

    def parse(self, text: str) -> ParsedOutput:
        """Parse the answer as JSON; anything else is plain content."""
        stripped = text.strip()
        if not stripped.startswith(("{", "[")):
            return text, [], []
        try:
            obj = json.loads(stripped, strict=False)
        except json.JSONDecodeError as e:
            if not _call_shaped(stripped):
                return text, [], []
            # A call cut off or malformed: reported, never "completed" into one.
            name = _written_name(stripped)
            return "", [], [invalid_tool_call(name=name, args=stripped, id=_new_id(), error=f"invalid JSON: {e}")]
        items = obj if isinstance(obj, list) else [obj]
        if not all(isinstance(i, Mapping) and "name" in i for i in items):
            return text, [], []
        calls, invalid = _split([_call_from_obj(i, json.dumps(i)) for i in items])
        return "", calls, invalid

    def may_be_call(self, text: str) -> bool:
        """True while the answer starts like a JSON object or array."""
        stripped = text.lstrip()
        return not stripped or stripped[0] in "{["

    def wrap(self, call_json: str) -> str:
        """The call's JSON itself."""
        return call_json


def parser_for_template(template: str | None) -> ToolCallParser:
    """Hermes/Qwen ``<tool_call>`` when the template mentions it, else plain JSON."""
    if template and "<tool_call>" in template:
        return HermesToolCallParser()
    return JsonToolCallParser()


def convert_tools(tools: Sequence[Any]) -> list[dict[str, Any]]:
    """LangChain tools, functions, pydantic models or JSON-schema dicts -> OpenAI tool dicts."""
    return [convert_to_openai_tool(t) for t in tools]


def normalize_tool_choice(tool_choice: Any, tools: Sequence[Mapping[str, Any]]) -> str:
    """``"auto"``, ``"none"``, ``"required"`` or the name of one bound tool.

    Accepts LangChain's spellings: ``None``/``"auto"``, ``"none"``, ``"any"``/``"required"``/
    ``True``, a tool name, or ``{"type": "function", "function": {"name": ...}}``.
    """
    names = [t["function"]["name"] for t in tools]
    if tool_choice in (None, "auto"):
        return "auto"
    if tool_choice == "none" or tool_choice is False:
        return "none"
    if tool_choice in ("any", "required") or tool_choice is True:
        return "required"
    if isinstance(tool_choice, Mapping):
        tool_choice = (tool_choice.get("function") or {}).get("name") or tool_choice.get("name")
    if isinstance(tool_choice, str) and tool_choice in names:
        return tool_choice
    msg = f"tool_choice={tool_choice!r} is not 'auto', 'none', 'any'/'required' or one of the bound tools {names}"
    raise InvalidParameterError(msg)


def call_sequence(wrap: Callable[[str], str], rule: str) -> str:
    """The grammar sequence for one call in a parser's syntax: ``"<before>" rule "<after>"``.

    The literals are JSON-quoted, which both GBNF (llama.cpp) and Lark (llguidance) read.
    """
    marker = "\x00CALL\x00"
    before, after = wrap(marker).split(marker)
    parts = [json.dumps(before)] if before else []
    parts.append(rule)
    if after:
        parts.append(json.dumps(after))
    return " ".join(parts)


def tool_call_schema(tools: Sequence[Mapping[str, Any]], only: str | None = None) -> dict[str, Any]:
    """JSON schema of one call ``{"name": <tool>, "arguments": <its parameters>}``."""
    options = []
    for tool in tools:
        function = tool["function"]
        if only is not None and function["name"] != only:
            continue
        parameters = dict(function.get("parameters") or {"type": "object", "properties": {}})
        parameters.setdefault("type", "object")
        options.append(
            {
                "type": "object",
                "properties": {"name": {"const": function["name"]}, "arguments": parameters},
                "required": ["name", "arguments"],
                "additionalProperties": False,
            }
        )
    if not options:
        msg = f"no bound tool is named {only!r}"
        raise InvalidParameterError(msg)
    return options[0] if len(options) == 1 else {"anyOf": options}


class ToolPlan:
    """Per-call tool handling: which parser, which constraint, and how pieces become chunks.

    Without tools, text streams as it comes. With tools, text that is (or may still
    become) a tool call is held back and parsed at the end, so ``tool_call_chunks``
    carry complete calls; an answer that turns out to be plain text streams on.
    """

    def __init__(self, kwargs: Mapping[str, Any]) -> None:
        """Read ``tools``, ``tool_choice`` and ``tool_parser`` from the call options."""
        self.tools: list[dict[str, Any]] | None = kwargs.get("tools")
        self.choice: str = kwargs.get("tool_choice") or "auto"
        self.parser: ToolCallParser | None = kwargs.get("tool_parser")
        self.grammar: str | None = None
        """The backend's compiled constraint for a forced call (GBNF, Lark...), once resolved."""
        self._held: list[str] = []
        self._holding = self.active
        self._marker = _marker_buffer(self.parser)
        self._in_call = False

    @property
    def active(self) -> bool:
        """Whether tools are bound and may be called (``tool_choice`` is not ``"none"``)."""
        return bool(self.tools) and self.choice != "none"

    def resolve(
        self,
        template: str | None,
        compile_call: Callable[[dict[str, Any], ToolCallParser], str],
        *,
        fallback: bool = False,
    ) -> None:
        """Pick the parser from ``template``; for a forced call, compile its constraint.

        ``compile_call(schema, parser)`` turns the JSON schema of a valid call into the
        backend's constraint (a GBNF grammar, a llguidance grammar...). With ``fallback``
        (the prompt is the package's own tool prompt, :mod:`~langchain_localllm._core.toolprompt`),
        the parser is the Hermes one that prompt teaches.
        """
        if not self.active:
            return
        if self.parser is None:
            self.parser = HermesToolCallParser() if fallback else parser_for_template(template)
            self._marker = _marker_buffer(self.parser)
        if self.choice != "auto":
            only = None if self.choice == "required" else self.choice
            self.grammar = compile_call(tool_call_schema(self.tools or [], only=only), self.parser)

    def chunk(self, piece: Piece, *, model_name: str, provider: str) -> ChatGenerationChunk | None:
        """The chat chunk for one piece, holding back what may be a tool call (None: nothing to send yet)."""
        text = piece.text
        calls: list[ToolCall] = []
        invalid: list[InvalidToolCall] = []
        if self._holding and self.parser is not None:
            text = self._hold(text, final=piece.finish is not None)
        if piece.finish is not None and self.active and self.parser is not None and (text or self.choice != "auto"):
            text, calls, invalid = self._parse(text, piece.finish)
        return chat_chunk(
            text, piece, model_name=model_name, provider=provider, tool_calls=calls, invalid_tool_calls=invalid
        )

    def _hold(self, text: str, *, final: bool) -> str:
        """Return the text that is safe to stream now; keep what may be (part of) a call.

        With a marker (Hermes), text streams until the marker could be starting (a
        :class:`StopBuffer` on the marker); from the marker on, everything is held and
        parsed at the end (calls may follow text). Without one (plain JSON), the answer is
        held while it still looks like a call, and released once it cannot be one.
        """
        assert self.parser is not None  # noqa: S101 - guarded by the caller
        marker = self._marker
        if marker is not None:
            if not self._in_call:
                out = marker.push(text)
                if not marker.stopped:
                    return out + marker.flush() if final else out
                self._in_call = True
                text = marker.tail
            else:
                out = ""
            self._held.append(text)
            if not final:
                return out
            held, self._held = "".join(self._held), []
            return out + held  # the final parse splits text from calls
        self._held.append(text)
        so_far = "".join(self._held)
        if not final and self.parser.may_be_call(so_far):
            return ""
        self._holding = False
        self._held = []
        return so_far

    def _parse(self, text: str, finish: FinishInfo) -> ParsedOutput:
        """Split the held answer into content, valid calls and calls reported invalid.

        A forced call (``tool_choice`` not ``"auto"``) that did not come out whole is an
        invalid call, never content. The last invalid call's error says when the answer was
        cut off (``max_tokens`` or a stop sequence). Invalid calls keep the text the model
        wrote as a JSON string (see :func:`_quoted`).
        """
        assert self.parser is not None  # noqa: S101 - guarded by the caller
        content, calls, invalid = self.parser.parse(text)
        if self.choice != "auto" and not calls:
            if not invalid:
                written = text.strip()
                invalid = [
                    invalid_tool_call(
                        name=_written_name(written), args=written, id=_new_id(), error="not a complete tool call"
                    )
                ]
            content = ""
        if not invalid:
            return content, calls, invalid
        cause = _cut_off(finish)
        out = [_quoted(bad) for bad in invalid]
        if cause:
            last = out[-1]
            out[-1] = invalid_tool_call(
                name=last["name"], args=last["args"], id=last["id"], error=f"{cause}: {last['error'] or 'incomplete'}"
            )
        return content, calls, out


def _cut_off(finish: FinishInfo) -> str | None:
    """What cut the answer short, if anything did."""
    if finish.finish_reason == "length":
        return "cut off by max_tokens before the tool call was complete"
    if finish.stop_sequence is not None:
        return f"cut off by the stop sequence {finish.stop_sequence!r} before the tool call was complete"
    return None


def _quoted(bad: InvalidToolCall) -> InvalidToolCall:
    """``bad`` with its ``args`` (the text the model wrote) as a JSON string.

    Streamed chunks carry calls as ``tool_call_chunks``, and langchain-core rebuilds
    ``tool_calls`` / ``invalid_tool_calls`` from them with a lenient partial-JSON parser
    that "completes" any text starting with ``{`` into a call (``{"name": "get_fl`` becomes
    a call named ``''``). A JSON string is never completed into an object, so the call stays
    invalid however the chunks are added up; ``json.loads(args)`` gives the text back.
    """
    args = bad.get("args")
    text = args if isinstance(args, str) else ""
    quoted = json.dumps(text, ensure_ascii=False)
    return invalid_tool_call(name=bad.get("name"), args=quoted, id=bad.get("id") or _new_id(), error=bad.get("error"))


def _marker_buffer(parser: ToolCallParser | None) -> StopBuffer | None:
    """A stop buffer on the parser's call marker (None for parsers without one)."""
    marker = getattr(parser, "marker", None)
    return StopBuffer([marker]) if marker else None
