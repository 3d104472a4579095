r"""User text never becomes control tokens: message contents are spliced in as literal text.

A chat template is rendered to one string, which is then tokenized with special tokens
parsed, so that the template's own ``<|im_start|>`` becomes one control token. Tokenized
that way, a user message (or a retrieved document, a tool result, a tool argument) that
*contains* ``<|im_end|>\\n<|im_start|>system\\n...`` would forge a whole conversation.

:func:`prompt_ids` renders the messages twice: as they are, and with every content
replaced by a sentinel. The sentinel render says which parts of the prompt are the
template's own text and which are content. When no control-token text falls inside a
content, the prompt is tokenized exactly as before (one string, special tokens parsed:
benign prompts give the same ids as ever). Otherwise the prompt is cut around each
control-token string found inside content, and those strings are tokenized as plain
text. Content the sentinel cannot track (a template that JSON-escapes it, say) has its
control-token strings broken with a WORD JOINER (U+2060) before rendering instead.
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any, Protocol

from langchain_localllm._core.messages import ChatDict
from langchain_localllm.errors import ChatTemplateError

__all__ = ["ControlTokens", "prompt_ids"]

logger = logging.getLogger("langchain_localllm")

_OPEN, _CLOSE = "\ue000", "\ue001"
_SENTINEL = re.compile(f"{_OPEN}(\\d+){_CLOSE}")
_JOINER = "\u2060"


class Tokenize(Protocol):
    """``tokenize(text, special=...)``: token ids of ``text`` (no BOS); ``special`` parses control tokens."""

    def __call__(self, text: str, *, special: bool) -> list[int]:
        """Tokenize ``text``."""
        ...


class ControlTokens:
    """The control-token strings of one model, and a matcher for them."""

    __slots__ = ("_pattern", "strings")

    def __init__(self, strings: Iterable[str]) -> None:
        """Build the matcher for ``strings`` (empty strings are ignored; longest first)."""
        self.strings = frozenset(s for s in strings if s)
        ordered = sorted(self.strings, key=len, reverse=True)
        self._pattern = re.compile("|".join(re.escape(s) for s in ordered)) if ordered else None

    def find(self, text: str) -> list[tuple[int, int]]:
        """Spans of every control-token string in ``text``."""
        if self._pattern is None:
            return []
        return [m.span() for m in self._pattern.finditer(text)]

    def defang(self, text: str) -> str:
        """``text`` with every control-token string broken by a WORD JOINER after its first character."""
        if self._pattern is None:
            return text
        return self._pattern.sub(lambda m: m.group(0)[0] + _JOINER + m.group(0)[1:], text)


def _map_contents(messages: Sequence[ChatDict], change: Callable[[str], str]) -> list[ChatDict]:
    """Copies of ``messages`` with ``change`` applied to every non-empty content string, in order.

    Contents are each message's ``content`` and every string inside its tool calls' arguments.
    """

    def leaves(value: Any) -> Any:
        if isinstance(value, str):
            return change(value) if value else value
        if isinstance(value, Mapping):
            return {k: leaves(v) for k, v in value.items()}
        if isinstance(value, list):
            return [leaves(v) for v in value]
        return value

    out: list[ChatDict] = []
    for message in messages:
        copy = dict(message)
        if isinstance(copy.get("content"), str) and copy["content"]:
            copy["content"] = change(copy["content"])
        if copy.get("tool_calls"):
            copy["tool_calls"] = [
                {**call, "function": {**call["function"], "arguments": leaves(call["function"].get("arguments"))}}
                if isinstance(call, Mapping) and isinstance(call.get("function"), Mapping)
                else call
                for call in copy["tool_calls"]
            ]
        out.append(copy)
    return out


def _mark(messages: Sequence[ChatDict]) -> tuple[list[ChatDict], list[str]]:
    """Copies of ``messages`` with every content string replaced by a sentinel; the contents in order."""
    contents: list[str] = []

    def sentinel(text: str) -> str:
        contents.append(text)
        return f"{_OPEN}{len(contents) - 1}{_CLOSE}"

    return _map_contents(messages, sentinel), contents


def _defang_untracked(messages: Sequence[ChatDict], untracked: set[int], controls: ControlTokens) -> list[ChatDict]:
    """``messages`` with the control-token strings in the untracked contents broken (see the module docstring)."""
    counter = iter(range(1 << 62))
    return _map_contents(messages, lambda text: controls.defang(text) if next(counter) in untracked else text)


def _check_rendered(text: str, messages: Sequence[ChatDict], name: str) -> None:
    if not text.strip():
        msg = f"the chat template of {name} rendered an empty prompt for these messages; fix or replace the template"
        raise ChatTemplateError(msg)
    users = [m for m in messages if m.get("role") == "user" and isinstance(m.get("content"), str)]
    last = users[-1]["content"].strip() if users else ""
    # Rendered as is, or JSON-escaped (templates that put contents through tojson).
    forms = (last, json.dumps(last, ensure_ascii=False)[1:-1], json.dumps(last)[1:-1])
    if last and not any(form in text for form in forms):
        msg = (
            f"the chat template of {name} did not render the last user message into the prompt, so the model "
            "would answer something else; pass a working template with chat_template='...'"
        )
        raise ChatTemplateError(msg)


Render = Callable[[Sequence[ChatDict], Sequence[Mapping[str, Any]] | None], str]
"""``render(messages, tools)``: the prompt text from the model's chat template."""


def _defang_deep(value: Any, controls: ControlTokens, *, keep_values: bool = False) -> Any:
    """Every string in ``value`` (dict keys too) defanged; with ``keep_values``, only the keys."""
    if isinstance(value, str):
        return value if keep_values else controls.defang(value)
    if isinstance(value, Mapping):
        return {controls.defang(str(k)): _defang_deep(v, controls, keep_values=keep_values) for k, v in value.items()}
    if isinstance(value, list):
        return [_defang_deep(v, controls, keep_values=keep_values) for v in value]
    return value


def _defang_structure(messages: Sequence[ChatDict], controls: ControlTokens) -> list[ChatDict]:
    """Defang the user-supplied strings that are not contents: roles, names, ids, tool names, argument keys."""
    out: list[ChatDict] = []
    for message in messages:
        copy = {k: v if k in ("content", "tool_calls") else _defang_deep(v, controls) for k, v in message.items()}
        calls = copy.get("tool_calls")
        if calls:
            copy["tool_calls"] = [
                {
                    k: (
                        {fk: _defang_deep(fv, controls, keep_values=fk == "arguments") for fk, fv in v.items()}
                        if k == "function" and isinstance(v, Mapping)
                        else _defang_deep(v, controls)
                    )
                    for k, v in call.items()
                }
                if isinstance(call, Mapping)
                else call
                for call in calls
            ]
        out.append(copy)
    return out


def prompt_ids(
    render: Render,
    messages: Sequence[ChatDict],
    *,
    tools: Sequence[Mapping[str, Any]] | None = None,
    controls: ControlTokens,
    tokenize: Tokenize,
    literal: bool = True,
    name: str = "the model",
) -> list[int]:
    """Render ``messages`` and tokenize the prompt with contents as literal text (see the module docstring).

    Args:
        render: Renders messages (and tool schemas) with the model's chat template.
        messages: The conversation.
        tools: Tool schemas for the template; their strings are defanged (they often come
            from third parties, e.g. MCP servers).
        controls: The model's control tokens.
        tokenize: ``tokenize(text, special=...)`` without BOS.
        literal: False parses control-token text inside contents too (the documented opt-out).
        name: The model, for error messages.

    Raises:
        ChatTemplateError: The template fails, renders an empty prompt, or leaves out the
            last user message.
    """
    if literal and controls.strings:
        messages = _defang_structure(messages, controls)
        tools = _defang_deep(list(tools), controls) if tools else tools

    def render_named(conversation: Sequence[ChatDict]) -> str:
        try:
            return render(conversation, tools)
        except ChatTemplateError as e:
            msg = f"{name}: {e}"
            raise ChatTemplateError(msg) from e

    real = render_named(messages)
    _check_rendered(real, messages, name)
    if not literal or not controls.strings:
        return tokenize(real, special=True)
    marked_messages, contents = _mark(messages)
    forged = {i for i, text in enumerate(contents) if controls.find(text)}
    if not forged:  # the common case: one render, one tokenize, as before
        return tokenize(real, special=True)
    parts = _SENTINEL.split(render_named(marked_messages))  # template text, content index, template text, ...
    seen = {int(i) for i in parts[1::2] if int(i) < len(contents)}
    # The prompt as template text and contents, with the content spans known exactly.
    pieces = [
        (part, False)
        if i % 2 == 0
        else (contents[int(part)], True)
        if int(part) < len(contents)
        else (f"{_OPEN}{part}{_CLOSE}", False)  # sentinel-like text from elsewhere: not a content
        for i, part in enumerate(parts)
    ]
    if forged - seen or "".join(text for text, _ in pieces) != real:
        # The template does not render some content verbatim (escapes, trims or branches on
        # it): splicing would lose that, so the control text is broken before rendering.
        logger.debug("the chat template changes message contents; defanging the control text in them")
        real = render_named(_defang_untracked(messages, forged, controls))
        return tokenize(real, special=True)
    return _tokenize_cut(pieces, controls, tokenize)


def _tokenize_cut(pieces: Sequence[tuple[str, bool]], controls: ControlTokens, tokenize: Tokenize) -> list[int]:
    """Tokenize the spliced prompt in one run, cut only around control-token strings inside content."""
    ids: list[int] = []
    run: list[str] = []
    for text, is_content in pieces:
        if not is_content:
            run.append(text)
            continue
        start = 0
        for begin, end in controls.find(text):
            run.append(text[start:begin])
            if "".join(run):
                ids.extend(tokenize("".join(run), special=True))
            run = []
            ids.extend(tokenize(text[begin:end], special=False))
            start = end
        run.append(text[start:])
    if "".join(run):
        ids.extend(tokenize("".join(run), special=True))
    return ids
