"""One generation on a llama.cpp context, advanced one locked step at a time.

A loaded model has one native context, whose KV cache holds one token sequence
(:class:`KVState`). A generation (:class:`Generation`) holds the model's lock only for
one step — the prompt prefill plus the first sample, then one decode plus one sample
per token — and never while its consumer holds a piece. So a stream that is started
and then left unconsumed (or kept alive by a traceback) cannot block any other call:
the next call takes the context over, and the paused generation's KV cells are copied
out (``llama_state_seq_get_data``) so that, if it is resumed, it is restored bit for
bit and answers exactly as if it had never been interrupted.

**Exact prefix reuse.** Consecutive calls reuse the longest cached prefix of the
previous prompt (multi-turn chats re-send the whole conversation). Reusing *any*
prefix changes how the rest is computed: a fresh prefill of ``n`` tokens evaluates
them in batches, while a reused cache was filled by other batches (or token by token
while generating), and matrix kernels give results that differ in the last bits with
the batch shape — enough to flip close greedy choices. So every prefill here is split
at fixed positions (multiples of ``LlamaModel.reuse_align``, counted from position 0:
64 tokens on CPU, where that costs nothing measurable, a micro-batch when offloaded), and by
default (``prefix_cache="exact"``) only the cells computed by such a full, aligned
chunk of a prefill are reused. The re-evaluated part is then batched exactly as on a
fresh context, and the same input gives the same greedy output whatever ran before.
``prefix_cache="longest"`` reuses every matching cell (fastest; greedy answers can then
differ from a fresh run in close cases).
"""

from __future__ import annotations

import ctypes
import random
import weakref
from dataclasses import dataclass
from typing import Any, Literal

from langchain_localllm._backends.llamacpp.kv import KVState
from langchain_localllm._backends.llamacpp.load import LlamaModel, llama_cpp_module

__all__ = ["Generation", "PrefixCache", "make_sampler"]

PrefixCache = Literal["exact", "longest"]


@dataclass
class _Snapshot:
    data: Any
    size: int
    tokens: list[int]
    exact: int


class Generation:
    """One generation: its prompt, its sampler chain, and (while paused and displaced) its saved cells."""

    def __init__(
        self,
        model: LlamaModel,
        prompt: list[int],
        *,
        sampler: Any,
        prefix_cache: PrefixCache = "exact",
    ) -> None:
        """A generation of ``prompt`` sampled by ``sampler`` (a llama-cpp-python ``LlamaSampler``)."""
        self._model = model
        self._prompt = prompt
        self._sampler = sampler
        self._prefix_cache = prefix_cache
        self._pending: int | None = None
        self._snapshot: _Snapshot | None = None
        self.finished = False
        self.reused = 0
        """Prompt tokens taken from the cache instead of evaluated (for tests and metrics)."""

    # -- steps (each called with the model's lock held) ----------------------------------

    def start(self) -> int:
        """Prefill the prompt (reusing the cached prefix) and sample the first token."""
        self._own()
        kv = self._model.kv
        self.reused = self._reuse_point(kv)
        self._evaluate(self._prompt, self.reused)
        return self._sample()

    def advance(self) -> int:
        """Evaluate the last sampled token and sample the next."""
        self._own()
        token = self._pending
        assert token is not None  # noqa: S101 - start() ran first
        kv = self._model.kv
        self._decode([token], len(kv.tokens))
        kv.tokens.append(token)
        return self._sample()

    def finish(self) -> None:
        """Mark the generation done and release its sampler (no lock needed)."""
        self.finished = True
        self._snapshot = None
        sampler, self._sampler = self._sampler, None
        if sampler is not None:
            sampler.close()

    # -- ownership of the context ----------------------------------------------------------

    def _own(self) -> None:
        kv = self._model.kv
        previous = kv.owner() if kv.owner is not None else None
        if previous is self:
            return
        if previous is not None and not previous.finished:
            previous._save()  # noqa: SLF001 - the same class, on behalf of a paused generation
        if self._snapshot is not None:
            self._restore(self._snapshot)
            self._snapshot = None
        kv.owner = weakref.ref(self)

    def _save(self) -> None:
        """Copy this (paused) generation's cells out of the context, bit for bit."""
        llama_cpp = llama_cpp_module()
        ctx = self._model.llama.ctx
        size = int(llama_cpp.llama_state_seq_get_size(ctx, 0))
        data = (ctypes.c_uint8 * size)()
        written = int(llama_cpp.llama_state_seq_get_data(ctx, data, size, 0))
        kv = self._model.kv
        self._snapshot = _Snapshot(data, written, list(kv.tokens), kv.exact)

    def _restore(self, snapshot: _Snapshot) -> None:
        llama_cpp = llama_cpp_module()
        kv = self._model.kv
        kv.forget(self._model.llama)
        read = int(llama_cpp.llama_state_seq_set_data(self._model.llama.ctx, snapshot.data, snapshot.size, 0))
        if read != snapshot.size:
            msg = f"llama.cpp restored {read} of {snapshot.size} bytes of a paused stream's cache"
            raise RuntimeError(msg)
        kv.tokens = snapshot.tokens
        kv.exact = snapshot.exact

    # -- evaluation ------------------------------------------------------------------------

    def _reuse_point(self, kv: KVState) -> int:
        """How many leading prompt tokens to keep from the cache (at least one token is evaluated)."""
        prompt = self._prompt
        common = 0
        for cached, wanted in zip(kv.tokens, prompt, strict=False):
            if cached != wanted:
                break
            common += 1
        common = min(common, len(prompt) - 1)
        if self._prefix_cache == "exact":
            align = self._align()
            common = min(common, kv.exact)
            common -= common % align
        return common

    def _align(self) -> int:
        return self._model.reuse_align

    def _evaluate(self, tokens: list[int], start: int) -> None:
        """Make the cache hold ``tokens``, keeping ``[0, start)`` and prefilling the rest in aligned chunks."""
        model = self._model
        kv = model.kv
        if start < len(kv.tokens) and not model.llama._ctx.kv_cache_seq_rm(0, start, -1):  # noqa: SLF001
            kv.forget(model.llama)  # a recurrent model cannot drop a suffix: start over
            start = 0
        del kv.tokens[start:]
        kv.exact = min(kv.exact, start)
        align = self._align()
        position = start
        while position < len(tokens):
            end = min(len(tokens), (position // align + 1) * align)
            self._decode(tokens[position:end], position)
            kv.tokens.extend(tokens[position:end])
            if kv.exact == position and end - position == align:
                kv.exact = end
            position = end

    def _decode(self, tokens: list[int], position: int) -> None:
        llama = self._model.llama
        batch = llama._batch  # noqa: SLF001 - llama-cpp-python's batch of n_batch tokens
        batch.set_batch(batch=tokens, n_past=position, logits_all=False)
        try:
            llama._ctx.decode(batch)  # noqa: SLF001
        except BaseException:
            self._model.kv.forget(self._model.llama)
            raise

    def _sample(self) -> int:
        token = int(self._sampler.sample(self._model.llama._ctx, -1))  # noqa: SLF001
        self._pending = token
        return token

    def logits(self) -> Any:
        """The last evaluated position's logits (a numpy view, valid until the next step)."""
        import numpy as np  # noqa: PLC0415 - a llama_cpp dependency, needed only here

        llama = self._model.llama
        pointer = llama._ctx.get_logits_ith(-1)  # noqa: SLF001
        return np.ctypeslib.as_array(pointer, shape=(llama.n_vocab(),))


def make_sampler(model: LlamaModel, sampling: Any, grammar: Any) -> Any:
    """A llama.cpp sampler chain for one generation (the order llama-cpp-python's ``generate`` uses)."""
    llama_cpp = llama_cpp_module()
    llama = model.llama
    chain = llama_cpp._internals.LlamaSampler()  # noqa: SLF001
    chain.add_penalties(
        n_vocab=llama.n_vocab(),
        penalty_last_n=llama.last_n_tokens_size,
        penalty_repeat=sampling.repeat_penalty,
        penalty_freq=sampling.frequency_penalty,
        penalty_present=sampling.presence_penalty,
    )
    if grammar is not None:
        chain.add_grammar(llama._model, grammar)  # noqa: SLF001
    if sampling.temperature == 0.0:
        chain.add_greedy()
    else:
        seed = sampling.seed if sampling.seed is not None else random.randrange(2**31)  # noqa: S311
        chain.add_top_k(sampling.top_k)
        chain.add_typical(1.0, 1)
        chain.add_top_p(sampling.top_p, 1)
        chain.add_min_p(sampling.min_p, 1)
        chain.add_temp(sampling.temperature)
        chain.add_dist(seed)
    return chain
