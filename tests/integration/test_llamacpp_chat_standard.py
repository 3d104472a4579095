"""LangChain's standard integration suite against the tiny GGUF through LocalGGMLChatModel.

The tiny model cannot follow instructions, but constrained decoding makes every forced
tool call and every structured output well-formed by construction, so those tests run
for real; only tests that need the model to understand a request are marked xfail.
"""

from __future__ import annotations

from typing import Any

import pytest
from langchain_core.language_models import BaseChatModel
from langchain_tests.integration_tests import ChatModelIntegrationTests

from langchain_localllm.chat_models import LocalGGMLChatModel

from .conftest import TINY_GGUF


class TestLocalGGMLChatModelIntegration(ChatModelIntegrationTests):
    @property
    def chat_model_class(self) -> type[LocalGGMLChatModel]:
        return LocalGGMLChatModel

    @property
    def chat_model_params(self) -> dict[str, Any]:
        return {"model_path": str(TINY_GGUF), "temperature": 0, "max_tokens": 256}

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

    # Constrained decoding makes every forced call well-formed; these tests also check
    # *which* argument values the model chose, or that it followed instructions in plain
    # JSON mode, which a 0.6M-parameter model trained on 62 examples cannot do.
    @pytest.mark.xfail(reason="needs a model that understands the request (checks the argument value 3)")
    @pytest.mark.parametrize("model", [{}, {"output_version": "v1"}], indirect=True)
    def test_tool_calling(self, model: BaseChatModel) -> None:
        super().test_tool_calling(model)

    @pytest.mark.xfail(reason="needs a model that understands the request (checks the argument value 3)")
    async def test_tool_calling_async(self, model: BaseChatModel) -> None:
        await super().test_tool_calling_async(model)

    @pytest.mark.xfail(reason="needs a model that understands the request (checks the argument values)")
    @pytest.mark.parametrize("model", [{}, {"output_version": "v1"}], indirect=True)
    def test_agent_loop(self, model: BaseChatModel) -> None:
        super().test_agent_loop(model)

    @pytest.mark.xfail(reason="needs a model that understands the request (checks the unicode argument value)")
    def test_unicode_tool_call_integration(self, model: BaseChatModel) -> None:
        super().test_unicode_tool_call_integration(model)

    @pytest.mark.xfail(reason="json_mode guarantees a JSON object, not the fields the prompt asks for")
    def test_json_mode(self, model: BaseChatModel) -> None:
        super().test_json_mode(model)
