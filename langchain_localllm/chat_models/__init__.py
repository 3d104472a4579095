"""LangChain chat models over local backends: one module per backend.

Importing this package imports neither torch/transformers nor llama_cpp.
"""

from __future__ import annotations

from langchain_localllm.chat_models.huggingface import HFLocalChatModel
from langchain_localllm.chat_models.llamacpp import LocalGGMLChatModel

__all__ = ["HFLocalChatModel", "LocalGGMLChatModel"]
