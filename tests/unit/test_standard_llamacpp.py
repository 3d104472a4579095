"""LangChain's standard unit suite (``langchain_tests``) for LocalGGMLChatModel. No weights load."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from langchain_tests.unit_tests import ChatModelUnitTests

from langchain_localllm._core.cache import model_cache
from langchain_localllm.chat_models import LocalGGMLChatModel
from tests.standard_flags import LocalChatModelFlags

TINY_GGUF = Path(__file__).resolve().parents[1] / "fixtures" / "models" / "tiny-chat.gguf"


class TestLocalGGMLChatModelStandard(LocalChatModelFlags, ChatModelUnitTests):
    @property
    def chat_model_class(self) -> type[LocalGGMLChatModel]:
        return LocalGGMLChatModel

    @property
    def chat_model_params(self) -> dict[str, Any]:
        return {"model_path": str(TINY_GGUF)}

    @property
    def supports_model_override(self) -> bool:
        return False


@pytest.fixture(autouse=True)
def _no_weights_load() -> Any:
    before = model_cache.info().loads
    yield
    assert model_cache.info().loads == before, "a unit test loaded model weights"
