"""LangChain's standard unit suite (``langchain_tests``) for HFLocalChatModel. No weights load."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from langchain_tests.unit_tests import ChatModelUnitTests

from langchain_localllm._cache import model_cache
from langchain_localllm.chat_models import HFLocalChatModel

TINY_HF = Path(__file__).resolve().parents[1] / "fixtures" / "models" / "tiny-chat"


class TestHFLocalChatModelStandard(ChatModelUnitTests):
    @property
    def chat_model_class(self) -> type[HFLocalChatModel]:
        return HFLocalChatModel

    @property
    def chat_model_params(self) -> dict[str, Any]:
        return {"model": str(TINY_HF)}

    @property
    def standard_chat_model_params(self) -> dict[str, Any]:
        # The suite's defaults add `timeout`, `max_retries` and `api_key`: client settings of
        # hosted APIs. A local model has none of them and rejects unknown fields (extra="forbid").
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


@pytest.fixture(autouse=True)
def _no_weights_load() -> Any:
    before = model_cache.info().loads
    yield
    assert model_cache.info().loads == before, "a unit test loaded model weights"
