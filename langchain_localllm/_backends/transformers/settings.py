"""The transformers backend's settings, declared once as pydantic fields.

:class:`HFLoadFields` (where a checkpoint comes from and how it is placed) and
:class:`HFSamplingFields` (per-call generation settings) are inherited by
``HFLocalChatModel``; :class:`LoadSpec` and :class:`Sampling` are the backend's frozen
views of the same fields (see ``_core/settings.py``).

Which settings win over the model's own ``generation_config.json``: ``temperature``
always does (0 means greedy whatever the file says); ``top_p``, ``top_k`` and
``repetition_penalty`` do when set, and are the file's when None.
"""

from __future__ import annotations

import re
from collections.abc import Hashable
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, field_validator

from langchain_localllm._core.imports import import_optional
from langchain_localllm._core.settings import FieldGroup, Settings, hashable
from langchain_localllm.errors import InvalidParameterError, ModelNotFoundError

__all__ = [
    "FORBIDDEN_GENERATE_KWARGS",
    "HF_KWARGS_SET_BY_PACKAGE",
    "HFLoadFields",
    "HFSamplingFields",
    "LoadSpec",
    "Sampling",
]

_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*(/[\w.-]+)?$")
_DEVICE = re.compile(r"^(auto|cpu|mps|meta|(cuda|xpu|npu|hpu)(:\d+)?)$")

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


_QUANTIZATION = "the quantization field ('8bit' or '4bit'; the package builds the BitsAndBytesConfig)"

HF_KWARGS_SET_BY_PACKAGE: dict[str, str] = {
    "pretrained_model_name_or_path": "the model field",
    "torch_dtype": "the dtype field",
    "dtype": "the dtype field",
    "device_map": "the device_map field (or device)",
    "quantization_config": _QUANTIZATION,
    "load_in_8bit": _QUANTIZATION,
    "load_in_4bit": _QUANTIZATION,
    "revision": "the revision field (it applies to the config and tokenizer too)",
    "cache_dir": "the cache_dir field (it applies to the config and tokenizer too)",
    "local_files_only": "the local_files_only field (it applies to the config and tokenizer too)",
    "trust_remote_code": "the trust_remote_code field (it applies to the config and tokenizer too)",
    "attn_implementation": "the attn_implementation field",
}
"""``model_kwargs`` keys ``load_bundle`` passes to ``from_pretrained`` itself, with the field to use
(every other field of the class is refused too)."""


class HFLoadFields(FieldGroup):
    """Where the checkpoint comes from and how it is loaded (a change loads the model again)."""

    model: str
    """A local checkpoint directory or a Hugging Face Hub id (e.g. ``"Qwen/Qwen2.5-0.5B-Instruct"``).
    Hub ids resolve from the local Hugging Face cache and download only when allowed. Required."""

    revision: str | None = None
    """Hub revision (branch, tag or commit). Default: None (``main``)."""

    cache_dir: str | None = None
    """Hugging Face cache directory. Default: None (the hub's default cache)."""

    local_files_only: bool = False
    """Never download; use only local files. ``HF_HUB_OFFLINE=1`` (or ``TRANSFORMERS_OFFLINE=1``)
    does the same. Default: False."""

    trust_remote_code: bool = False
    """Allow custom modelling code shipped with the checkpoint to run. Default: False."""

    device: str = "auto"
    """Where the model runs: ``"auto"`` (CUDA, else MPS, else CPU), ``"cpu"``, ``"cuda"``,
    ``"cuda:1"``, ``"mps"``. Ignored when ``device_map`` is set. Default: "auto"."""

    device_map: str | dict[str, Any] | None = None
    """Passed to ``from_pretrained`` to spread a model over several devices (e.g. ``"auto"``;
    needs ``accelerate``). Default: None (the whole model on ``device``)."""

    dtype: Literal["auto", "float32", "float16", "bfloat16"] = "auto"
    """Weight precision. ``"auto"``: float32 on CPU, the checkpoint's own dtype on a GPU.
    Default: "auto"."""

    quantization: Literal["8bit", "4bit"] | None = None
    """Load the weights quantized with bitsandbytes (CUDA only). Default: None."""

    attn_implementation: str | None = None
    """Attention kernel passed to ``from_pretrained`` (``"sdpa"``, ``"eager"``,
    ``"flash_attention_2"``). Default: None (transformers' choice)."""

    model_kwargs: dict[str, Any] = Field(default_factory=dict)
    """Further keyword arguments for ``from_pretrained`` (part of the cache key). Default: {}."""

    @field_validator("device")
    @classmethod
    def _check_device(cls, value: str) -> str:
        if not _DEVICE.match(value):
            msg = f"device must be 'auto', 'cpu', 'cuda', 'cuda:N', 'mps' (or xpu/npu/hpu[:N]), got {value!r}"
            raise ValueError(msg)
        return value


MAX_PARALLEL = 256
"""The most generations ``max_parallel`` lets share one model's decode steps."""


class LoadSpec(HFLoadFields, Settings):
    """The load fields of one model instance, frozen."""

    max_parallel: int = Field(default=1, ge=1, le=MAX_PARALLEL)
    """The chat model's continuous-batching slot count (not part of the cache key: the weights are shared)."""

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
            raise InvalidParameterError(msg)
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
            hashable(self.device_map),
            hashable(self.model_kwargs),
        )


class HFSamplingFields(FieldGroup):
    """Per-call generation settings for transformers models (each also a call option)."""

    temperature: float = Field(default=0.0, ge=0.0)
    """Sampling temperature; 0 is greedy (deterministic), whatever the model's generation config
    says. Default: 0.0."""

    top_p: float | None = Field(default=None, ge=0.0, le=1.0)
    """Nucleus sampling threshold (when sampling). Default: None (the model's generation config)."""

    top_k: int | None = Field(default=None, ge=0, le=2**31 - 1)
    """Sample among the k most likely tokens (when sampling). Default: None (the model's generation config)."""

    repetition_penalty: float | None = Field(default=None, gt=0.0)
    """Penalty for repeated tokens; 1.0 disables. Default: None (the model's generation config)."""

    max_tokens: int = Field(default=256, ge=1, le=2**31 - 1)
    """Most tokens to generate per answer (capped by the context window). Default: 256."""

    seed: int | None = Field(default=None, ge=0, le=2**63 - 1)
    """Seed for ``torch.manual_seed`` before sampling (process-wide RNG). Default: None."""

    generate_kwargs: dict[str, Any] = Field(default_factory=dict)
    """Further keyword arguments for ``model.generate`` (e.g. ``no_repeat_ngram_size``). Keys
    that have a field here (``max_new_tokens``, ``temperature``...) are rejected; per call they
    are merged over the field's. Default: {}."""

    static_cache: bool | None = None
    """Decode with a static KV cache, which transformers compiles on CUDA with CUDA graphs
    (about 7x the tokens/s of the default dynamic cache at batch 1, measured on an H200; the
    first call per cache length and batch shape pays the compile, 30 s to 100 s there). None =
    on when the model is on CUDA and supports it; False = never; True = also off CUDA (static
    cache without compilation). Default: None."""

    @field_validator("generate_kwargs")
    @classmethod
    def _check_generate_kwargs(cls, value: dict[str, Any]) -> dict[str, Any]:
        for key in value:
            if key in FORBIDDEN_GENERATE_KWARGS:
                msg = f"generate_kwargs[{key!r}] is not allowed: {FORBIDDEN_GENERATE_KWARGS[key]}"
                raise ValueError(msg)
        return value


class Sampling(HFSamplingFields, Settings):
    """The sampling settings of one call: the fields, overridden by that call's options."""

    constraint: str | None = None
    """A llguidance grammar every answer must match (constrained decoding), or None."""
