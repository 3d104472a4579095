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
memory is cleared before each batch. A sequence is never split across micro-batches (pooling
would see only part of it): the context's ``n_ubatch`` is at least the window.
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
    """``llama_cpp._internals.LlamaBatch`` of ``n_ctx`` tokens."""
    pooling: str
    n_ctx: int
    """Tokens one decode (and one text) can hold."""
    n_seq: int
    """Sequences one decode can hold."""
    n_embd: int

    def close(self) -> None:
        """Free the batch and the context (the model stays)."""
        self.batch.close()
        self.context.close()

    def run(self, sequences: Sequence[Sequence[int]], *, normalize: bool) -> list[list[float]]:
        """The pooled vector of each sequence, computed in one ``llama_decode``."""
        import numpy as np  # noqa: PLC0415 - a llama_cpp dependency

        llama_cpp = llama_cpp_module()
        ctx = self.context.ctx
        batch = self.batch.batch
        j = 0
        for seq, ids in enumerate(sequences):
            for pos, token in enumerate(ids):
                batch.token[j] = token
                batch.pos[j] = pos
                batch.n_seq_id[j] = 1
                batch.seq_id[j][0] = seq
                batch.logits[j] = True  # every token is an output of a pooled embedding
                j += 1
        batch.n_tokens = j
        llama_cpp.llama_memory_clear(llama_cpp.llama_get_memory(ctx), True)  # noqa: FBT003 - C argument
        status = llama_cpp.llama_decode(ctx, batch)
        if status != 0:
            msg = f"llama_decode returned {status} for {len(sequences)} sequences of {j} tokens"
            raise GenerationError(msg)
        out = np.empty((len(sequences), self.n_embd), dtype=np.float32)
        for seq in range(len(sequences)):
            ptr = llama_cpp.llama_get_embeddings_seq(ctx, seq)
            if not ptr:
                msg = f"llama.cpp returned no pooled embedding for sequence {seq} (pooling {self.pooling})"
                raise GenerationError(msg)
            out[seq] = np.ctypeslib.as_array(ptr, shape=(self.n_embd,))
        if normalize:
            norms = np.linalg.norm(out, axis=1, keepdims=True)
            out /= np.where(norms == 0.0, 1.0, norms)
        vectors: list[list[float]] = out.tolist()
        return vectors


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


def embedder(model: LlamaModel, pooling: str, n_seq: int, n_batch: int) -> Embedder:
    """The model's embedding context for ``pooling`` and up to ``n_seq`` sequences (made once; model held).

    Its context holds ``max(window, n_batch)`` tokens (rounded up to a multiple of ``n_seq``),
    so any text up to the window decodes in one micro-batch.
    """
    llama_cpp = llama_cpp_module()
    internals: Any = __import__("llama_cpp._internals", fromlist=["LlamaContext"])
    n_seq = max(1, min(n_seq, int(llama_cpp.llama_max_parallel_sequences())))
    key = (pooling, n_seq, n_batch)
    found = model.embedders.get(key)
    if isinstance(found, Embedder):
        return found
    for old in model.embedders.values():  # one embedding context per model: another shape replaces it
        old.close()
    model.embedders.clear()
    # A multiple of n_seq: llama.cpp reserves its graph with n_ubatch split evenly over the
    # sequences, and aborts (GGML_ASSERT in ggml_can_mul_mat) when they do not divide it.
    n_ctx = -(-max(model.n_ctx, n_batch) // n_seq) * n_seq
    params = llama_cpp.llama_context_default_params()
    chat = model.llama.context_params
    for name in _SHARED_CONTEXT_PARAMS:  # how the chat context computes, not what it outputs
        if hasattr(params, name) and hasattr(chat, name):
            setattr(params, name, getattr(chat, name))
    params.n_ctx = n_ctx
    params.n_batch = n_ctx
    params.n_ubatch = n_ctx
    params.n_seq_max = n_seq
    params.embeddings = True
    params.pooling_type = POOLING_TYPES[pooling]
    if hasattr(params, "kv_unified"):
        params.kv_unified = True  # the sequences share the n_ctx cells
    try:
        context = internals.LlamaContext(model=model.llama._model, params=params, verbose=False)  # noqa: SLF001
    except ValueError as e:
        msg = f"llama.cpp could not make an embedding context for {model.info.path} ({n_ctx} tokens): {e}; lower n_ctx"
        raise GenerationError(msg) from e
    batch = internals.LlamaBatch(n_tokens=n_ctx, embd=0, n_seq_max=1, verbose=False)
    n_embd = int(llama_cpp.llama_model_n_embd(model.llama._model.model))  # noqa: SLF001
    made = Embedder(context=context, batch=batch, pooling=pooling, n_ctx=n_ctx, n_seq=n_seq, n_embd=n_embd)
    model.embedders[key] = made
    logger.debug("made an embedding context for %s: %s pooling, %d tokens, %d sequences", model.info.path, *key)
    return made


def text_tokens(model: LlamaModel, text: str) -> list[int]:
    """Token ids of ``text`` as ``Llama.embed`` makes them: literal text, the vocabulary's BOS/EOS added."""
    tokens: list[int] = model.llama.tokenize(text.encode("utf-8"), add_bos=True, special=False)
    return tokens


def _fit(tokens: list[int], window: int, *, truncate: bool, index: int) -> list[int]:
    if len(tokens) <= window:
        return tokens
    if truncate:
        logger.debug("text %d has %d tokens: truncated to the %d-token window", index, len(tokens), window)
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


def embed_batches(
    step: Callable[[], AbstractContextManager[LlamaModel]], request: EmbedRequest, n_batch: int
) -> Iterator[tuple[Sequence[int], list[list[float]]]]:
    """Embed ``request.texts``: per batch, its indices and their vectors (the model held per batch)."""
    with step() as model:
        pooling = resolve_pooling(model, request.pooling)
        made = embedder(model, pooling, request.batch_size, n_batch)
        window = model.n_ctx
        tokens = [
            _fit(text_tokens(model, text), window, truncate=request.truncate, index=i)
            for i, text in enumerate(request.texts)
        ]
    empty = [i for i, t in enumerate(tokens) if not t]  # no BOS and no text: nothing to pool
    todo = [i for i, t in enumerate(tokens) if t]
    if empty:
        yield empty, [[0.0] * made.n_embd for _ in empty]
    for batch in plan_batches([len(tokens[i]) for i in todo], n_batch, made.n_seq):
        indices = [todo[k] for k in batch]
        with step() as model:
            made = embedder(model, pooling, request.batch_size, n_batch)
            vectors = made.run([tokens[i] for i in indices], normalize=request.normalize)
        yield indices, vectors
