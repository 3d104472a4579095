"""Embeddings with llama.cpp: a second context over the loaded weights, many sequences per decode.

A ``Llama`` loaded for generation has a context without embeddings. Embedding does not
load the file again: :func:`embedder` makes one more ``llama_context`` over the same
``llama_model`` (the weights are shared; the context has its own KV cache and compute
buffers), with ``embeddings=True`` and the pooling type resolved by :func:`resolve_pooling`,
and keeps it on the :class:`~langchain_localllm._backends.llamacpp.load.LlamaModel` until the
model is unloaded.

:func:`embed_batches` packs the texts into batches of up to ``n_batch`` tokens and
``batch_size`` sequences, each sequence with its own seq id, runs one ``llama_decode`` per
batch and reads each sequence's pooled vector with ``llama_get_embeddings_seq``. The context's
memory is cleared before each batch. llama.cpp pools per decode, so a text longer than one
decode (up to the window) is decoded alone in chunks and the chunks' pools are combined
(:meth:`Embedder.run_long`; exact for causal models, whose encoder-only cousins get decodes
that hold the whole window instead).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import Any

from langchain_localllm._backends.llamacpp.load import LlamaModel, llama_cpp_module
from langchain_localllm._core.backend import EmbedRequest
from langchain_localllm.errors import ContextWindowExceededError, GenerationError, InvalidParameterError

__all__ = ["Embedder", "embed_batches", "embedder", "file_pooling", "resolve_pooling"]

logger = logging.getLogger("langchain_localllm")

POOLING_TYPES = {"none": 0, "mean": 1, "cls": 2, "last": 3, "rank": 4}
"""``enum llama_pooling_type`` (llama.h) by name."""
DEFAULT_POOLING = "mean"
"""Pooling for a file that names none (a chat model): the mean over the text's tokens."""


def file_pooling(model: LlamaModel) -> str | None:
    """The pooling type the GGUF names (``<arch>.pooling_type``), or None when it names none."""
    metadata: dict[str, str] = getattr(model.llama, "metadata", None) or {}
    value = metadata.get(f"{model.info.architecture}.pooling_type")
    if value is None:
        return None
    try:
        code = int(value)
    except ValueError:
        return None
    return next((name for name, c in POOLING_TYPES.items() if c == code), None)


def resolve_pooling(model: LlamaModel, pooling: str) -> str:
    """``pooling``, or for ``"auto"`` the file's own (``mean`` when it names none).

    Raises:
        InvalidParameterError: ``"auto"`` on a reranking model (``rank`` pooling).
    """
    if pooling != "auto":
        return pooling
    found = file_pooling(model)
    if found == "rank":
        msg = (
            f"{model.info.path} is a reranking model (pooling_type rank), which scores pairs instead of "
            "embedding texts; pass pooling='mean', 'cls' or 'last' to embed with it anyway"
        )
        raise InvalidParameterError(msg)
    if found in {"mean", "cls", "last"}:
        return found
    if not model.embed_warned:
        model.embed_warned = True
        logger.info(
            "%s names no pooling type (%s.pooling_type %s): embedding with %s pooling. Set pooling= to choose.",
            model.info.path,
            model.info.architecture,
            "none" if found == "none" else "absent",
            DEFAULT_POOLING,
        )
    return DEFAULT_POOLING


@dataclass
class Embedder:
    """An embedding context over a loaded model's weights, and its batch."""

    context: Any
    """``llama_cpp._internals.LlamaContext`` (freed with the model, before it)."""
    batch: Any
    """``llama_cpp._internals.LlamaBatch`` of ``n_ubatch`` tokens."""
    pooling: str
    n_ctx: int
    """KV cells: the longest text (the window)."""
    n_ubatch: int
    """Tokens one decode holds; a longer text is decoded alone, in chunks (causal models only)."""
    n_seq: int
    """Sequences one decode can hold."""
    n_embd: int

    def close(self) -> None:
        """Free the batch and the context (the model stays)."""
        self.batch.close()
        self.context.close()

    def _decode(self, sequences: Sequence[Sequence[int]], start: int = 0) -> None:
        llama_cpp = llama_cpp_module()
        batch = self.batch.batch
        j = 0
        for seq, ids in enumerate(sequences):
            for pos, token in enumerate(ids, start):
                batch.token[j] = token
                batch.pos[j] = pos
                batch.n_seq_id[j] = 1
                batch.seq_id[j][0] = seq
                batch.logits[j] = True  # every token is an output of a pooled embedding
                j += 1
        batch.n_tokens = j
        status = llama_cpp.llama_decode(self.context.ctx, batch)
        if status != 0:
            msg = f"llama_decode returned {status} for {len(sequences)} sequences of {j} tokens"
            raise GenerationError(msg)

    def _pooled(self, seq: int) -> Any:
        import numpy as np  # noqa: PLC0415 - a llama_cpp dependency

        ptr = llama_cpp_module().llama_get_embeddings_seq(self.context.ctx, seq)
        if not ptr:
            msg = f"llama.cpp returned no pooled embedding for sequence {seq} (pooling {self.pooling})"
            raise GenerationError(msg)
        return np.ctypeslib.as_array(ptr, shape=(self.n_embd,)).astype(np.float32)

    def _clear(self) -> None:
        llama_cpp = llama_cpp_module()
        memory = llama_cpp.llama_get_memory(self.context.ctx)
        if memory:
            llama_cpp.llama_memory_clear(memory, True)  # noqa: FBT003 - C argument

    def run(self, sequences: Sequence[Sequence[int]]) -> Any:
        """The pooled vectors (rows of a float32 array) of ``sequences``, in one ``llama_decode``."""
        import numpy as np  # noqa: PLC0415 - a llama_cpp dependency

        self._clear()
        self._decode(sequences)
        return np.stack([self._pooled(seq) for seq in range(len(sequences))])

    def run_long(self, tokens: Sequence[int]) -> Any:
        """The pooled vector of one text longer than ``n_ubatch``: decoded in chunks, the chunks' pools combined.

        A causal model's hidden states do not depend on later tokens, and the KV cache keeps the
        earlier chunks, so each chunk's states are exact; llama.cpp pools each chunk on its own, so
        ``mean`` is the chunk means weighted by length, ``last`` the last chunk's, ``cls`` the first's.
        """
        import numpy as np  # noqa: PLC0415 - a llama_cpp dependency

        self._clear()
        total = np.zeros(self.n_embd, dtype=np.float64)
        first = None
        for start in range(0, len(tokens), self.n_ubatch):
            chunk = tokens[start : start + self.n_ubatch]
            self._decode([chunk], start)
            pooled = self._pooled(0)
            first = pooled if first is None else first
            total += pooled.astype(np.float64) * len(chunk)
        if self.pooling == "last":
            return pooled
        if self.pooling == "cls":
            return first
        return (total / len(tokens)).astype(np.float32)


_SHARED_CONTEXT_PARAMS = (
    "n_threads",
    "n_threads_batch",
    "rope_scaling_type",
    "rope_freq_base",
    "rope_freq_scale",
    "yarn_ext_factor",
    "yarn_attn_factor",
    "yarn_beta_fast",
    "yarn_beta_slow",
    "yarn_orig_ctx",
    "type_k",
    "type_v",
    "flash_attn_type",
    "offload_kqv",
    "op_offload",
    "swa_full",
)
"""``llama_context_params`` the embedding context takes from the model's chat context (the load
settings: threads, RoPE, KV types, flash attention, offload); sizes and outputs are its own."""


def _round_up(n: int, multiple: int) -> int:
    return -(-n // multiple) * multiple


def embedder(model: LlamaModel, pooling: str, n_seq: int, n_batch: int) -> Embedder:
    """The model's embedding context for ``pooling`` and up to ``n_seq`` sequences (made once; model held).

    Its KV cache holds the window (the longest text); one decode holds ``n_batch`` tokens. The
    compute buffers scale with the latter (llama.cpp computes every output's logits too: for a
    49k-token vocabulary, 0.8 GiB at 4096 tokens a decode, 0.1 GiB at 512). An encoder-only model
    (no KV cache, bidirectional attention) needs a whole text in one decode: its decode holds the window.
    """
    llama_cpp = llama_cpp_module()
    internals: Any = __import__("llama_cpp._internals", fromlist=["LlamaContext"])
    n_seq = max(1, min(n_seq, int(llama_cpp.llama_max_parallel_sequences())))
    for (made_pooling, made_seq, made_batch), found in model.embedders.items():
        # One embedding context per model. A context for more sequences serves fewer (two
        # instances with different batch_size on one model must not rebuild it every call).
        if (made_pooling, made_batch) == (pooling, n_batch) and made_seq >= n_seq and isinstance(found, Embedder):
            return found
    for old in model.embedders.values():  # another shape replaces it
        old.close()
    model.embedders.clear()
    key = (pooling, n_seq, n_batch)
    # Multiples of n_seq: llama.cpp reserves its graph with n_ubatch split evenly over the
    # sequences, and aborts (GGML_ASSERT in ggml_can_mul_mat) when they do not divide it.
    n_ctx = _round_up(max(model.n_ctx, n_batch), n_seq)
    n_ubatch = _round_up(min(n_batch, model.n_ctx), n_seq)
    context = _context(model, internals, pooling=pooling, n_ctx=n_ctx, n_ubatch=n_ubatch, n_seq=n_seq)
    if not llama_cpp.llama_get_memory(context.ctx) and n_ubatch < n_ctx:  # encoder-only: no chunks
        context.close()
        n_ubatch = n_ctx
        context = _context(model, internals, pooling=pooling, n_ctx=n_ctx, n_ubatch=n_ubatch, n_seq=n_seq)
    batch = internals.LlamaBatch(n_tokens=n_ubatch, embd=0, n_seq_max=1, verbose=False)
    n_embd = int(llama_cpp.llama_model_n_embd(model.llama._model.model))  # noqa: SLF001
    made = Embedder(context, batch, pooling, n_ctx=n_ctx, n_ubatch=n_ubatch, n_seq=n_seq, n_embd=n_embd)
    model.embedders[key] = made
    logger.debug(
        "made an embedding context for %s: %s pooling, %d cells, %d tokens and %d sequences a decode",
        model.info.path,
        pooling,
        n_ctx,
        n_ubatch,
        n_seq,
    )
    return made


def _context(model: LlamaModel, internals: Any, *, pooling: str, n_ctx: int, n_ubatch: int, n_seq: int) -> Any:
    llama_cpp = llama_cpp_module()
    params = llama_cpp.llama_context_default_params()
    chat = model.llama.context_params
    for name in _SHARED_CONTEXT_PARAMS:  # how the chat context computes, not what it outputs
        if hasattr(params, name) and hasattr(chat, name):
            setattr(params, name, getattr(chat, name))
    params.n_ctx = n_ctx
    params.n_batch = n_ubatch
    params.n_ubatch = n_ubatch
    params.n_seq_max = n_seq
    params.embeddings = True
    params.pooling_type = POOLING_TYPES[pooling]
    if hasattr(params, "kv_unified"):
        params.kv_unified = True  # the sequences share the n_ctx cells
    try:
        return internals.LlamaContext(model=model.llama._model, params=params, verbose=False)  # noqa: SLF001
    except ValueError as e:
        msg = (
            f"llama.cpp could not make an embedding context for {model.info.path} ({n_ctx} tokens, "
            f"{n_ubatch} a decode): {e}; lower n_ctx or n_batch"
        )
        raise GenerationError(msg) from e


def text_tokens(model: LlamaModel, text: str) -> list[int]:
    """Token ids of ``text`` as ``Llama.embed`` makes them: literal text, the vocabulary's BOS/EOS added."""
    tokens: list[int] = model.llama.tokenize(text.encode("utf-8"), add_bos=True, special=False)
    return tokens


def _fit(tokens: list[int], window: int, *, truncate: bool, index: int, closing: int | None = None) -> list[int]:
    """``tokens`` within ``window``; a ``closing`` token the vocabulary adds (BERT's ``[SEP]``) stays last."""
    if len(tokens) <= window:
        return tokens
    if truncate:
        logger.debug("text %d has %d tokens: truncated to the %d-token window", index, len(tokens), window)
        if closing is not None and tokens[-1] == closing and window > 1:
            return [*tokens[: window - 1], closing]  # as the HF tokenizers' truncation does
        return tokens[:window]
    msg = (
        f"text {index} has {len(tokens)} tokens, more than the {window}-token window; shorten it, "
        "raise n_ctx, or set truncate=True to embed its first tokens"
    )
    raise ContextWindowExceededError(msg, prompt_tokens=len(tokens), context_window=window)


def plan_batches(lengths: Sequence[int], n_tokens: int, n_seq: int) -> list[list[int]]:
    """Consecutive texts in batches of at most ``n_tokens`` tokens and ``n_seq`` texts.

    A text longer than ``n_tokens`` (up to the window) goes alone.
    """
    batches: list[list[int]] = []
    current: list[int] = []
    used = 0
    for i, n in enumerate(lengths):
        if current and (used + n > n_tokens or len(current) >= n_seq):
            batches.append(current)
            current, used = [], 0
        current.append(i)
        used += n
    if current:
        batches.append(current)
    return batches


def _normalized(vectors: Any, *, normalize: bool) -> list[list[float]]:
    import numpy as np  # noqa: PLC0415 - a llama_cpp dependency

    out: Any = np.atleast_2d(np.asarray(vectors, dtype=np.float32))
    if normalize:
        norms = np.linalg.norm(out, axis=1, keepdims=True)
        out = out / np.where(norms == 0.0, 1.0, norms)
    result: list[list[float]] = out.tolist()
    return result


def embed_batches(
    step: Callable[[], AbstractContextManager[LlamaModel]], request: EmbedRequest, n_batch: int
) -> Iterator[tuple[Sequence[int], list[list[float]]]]:
    """Embed ``request.texts``: per batch, its indices and their vectors (the model held per batch)."""
    with step() as model:
        pooling = resolve_pooling(model, request.pooling)
        made = embedder(model, pooling, request.batch_size, n_batch)
        window = model.n_ctx
        closing = model.info.eos_token_id if model.info.add_eos_token else None
        tokens = [
            _fit(text_tokens(model, request.prefix + text), window, truncate=request.truncate, index=i, closing=closing)
            for i, text in enumerate(request.texts)
        ]
    empty = [i for i, t in enumerate(tokens) if not t]  # no BOS and no text: nothing to pool
    todo = [i for i, t in enumerate(tokens) if t]
    if empty:
        yield empty, [[0.0] * made.n_embd for _ in empty]
    n_seq = min(made.n_seq, request.batch_size)  # a shared context may hold more sequences
    for batch in plan_batches([len(tokens[i]) for i in todo], made.n_ubatch, n_seq):
        indices = [todo[k] for k in batch]
        with step() as model:
            made = embedder(model, pooling, request.batch_size, n_batch)
            if len(indices) == 1 and len(tokens[indices[0]]) > made.n_ubatch:
                vectors = made.run_long(tokens[indices[0]])
            else:
                vectors = made.run([tokens[i] for i in indices])
        yield indices, _normalized(vectors, normalize=request.normalize)
