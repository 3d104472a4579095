"""``LocalGGMLChatModel``: a LangChain chat model over a local GGUF model, run by llama.cpp."""

from __future__ import annotations

from typing import Any

from langchain_core.language_models import LanguageModelInput, ModelProfile
from langchain_core.messages import AIMessage
from langchain_core.runnables import RunnableConfig
from pydantic import ConfigDict

from langchain_localllm._backends.llamacpp.model import LlamaCppModel
from langchain_localllm._backends.llamacpp.settings import gguf_model_name
from langchain_localllm.chat_models._base import LocalChatModel
from langchain_localllm.chat_models._profile import local_profile

__all__ = ["LocalGGMLChatModel"]

MAX_BATCH_THREADS = 128
"""With ``max_parallel > 1``, ``batch()`` runs at most this many inputs at once by default."""


class LocalGGMLChatModel(LlamaCppModel, LocalChatModel):  # type: ignore[misc] # pydantic plugin: model_construct
    """A LangChain chat model over a local GGUF model run by llama.cpp.

    Messages are rendered with the GGUF's own chat template (``tokenizer.chat_template``)
    in a sandboxed Jinja environment, or with ``chat_template`` when given; a file
    without a template is an error naming that field, never a silent guess. Loading,
    the process-wide cache, stops, streaming and async are shared with
    :class:`~langchain_localllm.LocalGGMLLLM`.

    Tool calling (``bind_tools``) passes the tools to the template and parses the
    answer with a parser chosen from the template (Hermes ``<tool_call>`` blocks or
    plain JSON); ``tool_choice="any"``/``"required"`` or a tool name constrains
    decoding with a GBNF grammar to a valid call. ``with_structured_output``
    constrains decoding to the schema.

    Example:
        .. code-block:: python

            from langchain_localllm import LocalGGMLChatModel

            chat = LocalGGMLChatModel(model_path="qwen2.5-0.5b-instruct-q8_0.gguf", temperature=0)
            print(chat.invoke("Rose is which type of flower?").content)
    """

    model_config = ConfigDict(extra="forbid", protected_namespaces=(), allow_inf_nan=False)

    @property
    def _llm_type(self) -> str:
        return "local-gguf-llamacpp-chat"

    @property
    def _identifying_params(self) -> dict[str, Any]:
        return {
            "model_path": self.model_path,
            "repo_id": self.repo_id,
            "filename": self.filename,
            "n_ctx": self.n_ctx,
            "temperature": self.temperature,
            "max_tokens": self.max_tokens,
            "stop": self.stop,
        }

    def batch(
        self,
        inputs: list[LanguageModelInput],
        config: RunnableConfig | list[RunnableConfig] | None = None,
        *,
        return_exceptions: bool = False,
        **kwargs: Any,
    ) -> list[AIMessage]:
        """Answer ``inputs`` concurrently; with ``max_parallel > 1`` all are submitted to the scheduler at once.

        LangChain's ``batch`` runs one call per input in a thread pool of ``max_concurrency``
        threads (by default a few per core); with the scheduler, every input gets a thread
        (up to :data:`MAX_BATCH_THREADS`) unless ``max_concurrency`` is given, so the slots fill.
        """
        if (
            self.max_parallel > 1
            and len(inputs) > 1
            and not isinstance(config, list)
            and (config is None or config.get("max_concurrency") is None)
        ):
            config = RunnableConfig(**{**(config or {}), "max_concurrency": min(len(inputs), MAX_BATCH_THREADS)})
        return super().batch(inputs, config, return_exceptions=return_exceptions, **kwargs)

    def _resolve_model_profile(self) -> ModelProfile | None:
        """The profile (see ``_profile.py``); ``max_input_tokens`` is ``n_ctx`` when set (else known after load)."""
        return local_profile(name=gguf_model_name(self), max_input_tokens=self.n_ctx)
