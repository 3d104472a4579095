"""``HFLocalChatModel``: a LangChain chat model over a local Hugging Face transformers model."""

from __future__ import annotations

import contextvars
from collections.abc import Iterator, Mapping, Sequence
from typing import Any, ClassVar

from langchain_core.language_models import LanguageModelInput, ModelProfile
from langchain_core.messages import AIMessage, BaseMessage
from langchain_core.runnables import RunnableConfig
from langchain_core.runnables.config import get_config_list
from pydantic import ConfigDict, Field, PrivateAttr

from langchain_localllm._backends.transformers.backend import BATCH_SLOT, TransformersBackend
from langchain_localllm._backends.transformers.batch import BatchPlan
from langchain_localllm._backends.transformers.load import context_window_on_disk
from langchain_localllm._backends.transformers.settings import (
    HF_KWARGS_SET_BY_PACKAGE,
    MAX_PARALLEL,
    HFLoadFields,
    HFSamplingFields,
    LoadSpec,
    Sampling,
)
from langchain_localllm._core.backend import BaseBackend, ChatPrompt, GenerateRequest
from langchain_localllm._core.messages import ChatDict, to_chat_dicts
from langchain_localllm._core.settings import Settings, check_known
from langchain_localllm._core.tools import ToolPlan
from langchain_localllm.chat_models._base import LocalChatModel
from langchain_localllm.chat_models._profile import local_profile
from langchain_localllm.chat_models.llamacpp import MAX_BATCH_THREADS
from langchain_localllm.errors import InvalidParameterError

__all__ = ["HFLocalChatModel"]

_CALL_OPTIONS = frozenset(HFSamplingFields.model_fields) | {"model"}
"""Options accepted per call (``invoke(..., temperature=0.7)``, ``.bind(max_tokens=64)``): the
sampling fields, and ``model`` (another checkpoint, loaded through the same cache)."""

_ACTIVE_PLAN: contextvars.ContextVar[BatchPlan | None] = contextvars.ContextVar(
    "langchain_localllm_hf_batch_plan", default=None
)


class HFLocalChatModel(HFSamplingFields, HFLoadFields, LocalChatModel):
    """A LangChain chat model over a local Hugging Face ``transformers`` model.

    Messages are rendered with the tokenizer's own chat template and the token ids go
    straight to ``model.generate``; only the new tokens come back. The weights load on
    first use (or with ``load_on_init=True``) into the process-wide cache that
    ``LocalGGMLLLM`` also uses, so instances with the same model and load settings
    share one copy and calls never reload. Causal LMs and seq2seq models (T5,
    flan-t5...) both work. ``batch()`` runs up to ``batch_size`` prompts through one
    left-padded ``generate`` call.

    Setup:
        .. code-block:: bash

            pip install "langchain-localllm[hf]"

    Example:
        .. code-block:: python

            from langchain_localllm.chat_models import HFLocalChatModel

            chat = HFLocalChatModel(model="Qwen/Qwen2.5-0.5B-Instruct", max_tokens=128)
            print(chat.invoke("Rose is which type of flower?").content)
            for chunk in chat.stream([("system", "Be brief."), ("human", "Name three flowers.")]):
                print(chunk.content, end="", flush=True)
            answers = chat.batch(["Hello", "What is 2+2?"])  # one padded generate call
    """

    model_config = ConfigDict(extra="forbid", protected_namespaces=(), allow_inf_nan=False)

    chat_template: str | None = None
    """A Jinja chat template used instead of the tokenizer's own. Default: None (the
    tokenizer's template; a seq2seq model without one gets a plain-text prompt)."""

    batch_size: int = Field(default=8, ge=1)
    """How many prompts ``batch()``/``abatch()`` put into one padded ``generate`` call (with
    ``max_parallel=1``). Default: 8."""

    max_parallel: int = Field(default=1, ge=1, le=MAX_PARALLEL)
    """How many generations on this model share decode steps (continuous batching). 1: today's
    path, one ``generate`` call per request (``batch()`` padded in groups of ``batch_size``).
    More: one scheduler thread per loaded model runs every call (``invoke``, ``stream``,
    ``batch``, async, any thread) in shared forward passes over one merged KV cache, admitting
    new requests between steps; the KV memory grows with the rows running at once (each row's
    prompt + answer). Requests the step loop does not implement (``generate_kwargs``, seq2seq,
    sliding-window or static caches) run alone. Not a load setting: instances with other values
    share the weights. See docs/huggingface.md. Default: 1."""

    streaming: bool = False
    """Route ``invoke`` through the streaming path (LangChain's standard flag). Output is the
    same either way. Default: False."""

    _objects: tuple[Any, Any] | None = PrivateAttr(default=None)
    _overrides: dict[str, TransformersBackend] = PrivateAttr(default_factory=dict)

    # -- construction from objects the user already has ---------------------------------

    @classmethod
    def from_model_and_tokenizer(cls, model: Any, tokenizer: Any, /, **kwargs: Any) -> HFLocalChatModel:
        """Wrap an already loaded transformers model and tokenizer.

        The objects are registered in the process-wide model cache (keyed by their
        identity), so every instance made from the same pair shares them; nothing is
        copied or moved. Further keyword arguments are fields; the ``model`` field (the
        name reported in metadata) defaults to the model's ``name_or_path``.

        Example:
            .. code-block:: python

                from transformers import AutoModelForCausalLM, AutoTokenizer

                tok = AutoTokenizer.from_pretrained("Qwen/Qwen2.5-0.5B-Instruct")
                lm = AutoModelForCausalLM.from_pretrained("Qwen/Qwen2.5-0.5B-Instruct")
                chat = HFLocalChatModel.from_model_and_tokenizer(lm, tok, max_tokens=64)
        """
        if not hasattr(model, "generate") or not hasattr(tokenizer, "decode"):
            msg = "from_model_and_tokenizer needs a transformers model (with .generate) and its tokenizer"
            raise TypeError(msg)
        name = kwargs.pop("model", None) or getattr(model, "name_or_path", None) or "in-memory-model"
        kwargs.pop("load_on_init", None)
        instance = cls(model=str(name), **kwargs)
        instance._objects = (model, tokenizer)
        instance.load()  # registers the objects in the process-wide cache
        return instance

    @classmethod
    def from_pipeline(cls, pipeline: Any, **kwargs: Any) -> HFLocalChatModel:
        """Wrap an existing transformers ``text-generation`` (or ``text2text-generation``) pipeline.

        Uses the pipeline's model and tokenizer (see :meth:`from_model_and_tokenizer`);
        generation settings come from this class's fields, not the pipeline's.
        """
        task = getattr(pipeline, "task", None)
        if task not in {None, "text-generation", "text2text-generation", "summarization", "translation"}:
            msg = f"from_pipeline needs a text-generation pipeline, got task {task!r}"
            raise InvalidParameterError(msg)
        if getattr(pipeline, "tokenizer", None) is None:
            msg = "the pipeline has no tokenizer"
            raise InvalidParameterError(msg)
        return cls.from_model_and_tokenizer(pipeline.model, pipeline.tokenizer, **kwargs)

    # -- identity ------------------------------------------------------------------------

    @property
    def _llm_type(self) -> str:
        return "huggingface-local-chat"

    @property
    def _identifying_params(self) -> Mapping[str, Any]:
        return {
            "model": self.model,
            "revision": self.revision,
            "device": self.device,
            "dtype": self.dtype,
            "quantization": self.quantization,
            "chat_template": self.chat_template,
            "temperature": self.temperature,
            "top_p": self.top_p,
            "top_k": self.top_k,
            "repetition_penalty": self.repetition_penalty,
            "max_tokens": self.max_tokens,
            "seed": self.seed,
            "stop": self.stop,
            "generate_kwargs": self.generate_kwargs,
        }

    _provider: ClassVar[str] = TransformersBackend.provider
    _model_kwargs_target: ClassVar[str] = "from_pretrained"
    _model_kwargs_set_by_package: ClassVar[Mapping[str, str]] = HF_KWARGS_SET_BY_PACKAGE

    def _resolve_model_profile(self) -> ModelProfile | None:
        """The profile (see ``_profile.py``); ``max_input_tokens`` from a ``config.json`` already on disk."""
        return local_profile(name=self.model, max_input_tokens=context_window_on_disk(LoadSpec.of(self)))

    def _model_label(self, kwargs: dict[str, Any]) -> str:
        override = kwargs.get("model")
        return override if isinstance(override, str) else self.model

    # -- the backend ---------------------------------------------------------------------

    def _load_settings(self) -> LoadSpec:
        return LoadSpec.of(self)

    def _new_backend(self, settings: Settings) -> TransformersBackend:
        assert isinstance(settings, LoadSpec)  # noqa: S101 - made by _load_settings
        return TransformersBackend(settings, self._objects)

    def _backend_for(self, options: dict[str, Any]) -> BaseBackend[Any, Any]:
        override = options.get("model")
        if override is None or override == self.model:
            return self._backend()
        if not isinstance(override, str):
            msg = f"model must be a path or hub id string, got {override!r}"
            raise InvalidParameterError(msg)
        spec = LoadSpec.of(self, {"model": override})
        backend = self._overrides.get(override)
        if backend is None or backend.settings != spec:
            backend = TransformersBackend(spec)
            self._overrides[override] = backend
        return backend

    def _call_options(self) -> frozenset[str]:
        return _CALL_OPTIONS

    def _sampling(self, options: dict[str, Any]) -> Sampling:
        check_known(options, _CALL_OPTIONS)
        options = {k: v for k, v in options.items() if k != "model"}
        if options.get("generate_kwargs"):
            options["generate_kwargs"] = {**self.generate_kwargs, **options["generate_kwargs"]}
        return Sampling.of(self, options)

    # -- batching ----------------------------------------------------------------------

    def _request(
        self, messages: list[BaseMessage], stop: list[str] | None, kwargs: dict[str, Any]
    ) -> tuple[BaseBackend[Any, Any], GenerateRequest[Any], ToolPlan]:
        """The base request; answered from the active ``batch()`` group when it belongs to one."""
        backend, request, tools = super()._request(messages, stop, kwargs)
        plan = _ACTIVE_PLAN.get()
        if plan is not None and not tools.active and request.json_schema is None:  # constrained calls run alone
            assert isinstance(request.prompt, ChatPrompt)  # noqa: S101 - chat requests
            slot = plan.claim(self, request.prompt.messages, stop, kwargs)
            if slot is not None:
                request.extra[BATCH_SLOT] = (plan, slot)
        return backend, request, tools

    # -- batching ----------------------------------------------------------------------

    def _plans(
        self, inputs: Sequence[LanguageModelInput], stop: list[str] | None, kwargs: Mapping[str, Any]
    ) -> Iterator[tuple[int, BatchPlan]]:
        """Split ``inputs`` into groups of ``batch_size``: (index of the first input, plan)."""
        for start in range(0, len(inputs), self.batch_size):
            conversations = [self._conversation_or_error(item) for item in inputs[start : start + self.batch_size]]
            yield start, BatchPlan(self, conversations, stop, kwargs)

    def _conversation_or_error(self, item: LanguageModelInput) -> list[ChatDict] | BaseException:
        try:
            return to_chat_dicts(self._convert_input(item).to_messages())
        except Exception as e:  # noqa: BLE001 - raised again by that input's own invoke
            return e

    def batch(
        self,
        inputs: list[LanguageModelInput],
        config: RunnableConfig | list[RunnableConfig] | None = None,
        *,
        return_exceptions: bool = False,
        **kwargs: Any,
    ) -> list[AIMessage]:
        """Answer ``inputs``, ``batch_size`` at a time, each group in one padded ``generate`` call.

        Each input still runs as its own LangChain call (callbacks, tracing, caching);
        greedy answers are identical to invoking each input alone.
        """
        if not inputs:
            return []
        if self.max_parallel > 1:  # every input submitted at once: the scheduler batches them
            if not isinstance(config, list) and (config is None or config.get("max_concurrency") is None):
                config = RunnableConfig(**{**(config or {}), "max_concurrency": min(len(inputs), MAX_BATCH_THREADS)})
            return super().batch(inputs, config, return_exceptions=return_exceptions, **kwargs)
        configs = get_config_list(config, len(inputs))
        stop = kwargs.pop("stop", None)

        def invoke(i: int) -> Any:
            try:
                return self.invoke(inputs[i], configs[i], stop=stop, **kwargs)
            except Exception as e:
                if not return_exceptions:
                    raise
                return e

        results: list[Any] = []
        for start, plan in self._plans(inputs, stop, kwargs):
            token = _ACTIVE_PLAN.set(plan)
            try:
                results.extend(invoke(start + offset) for offset in range(len(plan.conversations)))
            finally:
                _ACTIVE_PLAN.reset(token)
        return results

    async def abatch(
        self,
        inputs: list[LanguageModelInput],
        config: RunnableConfig | list[RunnableConfig] | None = None,
        *,
        return_exceptions: bool = False,
        **kwargs: Any,
    ) -> list[AIMessage]:
        """Async :meth:`batch`: the padded ``generate`` calls run in a worker thread."""
        if not inputs:
            return []
        if self.max_parallel > 1:  # all awaited at once (no thread per call): the scheduler batches them
            return await super().abatch(inputs, config, return_exceptions=return_exceptions, **kwargs)
        configs = get_config_list(config, len(inputs))
        stop = kwargs.pop("stop", None)

        async def ainvoke(i: int) -> Any:
            try:
                return await self.ainvoke(inputs[i], configs[i], stop=stop, **kwargs)
            except Exception as e:
                if not return_exceptions:
                    raise
                return e

        results: list[Any] = []
        for start, plan in self._plans(inputs, stop, kwargs):
            token = _ACTIVE_PLAN.set(plan)
            try:
                results.extend([await ainvoke(start + offset) for offset in range(len(plan.conversations))])
            finally:
                _ACTIVE_PLAN.reset(token)
        return results
