"""The transformers backend: loading through the shared cache, prompts, and the token loop.

Independent of LangChain's classes; ``torch`` and ``transformers`` are imported only
inside functions (``import langchain_localllm`` must stay light).

* :class:`LoadSpec` says where a model comes from and how to place it; its
  :meth:`~LoadSpec.cache_key` is the key in the process-wide model cache and
  :func:`load_bundle` is the loader. Objects the user already has (a pipeline, a
  model and tokenizer) are wrapped by :func:`bundle_from_objects`.
* :func:`render_prompt` turns chat dicts into prompt token ids with the tokenizer's
  own chat template (``apply_chat_template(tokenize=True)``: no re-tokenized string,
  no double BOS).
* :func:`generate_rows` runs one (left-padded) ``model.generate`` call for one or
  more prompts. A stopping criterion sees every new token: it detokenizes
  incrementally (:class:`IncrementalDetokenizer`), cuts stop strings
  (:class:`~langchain_localllm._stop.StopBuffer`), ends rows on any EOS id, their
  token budget, a stop string, or cancellation, and emits :class:`TextEvent` /
  :class:`FinishEvent` objects. :func:`stream_events` runs it in a worker thread
  through :func:`~langchain_localllm._bridge.iterate_in_thread`.
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
import gc
import importlib.util
import logging
import os
import re
import threading
from collections.abc import Callable, Hashable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from langchain_localllm._bridge import iterate_in_thread
from langchain_localllm._hf_grammar import GrammarProcessor
from langchain_localllm._imports import import_optional
from langchain_localllm._messages import ChatDict, fold_system, plain_text_prompt
from langchain_localllm._stop import StopBuffer
from langchain_localllm.errors import (
    ChatTemplateError,
    ContextWindowExceededError,
    MissingDependencyError,
    ModelNotFoundError,
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

_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*(/[\w.-]+)?$")
_TRUE = {"1", "true", "yes", "on"}
_CONTEXT_ATTRS = ("max_position_embeddings", "n_positions", "max_sequence_length", "seq_length", "n_ctx")
_UNBOUNDED_MODEL_MAX_LENGTH = 1_000_000

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


def _offline(local_files_only: bool) -> bool:  # noqa: FBT001 - mirrors the field
    env = (os.environ.get(name, "").lower() for name in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"))
    return local_files_only or any(value in _TRUE for value in env)


def _hashable(value: Any) -> Hashable:
    if isinstance(value, Mapping):
        return tuple(sorted((str(k), _hashable(v)) for k, v in value.items()))
    if isinstance(value, list | tuple | set | frozenset):
        items = [_hashable(v) for v in value]
        return tuple(sorted(items, key=repr)) if isinstance(value, set | frozenset) else tuple(items)
    try:
        hash(value)
    except TypeError:
        return repr(value)
    return value  # type: ignore[no-any-return]


# -- loading -----------------------------------------------------------------------


@dataclass(frozen=True)
class LoadSpec:
    """Where a model comes from and how it is loaded (everything that forces a reload)."""

    model: str
    revision: str | None = None
    trust_remote_code: bool = False
    local_files_only: bool = False
    cache_dir: str | None = None
    device: str = "auto"
    device_map: Any = None
    dtype: str = "auto"
    quantization: str | None = None
    attn_implementation: str | None = None
    model_kwargs: Mapping[str, Any] = field(default_factory=dict)

    def source(self) -> str:
        """The local directory (absolute) or the hub id to load from.

        Raises:
            ModelNotFoundError: ``model`` is neither an existing directory nor a hub id.
        """
        path = Path(self.model).expanduser()
        if path.is_dir():
            return str(path.resolve())
        if path.exists():
            msg = (
                f"model {self.model!r} is a file; give the directory of a Hugging Face checkpoint "
                "(config.json, weights, tokenizer files) or a hub id. GGUF files load with LocalGGMLLLM."
            )
            raise ModelNotFoundError(msg)
        if not _HUB_ID.match(self.model):
            msg = f"model directory not found: {self.model!r} (not a local directory, and not a hub id)"
            raise ModelNotFoundError(msg)
        return self.model

    def resolved_device(self) -> str:
        """``device`` with ``"auto"`` resolved (cuda, then mps, then cpu)."""
        torch = import_optional("torch")
        device = self.device
        if device == "auto":
            if torch.cuda.is_available():
                return "cuda"
            mps = getattr(torch.backends, "mps", None)
            return "mps" if mps is not None and mps.is_available() else "cpu"
        if device.startswith("cuda") and not torch.cuda.is_available():
            msg = (
                f"device={device!r} but torch sees no CUDA GPU (torch {torch.__version__}, "
                f"built for CUDA {torch.version.cuda}); use device='cpu' or 'auto'"
            )
            raise ValueError(msg)
        return device

    def cache_key(self) -> tuple[Hashable, ...]:
        """The model-cache key: the same key means the same loaded weights."""
        source = self.source()  # fails fast, before torch is imported
        device = self.resolved_device()
        dtype = "float32" if self.dtype == "auto" and device == "cpu" and not self.quantization else self.dtype
        return (
            "hf",
            source,
            self.revision,
            device,
            dtype,
            self.quantization,
            self.attn_implementation,
            self.trust_remote_code,
            _hashable(self.device_map),
            _hashable(self.model_kwargs),
        )


@dataclass
class HFBundle:
    """A loaded model and tokenizer plus what the generation loop needs about them."""

    model: Any
    tokenizer: Any
    name: str
    is_seq2seq: bool
    eos_ids: frozenset[int]
    pad_id: int
    context_window: int | None
    owned: bool = True
    """False for objects the user handed in: closing only drops our references."""

    @property
    def device(self) -> Any:
        """Where prompt tensors go (the device of the model's first parameters)."""
        return self.model.device

    def close(self) -> None:
        """Drop the model (called by the cache on eviction, after in-flight generations)."""
        on_cuda = self.owned and getattr(getattr(self.model, "device", None), "type", None) == "cuda"
        self.model = None
        self.tokenizer = None
        if self.owned:
            gc.collect()
            if on_cuda:
                import_optional("torch").cuda.empty_cache()


def _eos_ids(model: Any, tokenizer: Any) -> frozenset[int]:
    ids: set[int] = set()
    sources = (getattr(model, "generation_config", None), getattr(model, "config", None), tokenizer)
    for source in sources:
        value = getattr(source, "eos_token_id", None) if source is not None else None
        if isinstance(value, int):
            ids.add(value)
        elif isinstance(value, list | tuple):
            ids.update(int(v) for v in value if v is not None)
    return frozenset(ids)


def _context_window(model: Any, tokenizer: Any) -> int | None:
    config = getattr(model, "config", None)
    text_config = getattr(config, "get_text_config", None)
    configs = [config, text_config()] if callable(text_config) else [config]
    for cfg in configs:
        for attr in _CONTEXT_ATTRS:
            value = getattr(cfg, attr, None)
            if isinstance(value, int) and value > 0:
                return value
    limit = getattr(tokenizer, "model_max_length", None)
    if isinstance(limit, int) and 0 < limit < _UNBOUNDED_MODEL_MAX_LENGTH:
        return limit
    return None


def bundle_from_objects(model: Any, tokenizer: Any, *, name: str | None = None, owned: bool = False) -> HFBundle:
    """Wrap a loaded transformers model and tokenizer for the generation loop."""
    config = getattr(model, "config", None)
    eos = _eos_ids(model, tokenizer)
    pad = getattr(tokenizer, "pad_token_id", None)
    if pad is None:
        pad = getattr(getattr(model, "generation_config", None), "pad_token_id", None)
    if pad is None:
        pad = getattr(config, "pad_token_id", None)
    if pad is None:
        pad = min(eos) if eos else 0  # pad-token fallback: any id works under the attention mask
    model_name = name or getattr(model, "name_or_path", None) or getattr(config, "_name_or_path", None) or "unknown"
    if hasattr(model, "eval"):
        model.eval()
    return HFBundle(
        model=model,
        tokenizer=tokenizer,
        name=str(model_name),
        is_seq2seq=bool(getattr(config, "is_encoder_decoder", False)),
        eos_ids=eos,
        pad_id=int(pad),
        context_window=_context_window(model, tokenizer),
        owned=owned,
    )


def _quantization_config(spec: LoadSpec, torch: Any, transformers: Any) -> Any:
    if not torch.cuda.is_available():
        msg = (
            f"quantization={spec.quantization!r} runs through bitsandbytes, which needs a CUDA GPU, and torch "
            "sees none. Use quantization=None (and dtype='bfloat16'/'float16' on a GPU to save memory)."
        )
        raise ValueError(msg)
    if importlib.util.find_spec("bitsandbytes") is None:
        msg = (
            f"quantization={spec.quantization!r} needs the bitsandbytes package, which is not installed. "
            "Install it with: pip install bitsandbytes"
        )
        raise MissingDependencyError(msg, name="bitsandbytes")
    if spec.quantization == "8bit":
        return transformers.BitsAndBytesConfig(load_in_8bit=True)
    compute = torch.bfloat16 if spec.dtype in {"auto", "bfloat16"} else getattr(torch, spec.dtype)
    return transformers.BitsAndBytesConfig(
        load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_compute_dtype=compute, bnb_4bit_use_double_quant=True
    )


def load_bundle(spec: LoadSpec) -> HFBundle:
    """Load the model and tokenizer named by ``spec`` (the cache's loader).

    Raises:
        ModelNotFoundError: The directory or hub id does not exist (or, offline, is not
            in the local Hugging Face cache).
        MissingDependencyError: transformers/torch, bitsandbytes or accelerate is missing.
    """
    torch = import_optional("torch")
    transformers = import_optional("transformers")
    source = spec.source()
    device = spec.resolved_device()
    offline = _offline(spec.local_files_only)
    common: dict[str, Any] = {
        "revision": spec.revision,
        "trust_remote_code": spec.trust_remote_code,
        "local_files_only": offline,
        "cache_dir": spec.cache_dir,
    }
    try:
        config = transformers.AutoConfig.from_pretrained(source, **common)
        tokenizer = transformers.AutoTokenizer.from_pretrained(source, **common)
    except OSError as e:
        where = "in the local Hugging Face cache (downloads are off)" if offline else "locally or on the Hub"
        msg = f"model {spec.model!r} was not found {where}: {e}"
        raise ModelNotFoundError(msg) from e

    kwargs: dict[str, Any] = {**common, **dict(spec.model_kwargs)}
    dtype_arg = "dtype" if int(transformers.__version__.split(".")[0]) >= 5 else "torch_dtype"  # noqa: PLR2004
    if spec.dtype != "auto":
        kwargs[dtype_arg] = getattr(torch, spec.dtype)
    elif device == "cpu" and not spec.quantization:
        kwargs[dtype_arg] = torch.float32  # half precision on CPU is slow or unsupported
    else:
        kwargs[dtype_arg] = "auto"  # the checkpoint's own dtype
    if spec.attn_implementation is not None:
        kwargs["attn_implementation"] = spec.attn_implementation
    device_map = spec.device_map
    if spec.quantization:
        kwargs["quantization_config"] = _quantization_config(spec, torch, transformers)
        device_map = device_map if device_map is not None else {"": device}
    if device_map is not None:
        if importlib.util.find_spec("accelerate") is None:
            msg = "device_map (and quantization) need the accelerate package: pip install accelerate"
            raise MissingDependencyError(msg, name="accelerate")
        kwargs["device_map"] = device_map
    auto_class = transformers.AutoModelForSeq2SeqLM if config.is_encoder_decoder else transformers.AutoModelForCausalLM
    try:
        model = auto_class.from_pretrained(source, **kwargs)
    except OSError as e:
        msg = f"the weights of model {spec.model!r} could not be loaded: {e}"
        raise ModelNotFoundError(msg) from e
    if device_map is None:
        model.to(device)
    return bundle_from_objects(model, tokenizer, name=spec.model, owned=True)


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
            # No CUDA graphs: torch's CUDA-graph trees are bound to the thread that first
            # imported them, and generation runs in worker threads (streaming, async).
            # Seen on an H200: the "reduce-overhead" default failed with an AssertionError
            # in cudagraph_trees as soon as a second thread decoded a new shape.
            compile_config = getattr(import_optional("transformers"), "CompileConfig", None)
            if compile_config is not None:
                config.compile_config = compile_config(mode="default")
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
        if {"cache_implementation", "past_key_values"} & set(self.generate_kwargs):
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

    def __call__(self, input_ids: Any, scores: Any, **kwargs: Any) -> Any:  # noqa: ARG002 - criterion signature
        torch = import_optional("torch")
        length = int(input_ids.shape[1])
        if self.offset is None:  # seq2seq: the decoder prompt is everything before the first new token
            self.offset = length - 1
        new = input_ids[:, self.offset :].tolist()
        self.offset = length
        for row, tokens in zip(self.rows, new, strict=True):
            if not row.done:
                self._advance(row, tokens)
        cancelled = any(c.is_set() for c in self.cancels)
        done = [cancelled or row.done for row in self.rows]
        return torch.tensor(done, dtype=torch.bool, device=input_ids.device)

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
    with torch.inference_mode(), _attention_backends(device):
        bundle.model.generate(
            input_ids=torch.tensor(ids, dtype=torch.long, device=device),
            attention_mask=torch.tensor(mask, dtype=torch.long, device=device),
            generation_config=config,
            stopping_criteria=criteria,
            **kwargs,
        )
    if not any(c.is_set() for c in cancels):
        observer.finish_all()


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

    return iterate_in_thread(produce, name="langchain-localllm-hf-generate")


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

    try:
        generate_rows(bundle, prompts, budgets, sampling=sampling, stops=stops, emit=collect, rows=numbers)
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
