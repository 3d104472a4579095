"""Prompts for transformers models: the tokenizer's own chat template, and the token budget.

:func:`render_prompt` turns chat dicts into prompt token ids with the tokenizer's chat
template (``apply_chat_template(tokenize=True)``: no re-tokenized string, no double BOS);
:func:`row_budget` caps ``max_tokens`` by the context window.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from typing import Any

from langchain_localllm._backends.transformers.load import HFBundle
from langchain_localllm._core.messages import ChatDict, fold_system, plain_text_prompt
from langchain_localllm.errors import ChatTemplateError, ContextWindowExceededError

__all__ = ["render_prompt", "row_budget", "template_of"]

logger = logging.getLogger("langchain_localllm")


def template_of(tokenizer: Any, override: str | None) -> Any:
    return override if override is not None else getattr(tokenizer, "chat_template", None)


def render_prompt(
    bundle: HFBundle,
    messages: Sequence[ChatDict],
    chat_template: str | None = None,
    tools: Sequence[Mapping[str, Any]] | None = None,
) -> list[int]:
    """Render ``messages`` to prompt token ids with the model's chat template.

    A template that rejects the system role gets the system text folded into the
    first user turn. A seq2seq model without any template gets
    :func:`~langchain_localllm._messages.plain_text_prompt`.

    Raises:
        ChatTemplateError: No template (causal LM), or the template fails to render.
    """
    tokenizer = bundle.tokenizer
    if not template_of(tokenizer, chat_template):
        if bundle.is_seq2seq:
            return list(tokenizer(plain_text_prompt(messages))["input_ids"])
        msg = (
            f"the tokenizer of {bundle.name!r} has no chat template; pass one with the chat_template "
            "field (a Jinja string, e.g. copied from a model of the same family)"
        )
        raise ChatTemplateError(msg)
    try:
        return _apply_template(tokenizer, messages, chat_template, tools)
    except ChatTemplateError as first:
        if not any(m.get("role") == "system" for m in messages):
            raise
        logger.debug("chat template rejected the system role (%s); folding it into the first user turn", first)
        try:
            return _apply_template(tokenizer, fold_system(messages), chat_template, tools)
        except ChatTemplateError:
            raise first from None


def _apply_template(
    tokenizer: Any,
    messages: Sequence[ChatDict],
    chat_template: str | None,
    tools: Sequence[Mapping[str, Any]] | None = None,
) -> list[int]:
    from jinja2 import TemplateError  # noqa: PLC0415 - jinja2 comes with transformers

    try:
        out = tokenizer.apply_chat_template(
            list(messages),
            chat_template=chat_template,
            tools=list(tools) if tools else None,
            tokenize=True,
            add_generation_prompt=True,
            return_dict=True,
        )
    except (TemplateError, ValueError, TypeError, KeyError) as e:
        msg = f"the chat template failed to render these messages: {e}"
        raise ChatTemplateError(msg) from e
    ids = out["input_ids"] if isinstance(out, Mapping) else out
    if hasattr(ids, "tolist"):
        ids = ids.tolist()
    if ids and isinstance(ids[0], list):  # a batch of one
        ids = ids[0]
    return [int(i) for i in ids]


def row_budget(bundle: HFBundle, prompt_tokens: int, max_tokens: int) -> int:
    """How many tokens a prompt may generate: ``max_tokens``, capped by the context window.

    Raises:
        ContextWindowExceededError: The prompt alone fills the context window.
    """
    window = bundle.context_window
    if window is None:
        return max_tokens
    room = window - prompt_tokens if not bundle.is_seq2seq else window
    if prompt_tokens > window or room <= 0:
        msg = (
            f"the prompt is {prompt_tokens} tokens but {bundle.name!r} has a context window of {window} tokens "
            f"{'(input limit)' if bundle.is_seq2seq else '(prompt + answer)'}; shorten the conversation "
            "(e.g. langchain_core.messages.trim_messages) or use a model with a longer context"
        )
        raise ContextWindowExceededError(msg, prompt_tokens=prompt_tokens, context_window=window)
    return min(max_tokens, room)
