"""Fields and loading shared by the model classes over llama.cpp.

:class:`LlamaCppLoadMixin` holds the load-time settings (where the GGUF file comes
from and how llama.cpp loads it), resolves the file, builds the cache key and hands
out the shared, locked model for one generation. Sampling settings live on the
public classes: they never cause a reload.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from pydantic import BaseModel, Field, PrivateAttr, model_validator

from langchain_localllm._cache import LoadedModel, model_cache
from langchain_localllm._llamacpp import LlamaModel, LoadSettings, cache_key, load_llama, native_logger
from langchain_localllm.errors import ModelNotFoundError

logger = logging.getLogger("langchain_localllm")


class LlamaCppLoadMixin(BaseModel):
    """Where the GGUF file comes from and how llama.cpp loads it."""

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
    """Never download; use only the local Hugging Face cache. ``HF_HUB_OFFLINE=1`` does the
    same. Default: False."""

    n_ctx: int | None = Field(default=None, ge=1)
    """Context window in tokens. Default: None = the model's trained context, capped at 4096."""

    n_batch: int = Field(default=512, ge=1)
    """Prompt tokens evaluated per llama.cpp batch (prefill speed). Default: 512."""

    n_ubatch: int | None = Field(default=None, ge=1)
    """Physical micro-batch size. Default: None (llama.cpp's default, 512)."""

    n_threads: int | None = Field(default=None, ge=1)
    """Threads for generation. Default: None (llama.cpp picks from the CPU count)."""

    n_threads_batch: int | None = Field(default=None, ge=1)
    """Threads for prompt processing. Default: None (llama.cpp's choice)."""

    n_gpu_layers: int = Field(default=0, ge=-1)
    """Layers to offload to the GPU; -1 offloads all. Default: 0 (CPU only)."""

    main_gpu: int | None = None
    """GPU used for the model when not split. Default: None (llama.cpp's default, 0)."""

    split_mode: int | None = None
    """How to split across GPUs (``llama_cpp.LLAMA_SPLIT_MODE_*``). Default: None (by layer)."""

    tensor_split: list[float] | None = None
    """Fraction of the model per GPU. Default: None (llama.cpp's default)."""

    flash_attn: bool | None = None
    """Use flash attention. Default: None (llama.cpp's default)."""

    type_k: int | None = None
    """KV cache K type (``llama_cpp.GGML_TYPE_*``), e.g. 8 for Q8_0. Default: None (F16)."""

    type_v: int | None = None
    """KV cache V type (``llama_cpp.GGML_TYPE_*``). Default: None (F16)."""

    rope_freq_base: float | None = None
    """RoPE base frequency; passed only when set. Default: None (from the model)."""

    rope_freq_scale: float | None = None
    """RoPE frequency scale; passed only when set. Default: None (from the model)."""

    rope_scaling_type: int | None = None
    """RoPE scaling type (``llama_cpp.LLAMA_ROPE_SCALING_TYPE_*``). Default: None (from the model)."""

    use_mmap: bool = True
    """Memory-map the model file. Default: True."""

    use_mlock: bool = False
    """Lock the model in RAM. Default: False."""

    lora_path: str | None = None
    """Path of a LoRA adapter (GGUF) to apply. Default: None."""

    lora_scale: float | None = None
    """Scale of the LoRA adapter. Default: None (1.0)."""

    model_kwargs: dict[str, Any] = Field(default_factory=dict)
    """Further keyword arguments for ``llama_cpp.Llama`` (part of the cache key). Default: {}."""

    load_on_init: bool = False
    """Load the weights in the constructor instead of on first use. Default: False."""

    _resolved_path: Path | None = PrivateAttr(default=None)

    @model_validator(mode="after")
    def _check_source(self) -> LlamaCppLoadMixin:
        if self.model_path is None and (self.repo_id is None or self.filename is None):
            msg = "give model_path (a local .gguf file) or both repo_id and filename"
            raise ValueError(msg)
        if self.model_path is not None and self.repo_id is not None:
            msg = "give either model_path or repo_id + filename, not both"
            raise ValueError(msg)
        return self

    @model_validator(mode="after")
    def _load_if_asked(self) -> LlamaCppLoadMixin:
        if self.load_on_init:
            self.load()
        return self

    def _model_name(self) -> str:
        """``repo_id/filename``, or the file's name without ``.gguf``."""
        if self.repo_id is not None:
            return f"{self.repo_id}/{self.filename}"
        return (self.model_path or "").replace("\\", "/").rsplit("/", 1)[-1].removesuffix(".gguf")

    def _load_settings(self) -> LoadSettings:
        return LoadSettings(
            n_ctx=self.n_ctx,
            n_batch=self.n_batch,
            n_ubatch=self.n_ubatch,
            n_threads=self.n_threads,
            n_threads_batch=self.n_threads_batch,
            n_gpu_layers=self.n_gpu_layers,
            main_gpu=self.main_gpu,
            split_mode=self.split_mode,
            tensor_split=tuple(self.tensor_split) if self.tensor_split else None,
            flash_attn=self.flash_attn,
            type_k=self.type_k,
            type_v=self.type_v,
            rope_freq_base=self.rope_freq_base,
            rope_freq_scale=self.rope_freq_scale,
            rope_scaling_type=self.rope_scaling_type,
            use_mmap=self.use_mmap,
            use_mlock=self.use_mlock,
            lora_path=self.lora_path,
            lora_scale=self.lora_scale,
            logits_all=self._needs_logits_all(),
            extra=tuple(sorted((k, _hashable(v)) for k, v in self.model_kwargs.items())),
        )

    def _needs_logits_all(self) -> bool:
        """Whether the model must keep every position's logits (overridden by the sampling mixin)."""
        return False

    def _model_file(self) -> Path:
        """Resolve the GGUF file (downloading it only if allowed). Memoized."""
        if self._resolved_path is not None:
            return self._resolved_path
        path = Path(self.model_path).expanduser() if self.model_path is not None else self._download()
        self._resolved_path = path
        return path

    def _download(self) -> Path:
        from huggingface_hub import hf_hub_download  # noqa: PLC0415
        from huggingface_hub.errors import (  # noqa: PLC0415
            EntryNotFoundError,
            LocalEntryNotFoundError,
            RepositoryNotFoundError,
            RevisionNotFoundError,
        )

        assert self.repo_id is not None  # noqa: S101 - guaranteed by _check_source
        assert self.filename is not None  # noqa: S101
        offline = self.local_files_only or os.environ.get("HF_HUB_OFFLINE", "").lower() in {"1", "true", "yes", "on"}
        try:
            return Path(
                hf_hub_download(
                    repo_id=self.repo_id,
                    filename=self.filename,
                    revision=self.revision,
                    cache_dir=self.cache_dir,
                    local_files_only=offline,
                )
            )
        except (LocalEntryNotFoundError, EntryNotFoundError, RepositoryNotFoundError, RevisionNotFoundError) as e:
            where = "in the local Hugging Face cache (downloads are disabled)" if offline else "on the Hub"
            msg = (
                f"{self.filename!r} from {self.repo_id!r} was not found {where}: {e}. "
                "Check repo_id/filename, or download it first (huggingface-cli download "
                f"{self.repo_id} {self.filename}) and set model_path."
            )
            raise ModelNotFoundError(msg) from e

    def _cache_key(self) -> tuple[Any, ...]:
        path = self._model_file()
        try:
            return cache_key(path, self._load_settings())
        except FileNotFoundError as e:
            msg = f"model file not found: {path}"
            raise ModelNotFoundError(msg) from e

    @contextmanager
    def _use_model(self) -> Iterator[LoadedModel[LlamaModel]]:
        """Hold the loaded model (loading it once per process) for one generation."""
        if self.verbose_native_log():
            native_logger.setLevel(logging.DEBUG)
        key = self._cache_key()
        path = self._model_file()
        settings = self._load_settings()
        with model_cache.use(key, lambda: load_llama(path, settings)) as entry:
            yield entry

    def verbose_native_log(self) -> bool:
        """Whether llama.cpp's native log should be raised to DEBUG (``verbose``)."""
        return bool(getattr(self, "verbose", False))

    def load(self) -> None:
        """Load the weights now (they otherwise load on first use)."""
        with self._use_model():
            pass

    def unload(self) -> bool:
        """Evict this instance's model from the process-wide cache.

        Every instance sharing the model is affected; the next call loads it again.
        Returns whether a model was loaded.
        """
        try:
            key = self._cache_key()
        except ModelNotFoundError:
            return False
        return model_cache.evict(key)


def _hashable(value: Any) -> Any:
    if isinstance(value, dict):
        return tuple(sorted((k, _hashable(v)) for k, v in value.items()))
    if isinstance(value, list | tuple):
        return tuple(_hashable(v) for v in value)
    return value
