"""The token tables built at load (control tokens, pieces, end-of-generation) against llama.cpp, token by token.

The tables are built lazily or in bulk now; each must equal what asking llama.cpp about every
token gives, also where llama.cpp overrides the file's token types by their text.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from langchain_localllm._backends.llamacpp.load import (
    LlamaModel,
    _token_piece,
    _token_text,
    llama_cpp_module,
    load_llama,
    special_token_ids,
)
from langchain_localllm._backends.llamacpp.settings import LoadSettings

from .conftest import TINY_GGUF, write_gguf_variant

gguf = pytest.importorskip("gguf")
pytest.importorskip("llama_cpp")


def _fixture_field(key: str) -> list[Any]:
    return list(gguf.GGUFReader(str(TINY_GGUF)).fields[key].contents())


def _load(path: Path) -> LlamaModel:
    return load_llama(path, LoadSettings(model_path=str(path), n_ctx=64))


def _without(dst: Path, key: str) -> Path:
    """The fixture without one metadata key."""
    return write_gguf_variant(dst, {}, drop=frozenset({key}))


def assert_tables_match_llama_cpp(model: LlamaModel) -> list[int]:
    """Every table against one llama.cpp question per token; returns the control-token ids."""
    llama_cpp = llama_cpp_module()
    vocab = llama_cpp.llama_model_get_vocab(model.llama._model.model)
    n = llama_cpp.llama_vocab_n_tokens(vocab)
    mask = llama_cpp.LLAMA_TOKEN_ATTR_CONTROL | llama_cpp.LLAMA_TOKEN_ATTR_UNKNOWN
    exact = [t for t in range(n) if llama_cpp.llama_vocab_get_attr(vocab, t) & mask]
    assert special_token_ids(llama_cpp, vocab, n, model.info.typed_control_ids) == exact
    assert special_token_ids(llama_cpp, vocab, n) == exact  # without the file's hint
    assert model.controls.strings == {s for s in (_token_text(llama_cpp, vocab, t) for t in exact) if s}
    step = max(1, n // 5000)
    assert all(model.pieces[t] == _token_piece(llama_cpp, vocab, t, special=False) for t in range(0, n, step))
    eog = {t for t in range(n) if llama_cpp.llama_vocab_is_eog(vocab, t)}
    assert {t for t in range(n) if t in model.eog_ids} == eog
    assert -1 not in model.eog_ids
    assert n not in model.eog_ids
    with pytest.raises(KeyError):
        model.pieces[n]
    return exact


def test_the_fixture_tables_match_llama_cpp() -> None:
    model = _load(TINY_GGUF)
    try:
        exact = assert_tables_match_llama_cpp(model)
        assert model.info.typed_control_ids == tuple(exact)
        assert {"<|im_start|>", "<|im_end|>"} <= model.controls.strings
    finally:
        model.close()


def test_a_control_token_the_file_types_normal_is_found(tmp_path: Path) -> None:
    """llama.cpp makes ``<|im_end|>`` a control token by its text, whatever the file says."""
    tokens = _fixture_field("tokenizer.ggml.tokens")
    types = _fixture_field("tokenizer.ggml.token_type")
    im_end = tokens.index("<|im_end|>")
    types[im_end] = int(gguf.TokenType.NORMAL)
    model = _load(write_gguf_variant(tmp_path / "normal.gguf", {"tokenizer.ggml.token_type": types}))
    try:
        assert im_end not in model.info.typed_control_ids
        assert im_end in assert_tables_match_llama_cpp(model)
        assert "<|im_end|>" in model.controls.strings
    finally:
        model.close()


def test_a_control_typed_token_llama_cpp_retypes_is_dropped(tmp_path: Path) -> None:
    """llama.cpp makes ``<|channel|>`` (gpt-oss) a USER_DEFINED token even when the file types it CONTROL."""
    tokens = _fixture_field("tokenizer.ggml.tokens")
    types = _fixture_field("tokenizer.ggml.token_type")
    spare = len(tokens) - 1
    tokens[spare] = "<|channel|>"
    types[spare] = int(gguf.TokenType.CONTROL)
    path = write_gguf_variant(
        tmp_path / "retyped.gguf", {"tokenizer.ggml.tokens": tokens, "tokenizer.ggml.token_type": types}
    )
    model = _load(path)
    try:
        assert spare in model.info.typed_control_ids
        assert spare not in assert_tables_match_llama_cpp(model)
    finally:
        model.close()


def test_a_file_without_token_types(tmp_path: Path) -> None:
    model = _load(_without(tmp_path / "untyped.gguf", "tokenizer.ggml.token_type"))
    try:
        assert model.info.typed_control_ids == ()
        exact = assert_tables_match_llama_cpp(model)
        tokens = _fixture_field("tokenizer.ggml.tokens")
        assert tokens.index("<|im_end|>") in exact  # by its text alone
    finally:
        model.close()


def test_the_tables_stop_asking_llama_cpp_once_the_model_is_freed() -> None:
    model = _load(TINY_GGUF)
    piece = model.pieces[5]
    model.close()
    assert model.pieces[5] == piece  # kept
    with pytest.raises(KeyError):
        model.pieces[6]  # would read freed memory
    assert 7 not in model.eog_ids


@pytest.mark.slow
def test_a_262k_token_vocabulary_tables_match_llama_cpp(tmp_path: Path) -> None:
    from scripts.bench.large_vocab import LARGE_VOCAB, write_large_vocab_gguf

    model = _load(write_large_vocab_gguf(tmp_path / "large.gguf", LARGE_VOCAB))
    try:
        assert model.info.n_vocab == LARGE_VOCAB
        assert_tables_match_llama_cpp(model)
    finally:
        model.close()
