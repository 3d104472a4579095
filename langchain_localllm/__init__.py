"""Run local models in LangChain: GGUF through llama.cpp, Hugging Face models through transformers.

Importing this package is cheap: neither llama_cpp nor torch/transformers is imported
until a model is first used.
"""

from __future__ import annotations

from importlib import metadata

from langchain_localllm._core.cache import CacheInfo, clear_model_cache, model_cache_info, set_model_cache_size
from langchain_localllm.chat_models import HFLocalChatModel, LocalGGMLChatModel
from langchain_localllm.embeddings import HFLocalEmbeddings, LocalGGMLEmbeddings
from langchain_localllm.errors import (
    ChatTemplateError,
    ConstraintError,
    ContextWindowExceededError,
    GenerationError,
    InvalidModelFileError,
    InvalidParameterError,
    LegacyGGMLFormatError,
    LocalLLMError,
    MissingDependencyError,
    ModelFormatError,
    ModelLoadError,
    ModelNotFoundError,
    UnsupportedContentError,
)
from langchain_localllm.llms import LocalGGMLLLM

try:
    __version__ = metadata.version("langchain-localllm")
except metadata.PackageNotFoundError:  # running from a source tree that is not installed
    __version__ = "0.0.0"

__all__ = [
    "CacheInfo",
    "ChatTemplateError",
    "ConstraintError",
    "ContextWindowExceededError",
    "GenerationError",
    "HFLocalChatModel",
    "HFLocalEmbeddings",
    "InvalidModelFileError",
    "InvalidParameterError",
    "LegacyGGMLFormatError",
    "LocalGGMLChatModel",
    "LocalGGMLEmbeddings",
    "LocalGGMLLLM",
    "LocalLLMError",
    "MissingDependencyError",
    "ModelFormatError",
    "ModelLoadError",
    "ModelNotFoundError",
    "UnsupportedContentError",
    "__version__",
    "clear_model_cache",
    "model_cache_info",
    "set_model_cache_size",
]
