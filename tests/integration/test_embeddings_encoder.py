"""Embeddings on an encoder (BERT, CLS pooling): the sentence-transformers checkpoint and its GGUF export.

Most embedding models on the Hugging Face hub (all-MiniLM, bge, e5, gte) are encoders without a
language-model head, packaged with sentence-transformers files. The reference is
sentence-transformers itself on the same directory.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from langchain_tests.integration_tests import EmbeddingsIntegrationTests

from langchain_localllm import (
    ContextWindowExceededError,
    HFLocalChatModel,
    HFLocalEmbeddings,
    InvalidParameterError,
    LocalGGMLChatModel,
    LocalGGMLEmbeddings,
    LocalGGMLLLM,
    ModelFormatError,
    model_cache_info,
)
from langchain_localllm._backends.llamacpp.embed import file_pooling

from .conftest import MODELS
from .test_embeddings_llamacpp import TEXTS, assert_close, cosine

torch = pytest.importorskip("torch")
st = pytest.importorskip("sentence_transformers")
pytestmark = pytest.mark.usefixtures("one_torch_thread")

TINY_ENCODER = MODELS / "tiny-encoder"
"""``scripts/make_tiny_encoder.py``: BertModel, CLS pooling, normalize, max_seq_length 64, e5 prompts."""
LONG = "Roses and tulips in the shop window. " * 12  # well over the 64-token window


@pytest.fixture(scope="module")
def emb() -> HFLocalEmbeddings:
    return HFLocalEmbeddings(model=str(TINY_ENCODER), device="cpu")


@pytest.fixture(scope="module")
def reference() -> Any:
    return st.SentenceTransformer(str(TINY_ENCODER), device="cpu", local_files_only=True)


def encode(model: Any, texts: list[str], prompt_name: str | None = None) -> list[list[float]]:
    vectors: list[list[float]] = model.encode(texts, prompt_name=prompt_name, convert_to_numpy=True).tolist()
    return vectors


class TestEncoderEmbeddingsIntegration(EmbeddingsIntegrationTests):
    @property
    def embeddings_class(self) -> type[HFLocalEmbeddings]:
        return HFLocalEmbeddings

    @property
    def embedding_model_params(self) -> dict[str, Any]:
        return {"model": str(TINY_ENCODER), "device": "cpu"}


def test_loads_as_the_bare_encoder_with_no_head(emb: HFLocalEmbeddings) -> None:
    emb.embed_query("warm up")
    with emb._backend().hold() as bundle:
        assert type(bundle.model).__name__ == "BertModel"  # not BertLMHeadModel with a random head
        assert not bundle.generative


def test_documents_and_queries_equal_sentence_transformers_with_the_checkpoint_prompts(
    emb: HFLocalEmbeddings, reference: Any
) -> None:
    # The checkpoint's prompts (config_sentence_transformers.json) apply as sentence-transformers'
    # prompt_name="document" / "query" do.
    assert_close(emb.embed_documents(TEXTS), encode(reference, TEXTS, "document"))
    assert_close([emb.embed_query(t) for t in TEXTS[:3]], encode(reference, TEXTS[:3], "query"))
    # ...and they matter: without the prefix the vectors differ.
    bare = HFLocalEmbeddings(model=str(TINY_ENCODER), device="cpu", document_instruction="").embed_documents(TEXTS)
    assert_close(bare, encode(reference, TEXTS))
    prefixed = encode(reference, TEXTS, "document")
    assert min(cosine(a, b) for a, b in zip(bare, prefixed, strict=True)) < 0.99


def test_batched_equals_one_by_one_under_right_padding(emb: HFLocalEmbeddings) -> None:
    # Bidirectional attention: a padded batch is only right if the padding is masked.
    one_by_one = HFLocalEmbeddings(model=str(TINY_ENCODER), device="cpu", batch_size=1)
    assert_close(emb.embed_documents([*TEXTS, LONG]), one_by_one.embed_documents([*TEXTS, LONG]))


def test_truncated_to_max_seq_length_as_sentence_transformers(emb: HFLocalEmbeddings, reference: Any) -> None:
    assert reference.max_seq_length == 64
    assert_close(emb.embed_documents([LONG]), encode(reference, [LONG], "document"))
    assert_close(emb.embed_documents([LONG]), emb.embed_documents([LONG + " and a different ending that is cut off"]))


def test_chat_on_an_encoder_is_a_clear_error() -> None:
    chat = HFLocalChatModel(model=str(TINY_ENCODER), device="cpu")
    with pytest.raises(ModelFormatError, match="HFLocalEmbeddings"):
        chat.invoke("hello")
    with pytest.raises(ModelFormatError, match="encoder"):
        chat.batch(["a", "b"])


def test_chat_and_embeddings_share_the_load(emb: HFLocalEmbeddings) -> None:
    emb.embed_query("x")
    before = model_cache_info().loads
    HFLocalEmbeddings(model=str(TINY_ENCODER), device="cpu", batch_size=3).embed_query("y")
    assert model_cache_info().loads == before


def pooling_copy(root: Path, mode: object, *, include_prompt: bool) -> Path:
    """The fixture with its Pooling module set to ``mode`` and ``include_prompt`` (sentence-transformers 5+ form)."""
    root.mkdir()
    for f in TINY_ENCODER.iterdir():
        if f.name != "1_Pooling":
            (root / f.name).symlink_to(f)
    (root / "1_Pooling").mkdir()
    config = {"embedding_dimension": 32, "pooling_mode": mode, "include_prompt": include_prompt}
    (root / "1_Pooling" / "config.json").write_text(json.dumps(config))
    return root


@pytest.mark.parametrize("mode", ["mean", "cls", "lasttoken", ["max"]])
def test_include_prompt_false_leaves_the_prefix_out_of_the_pool(tmp_path: Path, mode: object) -> None:
    # INSTRUCTOR-style checkpoints: the instruction is attended to but not pooled.
    path = pooling_copy(tmp_path / "excluded", mode, include_prompt=False)
    reference = st.SentenceTransformer(str(path), device="cpu", local_files_only=True)
    ours = HFLocalEmbeddings(model=str(path), device="cpu")
    assert_close(ours.embed_documents(TEXTS), encode(reference, TEXTS, "document"))
    assert_close([ours.embed_query(t) for t in TEXTS[:2]], encode(reference, TEXTS[:2], "query"))
    if mode in ("mean", "cls"):  # there, pooling the prompt too gives other vectors
        path = pooling_copy(tmp_path / "included", mode, include_prompt=True)
        included = HFLocalEmbeddings(model=str(path), device="cpu").embed_documents(TEXTS)
        excluded = ours.embed_documents(TEXTS)
        assert min(cosine(a, b) for a, b in zip(excluded, included, strict=True)) < 0.99


def test_from_model_and_tokenizer_embeds_with_the_objects_given() -> None:
    transformers = pytest.importorskip("transformers")
    encoder = transformers.AutoModel.from_pretrained(str(TINY_ENCODER), dtype=torch.float32).eval()
    tokenizer = transformers.AutoTokenizer.from_pretrained(str(TINY_ENCODER))
    before = model_cache_info().loads
    wrapped = HFLocalEmbeddings.from_model_and_tokenizer(encoder, tokenizer, pooling="cls")
    assert wrapped.model == str(TINY_ENCODER)  # the objects' name_or_path
    # No sentence-transformers files come with objects: no prefixes, the pooling field decides,
    # and the window is the model's (texts here fit the checkpoint's 64-token max_seq_length too).
    short = ["Roses are red.", "玫瑰是什么类型的花？", "x", "A bouquet of roses 💐"]
    by_path = HFLocalEmbeddings(model=str(TINY_ENCODER), device="cpu", document_instruction="")
    assert_close(wrapped.embed_documents(short), by_path.embed_documents(short))
    with wrapped._backend().hold() as bundle:
        assert bundle.model is encoder
    again = HFLocalEmbeddings.from_model_and_tokenizer(encoder, tokenizer)
    assert model_cache_info().loads - before == 2
    assert again.embed_query("x") != wrapped.embed_query("x")  # mean vs cls pooling on one copy
    with pytest.raises(InvalidParameterError, match="transformers model"):
        HFLocalEmbeddings.from_model_and_tokenizer("not a model", tokenizer)


# -- the same encoder as a GGUF (scripts/export_bert_gguf.py): llama.cpp's ``bert`` architecture ------

TINY_ENCODER_GGUF = MODELS / "tiny-encoder.gguf"
SHORT = ["Roses are red.", "玫瑰是什么类型的花？", "x", "A bouquet of roses 💐", "the rose, the hero"]


@pytest.fixture(scope="module")
def gguf_emb() -> LocalGGMLEmbeddings:
    return LocalGGMLEmbeddings(model_path=str(TINY_ENCODER_GGUF))


class TestEncoderGGUFEmbeddingsIntegration(EmbeddingsIntegrationTests):
    @property
    def embeddings_class(self) -> type[LocalGGMLEmbeddings]:
        return LocalGGMLEmbeddings

    @property
    def embedding_model_params(self) -> dict[str, Any]:
        return {"model_path": str(TINY_ENCODER_GGUF)}


def test_gguf_encoder_equals_sentence_transformers_on_its_hf_twin(
    gguf_emb: LocalGGMLEmbeddings, reference: Any
) -> None:
    # CLS pooling from the file (bert.pooling_type), [CLS]/[SEP] added by llama.cpp's tokenizer,
    # bidirectional attention: the vectors of sentence-transformers on the checkpoint it came from.
    with gguf_emb._backend().hold() as model:
        assert file_pooling(model) == "cls"
    assert_close(gguf_emb.embed_documents(SHORT), encode(reference, SHORT))
    e5 = LocalGGMLEmbeddings(
        model_path=str(TINY_ENCODER_GGUF), query_instruction="query: ", document_instruction="passage: "
    )
    assert_close(e5.embed_documents(SHORT), encode(reference, SHORT, "document"))
    assert_close([e5.embed_query(t) for t in SHORT[:2]], encode(reference, SHORT[:2], "query"))


def test_gguf_encoder_batched_equals_one_by_one(gguf_emb: LocalGGMLEmbeddings) -> None:
    # Several sequences in one decode of a non-causal model: each must attend to itself only.
    one = LocalGGMLEmbeddings(model_path=str(TINY_ENCODER_GGUF), batch_size=1)
    texts = [*SHORT, LONG, *TEXTS]
    assert_close(gguf_emb.embed_documents(texts), one.embed_documents(texts))


def test_gguf_encoder_truncation_keeps_the_closing_sep(gguf_emb: LocalGGMLEmbeddings) -> None:
    # The window is the trained context (128 positions). Cut, the text keeps [SEP] last, as the HF
    # tokenizers truncate: equal to the text whose first 126 tokens it keeps ("x" is one token each).
    long_x = "x" * 300
    assert_close(gguf_emb.embed_documents([long_x]), gguf_emb.embed_documents(["x" * 126]))
    strict = LocalGGMLEmbeddings(model_path=str(TINY_ENCODER_GGUF), truncate=False)
    with pytest.raises(ContextWindowExceededError, match="128-token window"):
        strict.embed_documents(["ok", long_x])


@pytest.mark.parametrize("cls", [LocalGGMLChatModel, LocalGGMLLLM])
def test_generating_with_a_gguf_encoder_is_a_clear_error_not_garbage(cls: type[Any]) -> None:
    # llama.cpp would decode it and sample text from a graph without an LM head.
    # The encoder check comes first: before "no chat template", and with one given.
    for model in (
        cls(model_path=str(TINY_ENCODER_GGUF), max_tokens=4),
        cls(
            model_path=str(TINY_ENCODER_GGUF),
            max_tokens=4,
            **({"chat_template": "{{ messages[0].content }}"} if cls is LocalGGMLChatModel else {}),
        ),
    ):
        with pytest.raises(ModelFormatError, match="LocalGGMLEmbeddings"):
            model.invoke("hello")
        with pytest.raises(ModelFormatError, match="encoder"):
            list(model.stream("hello"))
