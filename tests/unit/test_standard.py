"""LangChain's standard unit suite (``langchain_tests``) for HFLocalChatModel. No weights load."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from langchain_tests.unit_tests import ChatModelUnitTests

from langchain_localllm._core.cache import model_cache
from langchain_localllm.chat_models import HFLocalChatModel
from tests.standard_flags import LocalChatModelFlags

TINY_HF = Path(__file__).resolve().parents[1] / "fixtures" / "models" / "tiny-chat"


class TestHFLocalChatModelStandard(LocalChatModelFlags, ChatModelUnitTests):
    @property
    def chat_model_class(self) -> type[HFLocalChatModel]:
        return HFLocalChatModel

    @property
    def chat_model_params(self) -> dict[str, Any]:
        return {"model": str(TINY_HF)}


@pytest.fixture(autouse=True)
def _no_weights_load() -> Any:
    before = model_cache.info().loads
    yield
    assert model_cache.info().loads == before, "a unit test loaded model weights"
