"""LangChain's standard unit suite (``langchain_tests``) for LocalGGMLChatModel. No weights load."""

from __future__ import annotations

from typing import Any

import pytest
from langchain_tests.unit_tests import ChatModelUnitTests

from langchain_localllm.chat_models import LocalGGMLChatModel
from tests.standard_flags import LocalChatModelFlags

from .conftest import TINY_GGUF

pytestmark = pytest.mark.usefixtures("no_weights_load")


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
