"""LangChain's standard integration suite against the tiny GGUF through LocalGGMLChatModel.

The tiny model cannot follow instructions, but constrained decoding makes every forced
tool call and every structured output well-formed by construction, so those tests run
for real; only tests that need the model to understand a request are marked xfail.
"""

from __future__ import annotations

from typing import Any

from langchain_localllm.chat_models import LocalGGMLChatModel
from tests.standard_flags import LocalChatModelFlags

from ._tiny_expectations import TinyModelExpectations
from .conftest import TINY_GGUF


class TestLocalGGMLChatModelIntegration(LocalChatModelFlags, TinyModelExpectations):
    @property
    def chat_model_class(self) -> type[LocalGGMLChatModel]:
        return LocalGGMLChatModel

    @property
    def chat_model_params(self) -> dict[str, Any]:
        return {"model_path": str(TINY_GGUF), "temperature": 0, "max_tokens": 256}

    @property
    def supports_model_override(self) -> bool:
        return False
