"""Rendering a model's own Jinja chat template, in a sandbox.

Chat templates ship inside model files (GGUF ``tokenizer.chat_template``,
``tokenizer_config.json``), so they are untrusted code: they are rendered in
Jinja's :class:`~jinja2.sandbox.ImmutableSandboxedEnvironment`, with the helpers
Hugging Face templates expect (``raise_exception``, ``strftime_now``, a ``tojson``
that keeps non-ASCII text readable).
"""

from __future__ import annotations

import datetime as dt
import functools
import json
from collections.abc import Mapping, Sequence
from typing import Any, NoReturn

from langchain_localllm.errors import ChatTemplateError

__all__ = ["render_chat_template"]


def _raise_exception(message: str) -> NoReturn:
    raise ChatTemplateError(message)


def _strftime_now(fmt: str) -> str:
    return dt.datetime.now(tz=dt.timezone.utc).strftime(fmt)


def _tojson(
    value: Any,
    ensure_ascii: bool = False,  # noqa: FBT001, FBT002 - Jinja filter signature
    indent: int | None = None,
    separators: tuple[str, str] | None = None,
    sort_keys: bool = False,  # noqa: FBT001, FBT002
) -> str:
    return json.dumps(value, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys)


@functools.lru_cache(maxsize=32)
def _compile(template: str) -> Any:
    from jinja2 import TemplateError  # noqa: PLC0415
    from jinja2.ext import loopcontrols  # noqa: PLC0415
    from jinja2.sandbox import ImmutableSandboxedEnvironment  # noqa: PLC0415

    env = ImmutableSandboxedEnvironment(
        trim_blocks=True, lstrip_blocks=True, extensions=[loopcontrols], keep_trailing_newline=False
    )
    env.filters["tojson"] = _tojson
    env.globals["raise_exception"] = _raise_exception
    env.globals["strftime_now"] = _strftime_now
    try:
        return env.from_string(template)
    except TemplateError as e:
        msg = f"the chat template does not compile: {e}"
        raise ChatTemplateError(msg) from e


def render_chat_template(
    template: str,
    messages: Sequence[Mapping[str, Any]],
    *,
    add_generation_prompt: bool = True,
    tools: Sequence[Mapping[str, Any]] | None = None,
    **variables: Any,
) -> str:
    """Render ``messages`` with a Jinja chat template in a sandbox.

    Args:
        template: The Jinja source.
        messages: OpenAI-style message dicts (``role``, ``content``, ...).
        add_generation_prompt: Append the assistant turn's opening.
        tools: Tool JSON schemas passed to the template as ``tools``.
        **variables: Further template variables (``bos_token``, ``eos_token``...).

    Raises:
        ChatTemplateError: The template does not compile, raises, or fails to render.
    """
    from jinja2 import TemplateError  # noqa: PLC0415

    compiled = _compile(template)
    try:
        return str(
            compiled.render(
                messages=list(messages),
                add_generation_prompt=add_generation_prompt,
                tools=list(tools) if tools else None,
                **variables,
            )
        )
    except ChatTemplateError:
        raise
    except (TemplateError, TypeError, ValueError, KeyError, AttributeError) as e:
        msg = f"the chat template failed to render these messages: {e}"
        raise ChatTemplateError(msg) from e
