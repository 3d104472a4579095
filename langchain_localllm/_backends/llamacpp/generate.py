"""The llama.cpp token loop.

It advances one :class:`~langchain_localllm._backends.llamacpp.sequence.Sequence` (which
reuses the cached prefix of the previous call exactly, and holds the model's lock one
step at a time) and detokenizes each token with the per-model table of token bytes
built at load time, so per-token work is a list lookup, an incremental UTF-8 decode
and the stop-string check.
"""

from __future__ import annotations

import math
import threading
from collections.abc import Callable, Iterator, Sequence
from contextlib import AbstractContextManager
from types import ModuleType
from typing import Any

from langchain_localllm._backends.llamacpp.load import LlamaModel, llama_cpp_module
from langchain_localllm._backends.llamacpp.sequence import Generation, make_sampler
from langchain_localllm._backends.llamacpp.settings import Sampling
from langchain_localllm._core.output import FinishInfo, FinishReason, Piece
from langchain_localllm._core.stop import ByteStream
from langchain_localllm.errors import ConstraintError, ContextWindowExceededError, InvalidParameterError

__all__ = ["check_grammar", "check_prompt", "generate_pieces", "logprob_entry"]


def check_grammar(llama_cpp: ModuleType, model: LlamaModel, grammar: str) -> Any:
    """Compile ``grammar`` once per model; a bad grammar raises instead of crashing."""
    if grammar not in model.checked_grammars:
        vocab = llama_cpp.llama_model_get_vocab(model.llama._model.model)  # noqa: SLF001
        sampler = llama_cpp.llama_sampler_init_grammar(vocab, grammar.encode("utf-8"), b"root")
        if not sampler:
            msg = "llama.cpp rejected the GBNF grammar (see the 'langchain_localllm.llama_cpp' log for the parse error)"
            raise ConstraintError(msg)
        llama_cpp.llama_sampler_free(sampler)
        model.checked_grammars.add(grammar)
    return llama_cpp.LlamaGrammar.from_string(grammar, verbose=False)


def check_prompt(model: LlamaModel, n_prompt: int) -> int:
    """The most tokens a prompt of ``n_prompt`` tokens leaves room for; raises if none or if it is empty."""
    if n_prompt >= model.n_ctx:
        msg = (
            f"the prompt is {n_prompt} tokens but the context window is {model.n_ctx} tokens "
            "(at least one token must be left to generate). Shorten the prompt or load "
            "the model with a larger n_ctx."
        )
        raise ContextWindowExceededError(msg, prompt_tokens=n_prompt, context_window=model.n_ctx)
    if n_prompt == 0:
        msg = "the prompt is empty after tokenization; give a non-empty prompt"
        raise InvalidParameterError(msg)
    return model.n_ctx - n_prompt


def generate_pieces(
    step: Callable[[], AbstractContextManager[LlamaModel]],
    prompt_tokens: Sequence[int],
    sampling: Sampling,
    *,
    grammar_text: str | None,
    stops: Sequence[str],
    cancel: threading.Event | None = None,
) -> Iterator[Piece]:
    """Generate from ``prompt_tokens``; yield emit-safe text pieces, then a final piece.

    ``step()`` holds the model (and its lock) for one step: the lock is never held
    while a piece is out with the consumer, so an unconsumed stream blocks nobody (see
    ``sequence.py``). ``grammar_text`` is a GBNF grammar constraining the output (or
    None). The final piece's ``finish`` has the reason (``"stop"`` or ``"length"``;
    ``"cancelled"`` when ``cancel`` was set) and the token counts. Native failures
    propagate (the backend maps them).
    """
    n_prompt = len(prompt_tokens)
    with step() as model:
        room = check_prompt(model, n_prompt)
        llama_cpp = llama_cpp_module()
        grammar = check_grammar(llama_cpp, model, grammar_text) if grammar_text else None
        sequence = Generation(
            model,
            list(prompt_tokens),
            sampler=make_sampler(model, sampling, grammar),
            prefix_cache=sampling.prefix_cache,
        )
        pieces = model.pieces
        eog = model.eog_ids
    budget = room if sampling.max_tokens is None else min(sampling.max_tokens, room)
    out = ByteStream(stops)
    top_n = sampling.logprobs
    n_generated = 0
    finish_reason: FinishReason = "length"
    try:
        while n_generated < budget:
            with step() as model:  # the token tables may ask llama.cpp: only while the model is held
                token = sequence.advance() if n_generated else sequence.start()
                entry = logprob_entry(sequence.logits(), token, top_n) if top_n is not None else None
                ended = token in eog
                piece = b"" if ended else pieces[token]
            if ended:
                finish_reason = "stop"
                break
            n_generated += 1
            text = out.push(piece)
            if entry is not None:
                yield Piece(text, logprobs=[entry])
            elif text:
                yield Piece(text)
            if out.stops.stopped:
                finish_reason = "stop"
                break
            if cancel is not None and cancel.is_set():
                finish_reason = "cancelled"
                break
    finally:
        sequence.finish()
    finish = FinishInfo(finish_reason, n_prompt, n_generated, out.stops.matched)
    yield Piece(out.finish(), finish=finish)


def logprob_entry(row: Any, token: int, top_n: int) -> dict[str, Any]:
    """Log-probability of the sampled token and the ``top_n`` best alternatives (``row``: its logits)."""
    import numpy as np  # noqa: PLC0415 - a llama_cpp dependency, needed only here

    shifted = row - row.max()
    logz = math.log(float(np.exp(shifted).sum()))
    entry: dict[str, Any] = {"token": token, "logprob": float(shifted[token]) - logz}
    if top_n > 0:
        best = np.argpartition(-shifted, top_n - 1)[:top_n]
        best = best[np.argsort(-shifted[best])]
        entry["top_logprobs"] = [{"token": int(t), "logprob": float(shifted[t]) - logz} for t in best]
    return entry
