"""The base of both chat models: one stream → chunk path over the backend interface.

A call becomes a :class:`~langchain_localllm._core.backend.GenerateRequest` (messages as
chat-template dicts, the backend's sampling settings validated from fields and call
options, stops, tools, schema); the backend's pieces become chunks through the call's
:class:`~langchain_localllm._core.tools.ToolPlan`; the callback fires once per chunk,
before it is yielded; ``_generate``/``_agenerate`` aggregate ``_stream``/``_astream``.
"""

from __future__ import annotations

from abc import abstractmethod
from collections.abc import AsyncIterator, Iterator, Sequence
from contextlib import aclosing, closing
from typing import Any, Literal

from langchain_core.callbacks import AsyncCallbackManagerForLLMRun, CallbackManagerForLLMRun
from langchain_core.language_models import BaseChatModel, LanguageModelInput
from langchain_core.messages import AIMessage, BaseMessage, convert_to_messages
from langchain_core.outputs import ChatGenerationChunk, ChatResult
from langchain_core.prompt_values import PromptValue
from langchain_core.runnables import Runnable

from langchain_localllm._core.backend import BaseBackend, ChatPrompt, GenerateRequest
from langchain_localllm._core.messages import refuse_bytes, to_chat_dicts
from langchain_localllm._core.model import LocalModel
from langchain_localllm._core.output import ChunkAggregate
from langchain_localllm._core.settings import Settings, check_known
from langchain_localllm._core.stop import merge_stops
from langchain_localllm._core.structured import with_structured_output
from langchain_localllm._core.toolprompt import ToolPromptMode
from langchain_localllm._core.tools import ToolCallParser, ToolPlan, convert_tools, normalize_tool_choice
from langchain_localllm.chat_models._response_format import requested_schema

__all__ = ["CHAT_OPTIONS", "LocalChatModel"]

CHAT_OPTIONS = frozenset(
    {"tools", "tool_choice", "tool_parser", "json_schema", "response_format", "ls_structured_output_format", "stream"}
)
"""Call options every chat model takes besides its sampling settings: what ``bind_tools`` and
``with_structured_output`` bind, ``response_format`` (langchain's provider strategy, see
``_response_format.py``), and LangChain's ``stream`` flag (no effect: every call streams)."""


class LocalChatModel(LocalModel, BaseChatModel):
    """What the package's chat models share above their backends."""

    chat_template: str | None = None
    """A Jinja chat template used instead of the model's own. Default: None (the model's)."""

    tool_prompt: ToolPromptMode = "auto"
    """How bound tools (and earlier tool calls and results) reach the prompt. ``"auto"``
    (default): through the chat template's own tool format, or, when the template ignores
    tools (the same prompt with and without them; a warning says so once), through the
    package's tool prompt: a system message listing the tools in the Hermes
    ``<tool_call>`` format, with history calls and results written as text.
    ``"template"``: always the template (tools it ignores stay invisible); ``"fallback"``:
    always the package's tool prompt."""

    streaming: bool = False
    """LangChain's standard flag. Every call already runs the streaming path (``invoke``
    aggregates it), so this changes nothing in the output. Default: False."""

    # -- what each chat model provides ------------------------------------------------

    @abstractmethod
    def _sampling(self, options: dict[str, Any]) -> Settings:
        """The backend's sampling settings from the fields and these call options."""

    @abstractmethod
    def _call_options(self) -> frozenset[str]:
        """The sampling call options this model accepts."""

    def _backend_for(self, options: dict[str, Any]) -> BaseBackend[Any, Any]:
        """The backend that answers a call with these options."""
        del options
        return self._backend()

    def _convert_input(self, model_input: LanguageModelInput) -> PromptValue:
        refuse_bytes(model_input)
        return super()._convert_input(model_input)

    # -- the one generation path --------------------------------------------------------

    def _request(
        self, messages: list[BaseMessage], stop: list[str] | None, kwargs: dict[str, Any]
    ) -> tuple[BaseBackend[Any, Any], GenerateRequest[Any], ToolPlan]:
        check_known(kwargs, self._call_options() | CHAT_OPTIONS)
        plan = ToolPlan(kwargs)
        sampling = self._sampling({k: v for k, v in kwargs.items() if k not in CHAT_OPTIONS})
        backend = self._backend_for(kwargs)
        prompt = ChatPrompt(
            to_chat_dicts(messages),
            tools=plan.tools if plan.active else None,
            chat_template=self.chat_template,
            literal=not self.allow_control_tokens_in_content,
            tool_prompt=self.tool_prompt,
        )
        schema = requested_schema(kwargs, plan)
        request = GenerateRequest(prompt, sampling, merge_stops(self.stop, stop), plan, schema)
        return backend, request, plan

    def _stream(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: CallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> Iterator[ChatGenerationChunk]:
        backend, request, plan = self._request(messages, stop, kwargs)
        name = self._model_label(kwargs)
        with closing(backend.stream(request)) as pieces:
            for piece in pieces:
                chunk = plan.chunk(piece, model_name=name, provider=backend.provider)
                if chunk is None:
                    continue
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
        backend, request, plan = self._request(messages, stop, kwargs)
        name = self._model_label(kwargs)
        async with aclosing(backend.astream(request)) as pieces:
            async for piece in pieces:
                chunk = plan.chunk(piece, model_name=name, provider=backend.provider)
                if chunk is None:
                    continue
                if run_manager is not None:
                    await run_manager.on_llm_new_token(chunk.text, chunk=chunk)
                yield chunk

    def _generate(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: CallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> ChatResult:
        acc = ChunkAggregate()
        for chunk in self._stream(messages, stop, run_manager, **kwargs):
            acc.add(chunk)
        return acc.chat_result()

    async def _agenerate(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: AsyncCallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> ChatResult:
        acc = ChunkAggregate()
        async for chunk in self._astream(messages, stop, run_manager, **kwargs):
            acc.add(chunk)
        return acc.chat_result()

    # -- counting -----------------------------------------------------------------------

    def get_num_tokens_from_messages(self, messages: list[BaseMessage], tools: Sequence[Any] | None = None) -> int:
        """Count the prompt tokens ``messages`` render to with the chat template (and ``tools``; loads the model)."""
        dicts = to_chat_dicts(convert_to_messages(messages))
        prompt = ChatPrompt(
            dicts,
            tools=convert_tools(tools) if tools else None,
            chat_template=self.chat_template,
            literal=not self.allow_control_tokens_in_content,
            tool_prompt=self.tool_prompt,
        )
        return len(self._backend().render(prompt))

    # -- tools and structured output ------------------------------------------------------

    def bind_tools(
        self,
        tools: Sequence[Any],
        *,
        tool_choice: str | bool | dict[str, Any] | None = None,
        tool_parser: ToolCallParser | None = None,
        **kwargs: Any,
    ) -> Runnable[LanguageModelInput, AIMessage]:
        """Bind tools (LangChain tools, functions, pydantic models, JSON-schema dicts).

        Args:
            tools: The tools the model may call.
            tool_choice: ``"auto"`` (default), ``"none"``, ``"any"``/``"required"`` (a call
                is forced, decoding constrained to a valid call), or a tool name.
            tool_parser: How the model writes calls; default chosen from the chat template.
            **kwargs: Further call options bound alongside.
        """
        specs = convert_tools(tools)
        choice = normalize_tool_choice(tool_choice, specs)
        return self.bind(tools=specs, tool_choice=choice, tool_parser=tool_parser, **kwargs)

    def with_structured_output(
        self,
        schema: Any = None,
        *,
        method: Literal["json_schema", "function_calling", "json_mode"] = "json_schema",
        include_raw: bool = False,
        strict: bool | None = None,
        **kwargs: Any,
    ) -> Runnable[LanguageModelInput, Any]:
        """Answers that always parse: decoding is constrained to ``schema``.

        Args:
            schema: A pydantic model, TypedDict or JSON-schema dict (``None`` for ``json_mode``).
            method: ``"json_schema"`` (default), ``"function_calling"`` or ``"json_mode"``.
            include_raw: Return ``{"raw", "parsed", "parsing_error"}``.
            strict: Accepted for compatibility; constrained decoding is always strict.
            **kwargs: Not supported (an error names them).
        """
        del strict  # constrained decoding already guarantees the schema
        return with_structured_output(self, schema, method=method, include_raw=include_raw, **kwargs)
