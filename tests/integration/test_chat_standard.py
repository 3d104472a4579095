"""LangChain's standard integration suite (``langchain_tests``) against the tiny HF model on CPU.

The tiny model was trained on a small corpus (tests/fixtures/models/corpus.jsonl) and
cannot follow instructions, but it always answers: every test that does not need a
capable model runs for real. Forced tool calls and structured output are well-formed
by construction (llguidance); tests that check *which* values the model chose are xfail.
"""

from __future__ import annotations

from typing import Any

import pytest

from langchain_localllm.chat_models import HFLocalChatModel
from tests.standard_flags import LocalChatModelFlags

from ._tiny_expectations import TinyModelExpectations
from .conftest import TINY_HF, TINY_T5

pytestmark = pytest.mark.usefixtures("one_torch_thread")


class TestHFLocalChatModelIntegration(LocalChatModelFlags, TinyModelExpectations):
    @property
    def chat_model_class(self) -> type[HFLocalChatModel]:
        return HFLocalChatModel

    @property
    def chat_model_params(self) -> dict[str, Any]:
        # max_tokens keeps CPU time low: the tiny model's answers are shorter, and the seq2seq
        # override model (random weights) never ends on its own.
        return {"model": str(TINY_HF), "device": "cpu", "max_tokens": 256}

    @property
    def supports_model_override(self) -> bool:
        return True

    @property
    def model_override_value(self) -> str:
        # A per-call `model=` loads that checkpoint through the shared cache: here the
        # tiny seq2seq fixture, so the override also crosses model families.
        return str(TINY_T5)
