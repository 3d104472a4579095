"""Loading a GGUF file with llama.cpp: the native log, the loaded model and its token tables.

``llama_cpp`` is imported lazily (:func:`llama_cpp_module`), with llama.cpp's native log
routed to the ``langchain_localllm.llama_cpp`` logger instead of stderr.
"""

from __future__ import annotations

import contextlib
import ctypes
import functools
import importlib
import io
import logging
import threading
from collections.abc import Container, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any

from langchain_localllm._backends.llamacpp.gguf import GGUFInfo, read_gguf_info
from langchain_localllm._backends.llamacpp.kv import KVState
from langchain_localllm._backends.llamacpp.settings import LoadSettings, check_llama_parameters
from langchain_localllm._core.imports import import_optional
from langchain_localllm._core.literal import ControlTokens
from langchain_localllm.errors import InvalidParameterError, ModelFormatError, ModelLoadError

__all__ = [
    "LlamaModel",
    "llama_cpp_module",
    "load_llama",
    "native_logger",
    "require_generative",
    "tokenize",
    "tokenize_prompt",
    "with_bos",
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


@dataclass
class LlamaModel:
    """A loaded ``Llama`` plus the per-model tables the token loop needs."""

    llama: Any
    info: GGUFInfo
    n_ctx: int
    pieces: Mapping[int, bytes]
    """Each token's bytes as generated text (control tokens: none); see :class:`TokenPieces`."""
    eog_ids: Container[int]
    """``token in eog_ids``: llama.cpp ends generation on ``token``; see :class:`EndOfGeneration`."""
    bos_id: int | None
    add_bos: bool
    bos_text: str
    eos_text: str
    controls: ControlTokens = field(default_factory=lambda: ControlTokens(()))
    """The control tokens' texts (what user content must never turn into)."""
    checked_grammars: set[str] = field(default_factory=set)
    reuse_align: int = 64
    """Prefill chunk boundary in tokens (see ``sequence.py``): 64 on CPU, ``n_ubatch`` when offloaded."""
    kv: KVState = field(default_factory=KVState)
    """What the context's KV cache holds now (used under the model's lock)."""
    batch: Any = None
    """With ``max_parallel > 1``: the multi-sequence context (``batchctx.BatchContext``) that generates."""
    scheduler: Any = None
    """With ``max_parallel > 1``: its ``scheduler.Scheduler``, made on first use under the model's lock."""

    embedders: dict[Any, Any] = field(default_factory=dict)
    """Embedding contexts over the same weights, made on first use (see ``embed.py``)."""
    embed_warned: bool = False

    def close(self) -> None:
        """Free the native model and contexts (the token tables stop asking it)."""
        self._free_batch()
        for table in (self.pieces, self.eog_ids):
            if isinstance(table, (TokenPieces, EndOfGeneration)):
                table.detach()
        for embedder in self.embedders.values():
            embedder.close()
        self.embedders.clear()
        self.llama.close()

    def _free_batch(self) -> None:
        """Stop the scheduler (joined: no native call of it is in flight after this) and free its context."""
        if self.scheduler is not None:
            self.scheduler.stop(free=True)
        elif self.batch is not None:
            self.batch.close()

    def __del__(self) -> None:
        """An evicted model nobody unloaded: free the scheduler's context before the weights go.

        (Jobs keep the model alive, so this runs only when no request is queued or running.)
        """
        with contextlib.suppress(Exception):  # at interpreter exit llama_cpp may be gone already
            self._free_batch()


SPARE_N_CTX = 256
"""The ``Llama``'s own context with ``max_parallel > 1`` (it only tokenizes then): llama.cpp's smallest padding."""

CPU_REUSE_ALIGN = 64
"""Prefill chunk size on CPU. Measured against llama.cpp's 512 on a 1,500-token prompt: 0.97x
the time on the bench's 30M F16 model and 0.98x on SmolLM2-135M Q4_1 (2 cores), so small
chunks are free there, and they bound what exact prefix reuse re-evaluates."""


def _reuse_align(settings: LoadSettings, n_ubatch: int) -> int:
    """Chunk boundary for prefills: small on CPU; a whole micro-batch when layers are offloaded (launch cost)."""
    return max(1, n_ubatch if settings.n_gpu_layers != 0 else min(CPU_REUSE_ALIGN, n_ubatch))


def load_llama(path: Path, settings: LoadSettings) -> LlamaModel:
    """Validate ``path`` and load it with llama.cpp.

    Raises:
        ModelNotFoundError: ``path`` is missing or a directory.
        LegacyGGMLFormatError: ``path`` is a pre-GGUF GGML file.
        InvalidModelFileError: ``path`` is not GGUF or is truncated.
        ModelLoadError: llama.cpp refused the (validated) file.
    """
    info = read_gguf_info(path)
    llama_cpp = llama_cpp_module()
    n_ctx = settings.n_ctx
    if n_ctx is None:
        n_ctx = min(info.context_length or DEFAULT_N_CTX_CAP, DEFAULT_N_CTX_CAP)
    slots = settings.max_parallel
    if slots > settings.n_batch:
        msg = f"max_parallel={slots} is more than n_batch={settings.n_batch}: one step must fit every slot's token"
        raise InvalidParameterError(msg)
    if settings.n_gpu_layers == 0:
        _check_memory(info, n_ctx * slots, settings)
    check_llama_parameters(settings.model_kwargs, llama_cpp.Llama)
    # With max_parallel > 1 the scheduler's own context generates; the Llama's is only a
    # tokenizer's companion, so it is made as small as llama.cpp allows.
    kwargs = settings.llama_kwargs(n_ctx if slots == 1 else min(n_ctx, SPARE_N_CTX))
    captured = io.StringIO()
    try:
        # verbose=True keeps llama-cpp-python from redirecting the process's file
        # descriptors (not thread-safe); its Python-level prints are captured and
        # logged, and the native log goes through our callback.
        with contextlib.redirect_stderr(captured), _load_patches(extra_bufts=_extra_bufts(settings.use_extra_bufts)):
            llama = llama_cpp.Llama(model_path=str(path), verbose=True, **kwargs)
    except (ValueError, RuntimeError) as e:
        msg = f"llama.cpp could not load {path}: {e}. See the 'langchain_localllm.llama_cpp' log for details."
        raise ModelLoadError(msg) from e
    finally:
        for line in captured.getvalue().splitlines():
            if line.strip():
                native_logger.debug("%s", line)
    llama.verbose = False  # no per-call prints from Llama.generate
    vocab = llama_cpp.llama_model_get_vocab(llama._model.model)  # noqa: SLF001
    n_vocab = llama_cpp.llama_vocab_n_tokens(vocab)
    controls = ControlTokens(
        _token_text(llama_cpp, vocab, t) for t in special_token_ids(llama_cpp, vocab, n_vocab, info.typed_control_ids)
    )
    bos = llama_cpp.llama_vocab_bos(vocab)
    eos = llama_cpp.llama_vocab_eos(vocab)
    batch = None
    if slots > 1:
        from langchain_localllm._backends.llamacpp.batchctx import BatchContext  # noqa: PLC0415 - imports this module

        try:
            batch = BatchContext(
                llama, n_ctx=n_ctx, slots=slots, n_batch=settings.n_batch, n_ubatch=settings.n_ubatch or 512
            )
        except BaseException:
            llama.close()
            raise
    return LlamaModel(
        llama=llama,
        info=info,
        n_ctx=usable_context(llama) if batch is None else batch.n_ctx,
        batch=batch,
        pieces=TokenPieces(llama_cpp, vocab, n_vocab),
        eog_ids=EndOfGeneration(llama_cpp, vocab, n_vocab),
        bos_id=bos if bos >= 0 else None,
        add_bos=bool(llama_cpp.llama_vocab_get_add_bos(vocab)),
        bos_text=_token_text(llama_cpp, vocab, bos),
        eos_text=_token_text(llama_cpp, vocab, eos),
        controls=controls,
        reuse_align=_reuse_align(settings, int(llama_cpp.llama_n_ubatch(llama.ctx))),
    )


def require_generative(model: LlamaModel) -> None:
    """Refuse to generate with an encoder GGUF (BERT-like), naming what to use instead.

    llama.cpp would decode it and sample from whatever the graph outputs: text, but garbage.

    Raises:
        ModelFormatError: The model has bidirectional attention and no language-model head.
    """
    info = model.info
    if not info.causal:
        msg = (
            f"{info.path} is an encoder embedding model (architecture {info.architecture!r}, non-causal "
            "attention, no language-model head): it can embed text but not generate it. Use "
            "LocalGGMLEmbeddings for it, or a chat/instruct GGUF to generate."
        )
        raise ModelFormatError(msg)


def usable_context(llama: Any) -> int:
    """The context the loaded ``Llama`` really has, read from it (not from the settings).

    llama.cpp may round the context up (``llama.n_ctx()``); llama-cpp-python's token
    buffer keeps the size it was constructed with, so the smaller of the two is the limit.
    """
    n_ctx = int(llama.n_ctx())
    buffer = getattr(llama, "input_ids", None)
    return min(n_ctx, len(buffer)) if buffer is not None else n_ctx


_formatter_lock = threading.Lock()


@contextlib.contextmanager
def _load_patches(*, extra_bufts: bool) -> Iterator[None]:
    """Two settings ``Llama()`` does not expose, applied only while it loads (under a lock).

    * Embedded chat templates compile on first use: llama-cpp-python compiles every
      ``tokenizer.chat_template*`` of a file at load, for its own ``create_chat_completion``,
      which this package never calls, so a template that does not compile would make the
      whole file unloadable, even with ``prompt_format="raw"``. The stand-in builds the same
      handler on first use: ``create_chat_completion`` behaves as before.
    * ``llama_model_params.use_extra_bufts`` (see the ``use_extra_bufts`` field), set in the
      default parameters ``Llama()`` starts from.
    """
    formats: Any = importlib.import_module("llama_cpp.llama_chat_format")
    bindings: Any = importlib.import_module("llama_cpp.llama_cpp")
    original = formats.Jinja2ChatFormatter
    default_params = bindings.llama_model_default_params

    class LazyFormatter:
        def __init__(self, **kwargs: Any) -> None:
            self._kwargs = kwargs

        def to_chat_handler(self) -> Any:
            kwargs = self._kwargs

            def handler(*args: Any, **call_kwargs: Any) -> Any:
                return original(**kwargs).to_chat_handler()(*args, **call_kwargs)

            return handler

    def model_params() -> Any:
        params = default_params()
        if hasattr(params, "use_extra_bufts"):
            params.use_extra_bufts = extra_bufts
        return params

    with _formatter_lock:
        formats.Jinja2ChatFormatter = LazyFormatter
        bindings.llama_model_default_params = model_params
        try:
            yield
        finally:
            formats.Jinja2ChatFormatter = original
            bindings.llama_model_default_params = default_params


def _extra_bufts(setting: bool | None) -> bool:  # noqa: FBT001 - the field's value
    """The ``use_extra_bufts`` field's value, with None resolved (off on AMX-INT8 CPUs)."""
    if setting is not None:
        return setting
    if _cpu_has_amx_int8():
        logger.info(
            "this CPU has AMX-INT8, where llama.cpp's AMX kernels crash on quantized models "
            "(ggml-org/llama.cpp#20824): loading without extra buffer types (use_extra_bufts=False)"
        )
        return False
    return True


@functools.lru_cache(maxsize=1)
def _cpu_has_amx_int8() -> bool:
    try:
        with open("/proc/cpuinfo", encoding="ascii", errors="replace") as f:  # noqa: PTH123 - a pseudo-file
            for line in f:
                if line.startswith("flags"):
                    return "amx_int8" in line.split()
    except OSError:
        return False
    return False


def _available_memory() -> int | None:
    """Bytes of memory available now (Linux ``MemAvailable``), or None when unknown."""
    try:
        with open("/proc/meminfo", encoding="ascii") as f:  # noqa: PTH123 - a pseudo-file, read once
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        return None
    return None


def _check_memory(info: GGUFInfo, n_ctx: int, settings: LoadSettings) -> None:
    """Refuse an ``n_ctx`` / ``n_batch`` whose buffers cannot fit in memory (llama.cpp would abort)."""
    if not info.n_layer or not info.n_embd or not info.n_head or not info.n_head_kv:
        return  # recurrent or hybrid layouts: no plain KV cache to estimate
    n_embd_kv = info.n_embd * info.n_head_kv // info.n_head if info.n_head and info.n_head_kv else info.n_embd
    kv_cache = 2 * info.n_layer * n_ctx * n_embd_kv * 2  # K and V, f16
    rows = n_ctx if settings.logits_all else min(settings.n_batch, n_ctx)
    need = kv_cache + rows * (info.n_vocab or 0) * 4 + n_ctx * 4  # + the logits, + the token buffer
    available = _available_memory()
    # An upper bound (f16 K and V on every layer: sliding windows, MLA and quantized caches need
    # less), so only a request past twice the memory is refused; llama.cpp would abort on it.
    if available is not None and need > 2 * available:
        msg = (
            f"n_ctx={n_ctx} with n_batch={settings.n_batch} needs about {need / 2**30:.1f} GiB for the KV cache "
            f"and logits of {info.path}, but {available / 2**30:.1f} GiB of memory is available; lower n_ctx "
            "(and n_batch)"
        )
        raise InvalidParameterError(msg)


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


# -- per-token tables ------------------------------------------------------------------------
# Asking llama.cpp about one token costs about 0.5 us through ctypes: 0.13 s per question for a
# 262k-token vocabulary, at every load. The token loop's tables are filled on first use instead,
# and the control tokens are found with a few bulk calls.


class _Vocab:
    """A loaded vocabulary to ask about tokens, until the model is freed."""

    def __init__(self, llama_cpp: ModuleType, vocab: Any, n_vocab: int) -> None:
        self.llama_cpp: ModuleType | None = llama_cpp
        self.vocab = vocab
        self.n_vocab = n_vocab

    def native(self, token: object) -> ModuleType:
        """``llama_cpp``, or KeyError for a token outside the vocabulary or after the model is freed."""
        if self.llama_cpp is None or not isinstance(token, int) or not 0 <= token < self.n_vocab:
            raise KeyError(token)
        return self.llama_cpp


class TokenPieces(dict[int, bytes]):
    """``pieces[token]``: the bytes a token adds to generated text (none for control tokens).

    A dict filled on first use: the token loop looks up only the tokens it generates, at dict
    speed after the first time (building the whole table took 0.1 s per 50k tokens at load).
    """

    def __init__(self, llama_cpp: ModuleType, vocab: Any, n_vocab: int) -> None:
        """A table for the ``n_vocab`` tokens of ``vocab``."""
        super().__init__()
        self._vocab = _Vocab(llama_cpp, vocab, n_vocab)

    def detach(self) -> None:
        """Stop asking llama.cpp (the model is being freed); tokens not asked yet raise KeyError."""
        self._vocab.llama_cpp = None

    def __missing__(self, token: int) -> bytes:
        """Ask llama.cpp for the piece of ``token`` and keep it."""
        piece = _token_piece(self._vocab.native(token), self._vocab.vocab, token, special=False)
        self[token] = piece
        return piece


class EndOfGeneration(Container[int]):
    """``token in eog``: whether llama.cpp ends generation on ``token`` (asked once per token)."""

    def __init__(self, llama_cpp: ModuleType, vocab: Any, n_vocab: int) -> None:
        """A table for the ``n_vocab`` tokens of ``vocab``."""
        self._vocab = _Vocab(llama_cpp, vocab, n_vocab)
        self._known: dict[object, bool] = {}

    def detach(self) -> None:
        """Stop asking llama.cpp (the model is being freed); tokens not asked yet are not EOG."""
        self._vocab.llama_cpp = None

    def __contains__(self, token: object) -> bool:
        """Whether ``token`` is an end-of-generation token."""
        known = self._known.get(token)
        if known is None:
            try:
                native = self._vocab.native(token)
            except KeyError:
                return False
            known = self._known[token] = bool(native.llama_vocab_is_eog(self._vocab.vocab, token))
        return known


_BLOCK = 1024
"""Tokens per bulk call in :func:`special_token_ids`."""


def special_token_ids(llama_cpp: ModuleType, vocab: Any, n_vocab: int, hint: Sequence[int] = ()) -> list[int]:
    """The tokens whose llama.cpp attributes include CONTROL or UNKNOWN, in id order.

    The same set as asking ``llama_vocab_get_attr`` for every token, which takes 0.5 us a token.
    Only ``hint`` (the tokens the file types CONTROL or UNKNOWN) is asked token by token; the
    other tokens are checked a block at a time: llama.cpp renders a CONTROL or UNKNOWN token as
    nothing unless told to render special tokens, so a block whose rendered length is the same
    both ways holds no such token with a text (``llama_detokenize`` reports the length without
    writing when given no room). A block whose lengths differ is asked token by token. A token
    whose text is empty can be missed, and does not matter: it adds no control text.
    """
    import numpy as np  # noqa: PLC0415 - a llama_cpp dependency

    mask = llama_cpp.LLAMA_TOKEN_ATTR_CONTROL | llama_cpp.LLAMA_TOKEN_ATTR_UNKNOWN
    get_attr = llama_cpp.llama_vocab_get_attr
    hinted = np.zeros(n_vocab, dtype=bool)
    hinted[[t for t in hint if 0 <= t < n_vocab]] = True
    found = [t for t in np.flatnonzero(hinted).tolist() if get_attr(vocab, t) & mask]
    rest = np.flatnonzero(~hinted).astype(np.int32)
    # A first token that is not special: llama.cpp strips a leading space from the first piece only.
    lead = next((int(t) for t in rest[:64] if not get_attr(vocab, int(t)) & mask), None)
    if lead is None or llama_cpp.llama_vocab_type(vocab) == llama_cpp.LLAMA_VOCAB_TYPE_NONE:
        return sorted(found + [t for t in rest.tolist() if get_attr(vocab, t) & mask])
    n_blocks = -(-len(rest) // _BLOCK)
    padded = np.full(n_blocks * _BLOCK, lead, dtype=np.int32)  # the last block padded with `lead`
    padded[: len(rest)] = rest
    blocks = np.empty((n_blocks, _BLOCK + 1), dtype=np.int32)
    blocks[:, 0] = lead
    blocks[:, 1:] = padded.reshape(n_blocks, _BLOCK)
    base = blocks.ctypes.data
    token_p = ctypes.POINTER(llama_cpp.llama_token)
    room = ctypes.create_string_buffer(1)
    detokenize = llama_cpp.llama_detokenize
    for i in range(n_blocks):
        tokens = ctypes.cast(base + i * (_BLOCK + 1) * 4, token_p)
        # (vocab, tokens, n_tokens, text, text_len_max, remove_special, unparse_special): -length
        plain = detokenize(vocab, tokens, _BLOCK + 1, room, 0, False, False)  # noqa: FBT003 - C arguments
        special = detokenize(vocab, tokens, _BLOCK + 1, room, 0, False, True)  # noqa: FBT003
        if plain != special:
            found.extend(t for t in blocks[i, 1:].tolist() if get_attr(vocab, t) & mask)
    return sorted(set(found))


def tokenize(model: LlamaModel, text: str, *, special: bool) -> list[int]:
    """Token ids of ``text`` without BOS; ``special`` parses control-token text as control tokens."""
    tokens: list[int] = model.llama.tokenize(text.encode("utf-8"), add_bos=False, special=special)
    return tokens


def with_bos(model: LlamaModel, tokens: list[int]) -> list[int]:
    """``tokens`` with BOS in front when the model asks for it and it is not already there.

    Chat templates often render ``bos_token`` themselves: it is never doubled.
    """
    if model.add_bos and model.bos_id is not None and (not tokens or tokens[0] != model.bos_id):
        tokens.insert(0, model.bos_id)
    return tokens


def tokenize_prompt(model: LlamaModel, text: str) -> list[int]:
    """Tokenize model input given as text (special tokens parsed), adding BOS once."""
    return with_bos(model, tokenize(model, text, special=True))
