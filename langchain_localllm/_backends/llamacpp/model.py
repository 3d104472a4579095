"""What the LangChain classes over llama.cpp share: the two field groups and how they make a backend."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, ClassVar

from langchain_localllm._backends.llamacpp.backend import LlamaCppBackend
from langchain_localllm._backends.llamacpp.settings import (
    LLAMA_KWARGS_SET_BY_PACKAGE,
    LlamaCppLoadFields,
    LlamaCppSamplingFields,
    LoadSettings,
    Sampling,
    gguf_model_name,
)
from langchain_localllm._core.model import LocalModel
from langchain_localllm._core.settings import Settings, check_known
from langchain_localllm.errors import InvalidParameterError

__all__ = ["LlamaCppModel"]


class LlamaCppModel(LlamaCppSamplingFields, LlamaCppLoadFields, LocalModel):
    """The fields of ``LocalGGMLLLM`` and ``LocalGGMLChatModel``, over one :class:`LlamaCppBackend`."""

    _provider: ClassVar[str] = LlamaCppBackend.provider
    _model_kwargs_target: ClassVar[str] = "llama_cpp.Llama"
    _model_kwargs_set_by_package: ClassVar[Mapping[str, str]] = LLAMA_KWARGS_SET_BY_PACKAGE

    def _model_label(self, kwargs: dict[str, Any]) -> str:
        del kwargs
        return gguf_model_name(self)

    def _load_settings(self) -> LoadSettings:
        return LoadSettings.of(self, logits_all=self.logprobs is not None)

    def _new_backend(self, settings: Settings) -> LlamaCppBackend:
        assert isinstance(settings, LoadSettings)  # noqa: S101 - made by _load_settings
        return LlamaCppBackend(settings, verbose=bool(getattr(self, "verbose", False)))

    def _backend(self) -> LlamaCppBackend:
        backend = super()._backend()
        assert isinstance(backend, LlamaCppBackend)  # noqa: S101 - made by _new_backend
        backend.verbose = bool(getattr(self, "verbose", False))
        return backend

    def _call_options(self) -> frozenset[str]:
        return Sampling.names()

    def _sampling(self, options: dict[str, Any]) -> Sampling:
        check_known(options, Sampling.names())
        if options.get("logprobs") is not None and self.logprobs is None:
            msg = (
                "logprobs per call needs the model loaded with every position's logits: set the logprobs "
                "field on the instance (e.g. LocalGGMLLLM(..., logprobs=0)), then pass logprobs per call"
            )
            raise InvalidParameterError(msg)
        return Sampling.of(self, options)
