"""The transformers backend: loading through the shared cache, prompts, and the token loop.

Independent of LangChain's classes; ``torch`` and ``transformers`` are imported only
inside functions (``import langchain_localllm`` must stay light).

* Loading lives in :mod:`langchain_localllm._hf_load` (:class:`LoadSpec`,
  :func:`load_bundle`, :func:`bundle_from_objects`), re-exported here.
* :func:`render_prompt` turns chat dicts into prompt token ids with the tokenizer's
  own chat template (``apply_chat_template(tokenize=True)``: no re-tokenized string,
  no double BOS).
* :func:`generate_rows` runs one (left-padded) ``model.generate`` call for one or
  more prompts. A stopping criterion sees every new token: it detokenizes
  incrementally (:class:`IncrementalDetokenizer`), cuts stop strings
  (:class:`~langchain_localllm._stop.StopBuffer`), ends rows on any EOS id, their
  token budget, a stop string, or cancellation, and emits :class:`TextEvent` /
  :class:`FinishEvent` objects. :func:`stream_events` runs it in a worker thread
  through :func:`~langchain_localllm._bridge.iterate_in_thread`. On CUDA every
  ``generate`` (streamed or batched) runs on the process's one CUDA worker thread
  (:mod:`langchain_localllm._device`), where the static-cache decode step is
  compiled with CUDA graphs.
* :class:`BatchPlan` lets ``batch()`` compute a group of conversations in one padded
  call while each input still runs through LangChain's own ``invoke`` (callbacks,
  tracing, caching per input).

The detokenizing is done in the stopping criterion rather than a streamer because
transformers 5 calls the stopping criteria *before* handing the step's tokens to a
streamer: checking stop strings in a streamer would stop one token late.
"""

from __future__ import annotations

import contextlib
import copy
import importlib.util
import logging
import threading
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from langchain_localllm._bridge import iterate_in_thread
from langchain_localllm._device import call_on_device_thread, cuda_graphs_usable, device_executor, on_device_thread
from langchain_localllm._hf_grammar import GrammarProcessor
from langchain_localllm._hf_load import HFBundle, LoadSpec, bundle_from_objects, load_bundle
from langchain_localllm._hf_prefill import cache_argument, merged_prefill, plan_groups
from langchain_localllm._imports import import_optional
from langchain_localllm._messages import ChatDict, fold_system, plain_text_prompt
from langchain_localllm._stop import StopBuffer
from langchain_localllm.errors import (
    ChatTemplateError,
    ContextWindowExceededError,
)

__all__ = [
    "FORBIDDEN_GENERATE_KWARGS",
    "BatchPlan",
    "Event",
    "FinishEvent",
    "HFBundle",
    "IncrementalDetokenizer",
    "LoadSpec",
    "Sampling",
    "TextEvent",
    "bundle_from_objects",
    "generate_rows",
    "load_bundle",
    "render_prompt",
    "row_budget",
    "run_batch",
    "stream_events",
]

logger = logging.getLogger("langchain_localllm")

FORBIDDEN_GENERATE_KWARGS = {
    "input_ids": "the prompt comes from the messages",
    "inputs": "the prompt comes from the messages",
    "attention_mask": "the prompt comes from the messages",
    "generation_config": "set the sampling fields instead",
    "max_new_tokens": "use max_tokens",
    "max_length": "use max_tokens",
    "do_sample": "temperature > 0 samples, temperature == 0 is greedy",
    "temperature": "use the temperature field",
    "top_p": "use the top_p field",
    "top_k": "use the top_k field",
    "repetition_penalty": "use the repetition_penalty field",
    "num_beams": "beam search cannot stream; only num_beams=1 is supported",
    "num_return_sequences": "one answer per prompt is returned",
    "streamer": "use .stream() / .astream()",
    "return_dict_in_generate": "the output is read token by token",
}
"""``generate_kwargs`` keys that would fight the class's own settings, with the reason."""


# -- prompts -----------------------------------------------------------------------


def _template_of(tokenizer: Any, override: str | None) -> Any:
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
    if not _template_of(tokenizer, chat_template):
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


# -- generation --------------------------------------------------------------------


@dataclass(frozen=True)
class Sampling:
    """Per-call generation settings."""

    temperature: float = 0.0
    top_p: float | None = None
    top_k: int | None = None
    repetition_penalty: float | None = None
    max_tokens: int = 256
    seed: int | None = None
    generate_kwargs: Mapping[str, Any] = field(default_factory=dict)
    static_cache: bool | None = None
    """Static KV cache (compiled decoding on CUDA); None = on CUDA where the model supports it."""
    constraint: str | None = None
    """A llguidance grammar every answer must match (constrained decoding), or None."""

    def generation_config(self, bundle: HFBundle, max_new_tokens: int, prompt_width: int = 0) -> Any:
        """A copy of the model's generation config with these settings applied."""
        config = copy.deepcopy(bundle.model.generation_config)
        if self._use_static_cache(bundle):
            # transformers compiles the decoding step for a static cache on CUDA. The cache
            # length is rounded up to a power of two (and transformers keeps the largest
            # length seen), so a new prompt length does not trigger a recompile.
            config.cache_implementation = "static"
            config.max_cache_len = _bucket(prompt_width + max_new_tokens, bundle.context_window)
            # CUDA graphs ("reduce-overhead") only on the process's CUDA worker thread,
            # which owns torch's CUDA-graph trees (see _device.py); elsewhere the decode
            # step is compiled without them.
            compile_config = getattr(import_optional("transformers"), "CompileConfig", None)
            if compile_config is not None:
                graphs = getattr(bundle.device, "type", None) == "cuda" and cuda_graphs_usable()
                config.compile_config = compile_config(mode="reduce-overhead" if graphs else "default")
        config.max_new_tokens = max_new_tokens
        config.max_length = None
        config.min_length = 0
        config.num_beams = 1
        config.eos_token_id = sorted(bundle.eos_ids) or None
        config.pad_token_id = bundle.pad_id
        if self.temperature > 0:
            config.do_sample = True
            config.temperature = self.temperature
            if self.top_p is not None:
                config.top_p = self.top_p
            if self.top_k is not None:
                config.top_k = self.top_k
        else:
            config.do_sample = False
            config.temperature = None
            config.top_p = None
            config.top_k = None
            config.min_p = None
        if self.repetition_penalty is not None:
            config.repetition_penalty = self.repetition_penalty
        return config

    def _use_static_cache(self, bundle: HFBundle) -> bool:
        if self.static_cache is False or bundle.is_seq2seq:
            return False
        if {"cache_implementation", "cache", "past_key_values"} & set(self.generate_kwargs):
            return False  # the caller chose the cache
        model = bundle.model
        supported = (
            bool(getattr(model, "_can_compile_fullgraph", False)) and getattr(model, "hf_quantizer", None) is None
        )
        if self.static_cache is True:
            return supported
        return supported and getattr(bundle.device, "type", None) == "cuda"


STATIC_CACHE_MIN = 256
"""The smallest static KV-cache length; lengths are rounded up to powers of two from here."""


def _bucket(length: int, context_window: int | None) -> int:
    size = STATIC_CACHE_MIN
    while size < length:
        size *= 2
    return min(size, context_window) if context_window and context_window >= length else size


@contextlib.contextmanager
def _attention_backends(device: Any) -> Iterator[None]:
    """On CUDA, keep SDPA off the cuDNN attention backend.

    Measured on an H200 (torch 2.11, bfloat16, dynamic cache): the tiny test model
    (head_dim 32) decoded at ~27 tokens/s with cuDNN attention and ~280 without it; a
    0.43B Llama (head_dim 64) ran the same either way (58 vs 60). Flash,
    memory-efficient and math kernels remain available.
    """
    if getattr(device, "type", None) != "cuda":
        yield
        return
    attention = importlib.import_module("torch.nn.attention")
    backends = [
        attention.SDPBackend.FLASH_ATTENTION,
        attention.SDPBackend.EFFICIENT_ATTENTION,
        attention.SDPBackend.MATH,
    ]
    with attention.sdpa_kernel(backends):
        yield


@dataclass(frozen=True)
class TextEvent:
    """New answer text for one row (never half a character, never part of a stop string)."""

    row: int
    text: str


@dataclass(frozen=True)
class FinishEvent:
    """A row is done: its last text, token counts and why it ended."""

    row: int
    text: str
    prompt_tokens: int
    completion_tokens: int
    finish_reason: str
    """``"stop"`` (an EOS token or stop string) or ``"length"`` (token budget)."""
    stop_sequence: str | None = None
    """The stop string that ended the answer, if one did."""


Event = TextEvent | FinishEvent


class IncrementalDetokenizer:
    """Decodes generated tokens a few at a time (prefix/read offsets, as in TGI and vLLM).

    Each step decodes only a short window (the tokens of the previous emitted piece
    plus the pending ones) and emits the new suffix, so the cost per token does not
    grow with the answer. Text ending in U+FFFD (an incomplete UTF-8 sequence, e.g.
    one byte of a Chinese character or emoji) is held until the character completes.
    The concatenated output equals ``tokenizer.decode(all_ids, skip_special_tokens=True)``.
    """

    __slots__ = ("_decode", "_ids", "_prefix", "_read")

    def __init__(self, tokenizer: Any) -> None:
        """Create a detokenizer for ``tokenizer`` (special tokens are skipped)."""
        self._ids: list[int] = []
        self._prefix = 0
        self._read = 0

        def decode(ids: list[int]) -> str:
            return str(tokenizer.decode(ids, skip_special_tokens=True, clean_up_tokenization_spaces=False))

        self._decode = decode

    def push(self, token_id: int) -> str:
        """Add one token; return the text that is complete now (may be empty)."""
        self._ids.append(token_id)
        prefix_text = self._decode(self._ids[self._prefix : self._read])
        full_text = self._decode(self._ids[self._prefix :])
        if len(full_text) > len(prefix_text) and not full_text.endswith("\ufffd"):
            self._prefix, self._read = self._read, len(self._ids)
            return full_text[len(prefix_text) :]
        return ""

    def flush(self) -> str:
        """End of generation: the held text, minus a trailing incomplete character."""
        prefix_text = self._decode(self._ids[self._prefix : self._read])
        full_text = self._decode(self._ids[self._prefix :])
        self._prefix = self._read = len(self._ids)
        return full_text[len(prefix_text) :].rstrip("\ufffd") if len(full_text) > len(prefix_text) else ""


class _Row:
    __slots__ = ("budget", "detok", "done", "generated", "index", "prompt_tokens", "stops")

    def __init__(self, index: int, prompt_tokens: int, budget: int, tokenizer: Any, stops: Sequence[str]) -> None:
        self.index = index
        self.prompt_tokens = prompt_tokens
        self.budget = budget
        self.detok = IncrementalDetokenizer(tokenizer)
        self.stops = StopBuffer(stops)
        self.generated = 0
        self.done = False


class _Observer:
    """Stopping criterion that reads each step's new tokens and turns them into events.

    A duck-typed ``transformers.StoppingCriteria`` (so this module needs no
    transformers import): ``generate`` calls it after every step with the sequences so
    far; it returns, per row, whether that row is finished.
    """

    def __init__(
        self,
        rows: list[_Row],
        eos_ids: frozenset[int],
        start: int | None,
        emit: Callable[[Event], None],
        cancels: Sequence[threading.Event],
    ) -> None:
        self.rows = rows
        self.eos_ids = eos_ids
        self.offset = start
        self.emit = emit
        self.cancels = cancels
        self._torch = import_optional("torch")  # once, not on every step
        self._done_mask: tuple[tuple[bool, ...], Any] | None = None

    def __call__(self, input_ids: Any, scores: Any, **kwargs: Any) -> Any:  # noqa: ARG002 - criterion signature
        torch = self._torch
        length = int(input_ids.shape[1])
        if self.offset is None:  # seq2seq: the decoder prompt is everything before the first new token
            self.offset = length - 1
        new = input_ids[:, self.offset :].tolist()
        self.offset = length
        for row, tokens in zip(self.rows, new, strict=True):
            if not row.done:
                self._advance(row, tokens)
        cancelled = any(c.is_set() for c in self.cancels)
        done = tuple(cancelled or row.done for row in self.rows)
        # The mask changes only when a row finishes: reuse the device tensor, so most
        # steps copy nothing from host to device.
        if self._done_mask is None or self._done_mask[0] != done:
            self._done_mask = (done, torch.tensor(done, dtype=torch.bool, device=input_ids.device))
        return self._done_mask[1]

    def _advance(self, row: _Row, tokens: list[int]) -> None:
        for token in tokens:
            row.generated += 1
            if token in self.eos_ids:
                self.finish(row, "stop")
                return
            text = row.detok.push(token)
            out = row.stops.push(text) if text else ""
            if row.stops.stopped:
                self.finish(row, "stop", out)
                return
            if out:
                self.emit(TextEvent(row.index, out))
            if row.generated >= row.budget:
                self.finish(row, "length")
                return

    def finish(self, row: _Row, reason: str, text: str = "") -> None:
        row.done = True
        if not row.stops.stopped:
            text += row.stops.push(row.detok.flush())
            text += row.stops.flush()
        if row.stops.stopped:
            reason = "stop"
        self.emit(FinishEvent(row.index, text, row.prompt_tokens, row.generated, reason, row.stops.matched))

    def finish_all(self) -> None:
        for row in self.rows:
            if not row.done:
                self.finish(row, "length")


def generate_rows(
    bundle: HFBundle,
    prompts: Sequence[Sequence[int]],
    budgets: Sequence[int],
    *,
    sampling: Sampling,
    stops: Sequence[str],
    emit: Callable[[Event], None],
    cancels: Sequence[threading.Event] = (),
    rows: Sequence[int] | None = None,
) -> None:
    """Run one ``generate`` call for ``prompts`` (left-padded into one batch).

    Emits, per row, :class:`TextEvent` pieces then one :class:`FinishEvent`. ``rows``
    gives the row numbers used in the events (default ``0..n-1``). Generation stops
    for a row on an EOS id, a stop string or its budget; for all rows when any of
    ``cancels`` is set. Exceptions from ``generate`` propagate.
    """
    if any(c.is_set() for c in cancels):
        return  # cancelled while queued (e.g. behind other jobs on the CUDA worker): no prefill
    torch = import_optional("torch")
    width = max(len(p) for p in prompts)
    pad = bundle.pad_id
    ids = [[pad] * (width - len(p)) + list(p) for p in prompts]
    mask = [[0] * (width - len(p)) + [1] * len(p) for p in prompts]
    numbers = list(rows) if rows is not None else list(range(len(prompts)))
    states = [
        _Row(number, len(prompt), budget, bundle.tokenizer, stops)
        for number, prompt, budget in zip(numbers, prompts, budgets, strict=True)
    ]
    observer = _Observer(states, bundle.eos_ids, None if bundle.is_seq2seq else width, emit, cancels)
    kwargs = dict(sampling.generate_kwargs)
    transformers = import_optional("transformers")
    criteria = transformers.StoppingCriteriaList([observer, *kwargs.pop("stopping_criteria", [])])
    if sampling.constraint is not None:
        n_vocab = int(bundle.model.config.get_text_config(decoder=True).vocab_size)
        grammar = GrammarProcessor(bundle.tokenizer, n_vocab, sampling.constraint, len(prompts))
        kwargs["logits_processor"] = transformers.LogitsProcessorList([*kwargs.get("logits_processor", []), grammar])
    config = sampling.generation_config(bundle, max(budgets), width)
    if sampling.seed is not None and config.do_sample:
        torch.manual_seed(sampling.seed)
    device = bundle.device
    groups = plan_groups([len(p) for p in prompts]) if _may_merge_prefill(bundle, config, kwargs) else None
    with torch.inference_mode(), _attention_backends(device):
        if groups is not None:  # mixed lengths: prefill length-sorted groups into one cache
            cache = merged_prefill(bundle.model, prompts, pad, device, groups)
            argument = cache_argument(bundle.model)
            if cache is not None and argument is not None:
                kwargs[argument] = cache
        bundle.model.generate(
            input_ids=torch.tensor(ids, dtype=torch.long, device=device),
            attention_mask=torch.tensor(mask, dtype=torch.long, device=device),
            generation_config=config,
            stopping_criteria=criteria,
            **kwargs,
        )
    if not any(c.is_set() for c in cancels):
        observer.finish_all()


def _may_merge_prefill(bundle: HFBundle, config: Any, kwargs: Mapping[str, Any]) -> bool:
    """Whether a grouped prefill into one merged cache (see _hf_prefill.py) fits this call.

    Not for seq2seq models, a cache chosen by the caller or by the generation config
    (static, offloaded, quantized...), or generation without a KV cache (``use_cache``
    off: ``generate`` would then re-read the whole sequence every step).
    """
    if bundle.is_seq2seq or {"cache", "past_key_values", "cache_implementation"} & set(kwargs):
        return False
    if getattr(config, "cache_implementation", None) is not None:
        return False
    for source in (kwargs.get("use_cache"), getattr(config, "use_cache", None)):
        if source is not None:  # the first that is set decides, as in generate
            return bool(source)
    return getattr(bundle.model.config, "use_cache", True) is not False


def stream_events(
    bundle: HFBundle,
    prompt: Sequence[int],
    budget: int,
    *,
    sampling: Sampling,
    stops: Sequence[str],
    cancel: threading.Event | None = None,
) -> Iterator[Event]:
    """Generate for one prompt in a worker thread, yielding events as they come.

    Closing the iterator early stops ``generate`` within a step; the worker is
    always joined; an exception in ``generate`` is raised here. ``cancel`` (e.g. the
    async bridge's) also stops it.
    """
    extra = (cancel,) if cancel is not None else ()

    def produce(emit: Callable[[Event], None], stop_event: threading.Event) -> None:
        generate_rows(
            bundle, [prompt], [budget], sampling=sampling, stops=stops, emit=emit, cancels=(stop_event, *extra)
        )

    executor = device_executor() if _wants_device_thread(bundle) else None
    return iterate_in_thread(produce, name="langchain-localllm-hf-generate", executor=executor)


def _wants_device_thread(bundle: HFBundle) -> bool:
    """CUDA generation goes to the process's CUDA worker thread (unless already on it)."""
    return getattr(bundle.device, "type", None) == "cuda" and not on_device_thread()


def _run_generate(bundle: HFBundle, fn: Callable[[threading.Event], None]) -> None:
    """Run ``fn(cancel)`` here, or on the CUDA worker thread for a CUDA model."""
    if _wants_device_thread(bundle):
        call_on_device_thread(fn)
    else:
        fn(threading.Event())


def run_batch(
    bundle: HFBundle,
    conversations: Sequence[Sequence[ChatDict] | BaseException],
    sampling: Sampling,
    stops: Sequence[str],
    chat_template: str | None,
) -> list[list[Event] | BaseException]:
    """Answer several conversations with one padded ``generate`` call.

    Returns, per conversation, its events or the exception that conversation raised
    (a template error, a context overflow...). An error inside ``generate`` is
    returned for every conversation that was in the call.
    """
    results: list[list[Event] | BaseException] = []
    prompts: list[list[int]] = []
    budgets: list[int] = []
    numbers: list[int] = []
    for number, conversation in enumerate(conversations):
        if isinstance(conversation, BaseException):
            results.append(conversation)
            continue
        try:
            prompt = render_prompt(bundle, conversation, chat_template)
            budget = row_budget(bundle, len(prompt), sampling.max_tokens)
        except Exception as e:  # noqa: BLE001 - reported for this input only
            results.append(e)
            continue
        results.append([])
        prompts.append(prompt)
        budgets.append(budget)
        numbers.append(number)
    if not prompts:
        return results

    def collect(event: Event) -> None:
        target = results[event.row]
        if isinstance(target, list):
            target.append(event)

    def generate(cancel: threading.Event) -> None:
        generate_rows(
            bundle, prompts, budgets, sampling=sampling, stops=stops, emit=collect, cancels=(cancel,), rows=numbers
        )

    try:
        _run_generate(bundle, generate)
    except Exception as e:  # noqa: BLE001 - every input of the failed call gets the error
        for number in numbers:
            results[number] = e
    return results


class BatchPlan:
    """A group of conversations that ``batch()`` answers with one padded ``generate``.

    ``batch()`` creates the plan, then invokes the model once per input as usual.
    The first invocation that :meth:`claim` s a slot runs the whole group
    (:meth:`events`); the others replay their slot's precomputed events. A slot is
    matched by its converted messages and call options, so an input that never
    reaches the model (e.g. an LLM-cache hit) cannot shift the others.
    """

    def __init__(
        self,
        owner: object,
        conversations: Sequence[Sequence[ChatDict] | BaseException],
        stop: Sequence[str] | None,
        kwargs: Mapping[str, Any],
    ) -> None:
        """Plan ``conversations`` for model instance ``owner`` with one stop list and call options."""
        self.owner_id = id(owner)
        self.conversations = list(conversations)
        self.stop = list(stop) if stop else None
        self.kwargs = dict(kwargs)
        self._claimed = [False] * len(self.conversations)
        self._results: list[list[Event] | BaseException] | None = None
        self._lock = threading.Lock()

    def claim(
        self, owner: object, conversation: Sequence[ChatDict], stop: Sequence[str] | None, kwargs: Mapping[str, Any]
    ) -> int | None:
        """Return the slot of the first unclaimed, matching conversation (or None)."""
        same_call = (list(stop) if stop else None) == self.stop and dict(kwargs) == self.kwargs
        if id(owner) != self.owner_id or not same_call:
            return None
        with self._lock:
            for slot, planned in enumerate(self.conversations):
                if not self._claimed[slot] and planned == list(conversation):
                    self._claimed[slot] = True
                    return slot
        return None

    def events(self, slot: int, compute: Callable[[], list[list[Event] | BaseException]]) -> list[Event]:
        """The events of ``slot``, computing the whole group on first use."""
        with self._lock:
            if self._results is None:
                try:
                    self._results = compute()
                except Exception as e:  # noqa: BLE001 - the load or setup failed for the whole group
                    self._results = [e] * len(self.conversations)
            result = self._results[slot]
        if isinstance(result, BaseException):
            raise result
        return result
