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
from langchain_localllm._core.literal import prompt_ids
from langchain_localllm._core.messages import ChatDict, fold_system, plain_text_prompt
from langchain_localllm._core.template import render_chat_template
from langchain_localllm.errors import ChatTemplateError, ContextWindowExceededError

__all__ = ["render_prompt", "row_budget", "template_of"]

logger = logging.getLogger("langchain_localllm")


def template_of(tokenizer: Any, override: str | None) -> Any:
    """The chat template in use: ``override``, else the tokenizer's own (a named ``"default"`` one)."""
    template = override if override is not None else getattr(tokenizer, "chat_template", None)
    if isinstance(template, Mapping):  # older checkpoints ship several named templates
        template = template.get("default")
    return template


def render_prompt(
    bundle: HFBundle,
    messages: Sequence[ChatDict],
    chat_template: str | None = None,
    tools: Sequence[Mapping[str, Any]] | None = None,
    *,
    literal: bool = True,
) -> list[int]:
    """Render ``messages`` to prompt token ids with the model's chat template.

    The template renders in the package's bounded sandbox with the variables
    ``apply_chat_template`` gives it (the tokenizer's special tokens, ``tools``,
    ``documents``), and the text is tokenized as ``apply_chat_template(tokenize=True)``
    does (no added special tokens: no double BOS), with message contents as literal text
    (:mod:`~langchain_localllm._core.literal`). A template that rejects the system role
    gets the system text folded into the first user turn. A seq2seq model without any
    template gets :func:`~langchain_localllm._core.messages.plain_text_prompt`.

    Raises:
        ChatTemplateError: No template (causal LM), or the template fails to render.
    """
    tokenizer = bundle.tokenizer
    template = template_of(tokenizer, chat_template)
    if not template:
        if bundle.is_seq2seq:  # the conversation as text: control text in it stays text
            text = plain_text_prompt(messages)
            return list(tokenizer(text, split_special_tokens=literal)["input_ids"])
        msg = (
            f"the tokenizer of {bundle.name!r} has no chat template; pass one with the chat_template "
            "field (a Jinja string, e.g. copied from a model of the same family)"
        )
        raise ChatTemplateError(msg)
    variables: dict[str, Any] = {**dict(getattr(tokenizer, "special_tokens_map", {}) or {}), "documents": None}

    def render(conversation: Sequence[ChatDict], schemas: Sequence[Mapping[str, Any]] | None) -> str:
        # apply_chat_template drops the keys whose value is None before rendering.
        plain = [{k: v for k, v in m.items() if v is not None} for m in conversation]
        return render_chat_template(template, plain, add_generation_prompt=True, tools=schemas, **variables)

    def encode(text: str, *, special: bool) -> list[int]:
        return list(tokenizer(text, add_special_tokens=False, split_special_tokens=not special)["input_ids"])

    def ids(conversation: Sequence[ChatDict]) -> list[int]:
        return prompt_ids(
            render,
            conversation,
            tools=tools,
            controls=bundle.controls,
            tokenize=encode,
            literal=literal,
            name=repr(bundle.name),
        )

    try:
        return ids(messages)
    except ChatTemplateError as first:
        if not any(m.get("role") == "system" for m in messages):
            raise
        logger.debug("chat template rejected the system role (%s); folding it into the first user turn", first)
        try:
            return ids(fold_system(messages))
        except ChatTemplateError:
            raise first from None


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
