"""``LocalGGMLChatModel``: a LangChain chat model over a local GGUF model, run by llama.cpp."""

from __future__ import annotations

import logging
import threading
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any

from langchain_core.callbacks import AsyncCallbackManagerForLLMRun, CallbackManagerForLLMRun
from langchain_core.language_models import LangSmithParams
from langchain_core.messages import BaseMessage
from langchain_core.outputs import ChatGenerationChunk
from pydantic import ConfigDict

from langchain_localllm._bridge import aiterate_in_thread
from langchain_localllm._llamacpp import LlamaModel, generate_pieces, tokenize_prompt
from langchain_localllm._llamacpp_base import LlamaCppLoadMixin
from langchain_localllm._llamacpp_sampling import CALL_OPTIONS, LlamaCppSamplingMixin
from langchain_localllm._messages import ChatDict, fold_system, to_chat_dicts
from langchain_localllm._output import Piece
from langchain_localllm._stop import merge_stops
from langchain_localllm._structured import ToolCallingChatModel
from langchain_localllm._template import render_chat_template
from langchain_localllm._tools import ToolPlan, call_sequence
from langchain_localllm.errors import ChatTemplateError

__all__ = ["LocalGGMLChatModel"]

logger = logging.getLogger("langchain_localllm")

_TOOL_OPTIONS = frozenset({"tools", "tool_choice", "tool_parser", "ls_structured_output_format"})


class LocalGGMLChatModel(LlamaCppSamplingMixin, LlamaCppLoadMixin, ToolCallingChatModel):
    """A LangChain chat model over a local GGUF model run by llama.cpp.

    Messages are rendered with the GGUF's own chat template (``tokenizer.chat_template``)
    in a sandboxed Jinja environment, or with ``chat_template`` when given; a file
    without a template is an error naming that field, never a silent guess. Loading,
    the process-wide cache, stops, streaming and async are shared with
    :class:`~langchain_localllm.LocalGGMLLLM`.

    Tool calling (``bind_tools``) passes the tools to the template and parses the
    answer with a parser chosen from the template (Hermes ``<tool_call>`` blocks or
    plain JSON); ``tool_choice="any"``/``"required"`` or a tool name constrains
    decoding with a GBNF grammar to a valid call. ``with_structured_output``
    constrains decoding to the schema.

    Example:
        .. code-block:: python

            from langchain_localllm import LocalGGMLChatModel

            chat = LocalGGMLChatModel(model_path="qwen2.5-0.5b-instruct-q8_0.gguf", temperature=0)
            print(chat.invoke("Rose is which type of flower?").content)
    """

    model_config = ConfigDict(extra="forbid", protected_namespaces=())

    chat_template: str | None = None
    """A Jinja chat template used instead of the GGUF's own. Default: None (the file's)."""

    streaming: bool = False
    """LangChain's standard flag. Every call already runs the streaming path (``invoke``
    aggregates it), so this changes nothing in the output. Default: False."""

    @property
    def _llm_type(self) -> str:
        return "local-gguf-llamacpp-chat"

    @property
    def _identifying_params(self) -> dict[str, Any]:
        return {
            "model_path": self.model_path,
            "repo_id": self.repo_id,
            "filename": self.filename,
            "n_ctx": self.n_ctx,
            "temperature": self.temperature,
            "max_tokens": self.max_tokens,
            "stop": self.stop,
        }

    def _get_ls_params(self, stop: list[str] | None = None, **kwargs: Any) -> LangSmithParams:
        return self._ls_params("chat", str(kwargs.get("model") or self._model_name()), stop, kwargs)

    # -- rendering --------------------------------------------------------------------

    def _template(self, model: LlamaModel) -> str:
        template = self.chat_template or model.info.chat_template
        if not template:
            msg = (
                f"{model.info.path} has no chat template (tokenizer.chat_template). Pass "
                "chat_template='...' (a Jinja template), or use LocalGGMLLLM with prompt_format for raw prompts."
            )
            raise ChatTemplateError(msg)
        return template

    def _render(self, model: LlamaModel, messages: list[ChatDict], tools: list[dict[str, Any]] | None) -> list[int]:
        template = self._template(model)
        variables = {"bos_token": model.bos_text, "eos_token": model.eos_text}
        try:
            text = render_chat_template(template, messages, add_generation_prompt=True, tools=tools, **variables)
        except ChatTemplateError:
            if not any(m.get("role") == "system" for m in messages):
                raise
            # A template that rejects a system role: fold the system text into the first user turn.
            text = render_chat_template(
                template, fold_system(messages), add_generation_prompt=True, tools=tools, **variables
            )
        return tokenize_prompt(model, text)

    # -- generation -------------------------------------------------------------------

    def _pieces(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None,
        cancel: threading.Event | None,
        kwargs: dict[str, Any],
        plan: ToolPlan,
    ) -> Iterator[Piece]:
        sampling_kwargs = {k: v for k, v in kwargs.items() if k not in _TOOL_OPTIONS}
        dicts = to_chat_dicts(messages)
        with self._use_model() as entry:
            model = entry.model
            plan.resolve(
                self.chat_template or model.info.chat_template,
                lambda schema, parser: _wrap_grammar(self._schema_to_grammar(schema), parser.wrap),
            )
            if plan.grammar is not None:
                sampling_kwargs = {**sampling_kwargs, "grammar": plan.grammar, "json_schema": None}
            sampling = self._sampling(sampling_kwargs)
            tokens = self._render(model, dicts, plan.tools if plan.choice != "none" else None)
            yield from generate_pieces(model, tokens, sampling, merge_stops(self.stop, stop), cancel)

    def _check_kwargs(self, kwargs: dict[str, Any]) -> None:
        unknown = set(kwargs) - CALL_OPTIONS - _TOOL_OPTIONS
        if unknown:
            msg = f"unknown call options {sorted(unknown)}; supported: {sorted(CALL_OPTIONS | _TOOL_OPTIONS)}"
            raise TypeError(msg)

    def _stream(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: CallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> Iterator[ChatGenerationChunk]:
        self._check_kwargs(kwargs)
        plan = ToolPlan(kwargs, "llamacpp")
        for piece in self._pieces(messages, stop, None, kwargs, plan):
            for chunk in plan.chunks(piece, self._model_name()):
                if run_manager is not None:
                    run_manager.on_llm_new_token(chunk.text, chunk=chunk)
                yield chunk

    async def _astream(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: AsyncCallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> AsyncIterator[ChatGenerationChunk]:
        self._check_kwargs(kwargs)
        plan = ToolPlan(kwargs, "llamacpp")
        pieces = aiterate_in_thread(lambda cancel: self._pieces(messages, stop, cancel, kwargs, plan))
        try:
            async for piece in pieces:
                for chunk in plan.chunks(piece, self._model_name()):
                    if run_manager is not None:
                        await run_manager.on_llm_new_token(chunk.text, chunk=chunk)
                    yield chunk
        finally:
            await pieces.aclose()


def _wrap_grammar(gbnf: str, wrap: Callable[[str], str]) -> str:
    """Turn a JSON grammar (rule ``root``) into one for the parser's call syntax."""
    body = "\n".join(
        ("tool-call-json ::=" + line[len("root ::=") :]) if line.startswith("root ::=") else line
        for line in gbnf.splitlines()
    )
    return f"root ::= {call_sequence(wrap, 'tool-call-json')}\n{body}\n"
