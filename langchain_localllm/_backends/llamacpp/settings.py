"""The llama.cpp backend's settings, declared once as pydantic fields.

:class:`LlamaCppLoadFields` (where the GGUF comes from, how llama.cpp loads it) and
:class:`LlamaCppSamplingFields` (per-call generation settings) are inherited by
``LocalGGMLLLM`` and ``LocalGGMLChatModel``; :class:`LoadSettings` and :class:`Sampling`
are the backend's frozen views of the same fields (see ``_core/settings.py``). Nothing
in the sampling group causes a reload, except ``logprobs``, which needs the model loaded
with ``logits_all``.
"""

from __future__ import annotations

import inspect
from collections.abc import Mapping
from typing import Any, Literal

from pydantic import Field, model_validator

from langchain_localllm._core.settings import FieldGroup, Settings, hashable
from langchain_localllm.errors import InvalidParameterError

__all__ = [
    "LLAMA_KWARGS_SET_BY_PACKAGE",
    "LlamaCppLoadFields",
    "LlamaCppSamplingFields",
    "LoadSettings",
    "Sampling",
    "check_llama_parameters",
    "gguf_model_name",
]

INT32_MAX = 2**31 - 1
"""llama.cpp keeps counts and sizes in 32-bit integers: larger values would wrap."""
UINT32_MAX = 2**32 - 1
MAX_PARALLEL = 256
"""llama.cpp's ``LLAMA_MAX_SEQ``: the most sequences one context holds."""
"""``LLAMA_DEFAULT_SEED`` (random); seeds are below it."""

NOT_LLAMA_KWARGS = {"n_ctx", "model_kwargs", "use_extra_bufts", "max_parallel"}
"""Load settings passed to llama.cpp another way (``n_ctx`` resolved, the model parameters)."""

SOURCE_FIELDS: set[str] = {"model_path", "repo_id", "filename", "revision", "cache_dir", "local_files_only"}
"""Load fields that say where the file is, not how llama.cpp loads it."""

LLAMA_KWARGS_SET_BY_PACKAGE: dict[str, str] = {
    "model_path": "the model_path field (or repo_id + filename)",
    "verbose": (
        "the verbose field, or the 'langchain_localllm.llama_cpp' logger: llama.cpp's log is routed there, "
        "not to stderr"
    ),
    "n_ctx": "the n_ctx field (the context window every prompt is checked against)",
    "logits_all": "the logprobs field (it loads the model with every position's logits)",
    "chat_format": "chat_template (chat models) or prompt_format (LocalGGMLLLM): the package renders prompts itself",
    "chat_handler": "chat_template (chat models) or prompt_format (LocalGGMLLLM): the package renders prompts itself",
}
"""``model_kwargs`` keys refused besides the classes' fields: what ``load_llama`` passes to
``llama_cpp.Llama`` itself or what this package does instead, with what to use."""


def check_llama_parameters(model_kwargs: Mapping[str, Any], llama_class: Any) -> None:
    """Refuse ``model_kwargs`` that ``llama_cpp.Llama`` does not take (it would ignore them silently).

    Raises:
        InvalidParameterError: Naming the unknown keys.
    """
    try:
        parameters = inspect.signature(llama_class.__init__).parameters
    except (TypeError, ValueError):  # no signature to read: let llama.cpp decide
        return
    known = {name for name, p in parameters.items() if p.kind not in (p.VAR_KEYWORD, p.VAR_POSITIONAL)}
    unknown = sorted(set(model_kwargs) - known)
    if unknown:
        msg = (
            f"model_kwargs {unknown} are not parameters of llama_cpp.Llama (which would ignore them); "
            "see llama-cpp-python's Llama() for the names it takes"
        )
        raise InvalidParameterError(msg)


def gguf_model_name(fields: LlamaCppLoadFields) -> str:
    """``repo_id/filename``, or the file's name without ``.gguf`` (the name reported in metadata)."""
    if fields.repo_id is not None:
        return f"{fields.repo_id}/{fields.filename}"
    return (fields.model_path or "").replace("\\", "/").rsplit("/", 1)[-1].removesuffix(".gguf")


class LlamaCppLoadFields(FieldGroup):
    """Where the GGUF file comes from and how llama.cpp loads it (a change loads the model again)."""

    model_path: str | None = None
    """Path of a local ``.gguf`` file. Either this or ``repo_id`` + ``filename``. Default: None."""

    repo_id: str | None = None
    """Hugging Face Hub repository holding the GGUF file (with ``filename``). Default: None."""

    filename: str | None = None
    """File name of the GGUF inside ``repo_id``. Default: None."""

    revision: str | None = None
    """Hub revision (branch, tag or commit) for ``repo_id``. Default: None (``main``)."""

    cache_dir: str | None = None
    """Hugging Face cache directory for downloads. Default: None (the hub's default cache)."""

    local_files_only: bool = False
    """Never download; use only the local Hugging Face cache. ``HF_HUB_OFFLINE=1`` (or
    ``TRANSFORMERS_OFFLINE=1``) does the same. Default: False."""

    n_ctx: int | None = Field(default=None, ge=1, le=INT32_MAX)
    """Context window in tokens. Default: None = the model's trained context, capped at 4096."""

    n_batch: int = Field(default=512, ge=1, le=INT32_MAX)
    """Prompt tokens evaluated per llama.cpp batch (prefill speed). Default: 512."""

    n_ubatch: int | None = Field(default=None, ge=1, le=INT32_MAX)
    """Physical micro-batch size. Default: None (llama.cpp's default, 512)."""

    n_threads: int | None = Field(default=None, ge=1, le=INT32_MAX)
    """Threads for generation. Default: None (llama.cpp picks from the CPU count)."""

    n_threads_batch: int | None = Field(default=None, ge=1, le=INT32_MAX)
    """Threads for prompt processing. Default: None (llama.cpp's choice)."""

    n_gpu_layers: int = Field(default=0, ge=-1, le=INT32_MAX)
    """Layers to offload to the GPU; -1 offloads all. Default: 0 (CPU only)."""

    main_gpu: int | None = Field(default=None, ge=0, le=INT32_MAX)
    """GPU used for the model when not split. Default: None (llama.cpp's default, 0)."""

    split_mode: int | None = Field(default=None, ge=0, le=INT32_MAX)
    """How to split across GPUs (``llama_cpp.LLAMA_SPLIT_MODE_*``). Default: None (by layer)."""

    tensor_split: list[float] | None = None
    """Fraction of the model per GPU. Default: None (llama.cpp's default)."""

    flash_attn: bool | None = None
    """Use flash attention. Default: None (llama.cpp's default)."""

    type_k: int | None = Field(default=None, ge=0, le=INT32_MAX)
    """KV cache K type (``llama_cpp.GGML_TYPE_*``), e.g. 8 for Q8_0. Default: None (F16)."""

    type_v: int | None = Field(default=None, ge=0, le=INT32_MAX)
    """KV cache V type (``llama_cpp.GGML_TYPE_*``). Default: None (F16)."""

    rope_freq_base: float | None = None
    """RoPE base frequency; passed only when set. Default: None (from the model)."""

    rope_freq_scale: float | None = None
    """RoPE frequency scale; passed only when set. Default: None (from the model)."""

    rope_scaling_type: int | None = Field(default=None, ge=-1, le=INT32_MAX)
    """RoPE scaling type (``llama_cpp.LLAMA_ROPE_SCALING_TYPE_*``). Default: None (from the model)."""

    use_mmap: bool = True
    """Memory-map the model file. Default: True."""

    use_mlock: bool = False
    """Lock the model in RAM. Default: False."""

    lora_path: str | None = None
    """Path of a LoRA adapter (GGUF) to apply. Default: None."""

    lora_scale: float | None = None
    """Scale of the LoRA adapter. Default: None (1.0)."""

    use_extra_bufts: bool | None = None
    """Let llama.cpp repack weights into its extra CPU buffer types (AMX, repacked quants).
    Default: None = on, except on CPUs with AMX-INT8, where llama.cpp's AMX kernels crash the
    process on quantized models (SIGSEGV in llama_decode; ggml-org/llama.cpp#20824)."""

    max_parallel: int = Field(default=1, ge=1, le=MAX_PARALLEL)
    """How many generations on this model share decode steps (continuous batching). 1: one
    generation at a time, each stepping the model's own context. More: one scheduler thread
    per loaded model runs every call (``invoke``, ``stream``, ``batch``, async, any thread)
    in one of ``max_parallel`` slots of a second context holding ``n_ctx`` KV cells per slot
    (each call still gets an ``n_ctx`` window), so the KV memory is ``max_parallel`` times
    that of one context. See docs/llamacpp.md. Default: 1."""

    model_kwargs: dict[str, Any] = Field(default_factory=dict)
    """Further keyword arguments for ``llama_cpp.Llama`` (part of the cache key). Default: {}."""

    @model_validator(mode="after")
    def _check_source(self) -> LlamaCppLoadFields:
        if self.model_path is None and (self.repo_id is None or self.filename is None):
            msg = "give model_path (a local .gguf file) or both repo_id and filename"
            raise ValueError(msg)
        if self.model_path is not None and self.repo_id is not None:
            msg = "give either model_path or repo_id + filename, not both"
            raise ValueError(msg)
        return self


class LoadSettings(LlamaCppLoadFields, Settings):
    """The load fields of one model instance, frozen (with what the sampling fields imply)."""

    logits_all: bool = False
    """Keep every position's logits (needed for ``logprobs``)."""

    def llama_kwargs(self, n_ctx: int) -> dict[str, Any]:
        """Keyword arguments for ``llama_cpp.Llama``: every setting that is set, plus ``n_ctx``."""
        kwargs = self.model_dump(exclude=SOURCE_FIELDS | NOT_LLAMA_KWARGS, exclude_none=True)
        return {"n_ctx": n_ctx, **kwargs, **self.model_kwargs}

    def load_key(self) -> Any:
        """The half of the cache key that says how the file is loaded (not where it came from)."""
        return hashable(self.model_dump(exclude=SOURCE_FIELDS))


class LlamaCppSamplingFields(FieldGroup):
    """Per-call generation settings for llama.cpp models (each also a call option)."""

    temperature: float = Field(default=0.8, ge=0.0)
    """Sampling temperature; 0 is greedy (deterministic). Default: 0.8 (llama.cpp's)."""

    top_p: float = Field(default=0.95, ge=0.0, le=1.0)
    """Nucleus sampling threshold. Default: 0.95."""

    top_k: int = Field(default=40, ge=0, le=INT32_MAX)
    """Sample among the k most likely tokens; 0 disables. Default: 40."""

    min_p: float = Field(default=0.05, ge=0.0, le=1.0)
    """Drop tokens below this fraction of the best token's probability. Default: 0.05."""

    repeat_penalty: float = Field(default=1.0, gt=0.0)
    """Penalty for repeating recent tokens; 1.0 disables. Default: 1.0."""

    frequency_penalty: float = 0.0
    """OpenAI-style frequency penalty. Default: 0.0."""

    presence_penalty: float = 0.0
    """OpenAI-style presence penalty. Default: 0.0."""

    max_tokens: int | None = Field(default=256, ge=1, le=INT32_MAX)
    """Most tokens to generate; None = until end of turn or the context is full. Default: 256."""

    seed: int | None = Field(default=None, ge=0, le=UINT32_MAX - 1)
    """Sampling seed for reproducible non-greedy output. Default: None (random per call)."""

    logprobs: int | None = Field(default=None, ge=0, le=INT32_MAX)
    """Return each token's log-probability and this many top alternatives in
    ``generation_info["logprobs"]``. Loads the model with ``logits_all`` (a separate cache
    entry). Default: None (off)."""

    grammar: str | None = None
    """A GBNF grammar that constrains the output. Default: None."""

    prefix_cache: Literal["exact", "longest"] = "exact"
    """How a call reuses the KV cache the previous call on the model left. ``"exact"``: only
    the prompt prefix computed in full aligned prefill chunks, so the rest is evaluated
    exactly as on a fresh context and the same input always gives the same greedy answer.
    ``"longest"``: every matching token (llama-cpp-python's behaviour; a little faster on
    multi-turn chats, but greedy answers can change in the last bits with what ran
    before). Default: "exact"."""

    json_schema: dict[str, Any] | None = None
    """A JSON schema the output must match (converted to a GBNF grammar). Default: None."""

    @model_validator(mode="after")
    def _check_grammar_options(self) -> LlamaCppSamplingFields:
        if self.grammar is not None and self.json_schema is not None:
            msg = "give grammar or json_schema, not both"
            raise ValueError(msg)
        return self


class Sampling(LlamaCppSamplingFields, Settings):
    """The sampling settings of one call: the fields, overridden by that call's options."""
