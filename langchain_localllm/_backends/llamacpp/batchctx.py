"""The multi-sequence llama.cpp context the scheduler drives, and the pure bookkeeping around it.

A :class:`BatchContext` is a second native context on a loaded model, made with
``n_seq_max`` = the slot count and ``n_ctx * slots`` KV cells: each slot is a KV sequence
id with a stream of its own ``n_ctx`` cells (``kv_unified=False``), so every call keeps the
``n_ctx`` window it has on a one-sequence context, all slots full at once always fit, and
one sequence's attention never spans another slot's cells. (A unified cache was measured
and refused: on the bench model a lone request next to 15 idle slots each caching a
200-token prefix decoded at 10.7 ms/token against 4.4 ms with nothing cached, because every
step's attention covers the span of all cached cells; with one stream per slot it stayed
at 3.6-4.9 ms, and 16 sequences per step cost the same either way, 34-36 ms. Prefixes are
reused per slot, never shared across slots, so nothing is lost.) One ``llama_batch``
carries the decode token of every running sequence plus prefill chunks of new ones;
``llama_decode`` runs them in one call, and each sequence samples from its own output row
with its own sampler chain.

The parts that need no native code are plain functions, unit-tested on their own:
:func:`reuse_point` (how much of a slot's cached prefix a prompt keeps),
:func:`choose_slot` (which free slot a request takes) and :func:`plan_batch` (what one
step puts into the batch).
"""

from __future__ import annotations

import ctypes
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from langchain_localllm._backends.llamacpp.load import llama_cpp_module
from langchain_localllm.errors import ModelLoadError

__all__ = ["BatchContext", "Decode", "Prefill", "Segment", "SlotCache", "choose_slot", "plan_batch", "reuse_point"]

PrefixCache = Literal["exact", "longest"]


# -- pure bookkeeping ------------------------------------------------------------------------


@dataclass
class SlotCache:
    """What one slot's KV sequence holds: the tokens at positions ``0..len-1``."""

    seq: int
    """The KV sequence id of the slot."""
    tokens: list[int] = field(default_factory=list)
    exact: int = 0
    """How many leading positions were computed by a prefill (not by decoding generated tokens)."""
    last_used: int = 0
    """When the slot last took a request (a step counter): ties go to the least recently used."""


def reuse_point(cached: Sequence[int], exact: int, prompt: Sequence[int], align: int, mode: PrefixCache) -> int:
    """How many leading ``prompt`` tokens to keep from a cache holding ``cached`` (one is always evaluated).

    ``"exact"`` keeps only prefilled positions, rounded down to a multiple of ``align``
    (as the one-sequence path does); ``"longest"`` keeps every matching token.
    """
    common = 0
    for have, want in zip(cached, prompt, strict=False):
        if have != want:
            break
        common += 1
    common = min(common, len(prompt) - 1)
    if mode == "exact":
        common = min(common, exact)
        common -= common % max(1, align)
    return max(common, 0)


def choose_slot(free: Sequence[SlotCache], prompt: Sequence[int], align: int, mode: PrefixCache) -> tuple[int, int]:
    """The index in ``free`` of the slot ``prompt`` should take, and how many tokens it reuses there.

    The slot with the longest reusable prefix wins; among equals, the least recently used
    (so a cached conversation stays for its next turn as long as possible).
    """
    best, best_reuse = 0, -1
    for i, slot in enumerate(free):
        reuse = reuse_point(slot.tokens, slot.exact, prompt, align, mode)
        if reuse > best_reuse or (reuse == best_reuse and slot.last_used < free[best].last_used):
            best, best_reuse = i, reuse
    return best, max(best_reuse, 0)


@dataclass(frozen=True)
class Decode:
    """A running sequence's next input: its last sampled token at position ``pos``."""

    seq: int
    token: int
    pos: int


@dataclass(frozen=True)
class Prefill:
    """A sequence still reading its prompt: ``tokens`` left to evaluate, the first at ``pos``."""

    seq: int
    tokens: Sequence[int]
    pos: int


@dataclass(frozen=True)
class Segment:
    """Consecutive batch entries of one sequence; ``output`` marks the last one for sampling."""

    seq: int
    tokens: Sequence[int]
    pos: int
    output: bool


def plan_batch(decodes: Sequence[Decode], prefills: Sequence[Prefill], budget: int, prefill_cap: int) -> list[Segment]:
    """What one step evaluates: every decode token, then prefill chunks in order, within ``budget`` tokens.

    Decodes come first (a running sequence never waits for a prompt); prefills share what
    is left, at most ``prefill_cap`` tokens in all, the first in line first. A prefill chunk
    that reaches the end of its prompt is marked for output (its first token is sampled).
    """
    segments = [Segment(d.seq, (d.token,), d.pos, output=True) for d in decodes]
    room = min(budget - len(segments), prefill_cap)
    for p in prefills:
        if room <= 0:
            break
        take = min(room, len(p.tokens))
        if take <= 0:
            continue
        segments.append(Segment(p.seq, p.tokens[:take], p.pos, output=take == len(p.tokens)))
        room -= take
    return segments


# -- the native context --------------------------------------------------------------------


class BatchContext:
    """A llama.cpp context with ``slots`` sequences over one loaded ``Llama``'s weights."""

    def __init__(self, llama: Any, *, n_ctx: int, slots: int, n_batch: int, n_ubatch: int) -> None:
        """Make the context (``n_ctx`` KV cells per slot, one stream each) and its batch."""
        llama_cpp = llama_cpp_module()
        self._llama_cpp = llama_cpp
        params = llama_cpp.llama_context_params.from_buffer_copy(llama.context_params)
        params.n_ctx = n_ctx * slots
        params.n_seq_max = slots
        params.kv_unified = False  # one stream of n_ctx cells per slot (see the module docstring)
        params.n_batch = n_batch
        params.n_ubatch = min(n_batch, n_ubatch)
        params.embeddings = False
        ctx = llama_cpp.llama_init_from_model(llama._model.model, params)  # noqa: SLF001
        if not ctx:
            msg = (
                f"llama.cpp could not make a context of {slots} sequences x {n_ctx} tokens for max_parallel; "
                "lower max_parallel or n_ctx"
            )
            raise ModelLoadError(msg)
        self.ctx: Any = ctx
        self.memory: Any = llama_cpp.llama_get_memory(ctx)
        self.slots = slots
        self.n_ctx = n_ctx
        """Tokens one sequence may hold (the window every call is checked against)."""
        self.capacity = int(llama_cpp.llama_n_ctx(ctx))
        """KV cells in all (``n_ctx * slots``, rounded up by llama.cpp)."""
        self.n_batch = min(int(llama_cpp.llama_n_batch(ctx)), int(llama_cpp.llama_n_ubatch(ctx)))
        """Tokens one step evaluates at most (one micro-batch, so a failed decode leaves no partial state)."""
        self.n_vocab = int(llama.n_vocab())
        self._threads = (int(params.n_threads), int(params.n_threads_batch))
        self._generating = False
        self._batch = llama_cpp.llama_batch_init(self.n_batch, 0, 1)
        self._outputs: list[int] = []

    def close(self) -> None:
        """Free the batch and the context (the scheduler has stopped)."""
        llama_cpp = self._llama_cpp
        if self.ctx is not None:
            llama_cpp.llama_batch_free(self._batch)
            llama_cpp.llama_free(self.ctx)
            self.ctx = None
            self.memory = None

    # -- KV sequences ------------------------------------------------------------------------

    def keep(self, seq: int, n: int) -> bool:
        """Drop the cells of ``seq`` from position ``n`` on; False if the model cannot drop a suffix."""
        return bool(self._llama_cpp.llama_memory_seq_rm(self.memory, seq, n, -1))

    def drop(self, seq: int) -> None:
        """Drop every cell of ``seq`` (never fails)."""
        self._llama_cpp.llama_memory_seq_rm(self.memory, seq, -1, -1)

    def used_cells(self) -> int:
        """Cells held by all sequences together (sum of each sequence's positions, for tests and metrics)."""
        total = 0
        for seq in range(self.slots):
            top = int(self._llama_cpp.llama_memory_seq_pos_max(self.memory, seq))
            total += top + 1 if top >= 0 else 0
        return total

    # -- one forward ---------------------------------------------------------------------------

    def decode(self, segments: Sequence[Segment]) -> int:
        """Evaluate ``segments`` in one ``llama_decode``; its status (0: done; 1: no KV space).

        Afterwards :meth:`output_index` gives each output segment's row for sampling.
        """
        batch = self._batch
        token, pos, n_seq, seq_id, logits = batch.token, batch.pos, batch.n_seq_id, batch.seq_id, batch.logits
        i = 0
        outputs: list[int] = []
        for segment in segments:
            for k, t in enumerate(segment.tokens):
                token[i] = t
                pos[i] = segment.pos + k
                n_seq[i] = 1
                seq_id[i][0] = segment.seq
                logits[i] = 0
                i += 1
            if segment.output:
                logits[i - 1] = 1
                outputs.append(i - 1)
            else:
                outputs.append(-1)
        batch.n_tokens = i
        self._outputs = outputs
        self._use_threads(generating=i == len(segments))
        return int(self._llama_cpp.llama_decode(self.ctx, batch))

    def _use_threads(self, *, generating: bool) -> None:
        """``n_threads`` for a step of decode tokens only (generation), ``n_threads_batch`` with a prefill.

        llama.cpp itself picks by the token count (one token: ``n_threads``), which would run
        every multi-sequence decode step on the prompt-processing threads.
        """
        if generating != self._generating:
            n_threads, n_threads_batch = self._threads
            self._llama_cpp.llama_set_n_threads(self.ctx, n_threads, n_threads if generating else n_threads_batch)
            self._generating = generating

    def output_index(self, n: int) -> int:
        """The batch row of the ``n``-th segment of the last decode (-1: it had no output)."""
        return self._outputs[n]

    def sample(self, sampler: Any, row: int) -> int:
        """Sample ``row`` with ``sampler`` (a ``LlamaSampler`` chain; it accepts the token)."""
        return int(self._llama_cpp.llama_sampler_sample(sampler.sampler, self.ctx, row))

    def logits(self, row: int) -> Any:
        """The logits of ``row`` of the last decode (a numpy view, valid until the next decode)."""
        import numpy as np  # noqa: PLC0415 - a llama_cpp dependency, needed only here

        pointer = self._llama_cpp.llama_get_logits_ith(self.ctx, row)
        return np.ctypeslib.as_array(ctypes.cast(pointer, ctypes.POINTER(ctypes.c_float)), shape=(self.n_vocab,))
