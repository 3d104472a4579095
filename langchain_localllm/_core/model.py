"""What every model class shares on the LangChain side of the backend interface.

:class:`LocalModel` keeps one backend per instance, made from the instance's load
fields and made again when they change; loading, unloading and token counting are
the backend's verbs.
"""

from __future__ import annotations

from abc import abstractmethod
from typing import Any, ClassVar

from langchain_core.language_models import LangSmithParams
from pydantic import BaseModel, PrivateAttr, field_validator, model_validator

from langchain_localllm._core.backend import BaseBackend
from langchain_localllm._core.settings import Settings
from langchain_localllm._core.stop import merge_stops

__all__ = ["LocalModel"]


class LocalModel(BaseModel):
    """A model class over one backend (mixed into the LangChain classes)."""

    load_on_init: bool = False
    """Load the weights in the constructor instead of on first use. Default: False."""

    stop: list[str] | None = None
    """Stop strings, merged with those given per call; never part of the output. Default: None."""

    allow_control_tokens_in_content: bool = False
    """Parse control-token text (``<|im_start|>``, ``<|eot_id|>``...) inside message contents as
    control tokens, as llama-cpp-python and transformers do. Off: contents (user, system, assistant,
    tool results, tool-call arguments) are literal text, so a user message or a retrieved document
    cannot forge conversation turns; benign prompts give the same token ids either way (see
    docs/security.md). Default: False."""

    _backend_slot: BaseBackend[Any, Any] | None = PrivateAttr(default=None)
    _ls_model_type: ClassVar[str] = "chat"
    _provider: ClassVar[str]
    """The backend's provider name (LangSmith's ``ls_provider``, ``model_provider`` in metadata)."""

    @field_validator("stop")
    @classmethod
    def _check_stop(cls, value: list[str] | None) -> list[str] | None:
        return merge_stops(value) if value is not None else None

    @abstractmethod
    def _load_settings(self) -> Settings:
        """The load settings from the instance's fields (validated, frozen)."""

    @abstractmethod
    def _new_backend(self, settings: Settings) -> BaseBackend[Any, Any]:
        """A backend for ``settings``."""

    def _backend(self) -> BaseBackend[Any, Any]:
        """This instance's backend (a new one when the load fields changed)."""
        settings = self._load_settings()
        backend = self._backend_slot
        if backend is None or backend.settings != settings:
            backend = self._new_backend(settings)
            self._backend_slot = backend
        return backend

    @model_validator(mode="after")
    def _load_if_asked(self) -> LocalModel:
        if self.load_on_init:
            self.load()
        return self

    def load(self) -> None:
        """Load the weights now (they otherwise load on first use)."""
        self._backend().load()

    def unload(self) -> bool:
        """Evict this instance's model from the process-wide cache.

        Every instance sharing the model is affected; the next call loads it again.
        Returns whether a model was loaded.
        """
        return self._backend().unload()

    def get_num_tokens(self, text: str) -> int:
        """Count the tokens of ``text`` with the model's own tokenizer (loads the model)."""
        return self._backend().count_tokens(text)

    def _model_label(self, kwargs: dict[str, Any]) -> str:
        """The model name reported in metadata and LangSmith parameters."""
        del kwargs
        return self._backend().model_name()

    def _get_ls_params(self, stop: list[str] | None = None, **kwargs: Any) -> LangSmithParams:
        """LangSmith's standard parameters: provider, model, type, temperature, max_tokens, stops."""
        params = LangSmithParams(
            ls_provider=self._provider,
            ls_model_name=str(kwargs.get("model") or self._model_label(kwargs)),
            ls_model_type="llm" if self._ls_model_type == "llm" else "chat",
            ls_temperature=kwargs.get("temperature", getattr(self, "temperature", None)),
        )
        max_tokens = kwargs.get("max_tokens", getattr(self, "max_tokens", None))
        if max_tokens is not None:
            params["ls_max_tokens"] = max_tokens
        stops = merge_stops(self.stop, stop)
        if stops:
            params["ls_stop"] = stops
        return params
