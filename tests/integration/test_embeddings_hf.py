"""HFLocalEmbeddings on the tiny HF checkpoint: the standard suite, sentence-transformers and a hand-written pool."""

from __future__ import annotations

import json
import math
import threading
from pathlib import Path
from typing import Any

import pytest
from langchain_tests.integration_tests import EmbeddingsIntegrationTests

from langchain_localllm import ContextWindowExceededError, HFLocalChatModel, HFLocalEmbeddings, model_cache_info

from .conftest import ROSE_Q, TINY_HF
from .test_embeddings_llamacpp import TEXTS, assert_close, cosine

torch = pytest.importorskip("torch")
pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def emb() -> HFLocalEmbeddings:
    return HFLocalEmbeddings(model=str(TINY_HF), device="cpu")


def st_copy(
    root: Path,
    pooling: str | None,
    *,
    normalize: bool = False,
    max_seq_length: int | None = None,
    source: Path = TINY_HF,
) -> Path:
    """A checkpoint (symlinked) with sentence-transformers files, as a model on the Hub would have them."""
    root.mkdir()
    for f in source.iterdir():
        (root / f.name).symlink_to(f)
    if pooling is not None:
        modules = [
            {"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
            {"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"},
        ]
        if normalize:
            modules.append(
                {"idx": 2, "name": "2", "path": "2_Normalize", "type": "sentence_transformers.models.Normalize"}
            )
            (root / "2_Normalize").mkdir()
        (root / "modules.json").write_text(json.dumps(modules))
        (root / "1_Pooling").mkdir()
        config = {
            "word_embedding_dimension": json.loads((source / "config.json").read_text())["hidden_size"],
            "pooling_mode_cls_token": pooling == "cls",
            "pooling_mode_mean_tokens": pooling == "mean",
            "pooling_mode_max_tokens": pooling == "max",
            "pooling_mode_mean_sqrt_len_tokens": False,
            "pooling_mode_lasttoken": pooling == "lasttoken",
        }
        (root / "1_Pooling" / "config.json").write_text(json.dumps(config))
        (root / "sentence_bert_config.json").write_text(
            json.dumps({"max_seq_length": max_seq_length or 2048, "do_lower_case": False})
        )
    return root


def sentence_transformers_vectors(path: Path, texts: list[str], batch_size: int = 32) -> list[list[float]]:
    st = pytest.importorskip("sentence_transformers")
    model = st.SentenceTransformer(str(path), device="cpu", local_files_only=True)
    vectors: list[list[float]] = model.encode(texts, batch_size=batch_size, convert_to_numpy=True).tolist()
    return vectors


class TestHFLocalEmbeddingsIntegration(EmbeddingsIntegrationTests):
    @property
    def embeddings_class(self) -> type[HFLocalEmbeddings]:
        return HFLocalEmbeddings

    @property
    def embedding_model_params(self) -> dict[str, Any]:
        return {"model": str(TINY_HF), "device": "cpu"}


def test_a_plain_checkpoint_is_mean_pooled(emb: HFLocalEmbeddings, tmp_path: Path) -> None:
    # No sentence-transformers files: mean pooling (documented). sentence-transformers >= 6 would
    # instead wrap a causal LM's text in its chat template and pool the last token, so the
    # reference here is the same checkpoint packaged with sentence-transformers' mean Pooling.
    ours = emb.embed_documents(TEXTS)
    for v in ours:
        assert math.isclose(math.sqrt(sum(x * x for x in v)), 1.0, rel_tol=1e-5)
    packaged = HFLocalEmbeddings(model=str(st_copy(tmp_path / "st", "mean")), device="cpu").embed_documents(TEXTS)
    assert_close(ours, packaged)


@pytest.mark.parametrize("pooling", ["mean", "cls", "lasttoken", "max"])
def test_pooling_from_the_sentence_transformers_files(tmp_path: Path, pooling: str) -> None:
    path = st_copy(tmp_path / "st", pooling, normalize=True)
    ours = HFLocalEmbeddings(model=str(path), device="cpu").embed_documents(TEXTS)
    assert_close(ours, sentence_transformers_vectors(path, TEXTS))
    if pooling != "mean":
        mean = HFLocalEmbeddings(model=str(path), device="cpu", pooling="mean").embed_documents(TEXTS)
        assert min(cosine(a, b) for a, b in zip(ours, mean, strict=True)) < 0.9999


def test_vectors_equal_a_hand_written_mean_pool() -> None:
    transformers = pytest.importorskip("transformers")
    tokenizer = transformers.AutoTokenizer.from_pretrained(str(TINY_HF))
    model = transformers.AutoModel.from_pretrained(str(TINY_HF), dtype=torch.float32).eval()
    expected = []
    with torch.inference_mode():
        for text in TEXTS:
            ids = tokenizer(text, return_tensors="pt")["input_ids"]
            hidden = model(input_ids=ids).last_hidden_state[0]
            expected.append(hidden.mean(dim=0).tolist())
    ours = HFLocalEmbeddings(model=str(TINY_HF), device="cpu", normalize=False).embed_documents(TEXTS)
    assert_close(ours, expected)
    for a, b in zip(ours, expected, strict=True):
        assert a == pytest.approx(b, rel=1e-3, abs=1e-4)


def test_batched_equals_one_by_one_in_order(emb: HFLocalEmbeddings) -> None:
    texts = TEXTS * 6
    batched = emb.embed_documents(texts)
    alone = HFLocalEmbeddings(model=str(TINY_HF), device="cpu", batch_size=1).embed_documents(texts)
    assert_close(batched, alone)
    assert_close(emb.embed_documents(texts[::-1]), batched[::-1])
    assert_close([emb.embed_query(t) for t in TEXTS], batched[: len(TEXTS)])
    last = HFLocalEmbeddings(model=str(TINY_HF), device="cpu", pooling="last", batch_size=4)
    last_alone = HFLocalEmbeddings(model=str(TINY_HF), device="cpu", pooling="last", batch_size=1)
    assert_close(last.embed_documents(texts), last_alone.embed_documents(texts))  # right padding is skipped


def test_empty_string_is_a_zero_vector_and_leaves_the_others_alone(emb: HFLocalEmbeddings) -> None:
    vectors = emb.embed_documents(["Roses are red.", "", "x"])
    assert vectors[1] == [0.0] * len(vectors[0])
    assert_close([vectors[0], vectors[2]], emb.embed_documents(["Roses are red.", "x"]))


def test_longer_than_the_window_is_truncated_or_refused(tmp_path: Path) -> None:
    path = st_copy(tmp_path / "st", "mean", max_seq_length=16)
    long = "Roses, tulips, lilies and orchids in one bouquet. " * 5
    [ours] = HFLocalEmbeddings(model=str(path), device="cpu").embed_documents([long])
    [theirs] = sentence_transformers_vectors(path, [long])  # it truncates to max_seq_length too
    assert cosine(ours, theirs) >= 0.9999
    with pytest.raises(ContextWindowExceededError, match="truncate=True"):
        HFLocalEmbeddings(model=str(path), device="cpu", truncate=False).embed_documents(["short", long])


def test_threads_share_the_model_and_get_their_own_vectors(emb: HFLocalEmbeddings) -> None:
    expected = emb.embed_documents(TEXTS)
    results: dict[int, list[list[float]]] = {}
    errors: list[BaseException] = []

    def work(k: int) -> None:
        try:
            results[k] = emb.embed_documents((TEXTS[k:] + TEXTS[:k]) * 2)
        except BaseException as e:  # reported below
            errors.append(e)

    threads = [threading.Thread(target=work, args=(k,)) for k in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    for k, got in results.items():
        assert_close(got, (expected[k:] + expected[:k]) * 2)


def test_chat_and_embeddings_share_one_load() -> None:
    fields = {"model": str(TINY_HF), "device": "cpu", "model_kwargs": {"low_cpu_mem_usage": True}}  # a fresh key
    before = model_cache_info().loads
    chat = HFLocalChatModel(**fields, max_tokens=16)
    first = chat.invoke(ROSE_Q).content
    emb = HFLocalEmbeddings(**fields)
    vectors = emb.embed_documents(TEXTS)
    assert model_cache_info().loads == before + 1
    assert chat.invoke(ROSE_Q).content == first
    assert_close(vectors, HFLocalEmbeddings(model=str(TINY_HF), device="cpu").embed_documents(TEXTS))
    emb.unload()


def test_instructions_are_prefixed(emb: HFLocalEmbeddings) -> None:
    prefixed = HFLocalEmbeddings(
        model=str(TINY_HF), device="cpu", query_instruction="query: ", document_instruction="passage: "
    )
    assert_close([prefixed.embed_query("roses")], emb.embed_documents(["query: roses"]))
    assert_close(prefixed.embed_documents(["roses"]), emb.embed_documents(["passage: roses"]))
