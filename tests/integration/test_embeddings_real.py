"""Embeddings on a published model (SmolLM2-135M-Instruct, mean pooling) against the raw backends.

``make real-models`` puts the files into ``.real-models/``; ``LOCALLLM_REAL_GGUF`` /
``LOCALLLM_REAL_HF`` point at others. Every test skips, naming the variable, when its model is absent.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from langchain_localllm import HFLocalEmbeddings, LocalGGMLEmbeddings, clear_model_cache

from .test_embeddings_hf import st_copy
from .test_embeddings_llamacpp import TEXTS, assert_close, cosine

ROOT = Path(__file__).resolve().parents[2]
REAL_GGUF = Path(os.environ.get("LOCALLLM_REAL_GGUF") or ROOT / ".real-models" / "SmolLM2-135M-Instruct.Q4_1.gguf")
REAL_HF = Path(os.environ.get("LOCALLLM_REAL_HF") or ROOT / ".real-models" / "SmolLM2-135M-Instruct-hf")
N_CTX = 256
LONG = "The florist wraps twelve red roses with baby's breath and green leaves in red paper. " * 30

pytestmark = pytest.mark.real_model


def _skip(path: Path, var: str, *, directory: bool) -> None:
    present = (path / "config.json").is_file() if directory else path.is_file()
    if not present:
        pytest.skip(f"no real model at {path}: run `make real-models` or set {var}")


@pytest.fixture(scope="module")
def raw_llama() -> Iterator[Any]:
    _skip(REAL_GGUF, "LOCALLLM_REAL_GGUF", directory=False)
    llama_cpp = pytest.importorskip("llama_cpp")
    llama = llama_cpp.Llama(
        str(REAL_GGUF),
        embedding=True,
        pooling_type=llama_cpp.LLAMA_POOLING_TYPE_MEAN,
        n_ctx=N_CTX,
        n_batch=N_CTX,
        verbose=False,
    )
    yield llama
    llama.close()
    clear_model_cache()


def test_gguf_vectors_equal_llama_cpp_mean_pooling(raw_llama: Any) -> None:
    # SmolLM2's GGUF names no pooling type: "auto" is mean, as documented.
    emb = LocalGGMLEmbeddings(model_path=str(REAL_GGUF), n_ctx=N_CTX)
    texts = [*TEXTS, LONG]  # the last one is longer than the window: both truncate it
    ours = emb.embed_documents(texts)
    assert_close(ours, [raw_llama.embed(t, truncate=True) for t in texts])
    alone = LocalGGMLEmbeddings(model_path=str(REAL_GGUF), n_ctx=N_CTX, batch_size=1).embed_documents(texts)
    assert_close(ours, alone)
    assert_close(emb.embed_documents(texts[::-1]), ours[::-1])


@pytest.fixture(scope="module")
def real_hf() -> Path:
    _skip(REAL_HF, "LOCALLLM_REAL_HF", directory=True)
    pytest.importorskip("torch")
    return REAL_HF


def test_hf_vectors_equal_a_hand_written_mean_pool(real_hf: Path) -> None:
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    tokenizer = transformers.AutoTokenizer.from_pretrained(real_hf)
    model = transformers.AutoModel.from_pretrained(real_hf, dtype=torch.float32).eval()
    expected = []
    with torch.inference_mode():
        for text in TEXTS:
            ids = tokenizer(text, return_tensors="pt")["input_ids"]
            expected.append(model(input_ids=ids).last_hidden_state[0].mean(dim=0).tolist())
    emb = HFLocalEmbeddings(model=str(real_hf), device="cpu")
    ours = emb.embed_documents(TEXTS)
    assert_close(ours, expected)
    assert_close(HFLocalEmbeddings(model=str(real_hf), device="cpu", batch_size=1).embed_documents(TEXTS), ours)
    clear_model_cache()


def test_hf_vectors_equal_sentence_transformers(real_hf: Path, tmp_path: Path) -> None:
    st = pytest.importorskip("sentence_transformers")
    packaged = st_copy(tmp_path / "st", "mean", normalize=True, max_seq_length=64, source=real_hf)
    theirs = st.SentenceTransformer(str(packaged), device="cpu", local_files_only=True).encode([*TEXTS, LONG]).tolist()
    ours = HFLocalEmbeddings(model=str(packaged), device="cpu").embed_documents([*TEXTS, LONG])
    assert_close(ours, theirs)
    assert cosine(ours[-1], ours[0]) < 0.9999
    clear_model_cache()
