"""The chat models' ``profile`` and the package version in ``metadata["lc_versions"]``, as the peers report them.

langchain-openai and langchain-ollama add ``_add_version("langchain-<name>", __version__)`` in a
uniquely named validator; langchain-core seeds ``langchain-core`` in ``model_post_init``. No weights load.
"""

from __future__ import annotations

import json
from typing import Any

import pytest
from langchain_core.language_models.model_profile import ModelProfile
from langchain_core.version import VERSION as CORE_VERSION

import langchain_localllm
from langchain_localllm import HFLocalChatModel, LocalGGMLChatModel, LocalGGMLLLM

from .conftest import TINY_GGUF, TINY_HF

pytestmark = pytest.mark.usefixtures("no_weights_load")

MAKERS = {
    "LocalGGMLLLM": lambda **kw: LocalGGMLLLM(model_path=str(TINY_GGUF), **kw),
    "LocalGGMLChatModel": lambda **kw: LocalGGMLChatModel(model_path=str(TINY_GGUF), **kw),
    "HFLocalChatModel": lambda **kw: HFLocalChatModel(model=str(TINY_HF), **kw),
}


@pytest.mark.parametrize("name", MAKERS)
def test_package_and_core_versions_are_in_metadata(name: str) -> None:
    model = MAKERS[name]()
    assert model.metadata is not None
    assert set(model.metadata) == {"lc_versions"}
    versions = model.metadata["lc_versions"]
    # langchain-core adds "langchain" too when that package is installed
    assert versions["langchain-core"] == CORE_VERSION
    assert versions["langchain-localllm"] == langchain_localllm.__version__
    mine = MAKERS[name](metadata={"team": "flowers"})
    assert mine.metadata is not None
    assert mine.metadata["team"] == "flowers"  # the user's own metadata is kept
    assert mine.metadata["lc_versions"]["langchain-localllm"] == langchain_localllm.__version__


def _declared_keys() -> set[str]:
    return set(ModelProfile.__annotations__)


def _check_common(profile: Any) -> None:
    assert profile is not None
    assert set(profile) <= _declared_keys()  # no key langchain-core would warn about
    assert profile["tool_calling"] is True
    assert profile["tool_choice"] is True
    assert profile["text_inputs"] is True
    assert profile["image_inputs"] is False
    assert profile["audio_inputs"] is False
    assert profile["pdf_inputs"] is False
    assert profile["open_weights"] is True
    # langchain's create_agent picks ProviderStrategy when this is True, also with tools, which
    # response_format cannot serve here; AutoStrategy then uses ToolStrategy, which works.
    assert profile["structured_output"] is False


def test_llamacpp_profile() -> None:
    chat = LocalGGMLChatModel(model_path=str(TINY_GGUF), n_ctx=512)
    _check_common(chat.profile)
    assert chat.profile is not None
    assert chat.profile["max_input_tokens"] == 512
    assert chat.profile["name"] == "tiny-chat"
    assert "max_input_tokens" not in (LocalGGMLChatModel(model_path=str(TINY_GGUF)).profile or {})  # known after load


def test_hf_profile_reads_the_context_from_config_json() -> None:
    chat = HFLocalChatModel(model=str(TINY_HF))
    _check_common(chat.profile)
    config = json.loads((TINY_HF / "config.json").read_text(encoding="utf-8"))
    assert chat.profile is not None
    assert chat.profile["max_input_tokens"] == config["max_position_embeddings"]
    # A hub id that is not in the local cache: nothing is downloaded, the context is unknown.
    remote = HFLocalChatModel(model="nobody-here/not-a-cached-model", local_files_only=True)
    assert remote.profile is not None
    assert "max_input_tokens" not in remote.profile


def test_an_explicit_profile_wins() -> None:
    chat = LocalGGMLChatModel(model_path=str(TINY_GGUF), profile={"max_input_tokens": 7})
    assert chat.profile == {"max_input_tokens": 7}
