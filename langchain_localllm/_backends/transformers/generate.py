"""The transformers token loop: one (left-padded) ``model.generate`` call for one or more prompts.

A stopping criterion (:class:`Observer`) sees every new token: it detokenizes
incrementally (:class:`~langchain_localllm._backends.transformers.detokenize.IncrementalDetokenizer`),
cuts stop strings (:class:`~langchain_localllm._core.stop.StopBuffer`), ends rows on any EOS
id, their token budget, a stop string, or cancellation, and emits
:class:`~langchain_localllm._core.output.Piece` objects per row.

The detokenizing is done in the stopping criterion rather than a streamer because
transformers 5 calls the stopping criteria *before* handing the step's tokens to a
streamer: checking stop strings in a streamer would stop one token late.
"""

from __future__ import annotations

import contextlib
import copy
import importlib
import threading
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any

from langchain_localllm._backends.transformers.detokenize import IncrementalDetokenizer
from langchain_localllm._backends.transformers.device import cuda_graphs_usable
from langchain_localllm._backends.transformers.grammar import GrammarProcessor
from langchain_localllm._backends.transformers.load import HFBundle
from langchain_localllm._backends.transformers.prefill import cache_argument, merged_prefill, plan_groups
from langchain_localllm._backends.transformers.settings import Sampling
from langchain_localllm._core.imports import import_optional
from langchain_localllm._core.output import FinishInfo, FinishReason, Piece
from langchain_localllm._core.stop import StopBuffer

__all__ = ["Observer", "Row", "generate_rows", "generation_config", "use_static_cache"]


def generation_config(
    sampling: Sampling, bundle: HFBundle, max_new_tokens: int, prompt_width: int = 0
) -> tuple[Any, dict[str, Any]]:
    """A copy of the model's generation config with ``sampling`` applied, and the other ``generate`` arguments.

    ``generate_kwargs`` that are generation-config attributes (``no_repeat_ngram_size``,
    ``eos_token_id``, ``use_cache``...) are set on the copy, after the sampling fields, as
    ``generate`` itself would apply them (``GenerationConfig.update``): passing them next to
    a ``generation_config`` is deprecated in transformers and logs a warning. The rest
    (``logits_processor``, model inputs...) are returned, to pass to ``generate``.
    """
    config = copy.deepcopy(bundle.model.generation_config)
    if use_static_cache(sampling, bundle):
        # transformers compiles the decoding step for a static cache on CUDA. The cache
        # length is rounded up to a power of two (and transformers keeps the largest
        # length seen), so a new prompt length does not trigger a recompile.
        config.cache_implementation = "static"
        config.max_cache_len = _bucket(prompt_width + max_new_tokens, bundle.context_window)
        # CUDA graphs ("reduce-overhead") only on the process's CUDA worker thread,
        # which owns torch's CUDA-graph trees (see device.py); elsewhere the decode
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
    if sampling.temperature > 0:
        config.do_sample = True
        config.temperature = sampling.temperature
        if sampling.top_p is not None:
            config.top_p = sampling.top_p
        if sampling.top_k is not None:
            config.top_k = sampling.top_k
    else:
        config.do_sample = False
        config.temperature = None
        config.top_p = None
        config.top_k = None
        config.min_p = None
    if sampling.repetition_penalty is not None:
        config.repetition_penalty = sampling.repetition_penalty
    others: dict[str, Any] = config.update(**sampling.generate_kwargs) if sampling.generate_kwargs else {}
    return config, others


def use_static_cache(sampling: Sampling, bundle: HFBundle) -> bool:
    """Whether this call decodes with a static KV cache (see the ``static_cache`` field)."""
    if sampling.static_cache is False or bundle.is_seq2seq:
        return False
    if {"cache_implementation", "cache", "past_key_values"} & set(sampling.generate_kwargs):
        return False  # the caller chose the cache
    model = bundle.model
    supported = bool(getattr(model, "_can_compile_fullgraph", False)) and getattr(model, "hf_quantizer", None) is None
    if sampling.static_cache is True:
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


class Row:
    """One generation's decoding state: its detokenizer, stop buffer, budget and count."""

    __slots__ = ("budget", "detok", "done", "generated", "index", "prompt_tokens", "stops")

    def __init__(self, index: int, prompt_tokens: int, budget: int, tokenizer: Any, stops: Sequence[str]) -> None:
        """Row ``index`` after a prompt of ``prompt_tokens``, allowed ``budget`` new tokens."""
        self.index = index
        self.prompt_tokens = prompt_tokens
        self.budget = budget
        self.detok = IncrementalDetokenizer(tokenizer)
        self.stops = StopBuffer(stops)
        self.generated = 0
        self.done = False


class Observer:
    """Stopping criterion that reads each step's new tokens and turns them into events.

    A duck-typed ``transformers.StoppingCriteria`` (so this module needs no
    transformers import): ``generate`` calls it after every step with the sequences so
    far; it returns, per row, whether that row is finished.
    """

    def __init__(
        self,
        rows: list[Row],
        eos_ids: frozenset[int],
        start: int | None,
        emit: Callable[[int, Piece], None],
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
                self.advance(row, tokens)
        cancelled = any(c.is_set() for c in self.cancels)
        done = tuple(cancelled or row.done for row in self.rows)
        # The mask changes only when a row finishes: reuse the device tensor, so most
        # steps copy nothing from host to device.
        if self._done_mask is None or self._done_mask[0] != done:
            self._done_mask = (done, torch.tensor(done, dtype=torch.bool, device=input_ids.device))
        return self._done_mask[1]

    def advance(self, row: Row, tokens: list[int]) -> None:
        """Push a row's new tokens: emit its text, finish it on EOS, a stop string or its budget."""
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
                self.emit(row.index, Piece(out))
            if row.generated >= row.budget:
                self.finish(row, "length")
                return

    def finish(self, row: Row, reason: FinishReason, text: str = "") -> None:
        row.done = True
        if not row.stops.stopped:
            text += row.stops.push(row.detok.flush())
            text += row.stops.flush()
        if row.stops.stopped:
            reason = "stop"
        finish = FinishInfo(reason, row.prompt_tokens, row.generated, row.stops.matched)
        self.emit(row.index, Piece(text, finish=finish))

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
    emit: Callable[[int, Piece], None],
    cancels: Sequence[threading.Event] = (),
    rows: Sequence[int] | None = None,
) -> None:
    """Run one ``generate`` call for ``prompts`` (left-padded into one batch).

    Emits ``(row, piece)``: per row, text pieces then one piece with ``finish``. ``rows``
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
        Row(number, len(prompt), budget, bundle.tokenizer, stops)
        for number, prompt, budget in zip(numbers, prompts, budgets, strict=True)
    ]
    observer = Observer(states, bundle.eos_ids, None if bundle.is_seq2seq else width, emit, cancels)
    config, kwargs = generation_config(sampling, bundle, max(budgets), width)
    transformers = import_optional("transformers")
    criteria = transformers.StoppingCriteriaList([observer, *kwargs.pop("stopping_criteria", [])])
    if sampling.constraint is not None:
        n_vocab = int(bundle.model.config.get_text_config(decoder=True).vocab_size)
        grammar = GrammarProcessor(bundle.tokenizer, n_vocab, sampling.constraint, len(prompts))
        kwargs["logits_processor"] = transformers.LogitsProcessorList([*kwargs.get("logits_processor", []), grammar])
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
    """Whether a grouped prefill into one merged cache (see prefill.py) fits this call.

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
