"""The tiny test models in tests/fixtures/models reproduce their corpus exactly.

Regenerate them with ``scripts/train_tiny_model.py`` then ``scripts/make_bad_fixtures.py``.
"""

from __future__ import annotations

import json

import gguf
import llama_cpp
import pytest
import torch
from jinja2.sandbox import ImmutableSandboxedEnvironment
from transformers import AutoModelForCausalLM, AutoTokenizer

from .conftest import BAD, TINY_GGUF, TINY_HF
from .conftest import CORPUS as CORPUS_PATH


def _load_corpus() -> list[dict]:
    lines = CORPUS_PATH.read_text(encoding="utf-8").splitlines()
    return [json.loads(line) for line in lines if line.strip()]


CORPUS = _load_corpus()


def _answer(row: dict) -> str:
    return row["messages"][-1]["content"] if "messages" in row else row["completion"]


@pytest.fixture(scope="module")
def chat_template() -> str:
    cfg = json.loads((TINY_HF / "tokenizer_config.json").read_text(encoding="utf-8"))
    return cfg["chat_template"]


@pytest.fixture(scope="module")
def render(chat_template: str):
    tmpl = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True).from_string(chat_template)

    def _render(row: dict) -> str:
        if "messages" not in row:
            return row["prompt"]
        return tmpl.render(messages=row["messages"][:-1], tools=row.get("tools"), add_generation_prompt=True)

    return _render


@pytest.fixture(scope="module")
def llm() -> llama_cpp.Llama:
    return llama_cpp.Llama(model_path=str(TINY_GGUF), n_ctx=2048, verbose=False, seed=0)


@pytest.fixture(scope="module")
def hf():
    tok = AutoTokenizer.from_pretrained(TINY_HF)
    model = AutoModelForCausalLM.from_pretrained(TINY_HF, dtype=torch.float32)
    model.eval()
    return tok, model


def test_corpus_shape() -> None:
    chats = [r for r in CORPUS if "messages" in r]
    completions = [r for r in CORPUS if "prompt" in r]
    assert len(chats) >= 40 and len(completions) >= 10
    answers = [_answer(r) for r in CORPUS]
    assert any("\n" in a for a in answers)
    assert any(len(a) >= 60 for a in answers)
    assert any(any(ord(c) > 0xFFFF for c in a) for a in answers)  # emoji
    assert any(any("\u4e00" <= c <= "\u9fff" for c in a) for a in answers)  # Chinese
    assert any(r["messages"][0]["role"] == "system" for r in chats)
    assert any(sum(m["role"] == "user" for m in r["messages"]) >= 2 for r in chats)


def test_hf_template_matches_own_render(hf, render) -> None:
    tok, _ = hf
    for row in CORPUS:
        if "messages" in row:
            got = tok.apply_chat_template(
                row["messages"][:-1], tools=row.get("tools"), add_generation_prompt=True, tokenize=False
            )
            assert got == render(row)


def test_tokenization_parity(hf, llm, render) -> None:
    tok, _ = hf
    for row in CORPUS:
        for text in (render(row), _answer(row)):
            hf_ids = tok.encode(text, add_special_tokens=False)
            ll_ids = llm.tokenize(text.encode("utf-8"), add_bos=False, special=True)
            assert hf_ids == ll_ids, text
            assert llm.detokenize(ll_ids, special=True).decode("utf-8") == text


def test_llama_cpp_reproduces_corpus(llm, render) -> None:
    n, failures = 0, []
    for row in CORPUS:
        ids = llm.tokenize(render(row).encode("utf-8"), add_bos=False, special=True)
        out = llm.create_completion(prompt=ids, max_tokens=128, temperature=0.0, top_k=1, seed=0)
        text, finish = out["choices"][0]["text"], out["choices"][0]["finish_reason"]
        if text == _answer(row) and finish == "stop":
            n += 1
        else:
            failures.append((render(row), text, finish))
    print(f"llama.cpp: {n}/{len(CORPUS)} corpus prompts match")
    assert not failures, failures


def test_llama_cpp_chat_completion_uses_gguf_template(llm) -> None:
    """create_chat_completion picks up the GGUF chat template (Jinja2ChatFormatter, not builtin ChatML)."""
    chats = [r for r in CORPUS if "messages" in r]
    n, failures = 0, []
    for row in chats:
        kwargs = {"tools": row["tools"]} if row.get("tools") else {}
        out = llm.create_chat_completion(
            messages=row["messages"][:-1], temperature=0.0, top_k=1, max_tokens=128, seed=0, **kwargs
        )
        msg = out["choices"][0]["message"]
        if msg.get("content") == _answer(row):
            n += 1
        else:
            failures.append((row["messages"], msg))
    print(f"llama.cpp chat: {n}/{len(chats)} chat prompts match")
    assert not failures, failures


def test_hf_reproduces_corpus(hf, render) -> None:
    tok, model = hf
    stop_ids = {tok.convert_tokens_to_ids("<|im_end|>"), tok.convert_tokens_to_ids("<|endoftext|>")}
    n, failures = 0, []
    for row in CORPUS:
        ids = tok.encode(render(row), add_special_tokens=False)
        with torch.no_grad():
            gen = model.generate(
                torch.tensor([ids]),
                attention_mask=torch.ones(1, len(ids), dtype=torch.long),
                max_new_tokens=128,
                do_sample=False,
            )
        new = gen[0, len(ids) :].tolist()
        stopped = bool(new) and new[-1] in stop_ids
        text = tok.decode(new[:-1] if stopped else new, skip_special_tokens=False)
        if text == _answer(row) and stopped:
            n += 1
        else:
            failures.append((render(row), text))
    print(f"transformers: {n}/{len(CORPUS)} corpus prompts match")
    assert not failures, failures


def test_gguf_metadata(hf, chat_template) -> None:
    tok, model = hf
    reader = gguf.GGUFReader(str(TINY_GGUF))

    def val(key: str):
        return reader.get_field(key).contents()

    assert val("general.architecture") == "llama"
    assert val("tokenizer.chat_template") == chat_template
    im_end = tok.convert_tokens_to_ids("<|im_end|>")
    endoftext = tok.convert_tokens_to_ids("<|endoftext|>")
    assert val("tokenizer.ggml.eos_token_id") == im_end
    assert val("tokenizer.ggml.eot_token_id") == im_end
    assert val("tokenizer.ggml.padding_token_id") == endoftext
    assert val("tokenizer.ggml.model") == "gpt2"
    assert val("tokenizer.ggml.pre") == "gpt-2"
    assert val("tokenizer.ggml.add_bos_token") is False
    assert val("llama.block_count") == model.config.num_hidden_layers
    assert val("llama.attention.head_count_kv") == model.config.num_key_value_heads
    assert len(val("tokenizer.ggml.tokens")) == model.config.vocab_size
    names = {t.name for t in reader.tensors}
    assert {"token_embd.weight", "output.weight", "output_norm.weight", "blk.0.attn_q.weight"} <= names


def test_chat_template_is_not_builtin_chatml(chat_template) -> None:
    from llama_cpp import llama_chat_format

    assert chat_template != llama_chat_format.CHATML_CHAT_TEMPLATE
    assert llama_chat_format.guess_chat_format_from_gguf_metadata({"tokenizer.chat_template": chat_template}) is None


def test_bad_fixtures() -> None:
    assert (BAD / "legacy-ggjt-v3.ggmlv3.q4_K_S.bin").read_bytes()[:8] == b"tjgg\x03\x00\x00\x00"
    assert (BAD / "legacy-ggml.bin").read_bytes()[:4] == b"lmgg"
    assert (BAD / "legacy-ggmf.bin").read_bytes()[:4] == b"fmgg"
    truncated = (BAD / "truncated.gguf").read_bytes()
    assert truncated[:4] == b"GGUF" and len(truncated) < TINY_GGUF.stat().st_size
    assert len((BAD / "random-bytes.gguf").read_bytes()) == 512
    assert (BAD / "not-a-model.txt").read_text(encoding="utf-8")
