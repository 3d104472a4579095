"""LangChain messages → the message dicts that Hugging Face chat templates render.

Chat templates expect OpenAI-style dicts (``role``, ``content``, optional ``name``,
``tool_calls`` on assistant turns, ``tool_call_id`` on tool results). This module
converts LangChain's message classes to that shape, with the normalisations local
models need:

* list-of-content-blocks content becomes plain text (text blocks joined; tool-use and
  reasoning blocks are dropped because ``tool_calls`` carries the calls); media blocks
  (images, audio, files) raise, since these models take text only;
* consecutive messages of the same role are merged into one turn (many templates
  require strictly alternating user/assistant turns);
* :func:`fold_system` moves system text into the first user turn, for templates that
  reject a ``system`` role;
* :func:`plain_text_prompt` is the documented fallback prompt for seq2seq models
  whose tokenizer has no chat template.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Mapping, Sequence
from typing import Any

from langchain_core.messages import (
    AIMessage,
    BaseMessage,
    ChatMessage,
    FunctionMessage,
    HumanMessage,
    SystemMessage,
    ToolMessage,
)

from langchain_localllm.errors import InvalidParameterError, UnsupportedContentError

__all__ = [
    "ChatDict",
    "UnsupportedContentError",
    "content_text",
    "fold_system",
    "plain_text_prompt",
    "refuse_bytes",
    "to_chat_dicts",
]

ChatDict = dict[str, Any]

_TEXT_BLOCKS = frozenset({"text", "text-plain", "input_text", "output_text"})
_SKIPPED_BLOCKS = frozenset(
    {
        "tool_use",
        "tool_call",
        "tool_call_chunk",
        "invalid_tool_call",
        "server_tool_call",
        "server_tool_call_chunk",
        "server_tool_result",
        "reasoning",
        "thinking",
        "redacted_thinking",
        "non_standard",
    }
)
_MEDIA_BLOCKS = frozenset({"image", "image_url", "audio", "input_audio", "video", "file", "document", "input_image"})
_ROLES = {"human": "user", "user": "user", "ai": "assistant", "assistant": "assistant", "system": "system"}
_SEPARATOR = "\n\n"


def content_text(content: str | Sequence[Any]) -> str:
    """Return the text of a message's ``content`` (a string or a list of content blocks).

    Raises:
        UnsupportedContentError: The content holds an image, audio, video or file block,
            or a block of an unknown type.
    """
    if isinstance(content, str):
        return content
    parts: list[str] = []
    for block in content:
        if isinstance(block, str):
            parts.append(block)
            continue
        if not isinstance(block, Mapping):
            msg = f"unsupported message content item {block!r}"
            raise UnsupportedContentError(msg)
        kind = block.get("type")
        if kind in _TEXT_BLOCKS:
            parts.append(str(block.get("text", "")))
        elif kind == "tool_result":  # Anthropic-style tool result inside a user turn
            parts.append(content_text(block.get("content", "")))
        elif kind in _SKIPPED_BLOCKS:
            continue
        elif kind in _MEDIA_BLOCKS:
            msg = (
                f"a {kind!r} content block was given, but this local model takes text only; "
                "send text content (or describe the media in text)"
            )
            raise UnsupportedContentError(msg)
        else:
            msg = f"unsupported content block type {kind!r} in {dict(block)!r}"
            raise UnsupportedContentError(msg)
    return "".join(parts)


def _tool_calls(message: AIMessage) -> list[ChatDict]:
    calls: list[ChatDict] = [
        {
            "id": call.get("id"),
            "type": "function",
            "function": {"name": call["name"], "arguments": dict(call.get("args") or {})},
        }
        for call in message.tool_calls
    ]
    # Calls the model wrote but LangChain could not parse are sent back as written.
    for bad in message.invalid_tool_calls:
        arguments: Any = bad.get("args") or ""
        with contextlib.suppress(json.JSONDecodeError):
            arguments = json.loads(arguments) if isinstance(arguments, str) and arguments else {}
        function = {"name": bad.get("name"), "arguments": arguments}
        calls.append({"id": bad.get("id"), "type": "function", "function": function})
    return calls


def _one(message: BaseMessage) -> ChatDict:
    text = content_text(message.content)
    if isinstance(message, ToolMessage):
        out: ChatDict = {"role": "tool", "content": text, "tool_call_id": message.tool_call_id}
    elif isinstance(message, FunctionMessage):
        out = {"role": "tool", "content": text}
    elif isinstance(message, AIMessage):
        out = {"role": "assistant", "content": text}
        calls = _tool_calls(message)
        if calls:
            out["tool_calls"] = calls
    elif isinstance(message, HumanMessage):
        out = {"role": "user", "content": text}
    elif isinstance(message, SystemMessage):
        out = {"role": "system", "content": text}
    elif isinstance(message, ChatMessage):
        out = {"role": _ROLES.get(message.role, message.role), "content": text}
    else:
        msg = f"unsupported message type {type(message).__name__}"
        raise InvalidParameterError(msg)
    if message.name:
        out["name"] = message.name
    return out


def _merge(previous: ChatDict, current: ChatDict) -> None:
    """Merge ``current`` into ``previous`` (same role) in place."""
    texts = [t for t in (previous.get("content") or "", current.get("content") or "") if t]
    previous["content"] = _SEPARATOR.join(texts)
    if current.get("tool_calls"):
        previous["tool_calls"] = [*previous.get("tool_calls", []), *current["tool_calls"]]
    if previous.get("name") != current.get("name"):
        previous.pop("name", None)


def to_chat_dicts(messages: Sequence[BaseMessage]) -> list[ChatDict]:
    """Convert LangChain messages to chat-template dicts, merging same-role neighbours.

    Tool results are never merged with each other: each answers its own call id.
    """
    out: list[ChatDict] = []
    for message in messages:
        current = _one(message)
        previous = out[-1] if out else None
        if previous is not None and previous["role"] == current["role"] and current["role"] != "tool":
            _merge(previous, current)
        else:
            out.append(current)
    return out


def fold_system(messages: Sequence[Mapping[str, Any]]) -> list[ChatDict]:
    """Move all system text into the first user turn (for templates without a system role).

    The system text is placed before the user's text, separated by a blank line; if
    there is no user turn, the system text becomes one.
    """
    system = [str(m.get("content") or "") for m in messages if m.get("role") == "system"]
    rest = [dict(m) for m in messages if m.get("role") != "system"]
    prefix = _SEPARATOR.join(s for s in system if s)
    if not prefix:
        return rest
    for message in rest:
        if message.get("role") == "user":
            message["content"] = _SEPARATOR.join(t for t in (prefix, str(message.get("content") or "")) if t)
            return rest
    return [{"role": "user", "content": prefix}, *rest]


def plain_text_prompt(messages: Sequence[Mapping[str, Any]]) -> str:
    r"""The prompt used for a seq2seq model whose tokenizer has no chat template.

    A conversation of a single user message (optionally after system messages) is sent
    as that text, system text first (``"<system>\n\n<user>"``), which is how
    instruction-tuned seq2seq models such as flan-t5 are prompted. Longer conversations
    become one ``Role: text`` line per message (``System``/``User``/``Assistant``/``Tool``).
    """
    folded = fold_system(messages)
    if len(folded) == 1 and folded[0].get("role") == "user":
        return str(folded[0].get("content") or "")
    lines = []
    for message in messages:
        role = str(message.get("role", "user"))
        lines.append(f"{role.capitalize()}: {message.get('content') or ''}")
    return "\n".join(lines)


def refuse_bytes(model_input: object) -> None:
    """A prompt given as bytes is an error that says to decode it (LangChain would iterate its ints).

    Raises:
        InvalidParameterError: ``model_input`` is ``bytes``, ``bytearray`` or ``memoryview``.
    """
    if isinstance(model_input, bytes | bytearray | memoryview):
        msg = "the prompt is bytes; decode it to text first, e.g. prompt.decode('utf-8')"
        raise InvalidParameterError(msg)
