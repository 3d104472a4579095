"""LangChain's standard unit suite (``langchain_tests``) for LocalGGMLChatModel. No weights load."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from langchain_tests.unit_tests import ChatModelUnitTests

from langchain_localllm._cache import model_cache
from langchain_localllm.chat_models import LocalGGMLChatModel

TINY_GGUF = Path(__file__).resolve().parents[1] / "fixtures" / "models" / "tiny-chat.gguf"


class TestLocalGGMLChatModelStandard(ChatModelUnitTests):
    @property
    def chat_model_class(self) -> type[LocalGGMLChatModel]:
        return LocalGGMLChatModel

    @property
    def chat_model_params(self) -> dict[str, Any]:
        return {"model_path": str(TINY_GGUF)}

    @property
    def standard_chat_model_params(self) -> dict[str, Any]:
        # Hosted-API client settings (timeout, max_retries, api_key) do not exist for a local model.
        params = dict(super().standard_chat_model_params)
        for hosted_only in ("timeout", "max_retries", "api_key"):
            params.pop(hosted_only)
        return params

    @property
    def has_tool_calling(self) -> bool:
        return True

    @property
    def has_tool_choice(self) -> bool:
        return True

    @property
    def has_structured_output(self) -> bool:
        return True

    @property
    def supports_json_mode(self) -> bool:
        return True

    @property
    def returns_usage_metadata(self) -> bool:
        return True

    @property
    def supports_model_override(self) -> bool:
        return False


@pytest.fixture(autouse=True)
def _no_weights_load() -> Any:
    before = model_cache.info().loads
    yield
    assert model_cache.info().loads == before, "a unit test loaded model weights"
