"""What every model class shares on the LangChain side of the backend interface.

:class:`BackendOwner` keeps one backend per instance, made from the instance's load
fields and made again when they change; loading and unloading are the backend's verbs.
:class:`LocalModel` adds what the generating classes share (stops, token counting,
LangSmith parameters); the embedding classes use :class:`BackendOwner` directly.
"""

from __future__ import annotations

from abc import abstractmethod
from collections.abc import Mapping
from typing import Any, ClassVar

from langchain_core.language_models import LangSmithParams
from pydantic import BaseModel, PrivateAttr, field_validator, model_validator

from langchain_localllm._core.backend import BaseBackend
from langchain_localllm._core.settings import Settings
from langchain_localllm._core.stop import merge_stops
from langchain_localllm.errors import InvalidParameterError

__all__ = ["BackendOwner", "LocalModel"]


class BackendOwner(BaseModel):
    """A class over one backend: made from its load fields, made again when they change.

    Shared by the generating classes (:class:`LocalModel`) and the embedding classes.
    """

    load_on_init: bool = False
    """Load the weights in the constructor instead of on first use. Default: False."""

    _backend_slot: BaseBackend[Any, Any] | None = PrivateAttr(default=None)
    _provider: ClassVar[str]
    """The backend's provider name (LangSmith's ``ls_provider``, ``model_provider`` in metadata)."""

    _model_kwargs_target: ClassVar[str] = ""
    """What ``model_kwargs`` are passed to (``llama_cpp.Llama``, ``from_pretrained``); empty: no such field."""
    _model_kwargs_set_by_package: ClassVar[Mapping[str, str]] = {}
    """``model_kwargs`` keys the package passes itself, with what to use instead."""

    def __init__(self, **data: Any) -> None:
        """Validate the fields (``model_kwargs`` first: keys the package owns are refused)."""
        type(self)._check_model_kwargs(data.get("model_kwargs"))  # noqa: SLF001 - before pydantic validates
        super().__init__(**data)

    def model_post_init(self, context: Any, /) -> None:
        """Run the LangChain class's own hook too (langchain-core seeds ``metadata["lc_versions"]`` there).

        Without this definition pydantic gives this mixin, for its private attributes, a hook
        that does not call the next class's, and langchain-core's never ran.
        """
        super().model_post_init(context)

    @classmethod
    def _check_model_kwargs(cls, model_kwargs: Any) -> None:
        """Refuse ``model_kwargs`` keys that are fields of the class or that the package passes itself.

        Such a key would bypass the field's checks (``n_ctx`` and the context window), override
        one of the package's own arguments, or fail only at load (``got multiple values``).

        Raises:
            InvalidParameterError: Naming the key and the field (or setting) to use instead.
        """
        if not cls._model_kwargs_target or not isinstance(model_kwargs, Mapping):
            return  # a wrong type is pydantic's to report
        for key in model_kwargs:
            instead = cls._model_kwargs_set_by_package.get(key)
            if instead is not None:
                why = f"the package passes {key!r} to {cls._model_kwargs_target} itself"
            elif key in cls.model_fields:
                why, instead = f"{key!r} is a field of {cls.__name__}", f"the field: {cls.__name__}(..., {key}=...)"
            else:
                continue
            msg = f"model_kwargs[{key!r}] is refused: {why}; use {instead}"
            raise InvalidParameterError(msg)

    @abstractmethod
    def _load_settings(self) -> Settings:
        """The load settings from the instance's fields (validated, frozen)."""

    @abstractmethod
    def _new_backend(self, settings: Settings) -> BaseBackend[Any, Any]:
        """A backend for ``settings``."""

    def _backend(self) -> BaseBackend[Any, Any]:
        """This instance's backend (a new one when the load fields changed)."""
        self._check_model_kwargs(getattr(self, "model_kwargs", None))  # also when assigned after construction
        settings = self._load_settings()
        backend = self._backend_slot
        if backend is None or backend.settings != settings:
            backend = self._new_backend(settings)
            self._backend_slot = backend
        return backend

    @model_validator(mode="after")
    def _load_if_asked(self) -> BackendOwner:
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


class LocalModel(BackendOwner):
    """A generating model class over one backend (mixed into the LangChain classes)."""

    stop: list[str] | None = None
    """Stop strings, merged with those given per call; never part of the output. Default: None."""

    allow_control_tokens_in_content: bool = False
    """Parse control-token text (``<|im_start|>``, ``<|eot_id|>``...) inside message contents as
    control tokens, as llama-cpp-python and transformers do. Off: contents (user, system, assistant,
    tool results, tool-call arguments) are literal text, so a user message or a retrieved document
    cannot forge conversation turns; benign prompts give the same token ids either way (see
    docs/security.md). Default: False."""

    _ls_model_type: ClassVar[str] = "chat"

    @field_validator("stop")
    @classmethod
    def _check_stop(cls, value: list[str] | None) -> list[str] | None:
        return merge_stops(value) if value is not None else None

    @model_validator(mode="after")
    def _set_localllm_version(self) -> LocalModel:
        """Record the package version in ``metadata["lc_versions"]``, as the partner packages do.

        langchain-core seeds ``lc_versions`` with its own version; each layer adds its own
        (a validator of a unique name: pydantic replaces same-named validators).
        """
        from langchain_localllm import __version__  # noqa: PLC0415 - the package is imported by now

        add_version = getattr(self, "_add_version", None)  # absent from older langchain-core 1.x
        if callable(add_version):
            add_version("langchain-localllm", __version__)
        return self

    def get_num_tokens(self, text: str) -> int:
        """Count the tokens of ``text`` with the model's own tokenizer (loads the model)."""
        return self._backend().count_tokens(text)

    def get_token_ids(self, text: str) -> list[int]:
        """The token ids of ``text`` with the model's own tokenizer (loads the model).

        LangChain's default would load GPT-2's tokenizer from the Hugging Face hub, which
        offline means minutes of retries and then the wrong ids.
        """
        return self._backend().token_ids(text)

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
