"""Local embeddings: ``LocalGGMLEmbeddings`` (GGUF, llama.cpp) and ``HFLocalEmbeddings`` (transformers).

Both implement :class:`langchain_core.embeddings.Embeddings` over the same backends, model
sources and process-wide cache as the chat classes: a chat model and an embedding model
with the same load settings share one loaded copy of the weights. See docs/embeddings.md.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, ClassVar, Literal

from langchain_core.embeddings import Embeddings
from langchain_core.runnables.config import run_in_executor
from pydantic import ConfigDict, Field, PrivateAttr

from langchain_localllm._backends.llamacpp.backend import LlamaCppBackend
from langchain_localllm._backends.llamacpp.settings import LLAMA_KWARGS_SET_BY_PACKAGE, LlamaCppLoadFields, LoadSettings
from langchain_localllm._backends.transformers.backend import TransformersBackend
from langchain_localllm._backends.transformers.settings import HF_KWARGS_SET_BY_PACKAGE, HFLoadFields, LoadSpec
from langchain_localllm._core.backend import EmbedRequest
from langchain_localllm._core.model import BackendOwner
from langchain_localllm._core.settings import FieldGroup, Settings
from langchain_localllm.errors import InvalidParameterError

__all__ = ["HFLocalEmbeddings", "LocalGGMLEmbeddings"]


class EmbeddingFields(FieldGroup):
    """How texts become vectors (none of these reloads the model)."""

    batch_size: int = Field(default=32, ge=1, le=2**31 - 1)
    """Most texts per forward pass (llama.cpp: also at most ``n_batch`` tokens per decode, and at
    most llama.cpp's parallel-sequence limit, 256). Default: 32."""

    pooling: Literal["auto", "mean", "cls", "last"] = "auto"
    """How the token vectors of a text become one vector. ``"auto"``: the model's own — a GGUF's
    ``<arch>.pooling_type``, a checkpoint's sentence-transformers ``1_Pooling/config.json`` — and
    ``"mean"`` when the model names none (a chat model). Default: "auto"."""

    normalize: bool = True
    """L2-normalize every vector (unit length: dot product equals cosine similarity), whatever the
    model's files say. Default: True."""

    truncate: bool = True
    """A text longer than the model's window is cut to its first tokens (logged at DEBUG);
    False raises :class:`~langchain_localllm.errors.ContextWindowExceededError` instead. Default: True."""

    query_instruction: str | None = None
    """Prefix for ``embed_query`` texts (e5: ``"query: "``, bge: ``"Represent this sentence for
    searching relevant passages: "``, nomic: ``"search_query: "``). Default: None = the
    checkpoint's sentence-transformers ``prompts["query"]`` (HF) or none."""

    document_instruction: str | None = None
    """Prefix for ``embed_documents`` texts (e5: ``"passage: "``, nomic: ``"search_document: "``).
    Default: None = the checkpoint's sentence-transformers ``prompts["document"]`` (or
    ``["passage"]``) (HF) or none."""

    show_progress: bool = False
    """Show a tqdm progress bar during ``embed_documents``. Default: False."""


class _LocalEmbeddings(EmbeddingFields, BackendOwner, Embeddings):
    """What both embedding classes share: the request from the fields, the four ``Embeddings`` methods."""

    def _instruction(self, kind: Literal["query", "document"]) -> str:
        value = self.query_instruction if kind == "query" else self.document_instruction
        return value or ""

    def _embed(self, texts: list[str], kind: Literal["query", "document"]) -> list[list[float]]:
        if not isinstance(texts, list | tuple) or not all(isinstance(t, str) for t in texts):
            msg = f"texts must be a list of strings, got {type(texts).__name__}"
            raise InvalidParameterError(msg)
        if not texts:
            return []
        prefix = self._instruction(kind)
        request = EmbedRequest(
            texts=list(texts),
            prefix=prefix,
            pooling=self.pooling,
            normalize=self.normalize,
            truncate=self.truncate,
            batch_size=self.batch_size,
            progress=self.show_progress and kind == "document",
        )
        return self._backend().embed(request)

    def embed_documents(self, texts: list[str]) -> list[list[float]]:
        """One vector per text, in order, ``batch_size`` texts per forward pass (loads the model)."""
        return self._embed(texts, "document")

    def embed_query(self, text: str) -> list[float]:
        """The vector of one query (with ``query_instruction``)."""
        if not isinstance(text, str):
            msg = f"text must be a string, got {type(text).__name__}"
            raise InvalidParameterError(msg)
        return self._embed([text], "query")[0]

    async def aembed_documents(self, texts: list[str]) -> list[list[float]]:
        """:meth:`embed_documents` in a worker thread (the event loop is never blocked)."""
        return await run_in_executor(None, self.embed_documents, texts)

    async def aembed_query(self, text: str) -> list[float]:
        """:meth:`embed_query` in a worker thread."""
        return await run_in_executor(None, self.embed_query, text)


_LLAMA_EMBED_KWARGS_SET_BY_PACKAGE: dict[str, str] = {
    **LLAMA_KWARGS_SET_BY_PACKAGE,
    "logits_all": "nothing: embeddings never need every position's logits",
    "embedding": "nothing: the package makes the embedding context itself, over the same weights",
    "pooling_type": "the pooling field ('auto', 'mean', 'cls', 'last')",
}


class LocalGGMLEmbeddings(LlamaCppLoadFields, _LocalEmbeddings):
    """LangChain embeddings from a local GGUF model, run by llama.cpp.

    The file loads once per process through the cache the chat classes use: with the same
    load fields, ``LocalGGMLChatModel`` and this class share one ``llama_model`` (the
    weights). llama.cpp computes embeddings in a context of its own (``embeddings=True``
    and a pooling type), so the first call makes a second ``llama_context`` over those
    weights, with its own KV cache of ``max(n_ctx, n_batch)`` tokens. ``embed_documents``
    packs up to ``batch_size`` texts (and ``n_batch`` tokens) into one ``llama_decode``,
    each with its own sequence id, and reads each text's pooled vector.

    Setup:
        .. code-block:: bash

            pip install "langchain-localllm[llamacpp]"

    Example:
        .. code-block:: python

            from langchain_localllm import LocalGGMLEmbeddings

            embeddings = LocalGGMLEmbeddings(model_path="nomic-embed-text-v1.5.Q8_0.gguf",
                                             query_instruction="search_query: ",
                                             document_instruction="search_document: ")
            vectors = embeddings.embed_documents(["Roses are red.", "Tulips come in many colours."])
            query = embeddings.embed_query("Which flower is red?")
    """

    model_config = ConfigDict(extra="forbid", protected_namespaces=(), allow_inf_nan=False)

    _provider: ClassVar[str] = LlamaCppBackend.provider
    _model_kwargs_target: ClassVar[str] = "llama_cpp.Llama"
    _model_kwargs_set_by_package: ClassVar[Mapping[str, str]] = _LLAMA_EMBED_KWARGS_SET_BY_PACKAGE

    def _load_settings(self) -> LoadSettings:
        return LoadSettings.of(self, logits_all=False)  # the chat classes' key when logprobs is off

    def _new_backend(self, settings: Settings) -> LlamaCppBackend:
        assert isinstance(settings, LoadSettings)  # noqa: S101 - made by _load_settings
        return LlamaCppBackend(settings)


class HFLocalEmbeddings(HFLoadFields, _LocalEmbeddings):
    """LangChain embeddings from a local Hugging Face checkpoint, run by transformers.

    The model loads once per process through the cache ``HFLocalChatModel`` uses (the same
    load fields share one copy). Vectors are the base model's last hidden states (no LM
    head; a seq2seq model's encoder), pooled as the checkpoint's sentence-transformers
    files say, else mean-pooled; ``embed_documents`` runs padded batches of ``batch_size``
    texts sorted by length.

    Setup:
        .. code-block:: bash

            pip install "langchain-localllm[hf]"

    Example:
        .. code-block:: python

            from langchain_localllm import HFLocalEmbeddings

            embeddings = HFLocalEmbeddings(model="BAAI/bge-small-en-v1.5", device="cpu")
            vectors = embeddings.embed_documents(["Roses are red.", "Tulips come in many colours."])
    """

    model_config = ConfigDict(extra="forbid", protected_namespaces=(), allow_inf_nan=False)

    _provider: ClassVar[str] = TransformersBackend.provider
    _model_kwargs_target: ClassVar[str] = "from_pretrained"
    _model_kwargs_set_by_package: ClassVar[Mapping[str, str]] = HF_KWARGS_SET_BY_PACKAGE
    _objects: tuple[Any, Any] | None = PrivateAttr(default=None)

    @classmethod
    def from_model_and_tokenizer(cls, model: Any, tokenizer: Any, /, **kwargs: Any) -> HFLocalEmbeddings:
        """Embed with an already loaded transformers model (an encoder or a causal LM) and its tokenizer.

        As ``HFLocalChatModel.from_model_and_tokenizer``: the objects are registered in the
        process-wide cache by identity (a chat model made from the same pair shares them),
        nothing is copied or moved. Without a checkpoint directory there are no
        sentence-transformers files: pooling is ``mean`` unless the ``pooling`` field says
        otherwise, and there are no default instruction prefixes.

        Example:
            .. code-block:: python

                from transformers import AutoModel, AutoTokenizer

                tok = AutoTokenizer.from_pretrained("BAAI/bge-small-en-v1.5")
                encoder = AutoModel.from_pretrained("BAAI/bge-small-en-v1.5")
                embeddings = HFLocalEmbeddings.from_model_and_tokenizer(encoder, tok, pooling="cls")
        """
        if not callable(model) or getattr(model, "config", None) is None or not callable(tokenizer):
            msg = "from_model_and_tokenizer needs a transformers model (with a config) and its tokenizer"
            raise InvalidParameterError(msg)
        name = kwargs.pop("model", None) or getattr(model, "name_or_path", None) or "in-memory-model"
        kwargs.pop("load_on_init", None)
        instance = cls(model=str(name), **kwargs)
        instance._objects = (model, tokenizer)
        instance.load()  # registers the objects in the process-wide cache
        return instance

    def _load_settings(self) -> LoadSpec:
        return LoadSpec.of(self)

    def _new_backend(self, settings: Settings) -> TransformersBackend:
        assert isinstance(settings, LoadSpec)  # noqa: S101 - made by _load_settings
        return TransformersBackend(settings, self._objects)

    def _instruction(self, kind: Literal["query", "document"]) -> str:
        value = self.query_instruction if kind == "query" else self.document_instruction
        if value is not None:
            return value
        backend = self._backend()
        assert isinstance(backend, TransformersBackend)  # noqa: S101 - made by _new_backend
        prompts = backend.sentence_config().prompts
        names = ("query",) if kind == "query" else ("document", "passage")
        return next((prompts[n] for n in names if n in prompts), "")
