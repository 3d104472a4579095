"""The transformers backend, loading: where a model comes from, how it is placed, the loader.

:class:`LoadSpec` says where a model comes from and how to place it; its
:meth:`~LoadSpec.cache_key` is the key in the process-wide model cache and
:func:`load_bundle` is the loader. Objects the user already has (a pipeline, a model
and tokenizer) are wrapped by :func:`bundle_from_objects`. ``torch`` and
``transformers`` are imported only inside functions.
"""

from __future__ import annotations

import gc
import importlib.util
import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from langchain_localllm._backends.transformers.checkpoint import check_checkpoint, from_pretrained
from langchain_localllm._backends.transformers.settings import LoadSpec
from langchain_localllm._core.hub import forbid_hub_network, offline
from langchain_localllm._core.imports import import_optional
from langchain_localllm._core.literal import ControlTokens
from langchain_localllm.errors import InvalidParameterError, LocalLLMError, MissingDependencyError, ModelFormatError

__all__ = ["HFBundle", "bundle_from_objects", "context_window_on_disk", "load_bundle", "require_generative"]

logger = logging.getLogger("langchain_localllm")

_CONTEXT_ATTRS = ("max_position_embeddings", "n_positions", "max_sequence_length", "seq_length", "n_ctx")
_UNBOUNDED_MODEL_MAX_LENGTH = 1_000_000


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
    controls: ControlTokens = field(default_factory=lambda: ControlTokens(()))
    """The tokenizer's special tokens' texts (what user content must never turn into)."""
    generative: bool = True
    """False for an encoder without a language-model head (``BertModel``...): it embeds, it cannot generate."""
    scheduler: Any = None
    """With ``max_parallel > 1``: its ``scheduler.Scheduler``, made on first use under the model's lock."""

    @property
    def device(self) -> Any:
        """Where prompt tensors go (the device of the model's first parameters)."""
        return self.model.device

    def close(self) -> None:
        """Drop the model (called by the cache on eviction, after in-flight generations)."""
        on_cuda = self.owned and getattr(getattr(self.model, "device", None), "type", None) == "cuda"
        if self.scheduler is not None:  # its worker fails its jobs and ends when it next wakes
            self.scheduler.stop()
            self.scheduler = None
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


def context_window_on_disk(spec: LoadSpec) -> int | None:
    """The context window from the checkpoint's ``config.json`` if it is already on disk (never downloads).

    Read from a local directory, or from the Hugging Face cache for a hub id; None when
    the file is not there or names no context length (the loaded model may still know it).
    """
    try:
        source = spec.source()
        if Path(source).is_dir():
            path: Any = Path(source) / "config.json"
        else:
            from huggingface_hub import try_to_load_from_cache  # noqa: PLC0415 - only for hub ids

            path = try_to_load_from_cache(source, "config.json", cache_dir=spec.cache_dir, revision=spec.revision)
            if not isinstance(path, str):
                return None
        config = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError, LocalLLMError):
        return None
    if not isinstance(config, dict):
        return None
    for cfg in (config, config.get("text_config")):
        if isinstance(cfg, dict):
            for attr in _CONTEXT_ATTRS:
                value = cfg.get(attr)
                if isinstance(value, int) and not isinstance(value, bool) and value > 0:
                    return value
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
        controls=ControlTokens(_special_texts(tokenizer)),
        generative=_can_generate(model),
    )


def _can_generate(model: Any) -> bool:
    """Whether ``model`` has a head that ``generate`` can decode with (transformers' own ``can_generate``)."""
    check = getattr(model, "can_generate", None)
    return bool(check()) if callable(check) else hasattr(model, "generate")


def require_generative(bundle: HFBundle) -> None:
    """Refuse to generate with an encoder-only model, naming what to use instead.

    Raises:
        ModelFormatError: ``bundle`` holds a model without a language-model head.
    """
    if not bundle.generative:
        kind = type(bundle.model).__name__
        msg = (
            f"{bundle.name} is an encoder without a language-model head ({kind}): it can embed text but "
            "not generate it. Use HFLocalEmbeddings for it, or a checkpoint with a causal-LM or seq2seq head "
            "to chat."
        )
        raise ModelFormatError(msg)


_GENERATIVE_SUFFIXES = ("ForCausalLM", "LMHeadModel", "ForConditionalGeneration")


def auto_class_name(config: Any) -> str:
    """The transformers auto class for a checkpoint's config.

    Seq2seq configs get ``AutoModelForSeq2SeqLM``; a checkpoint whose ``architectures`` name a
    generative head (``...ForCausalLM``, ``...LMHeadModel``, ``...ForConditionalGeneration``), or
    that names none and whose model type has a causal-LM class (and is not of the BERT family
    unless ``is_decoder``), gets ``AutoModelForCausalLM``.
    The rest are encoders (``BertModel``, ``XLMRobertaModel``, ``MPNetModel``..., as
    sentence-transformers checkpoints are): ``AutoModel``, the bare model without a head, which
    only embeddings use. Loading those as causal LMs would add a randomly initialised LM head
    (and ``BertLMHeadModel`` is a decoder), or fail for types without one.
    """
    if getattr(config, "is_encoder_decoder", False):
        return "AutoModelForSeq2SeqLM"
    architectures = [str(a) for a in getattr(config, "architectures", None) or []]
    if architectures:
        generative = any(a.endswith(_GENERATIVE_SUFFIXES) for a in architectures)
        return "AutoModelForCausalLM" if generative else "AutoModel"
    # No architectures (a hand-made config): a type with a causal-LM class is generative, unless it
    # is of the masked-LM (BERT) family and not configured as a decoder.
    auto = import_optional("transformers").models.auto.modeling_auto
    model_type = getattr(config, "model_type", None)
    encoder_family = model_type in auto.MODEL_FOR_MASKED_LM_MAPPING_NAMES and not getattr(config, "is_decoder", False)
    generative = model_type in auto.MODEL_FOR_CAUSAL_LM_MAPPING_NAMES and not encoder_family
    return "AutoModelForCausalLM" if generative else "AutoModel"


def _special_texts(tokenizer: Any) -> list[str]:
    """The texts the tokenizer turns into special tokens (its special and special added tokens)."""
    texts = [str(t) for t in getattr(tokenizer, "all_special_tokens", []) or []]
    decoder = getattr(tokenizer, "added_tokens_decoder", {}) or {}
    texts.extend(str(getattr(t, "content", t)) for t in decoder.values() if getattr(t, "special", False))
    return texts


def _quantization_config(spec: LoadSpec, torch: Any, transformers: Any) -> Any:
    if not torch.cuda.is_available():
        msg = (
            f"quantization={spec.quantization!r} runs through bitsandbytes, which needs a CUDA GPU, and torch "
            "sees none. Use quantization=None (and dtype='bfloat16'/'float16' on a GPU to save memory)."
        )
        raise InvalidParameterError(msg)
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
    no_downloads = offline(spec.local_files_only)
    local = Path(source).is_dir()
    if local:
        check_checkpoint(Path(source))
    if no_downloads or local:
        forbid_hub_network()
    common: dict[str, Any] = {
        "revision": spec.revision,
        "trust_remote_code": spec.trust_remote_code,
        "local_files_only": no_downloads,
        "cache_dir": spec.cache_dir,
    }
    config = from_pretrained(transformers.AutoConfig.from_pretrained, source, "config", local=local, **common)
    tokenizer = from_pretrained(transformers.AutoTokenizer.from_pretrained, source, "tokenizer", local=local, **common)

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
    auto_class = getattr(transformers, auto_class_name(config))
    model = from_pretrained(auto_class.from_pretrained, source, "weights", local=local, **kwargs)
    if device_map is None:
        model.to(device)
    return bundle_from_objects(model, tokenizer, name=spec.model, owned=True)
