"""LocalGGMLEmbeddings on the tiny GGUF: the standard suite, and vectors equal to llama.cpp's own API."""

from __future__ import annotations

import asyncio
import math
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from langchain_tests.integration_tests import EmbeddingsIntegrationTests

from langchain_localllm import (
    ContextWindowExceededError,
    GenerationError,
    InvalidParameterError,
    LocalGGMLChatModel,
    LocalGGMLEmbeddings,
    model_cache_info,
)

from .conftest import ROSE_Q, TINY_GGUF, write_gguf_variant

llama_cpp = pytest.importorskip("llama_cpp")

TEXTS = [
    "Roses are red.",
    "Tulips bloom in spring and come in many colours, from white to deep purple.",
    "玫瑰是什么类型的花？",
    "A bouquet of twelve red roses with white baby's breath 💐",
    "x",
    "Sunflowers follow the sun. " * 6,
]
N_CTX = 128


def cosine(a: list[float], b: list[float]) -> float:
    dot = sum(x * y for x, y in zip(a, b, strict=True))
    return dot / (math.sqrt(sum(x * x for x in a)) * math.sqrt(sum(y * y for y in b)))


def assert_close(ours: list[list[float]], theirs: list[list[float]]) -> None:
    assert len(ours) == len(theirs)
    for i, (a, b) in enumerate(zip(ours, theirs, strict=True)):
        assert len(a) == len(b)
        assert cosine(a, b) >= 0.9999, (i, cosine(a, b))


@pytest.fixture(scope="module")
def emb() -> LocalGGMLEmbeddings:
    return LocalGGMLEmbeddings(model_path=str(TINY_GGUF), n_ctx=N_CTX)


def raw_llama(path: Path, pooling: int, n_ctx: int = N_CTX) -> Any:
    """llama-cpp-python's own embedding model, as its docs make it."""
    return llama_cpp.Llama(
        model_path=str(path), embedding=True, pooling_type=pooling, n_ctx=n_ctx, n_batch=n_ctx, verbose=False
    )


@pytest.fixture(scope="module")
def raw_mean() -> Iterator[Any]:
    llama = raw_llama(TINY_GGUF, llama_cpp.LLAMA_POOLING_TYPE_MEAN)
    yield llama
    llama.close()


class TestLocalGGMLEmbeddingsIntegration(EmbeddingsIntegrationTests):
    @property
    def embeddings_class(self) -> type[LocalGGMLEmbeddings]:
        return LocalGGMLEmbeddings

    @property
    def embedding_model_params(self) -> dict[str, Any]:
        return {"model_path": str(TINY_GGUF), "n_ctx": N_CTX}


def test_vectors_equal_llama_cpp_embed(emb: LocalGGMLEmbeddings, raw_mean: Any) -> None:
    # The tiny GGUF names no pooling type: "auto" is mean, as documented.
    ours = emb.embed_documents(TEXTS)
    assert_close(ours, [raw_mean.embed(t) for t in TEXTS])
    for v in ours:
        assert math.isclose(math.sqrt(sum(x * x for x in v)), 1.0, rel_tol=1e-5)


@pytest.mark.parametrize(("pooling", "code"), [("cls", "LLAMA_POOLING_TYPE_CLS"), ("last", "LLAMA_POOLING_TYPE_LAST")])
def test_each_pooling_equals_llama_cpp(pooling: str, code: str) -> None:
    raw = raw_llama(TINY_GGUF, getattr(llama_cpp, code))
    try:
        expected = [raw.embed(t) for t in TEXTS]
    finally:
        raw.close()
    ours = LocalGGMLEmbeddings(model_path=str(TINY_GGUF), n_ctx=N_CTX, pooling=pooling).embed_documents(TEXTS)
    assert_close(ours, expected)
    mean = LocalGGMLEmbeddings(model_path=str(TINY_GGUF), n_ctx=N_CTX).embed_documents(TEXTS[:1])
    assert cosine(ours[0], mean[0]) < 0.9999  # really another pooling


def test_not_normalized_vectors_are_llama_cpp_s_values(raw_mean: Any) -> None:
    ours = LocalGGMLEmbeddings(model_path=str(TINY_GGUF), n_ctx=N_CTX, normalize=False).embed_documents(TEXTS[:2])
    for a, b in zip(ours, [raw_mean.embed(t) for t in TEXTS[:2]], strict=True):
        assert a == pytest.approx(b, rel=1e-4, abs=1e-5)


def test_batched_equals_one_by_one_in_order(emb: LocalGGMLEmbeddings) -> None:
    texts = TEXTS * 6  # several decodes of several sequences each
    batched = emb.embed_documents(texts)
    alone = LocalGGMLEmbeddings(model_path=str(TINY_GGUF), n_ctx=N_CTX, batch_size=1).embed_documents(texts)
    assert_close(batched, alone)
    assert_close(emb.embed_documents(texts[::-1]), batched[::-1])
    assert_close([emb.embed_query(t) for t in TEXTS], batched[: len(TEXTS)])


@pytest.mark.parametrize(
    ("pooling", "code"),
    [("mean", "LLAMA_POOLING_TYPE_MEAN"), ("cls", "LLAMA_POOLING_TYPE_CLS"), ("last", "LLAMA_POOLING_TYPE_LAST")],
)
def test_texts_longer_than_one_decode_are_chunked_exactly(pooling: str, code: str) -> None:
    # n_batch=16: most texts need several decodes; their chunks' pools combine to llama.cpp's whole-text pool.
    long = "Roses, tulips, lilies and orchids in one bouquet. " * 4
    texts = [*TEXTS, long]
    raw = raw_llama(TINY_GGUF, getattr(llama_cpp, code))
    try:
        expected = [raw.embed(t) for t in texts]
    finally:
        raw.close()
    small = LocalGGMLEmbeddings(model_path=str(TINY_GGUF), n_ctx=N_CTX, n_batch=16, batch_size=3, pooling=pooling)
    with small._backend().hold() as model:
        assert len(model.llama.tokenize(long.encode())) > 16
    assert_close(small.embed_documents(texts), expected)


def test_empty_string_is_a_zero_vector_and_leaves_the_others_alone(emb: LocalGGMLEmbeddings) -> None:
    # The tiny GGUF adds no BOS: an empty text has no token to pool (documented: a zero vector).
    vectors = emb.embed_documents(["Roses are red.", "", "x"])
    assert len(vectors) == 3
    assert vectors[1] == [0.0] * len(vectors[0])
    assert_close([vectors[0], vectors[2]], emb.embed_documents(["Roses are red.", "x"]))


def test_longer_than_the_window_is_truncated_or_refused(emb: LocalGGMLEmbeddings, raw_mean: Any) -> None:
    long = "Roses, tulips, lilies and orchids in one bouquet. " * 40
    with emb._backend().hold() as model:
        assert len(model.llama.tokenize(long.encode())) > N_CTX
    # llama-cpp-python's embed truncates to n_batch (= n_ctx here): the same first tokens.
    [ours] = emb.embed_documents([long])
    assert cosine(ours, raw_mean.embed(long, truncate=True)) >= 0.9999
    strict = LocalGGMLEmbeddings(model_path=str(TINY_GGUF), n_ctx=N_CTX, truncate=False)
    with pytest.raises(ContextWindowExceededError, match="truncate=True") as info:
        strict.embed_documents(["short", long])
    assert info.value.context_window == N_CTX


def test_threads_share_the_model_and_get_their_own_vectors(emb: LocalGGMLEmbeddings) -> None:
    expected = emb.embed_documents(TEXTS)
    results: dict[int, list[list[float]]] = {}
    errors: list[BaseException] = []

    def work(k: int) -> None:
        try:
            texts = TEXTS[k:] + TEXTS[:k]
            results[k] = emb.embed_documents(texts * 3)
        except BaseException as e:  # reported below
            errors.append(e)

    threads = [threading.Thread(target=work, args=(k,)) for k in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    for k, got in results.items():
        assert_close(got, (expected[k:] + expected[:k]) * 3)


async def test_async_methods(emb: LocalGGMLEmbeddings) -> None:
    docs, query = await asyncio.gather(emb.aembed_documents(TEXTS[:3]), emb.aembed_query(TEXTS[0]))
    assert_close(docs, emb.embed_documents(TEXTS[:3]))
    assert cosine(query, docs[0]) >= 0.9999


def test_chat_and_embeddings_share_one_load() -> None:
    fields = {"model_path": str(TINY_GGUF), "n_ctx": 192}  # a setting no other test uses: a fresh entry
    before = model_cache_info().loads
    chat = LocalGGMLChatModel(**fields, temperature=0, max_tokens=24)
    first = chat.invoke(ROSE_Q).content
    emb = LocalGGMLEmbeddings(**fields)
    vectors = emb.embed_documents(TEXTS)
    assert model_cache_info().loads == before + 1  # the weights loaded once, for both
    with emb._backend().hold() as model:
        assert len(model.embedders) == 1  # one more llama_context over the same llama_model
    assert chat.invoke(ROSE_Q).content == first  # the chat context is untouched by embedding
    assert_close(emb.embed_documents(TEXTS), vectors)
    assert chat.unload()  # one entry: unloading it frees both contexts
    assert_close(emb.embed_documents(TEXTS[:2]), vectors[:2])  # and the next call reloads
    assert model_cache_info().loads == before + 2
    emb.unload()


def test_pooling_type_comes_from_the_gguf(tmp_path: Path) -> None:
    gguf = pytest.importorskip("gguf")
    path = write_gguf_variant(tmp_path / "cls.gguf", {}, add={"llama.pooling_type": (2, gguf.GGUFValueType.UINT32)})
    auto = LocalGGMLEmbeddings(model_path=str(path), n_ctx=N_CTX).embed_documents(TEXTS)
    cls = LocalGGMLEmbeddings(model_path=str(TINY_GGUF), n_ctx=N_CTX, pooling="cls").embed_documents(TEXTS)
    assert_close(auto, cls)
    mean = LocalGGMLEmbeddings(model_path=str(path), n_ctx=N_CTX, pooling="mean").embed_documents(TEXTS)
    assert_close(mean, LocalGGMLEmbeddings(model_path=str(TINY_GGUF), n_ctx=N_CTX).embed_documents(TEXTS))


def test_a_reranker_gguf_needs_an_explicit_pooling(tmp_path: Path) -> None:
    gguf = pytest.importorskip("gguf")
    path = write_gguf_variant(tmp_path / "rank.gguf", {}, add={"llama.pooling_type": (4, gguf.GGUFValueType.UINT32)})
    with pytest.raises(InvalidParameterError, match="reranking model"):
        LocalGGMLEmbeddings(model_path=str(path), n_ctx=N_CTX).embed_query("roses")
    assert len(LocalGGMLEmbeddings(model_path=str(path), n_ctx=N_CTX, pooling="mean").embed_query("roses")) > 0


def test_progress_bar_is_optional(emb: LocalGGMLEmbeddings, capsys: pytest.CaptureFixture[str]) -> None:
    emb.embed_documents(TEXTS)
    assert "Embedding" not in capsys.readouterr().err
    shown = LocalGGMLEmbeddings(model_path=str(TINY_GGUF), n_ctx=N_CTX, show_progress=True)
    shown.embed_documents(TEXTS)
    err = capsys.readouterr().err
    assert "Embedding" in err
    assert f"{len(TEXTS)}/{len(TEXTS)}" in err


def test_unloaded_between_batches_is_a_typed_error() -> None:
    emb = LocalGGMLEmbeddings(model_path=str(TINY_GGUF), n_ctx=N_CTX, batch_size=1)
    emb.load()
    backend = emb._backend()
    from langchain_localllm._core.backend import EmbedRequest

    batches = backend._embed_batches(backend.stepper(), EmbedRequest(texts=["a", "b"], batch_size=1))
    next(batches)
    emb.unload()
    with pytest.raises(GenerationError, match="unloaded"):
        next(batches)


def test_instances_with_other_batch_sizes_share_one_embedding_context() -> None:
    # Same load fields, so one loaded model; the embedding context made for 8 sequences serves a
    # batch_size=1 instance too (it used to be rebuilt on every alternation), still one text a decode.
    eight = LocalGGMLEmbeddings(model_path=str(TINY_GGUF), n_ctx=N_CTX, batch_size=8)
    one = LocalGGMLEmbeddings(model_path=str(TINY_GGUF), n_ctx=N_CTX, batch_size=1)
    first = eight.embed_documents(TEXTS)
    backend = one._backend()
    with backend.hold() as model:
        contexts = list(model.embedders.values())
    assert_close(one.embed_documents(TEXTS), first)
    from langchain_localllm._core.backend import EmbedRequest

    sizes = [
        len(indices)
        for indices, _ in backend._embed_batches(backend.stepper(), EmbedRequest(texts=TEXTS, batch_size=1))
    ]
    assert sizes == [1] * len(TEXTS)
    assert_close(eight.embed_documents(TEXTS), first)
    with backend.hold() as model:
        assert list(model.embedders.values()) == contexts
        assert len(contexts) == 1
