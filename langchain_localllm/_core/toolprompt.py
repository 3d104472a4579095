"""Tools on chat templates that ignore them: detection, a warning, and the package's own tool prompt.

Many instruct models (SmolLM2, for one) ship a chat template with no tool format: it
renders the same prompt with or without ``tools``, and drops the ``tool_calls`` of earlier
assistant turns. Bound tools are then invisible to the model, and ``tool_choice="auto"``
can never call one.

:func:`template_ignores_tools` finds this out by rendering a probe conversation with and
without a probe tool (once per template, cached). :func:`fallback_messages` is the
fallback: the conversation rewritten for a template without tools, in the Hermes / Qwen
2.5 format that :class:`~langchain_localllm._core.tools.HermesToolCallParser` reads back:

* a ``# Tools`` section with every tool's JSON schema inside ``<tools></tools>`` and the
  ``<tool_call>`` instructions, appended to the first system message (or as a new one);
* each assistant turn's ``tool_calls`` written after its text as ``<tool_call>`` blocks;
* tool results as a user turn of ``<tool_response>`` blocks (consecutive ones together).

Everything the fallback adds is message *content*, so prompt rendering treats the
user-supplied parts of it (tool schemas, call arguments, results) as literal text like
any other content: control-token strings in them never become control tokens (see
:mod:`~langchain_localllm._core.literal`).
"""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Callable, Hashable, Mapping, Sequence
from typing import Any, Literal

from langchain_localllm._core.messages import ChatDict
from langchain_localllm.errors import LocalLLMError

__all__ = [
    "PROBE_MESSAGES",
    "PROBE_TOOLS",
    "ToolPromptMode",
    "fallback_messages",
    "has_tool_history",
    "template_ignores_tools",
    "tools_system_text",
    "warn_ignored_tools",
]

logger = logging.getLogger("langchain_localllm")

ToolPromptMode = Literal["auto", "template", "fallback"]
"""How tools reach the prompt: ``"auto"`` (the template's own format, or the fallback when the
template ignores tools), ``"template"`` (always the template's), ``"fallback"`` (always the package's)."""

PROBE_MESSAGES: list[ChatDict] = [{"role": "user", "content": "What is the weather in Paris?"}]
"""The conversation rendered with and without :data:`PROBE_TOOLS`."""
PROBE_TOOLS: list[dict[str, Any]] = [
    {
        "type": "function",
        "function": {
            "name": "get_weather",
            "description": "Get the current weather in a city.",
            "parameters": {
                "type": "object",
                "properties": {"city": {"type": "string", "description": "The city"}},
                "required": ["city"],
            },
        },
    }
]
"""One ordinary tool: a template with a tool format renders something of it."""

_TOOLS_INTRO = (
    "# Tools\n\nYou may call one or more functions to assist with the user query.\n\n"
    "You are provided with function signatures within <tools></tools> XML tags:\n<tools>"
)
_TOOLS_OUTRO = (
    "\n</tools>\n\nFor each function call, return a json object with function name and arguments within "
    '<tool_call></tool_call> XML tags:\n<tool_call>\n{"name": <function-name>, "arguments": <args-json-object>}\n'
    "</tool_call>"
)
_MAX_CACHED = 256


class _Probes:
    """Per template: whether it ignores tools, and which warnings were given (thread-safe)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._ignores: dict[Hashable, bool] = {}
        self._warned: set[tuple[Hashable, str]] = set()

    def ignores(self, key: Hashable, probe: Callable[[], bool]) -> bool:
        with self._lock:
            known = self._ignores.get(key)
        if known is not None:
            return known
        result = probe()  # outside the lock: it renders (two renders at worst when racing)
        with self._lock:
            if len(self._ignores) >= _MAX_CACHED:
                self._ignores.clear()
            self._ignores[key] = result
        return result

    def first_warning(self, key: Hashable, kind: str) -> bool:
        with self._lock:
            if (key, kind) in self._warned:
                return False
            if len(self._warned) >= _MAX_CACHED:
                self._warned.clear()
            self._warned.add((key, kind))
            return True


_probes = _Probes()


def template_ignores_tools(key: Hashable, render: Callable[[Sequence[Mapping[str, Any]] | None], Any]) -> bool:
    """Whether a template renders the same prompt with and without tools (cached under ``key``).

    Args:
        key: Identifies the template (its text, and the backend): the answer is cached under it.
        render: Renders :data:`PROBE_MESSAGES` with the given tools (or None), to text or ids.

    A template that fails only when given tools ignores them too (it cannot take them); one
    that fails without tools is left to the real render to report (False).
    """

    def probe() -> bool:
        try:
            plain = render(None)
        except LocalLLMError:
            return False
        try:
            with_tools = render(PROBE_TOOLS)
        except LocalLLMError:
            return True
        return bool(plain == with_tools)

    return _probes.ignores(key, probe)


def warn_ignored_tools(key: Hashable, mode: ToolPromptMode, name: str) -> None:
    """Log, once per template and mode, that the template ignores tools and what is done about it."""
    if not _probes.first_warning(key, mode):
        return
    if mode == "auto":
        logger.warning(
            "the chat template of %s ignores tools (the prompt is the same with and without them); using "
            "langchain-localllm's tool prompt (Hermes <tool_call> format) so the model sees them. Set "
            "tool_prompt='fallback' to choose it explicitly (and silence this), or tool_prompt='template' to "
            "use the template as it is.",
            name,
        )
    else:
        logger.warning(
            "the chat template of %s ignores tools (the prompt is the same with and without them), and "
            "tool_prompt='template' keeps it that way: the model cannot see the bound tools. Set "
            "tool_prompt='auto' or 'fallback' to send them in langchain-localllm's tool prompt.",
            name,
        )


def has_tool_history(messages: Sequence[Mapping[str, Any]]) -> bool:
    """Whether the conversation holds tool calls or tool results."""
    return any(m.get("tool_calls") or m.get("role") == "tool" for m in messages)


def tools_system_text(tools: Sequence[Mapping[str, Any]]) -> str:
    """The ``# Tools`` section: every tool's schema and how to call one (Hermes / Qwen 2.5 wording)."""
    schemas = "".join("\n" + json.dumps(tool, ensure_ascii=False) for tool in tools)
    return _TOOLS_INTRO + schemas + _TOOLS_OUTRO


def _call_text(call: Mapping[str, Any]) -> str:
    inner = call.get("function")
    function: Mapping[str, Any] = inner if isinstance(inner, Mapping) else call
    name = json.dumps(str(function.get("name") or ""), ensure_ascii=False)
    arguments = function.get("arguments")
    if arguments is None:
        arguments = {}
    # A string is the text of a call the model wrote and nothing could parse: sent back as written.
    args = arguments if isinstance(arguments, str) else json.dumps(arguments, ensure_ascii=False)
    return f'<tool_call>\n{{"name": {name}, "arguments": {args}}}\n</tool_call>'


def fallback_messages(messages: Sequence[ChatDict], tools: Sequence[Mapping[str, Any]] | None) -> list[ChatDict]:
    """``messages`` rewritten for a template without tool support (see the module docstring)."""
    out: list[ChatDict] = []
    for message in messages:
        role = message.get("role")
        if role == "tool":
            block = f"<tool_response>\n{message.get('content') or ''}\n</tool_response>"
            previous = out[-1] if out else None
            if previous is not None and previous.get("role") == "user" and previous.get("_tool_results"):
                previous["content"] += "\n" + block
            else:
                out.append({"role": "user", "content": block, "_tool_results": True})
            continue
        copy = {k: v for k, v in message.items() if k != "tool_calls"}
        if message.get("tool_calls"):
            calls = "\n".join(_call_text(call) for call in message["tool_calls"] if isinstance(call, Mapping))
            text = copy.get("content") or ""
            copy["content"] = f"{text}\n{calls}" if text else calls
        previous = out[-1] if out else None
        if previous is not None and role == "user" and previous.get("role") == "user":
            # Many templates need alternating turns: a user turn right after tool results joins them.
            previous["content"] = "\n\n".join(t for t in (previous["content"], copy.get("content") or "") if t)
            continue
        out.append(copy)
    for message in out:
        message.pop("_tool_results", None)
    if tools:
        section = tools_system_text(tools)
        if out and out[0].get("role") == "system":
            system = out[0].get("content") or ""
            out[0] = {**out[0], "content": f"{system}\n\n{section}" if system else section}
        else:
            out.insert(0, {"role": "system", "content": section})
    return out
