"""``HFLocalChatModel``: a LangChain chat model over a local Hugging Face transformers model."""

from __future__ import annotations

import contextvars
import dataclasses
import logging
import re
import threading
from collections.abc import AsyncIterator, Callable, Hashable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Any, Literal, cast

from langchain_core.callbacks import AsyncCallbackManagerForLLMRun, CallbackManagerForLLMRun
from langchain_core.language_models import LangSmithParams, LanguageModelInput
from langchain_core.messages import AIMessage, AIMessageChunk, BaseMessage
from langchain_core.messages.ai import UsageMetadata
from langchain_core.outputs import ChatGenerationChunk
from langchain_core.runnables import RunnableConfig
from langchain_core.runnables.config import get_config_list
from pydantic import ConfigDict, Field, PrivateAttr, field_validator, model_validator

from langchain_localllm._bridge import aiterate_in_thread
from langchain_localllm._cache import model_cache
from langchain_localllm._hf import (
    FORBIDDEN_GENERATE_KWARGS,
    BatchPlan,
    Event,
    FinishEvent,
    HFBundle,
    LoadSpec,
    Sampling,
    bundle_from_objects,
    load_bundle,
    render_prompt,
    row_budget,
    run_batch,
    stream_events,
)
from langchain_localllm._hf_grammar import json_schema_grammar, tool_call_grammar
from langchain_localllm._messages import ChatDict, to_chat_dicts
from langchain_localllm._options import check_bounds
from langchain_localllm._output import Piece
from langchain_localllm._stop import merge_stops
from langchain_localllm._structured import ToolCallingChatModel
from langchain_localllm._tools import ToolPlan
from langchain_localllm.errors import ModelNotFoundError

__all__ = ["HFLocalChatModel"]

logger = logging.getLogger("langchain_localllm")

PROVIDER = "huggingface"

_TOOL_OPTIONS = frozenset({"tools", "tool_choice", "tool_parser", "json_schema", "ls_structured_output_format"})
"""Bound by ``bind_tools``/``with_structured_output``: template tools and decoding constraints."""

_CALL_OPTIONS = (
    frozenset(
        {
            "temperature",
            "top_p",
            "top_k",
            "repetition_penalty",
            "max_tokens",
            "seed",
            "generate_kwargs",
            "model",
            "stream",
        }
    )
    | _TOOL_OPTIONS
)
"""Options accepted per call (``invoke(..., temperature=0.7)``, ``.bind(max_tokens=64)``)."""

# Call-time options obey the same bounds as the fields: (minimum, maximum, minimum is exclusive).
_BOUNDS: dict[str, tuple[float, float | None, bool]] = {
    "temperature": (0.0, None, False),
    "top_p": (0.0, 1.0, False),
    "top_k": (0, None, False),
    "repetition_penalty": (0.0, None, True),
    "max_tokens": (1, None, False),
    "seed": (0, None, False),
}

_DEVICE = re.compile(r"^(auto|cpu|mps|meta|(cuda|xpu|npu|hpu)(:\d+)?)$")

_ACTIVE_PLAN: contextvars.ContextVar[BatchPlan | None] = contextvars.ContextVar(
    "langchain_localllm_hf_batch_plan", default=None
)


def _check_generate_kwargs(kwargs: Mapping[str, Any]) -> None:
    for key in kwargs:
        if key in FORBIDDEN_GENERATE_KWARGS:
            msg = f"generate_kwargs[{key!r}] is not allowed: {FORBIDDEN_GENERATE_KWARGS[key]}"
            raise ValueError(msg)


class HFLocalChatModel(ToolCallingChatModel):
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

    model_config = ConfigDict(extra="forbid", protected_namespaces=())

    # -- loading ---------------------------------------------------------------------

    model: str
    """A local checkpoint directory or a Hugging Face Hub id (e.g. ``"Qwen/Qwen2.5-0.5B-Instruct"``).
    Hub ids resolve from the local Hugging Face cache and download only when allowed. Required."""

    revision: str | None = None
    """Hub revision (branch, tag or commit). Default: None (``main``)."""

    cache_dir: str | None = None
    """Hugging Face cache directory. Default: None (the hub's default cache)."""

    local_files_only: bool = False
    """Never download; use only local files. ``HF_HUB_OFFLINE=1`` does the same. Default: False."""

    trust_remote_code: bool = False
    """Allow custom modelling code shipped with the checkpoint to run. Default: False."""

    device: str = "auto"
    """Where the model runs: ``"auto"`` (CUDA, else MPS, else CPU), ``"cpu"``, ``"cuda"``,
    ``"cuda:1"``, ``"mps"``. Ignored when ``device_map`` is set. Default: "auto"."""

    device_map: str | dict[str, Any] | None = None
    """Passed to ``from_pretrained`` to spread a model over several devices (e.g. ``"auto"``;
    needs ``accelerate``). Default: None (the whole model on ``device``)."""

    dtype: Literal["auto", "float32", "float16", "bfloat16"] = "auto"
    """Weight precision. ``"auto"``: float32 on CPU, the checkpoint's own dtype on a GPU.
    Default: "auto"."""

    quantization: Literal["8bit", "4bit"] | None = None
    """Load the weights quantized with bitsandbytes (CUDA only). Default: None."""

    attn_implementation: str | None = None
    """Attention kernel passed to ``from_pretrained`` (``"sdpa"``, ``"eager"``,
    ``"flash_attention_2"``). Default: None (transformers' choice)."""

    model_kwargs: dict[str, Any] = Field(default_factory=dict)
    """Further keyword arguments for ``from_pretrained`` (part of the cache key). Default: {}."""

    load_on_init: bool = False
    """Load the weights in the constructor instead of on first use. Default: False."""

    # -- prompt ----------------------------------------------------------------------

    chat_template: str | None = None
    """A Jinja chat template used instead of the tokenizer's own. Default: None (the
    tokenizer's template; a seq2seq model without one gets a plain-text prompt)."""

    # -- generation ------------------------------------------------------------------

    temperature: float = Field(default=0.0, ge=0.0)
    """Sampling temperature; 0 is greedy (deterministic). Default: 0.0."""

    top_p: float | None = Field(default=None, ge=0.0, le=1.0)
    """Nucleus sampling threshold (when sampling). Default: None (the model's generation config)."""

    top_k: int | None = Field(default=None, ge=0)
    """Sample among the k most likely tokens (when sampling). Default: None (the model's generation config)."""

    repetition_penalty: float | None = Field(default=None, gt=0.0)
    """Penalty for repeated tokens; 1.0 disables. Default: None (the model's generation config)."""

    max_tokens: int = Field(default=256, ge=1)
    """Most tokens to generate per answer (capped by the context window). Default: 256."""

    seed: int | None = Field(default=None, ge=0)
    """Seed for ``torch.manual_seed`` before sampling (process-wide RNG). Default: None."""

    stop: list[str] | None = None
    """Stop strings, merged with those given per call; never part of the output. Default: None."""

    generate_kwargs: dict[str, Any] = Field(default_factory=dict)
    """Further keyword arguments for ``model.generate`` (e.g. ``no_repeat_ngram_size``). Keys
    that have a field here (``max_new_tokens``, ``temperature``...) are rejected. Default: {}."""

    static_cache: bool | None = None
    """Decode with a static KV cache, which transformers compiles on CUDA with CUDA graphs
    (about 7x the tokens/s of the default dynamic cache at batch 1, measured on an H200; the
    first call per cache length and batch shape pays the compile, 30 s to 100 s there). None =
    on when the model is on CUDA and supports it; False = never; True = also off CUDA (static
    cache without compilation). Default: None."""

    batch_size: int = Field(default=8, ge=1)
    """How many prompts ``batch()``/``abatch()`` put into one padded ``generate`` call. Default: 8."""

    streaming: bool = False
    """Route ``invoke`` through the streaming path (LangChain's standard flag). Output is the
    same either way. Default: False."""

    _objects: tuple[Any, Any] | None = PrivateAttr(default=None)
    _objects_key: tuple[Hashable, ...] | None = PrivateAttr(default=None)
    _keys: dict[str | None, tuple[Hashable, ...]] = PrivateAttr(default_factory=dict)

    @field_validator("device")
    @classmethod
    def _check_device(cls, value: str) -> str:
        if not _DEVICE.match(value):
            msg = f"device must be 'auto', 'cpu', 'cuda', 'cuda:N', 'mps' (or xpu/npu/hpu[:N]), got {value!r}"
            raise ValueError(msg)
        return value

    @field_validator("generate_kwargs")
    @classmethod
    def _check_generate_kwargs(cls, value: dict[str, Any]) -> dict[str, Any]:
        _check_generate_kwargs(value)
        return value

    @field_validator("stop")
    @classmethod
    def _check_stop(cls, value: list[str] | None) -> list[str] | None:
        return merge_stops(value) if value is not None else None

    @model_validator(mode="after")
    def _maybe_load(self) -> HFLocalChatModel:
        if self.load_on_init:
            self.load()
        return self

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
        instance._objects_key = ("hf-objects", id(model), id(tokenizer))
        model_cache.get_or_load(instance._objects_key, instance._object_loader())
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
            raise ValueError(msg)
        if getattr(pipeline, "tokenizer", None) is None:
            msg = "the pipeline has no tokenizer"
            raise ValueError(msg)
        return cls.from_model_and_tokenizer(pipeline.model, pipeline.tokenizer, **kwargs)

    def _object_loader(self) -> Callable[[], HFBundle]:
        assert self._objects is not None  # noqa: S101 - only called for object-backed instances
        model, tokenizer = self._objects
        name = self.model
        return lambda: bundle_from_objects(model, tokenizer, name=name, owned=False)

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

    def _get_ls_params(self, stop: list[str] | None = None, **kwargs: Any) -> LangSmithParams:
        override = kwargs.get("model")
        params = LangSmithParams(
            ls_provider=PROVIDER,
            ls_model_name=override if isinstance(override, str) else self.model,
            ls_model_type="chat",
            ls_temperature=kwargs.get("temperature", self.temperature),
            ls_max_tokens=kwargs.get("max_tokens", self.max_tokens),
        )
        stops = merge_stops(self.stop, stop)
        if stops:
            params["ls_stop"] = stops
        return params

    # -- the model ---------------------------------------------------------------------

    def _spec(self, model: str) -> LoadSpec:
        return LoadSpec(
            model=model,
            revision=self.revision,
            trust_remote_code=self.trust_remote_code,
            local_files_only=self.local_files_only,
            cache_dir=self.cache_dir,
            device=self.device,
            device_map=self.device_map,
            dtype=self.dtype,
            quantization=self.quantization,
            attn_implementation=self.attn_implementation,
            model_kwargs=self.model_kwargs,
        )

    def _key_and_loader(self, override: str | None) -> tuple[tuple[Hashable, ...], Callable[[], HFBundle]]:
        if override is None and self._objects_key is not None:
            return self._objects_key, self._object_loader()
        spec = self._spec(override or self.model)
        key = self._keys.get(override)
        if key is None:
            key = spec.cache_key()
            self._keys[override] = key
        return key, lambda: load_bundle(spec)

    @contextmanager
    def _use_bundle(self, override: str | None = None) -> Iterator[HFBundle]:
        """Hold the loaded model (loading it once per process) for one generation."""
        key, loader = self._key_and_loader(override)
        with model_cache.use(key, loader) as entry:
            yield entry.model

    def load(self) -> None:
        """Load the weights now (they otherwise load on first use)."""
        with self._use_bundle():
            pass

    def unload(self) -> bool:
        """Evict this instance's model from the process-wide cache (affects every sharer).

        Returns whether a model was loaded. The next call loads it again.
        """
        try:
            key, _ = self._key_and_loader(None)
        except (ModelNotFoundError, ValueError, ImportError):
            return False
        return model_cache.evict(key)

    def get_num_tokens(self, text: str) -> int:
        """Count the tokens of ``text`` with the model's own tokenizer (loads the model)."""
        with self._use_bundle() as bundle:
            return len(bundle.tokenizer.encode(text, add_special_tokens=False))

    def get_num_tokens_from_messages(self, messages: list[BaseMessage], tools: Sequence[Any] | None = None) -> int:
        """Count the prompt tokens ``messages`` render to (with the chat template; loads the model)."""
        if tools:
            msg = "tool schemas are not supported by HFLocalChatModel yet"
            raise NotImplementedError(msg)
        with self._use_bundle() as bundle:
            return len(render_prompt(bundle, to_chat_dicts(messages), self.chat_template))

    # -- generation --------------------------------------------------------------------

    def _call_settings(self, kwargs: Mapping[str, Any]) -> tuple[Sampling, str | None]:
        unknown = set(kwargs) - _CALL_OPTIONS
        if unknown:
            msg = f"unknown call options {sorted(unknown)}; supported: {sorted(_CALL_OPTIONS - {'stream'})}"
            raise TypeError(msg)
        check_bounds(kwargs, _BOUNDS)
        generate_kwargs = {**self.generate_kwargs, **(kwargs.get("generate_kwargs") or {})}
        _check_generate_kwargs(generate_kwargs)
        override = kwargs.get("model")
        if override is not None and not isinstance(override, str):
            msg = f"model must be a path or hub id string, got {override!r}"
            raise TypeError(msg)
        sampling = Sampling(
            temperature=kwargs.get("temperature", self.temperature),
            top_p=kwargs.get("top_p", self.top_p),
            top_k=kwargs.get("top_k", self.top_k),
            repetition_penalty=kwargs.get("repetition_penalty", self.repetition_penalty),
            max_tokens=kwargs.get("max_tokens", self.max_tokens),
            seed=kwargs.get("seed", self.seed),
            generate_kwargs=generate_kwargs,
            static_cache=self.static_cache,
        )
        return sampling, (None if override in (None, self.model) else override)

    def _events(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None,
        kwargs: Mapping[str, Any],
        plan: BatchPlan | None,
        cancel: threading.Event | None = None,
        *,
        tools: ToolPlan | None = None,
    ) -> Iterator[Event]:
        """The answer to ``messages`` as backend events (from a batch plan, or generated now)."""
        sampling, override = self._call_settings(kwargs)
        stops = merge_stops(self.stop, stop)
        conversation = to_chat_dicts(messages)
        constrained = bool(kwargs.get("tools")) or kwargs.get("json_schema") is not None
        if plan is not None and not constrained:  # constrained calls run one by one
            slot = plan.claim(self, conversation, stop, kwargs)
            if slot is not None:
                yield from plan.events(slot, lambda: self._run_plan(plan, sampling, override, stops))
                return
        with self._use_bundle(override) as bundle:
            sampling, send_tools = self._constrain(bundle, sampling, kwargs, tools)
            prompt = render_prompt(bundle, conversation, self.chat_template, tools=send_tools)
            budget = row_budget(bundle, len(prompt), sampling.max_tokens)
            yield from stream_events(bundle, prompt, budget, sampling=sampling, stops=stops, cancel=cancel)

    def _constrain(
        self, bundle: HFBundle, sampling: Sampling, kwargs: Mapping[str, Any], tools: ToolPlan | None
    ) -> tuple[Sampling, list[dict[str, Any]] | None]:
        """Apply bound tools / schema: the tools the template sees, and the decoding constraint."""
        constraint = None
        send_tools = None
        if tools is not None and tools.active:
            template = self.chat_template or getattr(bundle.tokenizer, "chat_template", None)
            tools.resolve(
                template if isinstance(template, str) else None,
                lambda schema, parser: tool_call_grammar(schema, parser.wrap),
            )
            constraint = tools.grammar
            send_tools = tools.tools
        if constraint is None and kwargs.get("json_schema") is not None:
            constraint = json_schema_grammar(kwargs["json_schema"])
        if constraint is not None:
            sampling = dataclasses.replace(sampling, constraint=constraint)
        return sampling, send_tools

    def _run_plan(
        self, plan: BatchPlan, sampling: Sampling, override: str | None, stops: list[str]
    ) -> list[list[Event] | BaseException]:
        with self._use_bundle(override) as bundle:
            return run_batch(bundle, plan.conversations, sampling, stops, self.chat_template)

    def _chunk(self, event: Event, model_name: str) -> ChatGenerationChunk:
        if not isinstance(event, FinishEvent):
            return ChatGenerationChunk(message=AIMessageChunk(content=event.text))
        counts = {
            "input_tokens": event.prompt_tokens,
            "output_tokens": event.completion_tokens,
            "total_tokens": event.prompt_tokens + event.completion_tokens,
        }
        usage = cast("UsageMetadata", counts)
        info: dict[str, Any] = {"finish_reason": event.finish_reason}
        if event.stop_sequence is not None:
            info["stop_sequence"] = event.stop_sequence
        metadata = {"model_name": model_name, "model_provider": PROVIDER, **info}
        message = AIMessageChunk(
            content=event.text, usage_metadata=usage, response_metadata=metadata, chunk_position="last"
        )
        return ChatGenerationChunk(message=message, generation_info=info)

    def _chunks(self, event: Event, model_name: str, tools: ToolPlan) -> Iterator[ChatGenerationChunk]:
        """Chunks for one event: plain, or through the tool plan when tools are bound."""
        if not tools.active:
            yield self._chunk(event, model_name)
            return
        info = None
        if isinstance(event, FinishEvent):
            info = {
                "finish_reason": event.finish_reason,
                "prompt_tokens": event.prompt_tokens,
                "completion_tokens": event.completion_tokens,
                "total_tokens": event.prompt_tokens + event.completion_tokens,
            }
        yield from tools.chunks(Piece(event.text, info=info), model_name)

    def _model_name(self, kwargs: Mapping[str, Any]) -> str:
        override = kwargs.get("model")
        return override if isinstance(override, str) else self.model

    def _stream(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: CallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> Iterator[ChatGenerationChunk]:
        name = self._model_name(kwargs)
        tools = ToolPlan(kwargs, PROVIDER)
        for event in self._events(messages, stop, kwargs, _ACTIVE_PLAN.get(), tools=tools):
            for chunk in self._chunks(event, name, tools):
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
        name = self._model_name(kwargs)
        plan = _ACTIVE_PLAN.get()  # the worker thread does not inherit context variables
        tools = ToolPlan(kwargs, PROVIDER)
        events = aiterate_in_thread(lambda cancel: self._events(messages, stop, kwargs, plan, cancel, tools=tools))
        try:
            async for event in events:
                for chunk in self._chunks(event, name, tools):
                    if run_manager is not None:
                        await run_manager.on_llm_new_token(chunk.text, chunk=chunk)
                    yield chunk
        finally:
            await events.aclose()

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
