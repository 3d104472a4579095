"""Standard-suite tests that a 0.6M-parameter model cannot pass, marked xfail with the reason.

Shared by the integration suites of both chat models. Constrained decoding makes every
forced tool call and every structured answer well-formed by construction; these tests
additionally need the model to understand the request, or to finish unbounded strings.
"""

from __future__ import annotations

from typing import Literal

import pytest
from langchain_core.language_models import BaseChatModel
from langchain_tests.integration_tests import ChatModelIntegrationTests

_UNBOUNDED = (
    "the suite's schemas have unbounded strings; under the grammar the tiny model keeps writing inside the "
    "first string until max_tokens, and a cut-off answer is reported as a parsing error, never completed and "
    "passed off (bounded schemas always parse: test_tools_structured.py)"
)
SchemaType = Literal["pydantic", "typeddict", "json_schema"]


class TinyModelExpectations(ChatModelIntegrationTests):
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

    @pytest.mark.xfail(reason=_UNBOUNDED)
    @pytest.mark.parametrize("schema_type", ["pydantic", "typeddict", "json_schema"])
    def test_structured_output(self, model: BaseChatModel, schema_type: SchemaType) -> None:
        super().test_structured_output(model, schema_type)

    @pytest.mark.xfail(reason=_UNBOUNDED)
    @pytest.mark.parametrize("schema_type", ["pydantic", "typeddict", "json_schema"])
    async def test_structured_output_async(self, model: BaseChatModel, schema_type: SchemaType) -> None:
        await super().test_structured_output_async(model, schema_type)

    @pytest.mark.xfail(reason=_UNBOUNDED)
    def test_structured_output_pydantic_2_v1(self, model: BaseChatModel) -> None:
        super().test_structured_output_pydantic_2_v1(model)

    @pytest.mark.xfail(reason=_UNBOUNDED)
    def test_structured_output_optional_param(self, model: BaseChatModel) -> None:
        super().test_structured_output_optional_param(model)
