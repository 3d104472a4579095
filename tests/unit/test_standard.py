"""LangChain's standard unit suite (``langchain_tests``) for HFLocalChatModel. No weights load."""

from __future__ import annotations

from typing import Any

import pytest
from langchain_tests.unit_tests import ChatModelUnitTests

from langchain_localllm.chat_models import HFLocalChatModel
from tests.standard_flags import LocalChatModelFlags

from .conftest import TINY_HF

pytestmark = pytest.mark.usefixtures("no_weights_load")


class TestHFLocalChatModelStandard(LocalChatModelFlags, ChatModelUnitTests):
    @property
    def chat_model_class(self) -> type[HFLocalChatModel]:
        return HFLocalChatModel

    @property
    def chat_model_params(self) -> dict[str, Any]:
        return {"model": str(TINY_HF)}
