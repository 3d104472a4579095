"""The embedding classes without weights: fields, the standard unit suite, settings, sentence-transformers files."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from langchain_tests.unit_tests import EmbeddingsUnitTests

from langchain_localllm import (
    HFLocalChatModel,
    HFLocalEmbeddings,
    InvalidParameterError,
    LocalGGMLChatModel,
    LocalGGMLEmbeddings,
)
from langchain_localllm._backends.llamacpp.embed import plan_batches
from langchain_localllm._backends.transformers.embed import SentenceConfig, read_sentence_config, resolve_pooling
from langchain_localllm._backends.transformers.load import auto_class_name
from langchain_localllm._backends.transformers.settings import LoadSpec

from .conftest import TINY_GGUF, TINY_HF

pytestmark = pytest.mark.usefixtures("no_weights_load")


class TestLocalGGMLEmbeddingsStandard(EmbeddingsUnitTests):
    @property
    def embeddings_class(self) -> type[LocalGGMLEmbeddings]:
        return LocalGGMLEmbeddings

    @property
    def embedding_model_params(self) -> dict[str, Any]:
        return {"model_path": str(TINY_GGUF)}


class TestHFLocalEmbeddingsStandard(EmbeddingsUnitTests):
    @property
    def embeddings_class(self) -> type[HFLocalEmbeddings]:
        return HFLocalEmbeddings

    @property
    def embedding_model_params(self) -> dict[str, Any]:
        return {"model": str(TINY_HF)}


@pytest.mark.parametrize(
    ("cls", "source"), [(LocalGGMLEmbeddings, {"model_path": str(TINY_GGUF)}), (HFLocalEmbeddings, {"model": "x"})]
)
def test_documented_defaults(cls: type[Any], source: dict[str, str]) -> None:
    emb = cls(**source)
    assert (emb.batch_size, emb.pooling, emb.normalize, emb.truncate, emb.show_progress) == (
        32,
        "auto",
        True,
        True,
        False,
    )
    assert (emb.query_instruction, emb.document_instruction, emb.load_on_init) == (None, None, False)


def test_empty_list_loads_nothing() -> None:
    assert LocalGGMLEmbeddings(model_path="does-not-exist.gguf").embed_documents([]) == []
    assert HFLocalEmbeddings(model="does-not-exist").embed_documents([]) == []


async def test_async_empty_list_loads_nothing() -> None:
    assert await LocalGGMLEmbeddings(model_path="does-not-exist.gguf").aembed_documents([]) == []


def test_not_a_list_of_strings_is_a_typed_error() -> None:
    emb = LocalGGMLEmbeddings(model_path=str(TINY_GGUF))
    with pytest.raises(InvalidParameterError, match="list of strings"):
        emb.embed_documents(["ok", 3])  # type: ignore[list-item]
    with pytest.raises(InvalidParameterError, match="a string"):
        emb.embed_query(None)  # type: ignore[arg-type]


@pytest.mark.parametrize("pooling", ["max", "none", "rank", ""])
def test_pooling_is_checked(pooling: str) -> None:
    with pytest.raises(ValueError, match="pooling"):
        LocalGGMLEmbeddings(model_path=str(TINY_GGUF), pooling=pooling)


@pytest.mark.parametrize(("key", "field"), [("embedding", "embedding context"), ("pooling_type", "pooling field")])
def test_llama_kwargs_the_package_owns_are_refused(key: str, field: str) -> None:
    with pytest.raises(InvalidParameterError, match=field):
        LocalGGMLEmbeddings(model_path=str(TINY_GGUF), model_kwargs={key: True})


def test_batch_size_must_be_positive() -> None:
    with pytest.raises(ValueError, match="batch_size"):
        HFLocalEmbeddings(model=str(TINY_HF), batch_size=0)


def test_same_load_fields_as_the_chat_model_give_the_same_load_settings() -> None:
    # Same settings -> same cache entry: the embedding classes build the chat classes' load settings.
    fields = {"model_path": str(TINY_GGUF), "n_ctx": 256, "n_batch": 64}
    emb = LocalGGMLEmbeddings(**fields)
    chat = LocalGGMLChatModel(**fields)
    assert emb._load_settings() == chat._load_settings()
    assert emb._backend().cache_key() == chat._backend().cache_key()
    assert LocalGGMLEmbeddings(**{**fields, "n_ctx": 512})._load_settings() != chat._load_settings()
    # the chat model with logprobs loads with logits_all: another entry
    assert LocalGGMLChatModel(**fields, logprobs=1)._load_settings() != emb._load_settings()


def test_hf_same_load_fields_as_the_chat_model_give_the_same_cache_key() -> None:
    emb = HFLocalEmbeddings(model=str(TINY_HF), device="cpu")
    chat = HFLocalChatModel(model=str(TINY_HF), device="cpu")
    assert emb._load_settings() == chat._load_settings()
    assert emb._backend().cache_key() == chat._backend().cache_key()


def test_batches_pack_tokens_and_sequences_in_order() -> None:
    assert plan_batches([], 10, 4) == []
    assert plan_batches([3, 3, 3, 3, 3], 10, 4) == [[0, 1, 2], [3, 4]]
    assert plan_batches([1] * 5, 100, 2) == [[0, 1], [2, 3], [4]]
    assert plan_batches([20, 1, 1], 10, 4) == [[0], [1, 2]]  # a text over the budget goes alone
    batches = plan_batches([5, 9, 1, 7, 2, 2, 8], 10, 3)
    assert [i for b in batches for i in b] == list(range(7))
    assert all(len(b) <= 3 for b in batches)


def _write_st(root: Path, pooling: dict[str, Any], *, normalize: bool, extra: dict[str, Any] | None = None) -> None:
    modules = [
        {"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
        {"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"},
    ]
    if normalize:
        modules.append({"idx": 2, "name": "2", "path": "2_Normalize", "type": "sentence_transformers.models.Normalize"})
    (root / "modules.json").write_text(json.dumps(modules))
    (root / "1_Pooling").mkdir()
    (root / "1_Pooling" / "config.json").write_text(json.dumps({"word_embedding_dimension": 8, **pooling}))
    (root / "sentence_bert_config.json").write_text(json.dumps({"max_seq_length": 77, "do_lower_case": False}))
    if extra is not None:
        (root / "config_sentence_transformers.json").write_text(json.dumps(extra))


def test_sentence_transformers_files_are_read(tmp_path: Path) -> None:
    _write_st(
        tmp_path,
        {"pooling_mode_cls_token": True, "pooling_mode_mean_tokens": False},
        normalize=True,
        extra={"prompts": {"query": "query: ", "passage": "passage: "}},
    )
    config = read_sentence_config(LoadSpec(model=str(tmp_path)))
    assert config == SentenceConfig(
        pooling="cls", normalize=True, max_seq_length=77, prompts={"query": "query: ", "passage": "passage: "}
    )
    assert resolve_pooling("auto", config, "m") == "cls"
    assert resolve_pooling("last", config, "m") == "last"  # the field overrides the file


def test_no_sentence_transformers_files_means_mean_pooling() -> None:
    config = read_sentence_config(LoadSpec(model=str(TINY_HF)))
    assert config == SentenceConfig()
    assert resolve_pooling("auto", config, "m") == "mean"


def test_unimplemented_pooling_mode_is_an_error_naming_the_field(tmp_path: Path) -> None:
    _write_st(tmp_path, {"pooling_mode_weightedmean_tokens": True}, normalize=False)
    config = read_sentence_config(LoadSpec(model=str(tmp_path)))
    assert config.pooling == "weightedmean"
    with pytest.raises(InvalidParameterError, match="pooling='mean'"):
        resolve_pooling("auto", config, "m")


def test_query_and_document_prompts_come_from_the_checkpoint(tmp_path: Path) -> None:
    _write_st(
        tmp_path,
        {"pooling_mode_mean_tokens": True},
        normalize=False,
        extra={"prompts": {"query": "query: ", "passage": "passage: "}},
    )
    emb = HFLocalEmbeddings(model=str(tmp_path))
    assert (emb._instruction("query"), emb._instruction("document")) == ("query: ", "passage: ")
    emb = HFLocalEmbeddings(model=str(tmp_path), query_instruction="", document_instruction="doc: ")
    assert (emb._instruction("query"), emb._instruction("document")) == ("", "doc: ")
    gguf = LocalGGMLEmbeddings(model_path=str(TINY_GGUF), query_instruction="search_query: ")
    assert (gguf._instruction("query"), gguf._instruction("document")) == ("search_query: ", "")


@pytest.mark.parametrize(
    ("pooling", "expected"),
    [
        ({"pooling_mode": "lasttoken", "include_prompt": False}, ("last", False)),  # sentence-transformers 5+
        ({"pooling_mode": ["cls", "mean"]}, ("cls+mean", True)),
        ({"pooling_mode": "mean_sqrt_len_tokens"}, ("mean_sqrt_len", True)),
        ({"pooling_mode_mean_tokens": False, "include_prompt": True}, ("mean", True)),  # legacy, no flag: mean
    ],
)
def test_both_pooling_config_forms_are_read(
    tmp_path: Path, pooling: dict[str, Any], expected: tuple[str, bool]
) -> None:
    _write_st(tmp_path, pooling, normalize=False)
    config = read_sentence_config(LoadSpec(model=str(tmp_path)))
    assert (config.pooling, config.include_prompt) == expected


def test_encoders_load_without_a_head_and_generative_checkpoints_with_theirs() -> None:
    transformers = pytest.importorskip("transformers")
    name = auto_class_name
    assert name(transformers.BertConfig(architectures=["BertModel"])) == "AutoModel"
    assert name(transformers.XLMRobertaConfig(architectures=["XLMRobertaModel"])) == "AutoModel"
    assert name(transformers.BertConfig()) == "AutoModel"  # no architectures: the BERT family is an encoder
    assert name(transformers.BertConfig(is_decoder=True)) == "AutoModelForCausalLM"
    assert name(transformers.LlamaConfig(architectures=["LlamaForCausalLM"])) == "AutoModelForCausalLM"
    assert name(transformers.LlamaConfig()) == "AutoModelForCausalLM"
    assert name(transformers.LlamaConfig(architectures=["LlamaModel"])) == "AutoModel"  # no LM head: embed only
    assert name(transformers.GPT2Config(architectures=["GPT2LMHeadModel"])) == "AutoModelForCausalLM"
    assert name(transformers.T5Config()) == "AutoModelForSeq2SeqLM"
