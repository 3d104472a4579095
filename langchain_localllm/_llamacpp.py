"""The llama.cpp backend: loading through the shared cache, and the token loop.

Everything here is independent of LangChain's classes so that the LLM and chat
model over llama.cpp share one implementation. ``llama_cpp`` is imported lazily.

The generation loop drives ``Llama.generate`` (which reuses the longest matching
KV-cache prefix of the previous call on the same model) and detokenizes each token
with a per-model table of token bytes built once at load time, so per-token work is
a list lookup, an incremental UTF-8 decode and the stop-string check.
"""

from __future__ import annotations

import contextlib
import ctypes
import io
import logging
import math
import random
import threading
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any

from langchain_localllm._gguf import GGUFInfo, file_identity, read_gguf_info
from langchain_localllm._imports import import_optional
from langchain_localllm._output import Piece
from langchain_localllm._stop import ByteStream
from langchain_localllm.errors import ContextWindowExceededError, GenerationError

__all__ = [
    "LlamaModel",
    "LoadSettings",
    "Piece",
    "Sampling",
    "generate_pieces",
    "load_llama",
    "native_logger",
]

logger = logging.getLogger("langchain_localllm")
native_logger = logging.getLogger("langchain_localllm.llama_cpp")
"""llama.cpp's own log lines (model loading, backend info) arrive on this logger."""

DEFAULT_N_CTX_CAP = 4096
"""``n_ctx`` defaults to the model's trained context, capped at this many tokens."""

# ggml.h: enum ggml_log_level { NONE=0, DEBUG=1, INFO=2, WARN=3, ERROR=4, CONT=5 (continues
# the previous line) }. (llama-cpp-python's own _logger.py maps an older numbering.)
_GGML_LEVELS = {0: logging.INFO, 1: logging.DEBUG, 2: logging.INFO, 3: logging.WARNING, 4: logging.ERROR}
_log_state: dict[str, Any] = {"installed": False, "last_level": logging.DEBUG, "callback": None}
_log_lock = threading.Lock()


def _install_log_callback(llama_cpp: ModuleType) -> None:
    """Route llama.cpp's native log to :data:`native_logger` instead of stderr."""
    with _log_lock:
        if _log_state["installed"]:
            return

        @llama_cpp.llama_log_callback  # type: ignore[untyped-decorator]
        def _callback(level: int, text: bytes, _user_data: ctypes.c_void_p) -> None:
            py_level = _log_state["last_level"] if level == 5 else _GGML_LEVELS.get(level, logging.DEBUG)  # noqa: PLR2004
            _log_state["last_level"] = py_level
            if native_logger.isEnabledFor(py_level):
                line = text.decode("utf-8", errors="replace").rstrip("\n")
                if line:
                    native_logger.log(py_level, "%s", line)

        _log_state["callback"] = _callback  # keep the C callback alive
        llama_cpp.llama_log_set(_callback, ctypes.c_void_p(0))
        _log_state["installed"] = True


def llama_cpp_module() -> ModuleType:
    """Import ``llama_cpp`` (naming the extra if missing) with logging routed."""
    module = import_optional("llama_cpp")
    _install_log_callback(module)
    return module


@dataclass(frozen=True)
class LoadSettings:
    """Everything that changes the loaded state of a ``Llama`` (the cache key's second half).

    ``None`` means "not passed; llama.cpp's or the model's own default applies".
    """

    n_ctx: int | None = None
    n_batch: int = 512
    n_ubatch: int | None = None
    n_threads: int | None = None
    n_threads_batch: int | None = None
    n_gpu_layers: int = 0
    main_gpu: int | None = None
    split_mode: int | None = None
    tensor_split: tuple[float, ...] | None = None
    flash_attn: bool | None = None
    type_k: int | None = None
    type_v: int | None = None
    rope_freq_base: float | None = None
    rope_freq_scale: float | None = None
    rope_scaling_type: int | None = None
    use_mmap: bool = True
    use_mlock: bool = False
    lora_path: str | None = None
    lora_scale: float | None = None
    logits_all: bool = False
    extra: tuple[tuple[str, Any], ...] = ()

    def llama_kwargs(self, n_ctx: int) -> dict[str, Any]:
        """Keyword arguments for ``llama_cpp.Llama``: only what was set, plus ``n_ctx``."""
        kwargs: dict[str, Any] = {"n_ctx": n_ctx, "n_batch": self.n_batch, "n_gpu_layers": self.n_gpu_layers}
        optional = {
            "n_ubatch": self.n_ubatch,
            "n_threads": self.n_threads,
            "n_threads_batch": self.n_threads_batch,
            "main_gpu": self.main_gpu,
            "split_mode": self.split_mode,
            "tensor_split": list(self.tensor_split) if self.tensor_split else None,
            "flash_attn": self.flash_attn,
            "type_k": self.type_k,
            "type_v": self.type_v,
            "rope_freq_base": self.rope_freq_base,
            "rope_freq_scale": self.rope_freq_scale,
            "rope_scaling_type": self.rope_scaling_type,
            "lora_path": self.lora_path,
            "lora_scale": self.lora_scale,
        }
        kwargs.update({k: v for k, v in optional.items() if v is not None})
        kwargs.update(use_mmap=self.use_mmap, use_mlock=self.use_mlock, logits_all=self.logits_all)
        kwargs.update(dict(self.extra))
        return kwargs


@dataclass
class LlamaModel:
    """A loaded ``Llama`` plus the per-model tables the token loop needs."""

    llama: Any
    info: GGUFInfo
    n_ctx: int
    pieces: list[bytes]
    eog_ids: frozenset[int]
    bos_id: int | None
    add_bos: bool
    bos_text: str
    eos_text: str
    checked_grammars: set[str] = field(default_factory=set)

    def close(self) -> None:
        """Free the native model and context."""
        self.llama.close()


def cache_key(path: Path, settings: LoadSettings) -> tuple[Any, ...]:
    """The process-wide cache key: file identity plus load settings."""
    return ("llama_cpp", file_identity(path), settings)


def load_llama(path: Path, settings: LoadSettings) -> LlamaModel:
    """Validate ``path`` and load it with llama.cpp.

    Raises:
        ModelNotFoundError: ``path`` is missing or a directory.
        LegacyGGMLFormatError: ``path`` is a pre-GGUF GGML file.
        InvalidModelFileError: ``path`` is not GGUF or is truncated.
        GenerationError: llama.cpp refused the (validated) file.
    """
    info = read_gguf_info(path)
    llama_cpp = llama_cpp_module()
    n_ctx = settings.n_ctx
    if n_ctx is None:
        n_ctx = min(info.context_length or DEFAULT_N_CTX_CAP, DEFAULT_N_CTX_CAP)
    kwargs = settings.llama_kwargs(n_ctx)
    captured = io.StringIO()
    try:
        # verbose=True keeps llama-cpp-python from redirecting the process's file
        # descriptors (not thread-safe); its Python-level prints are captured and
        # logged, and the native log goes through our callback.
        with contextlib.redirect_stderr(captured):
            llama = llama_cpp.Llama(model_path=str(path), verbose=True, **kwargs)
    except (ValueError, RuntimeError) as e:
        msg = f"llama.cpp could not load {path}: {e}. See the 'langchain_localllm.llama_cpp' log for details."
        raise GenerationError(msg) from e
    finally:
        for line in captured.getvalue().splitlines():
            if line.strip():
                native_logger.debug("%s", line)
    llama.verbose = False  # no per-call prints from Llama.generate
    vocab = llama_cpp.llama_model_get_vocab(llama._model.model)  # noqa: SLF001
    n_vocab = llama_cpp.llama_vocab_n_tokens(vocab)
    pieces = [_token_piece(llama_cpp, vocab, t, special=False) for t in range(n_vocab)]
    eog = frozenset(t for t in range(n_vocab) if llama_cpp.llama_vocab_is_eog(vocab, t))
    bos = llama_cpp.llama_vocab_bos(vocab)
    eos = llama_cpp.llama_vocab_eos(vocab)
    return LlamaModel(
        llama=llama,
        info=info,
        # llama.cpp may round the context up; llama-cpp-python's token arrays keep the
        # requested size, so the smaller of the two is the real limit.
        n_ctx=min(n_ctx, llama.n_ctx()),
        pieces=pieces,
        eog_ids=eog,
        bos_id=bos if bos >= 0 else None,
        add_bos=bool(llama_cpp.llama_vocab_get_add_bos(vocab)),
        bos_text=_token_text(llama_cpp, vocab, bos),
        eos_text=_token_text(llama_cpp, vocab, eos),
    )


def _token_piece(llama_cpp: ModuleType, vocab: Any, token: int, *, special: bool) -> bytes:
    size = 64
    buf = ctypes.create_string_buffer(size)
    n = llama_cpp.llama_token_to_piece(vocab, token, buf, size, 0, special)
    if n < 0:
        size = -n
        buf = ctypes.create_string_buffer(size)
        n = llama_cpp.llama_token_to_piece(vocab, token, buf, size, 0, special)
    return buf.raw[: max(n, 0)]


def _token_text(llama_cpp: ModuleType, vocab: Any, token: int) -> str:
    if token < 0:
        return ""
    return _token_piece(llama_cpp, vocab, token, special=True).decode("utf-8", errors="replace")


def tokenize_prompt(model: LlamaModel, text: str) -> list[int]:
    """Tokenize a fully formatted prompt (special tokens parsed), adding BOS once.

    BOS is added only when the model asks for it and the text does not already
    start with it (chat templates often render ``bos_token`` themselves).
    """
    tokens: list[int] = model.llama.tokenize(text.encode("utf-8"), add_bos=False, special=True)
    if model.add_bos and model.bos_id is not None and (not tokens or tokens[0] != model.bos_id):
        tokens.insert(0, model.bos_id)
    return tokens


@dataclass(frozen=True)
class Sampling:
    """Per-call sampling settings (never part of the cache key)."""

    temperature: float = 0.8
    top_p: float = 0.95
    top_k: int = 40
    min_p: float = 0.05
    repeat_penalty: float = 1.0
    frequency_penalty: float = 0.0
    presence_penalty: float = 0.0
    seed: int | None = None
    max_tokens: int | None = 256
    grammar: str | None = None
    logprobs: int | None = None


def _check_grammar(llama_cpp: ModuleType, model: LlamaModel, grammar: str) -> Any:
    """Compile ``grammar`` once per model; a bad grammar raises instead of crashing."""
    if grammar not in model.checked_grammars:
        vocab = llama_cpp.llama_model_get_vocab(model.llama._model.model)  # noqa: SLF001
        sampler = llama_cpp.llama_sampler_init_grammar(vocab, grammar.encode("utf-8"), b"root")
        if not sampler:
            msg = "llama.cpp rejected the GBNF grammar (see the 'langchain_localllm.llama_cpp' log for the parse error)"
            raise ValueError(msg)
        llama_cpp.llama_sampler_free(sampler)
        model.checked_grammars.add(grammar)
    return llama_cpp.LlamaGrammar.from_string(grammar, verbose=False)


def generate_pieces(  # noqa: C901 - the one hot loop, kept flat on purpose
    model: LlamaModel,
    prompt_tokens: Sequence[int],
    sampling: Sampling,
    stops: Sequence[str],
    cancel: threading.Event | None = None,
) -> Iterator[Piece]:
    """Generate from ``prompt_tokens``; yield emit-safe text pieces, then a final piece.

    The caller must hold the model's lock for the whole iteration. The final piece
    has ``info`` with ``finish_reason`` (``"stop"`` or ``"length"``; ``"cancelled"``
    when ``cancel`` was set) and the token counts.
    """
    n_prompt = len(prompt_tokens)
    if n_prompt >= model.n_ctx:
        msg = (
            f"the prompt is {n_prompt} tokens but the context window is {model.n_ctx} tokens "
            "(at least one token must be left to generate). Shorten the prompt or load "
            "the model with a larger n_ctx."
        )
        raise ContextWindowExceededError(msg, prompt_tokens=n_prompt, context_window=model.n_ctx)
    if n_prompt == 0:
        msg = "the prompt is empty after tokenization; give a non-empty prompt"
        raise ValueError(msg)
    room = model.n_ctx - n_prompt
    budget = room if sampling.max_tokens is None else min(sampling.max_tokens, room)
    llama_cpp = llama_cpp_module()
    grammar = _check_grammar(llama_cpp, model, sampling.grammar) if sampling.grammar else None
    llama = model.llama
    llama.set_seed(sampling.seed if sampling.seed is not None else random.randrange(2**31))  # noqa: S311
    out = ByteStream(stops)
    pieces = model.pieces
    eog = model.eog_ids
    want_logprobs = sampling.logprobs is not None
    n_generated = 0
    finish_reason = "length"
    tokens = llama.generate(
        prompt_tokens,
        top_k=sampling.top_k,
        top_p=sampling.top_p,
        min_p=sampling.min_p,
        temp=sampling.temperature,
        repeat_penalty=sampling.repeat_penalty,
        frequency_penalty=sampling.frequency_penalty,
        presence_penalty=sampling.presence_penalty,
        grammar=grammar,
        reset=True,
    )
    try:
        if budget > 0:
            for token in tokens:
                if token in eog:
                    finish_reason = "stop"
                    break
                n_generated += 1
                text = out.push(pieces[token])
                if want_logprobs:
                    yield Piece(text, logprobs=[_logprob_entry(llama, token, sampling.logprobs or 0)])
                elif text:
                    yield Piece(text)
                if out.stops.stopped:
                    finish_reason = "stop"
                    break
                if n_generated >= budget:
                    break
                if cancel is not None and cancel.is_set():
                    finish_reason = "cancelled"
                    break
    except (RuntimeError, OSError) as e:
        msg = f"llama.cpp failed while generating: {e}"
        raise GenerationError(msg) from e
    finally:
        tokens.close()
    yield Piece(
        out.finish(),
        info={
            "finish_reason": finish_reason,
            "stop_sequence": out.stops.matched,
            "prompt_tokens": n_prompt,
            "completion_tokens": n_generated,
            "total_tokens": n_prompt + n_generated,
        },
    )


def _logprob_entry(llama: Any, token: int, top_n: int) -> dict[str, Any]:
    """Log-probability of the sampled token and the ``top_n`` best alternatives."""
    import numpy as np  # noqa: PLC0415 - a llama_cpp dependency, needed only here

    row = llama.scores[llama.n_tokens - 1]
    shifted = row - row.max()
    logz = math.log(float(np.exp(shifted).sum()))
    entry: dict[str, Any] = {"token": token, "logprob": float(shifted[token]) - logz}
    if top_n > 0:
        best = np.argpartition(-shifted, top_n - 1)[:top_n]
        best = best[np.argsort(-shifted[best])]
        entry["top_logprobs"] = [{"token": int(t), "logprob": float(shifted[t]) - logz} for t in best]
    return entry
