"""The real-model suite: a published model (SmolLM2-135M-Instruct) on both backends, against the raw backends.

``make real-models`` puts the GGUF and its transformers copy into ``.real-models/``;
``LOCALLLM_REAL_GGUF`` / ``LOCALLLM_REAL_HF`` point at other files (any chat model with a
chat template works; the answers are compared with the raw backend, never hard-coded).
Every test here skips, naming the make target and the variable, when its model is absent.

Each backend is a :class:`Side`: how to build our chat model, and the same generation done
by hand with the raw library (the template rendered with jinja2 or ``apply_chat_template``,
greedy decoding with ``llama_cpp.Llama`` or ``model.generate``).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from langchain_localllm import HFLocalChatModel, LocalGGMLChatModel, clear_model_cache

ROOT = Path(__file__).resolve().parents[3]
REAL_GGUF = Path(os.environ.get("LOCALLLM_REAL_GGUF") or ROOT / ".real-models" / "SmolLM2-135M-Instruct.Q4_1.gguf")
REAL_HF = Path(os.environ.get("LOCALLLM_REAL_HF") or ROOT / ".real-models" / "SmolLM2-135M-Instruct-hf")
N_CTX = 2048
CHUNK = 64
"""Our llama.cpp prefill runs in aligned 64-token chunks on CPU; the raw ``Llama`` is given ``n_batch=64``
so that both compute every prompt position in the same batch (numerics depend on it)."""
MAX_TOKENS = 40
GREEDY = {"temperature": 0.0, "max_tokens": MAX_TOKENS}


def _skip_reason(path: Path, var: str, what: str) -> str | None:
    if (path / "config.json").is_file() if what == "hf" else path.is_file():
        return None
    return f"no real model at {path}: run `make real-models` or set {var}"


GGUF_SKIP = _skip_reason(REAL_GGUF, "LOCALLLM_REAL_GGUF", "gguf")
HF_SKIP = _skip_reason(REAL_HF, "LOCALLLM_REAL_HF", "hf")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    here = Path(__file__).parent
    for item in items:
        if here in Path(str(item.fspath)).parents:
            item.add_marker(pytest.mark.real_model)


@dataclass(frozen=True)
class Raw:
    """One generation done with the raw library."""

    prompt_ids: list[int]
    ids: list[int]
    """The generated ids, end-of-turn token excluded."""
    text: str
    ended: bool
    """An end-of-generation token ended it (not ``max_tokens``)."""


@dataclass
class Side:
    """One backend: our chat model and the raw library doing the same by hand."""

    name: str
    make: Callable[..., Any]
    """Our chat model (greedy) with these extra fields."""
    hand_ids: Callable[[list[dict[str, Any]]], list[int]]
    """The template rendered by hand and tokenized, for these messages."""
    raw: Callable[[list[int], int], Raw]
    """Greedy generation on these prompt ids, at most this many tokens."""
    piece: Callable[[int], str]
    """The text of one token id."""
    counts_end_token: bool
    """Whether the raw library counts the end-of-turn token as generated (transformers does)."""

    def raw_chat(self, messages: list[dict[str, Any]], max_tokens: int = MAX_TOKENS) -> Raw:
        return self.raw(self.hand_ids(messages), max_tokens)


def _render_by_hand(template: str, messages: list[dict[str, Any]], **special: str) -> str:
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)
    return env.from_string(template).render(messages=messages, add_generation_prompt=True, **special)


@pytest.fixture(scope="session")
def gguf_side() -> Iterator[Side]:
    if GGUF_SKIP:
        pytest.skip(GGUF_SKIP)
    llama_cpp = pytest.importorskip("llama_cpp")
    llama = llama_cpp.Llama(str(REAL_GGUF), n_ctx=N_CTX, n_batch=CHUNK, verbose=False, seed=0)
    template = llama.metadata["tokenizer.chat_template"]
    bos = llama._model.token_get_text(llama.token_bos())
    eos = llama._model.token_get_text(llama.token_eos())
    add_bos = llama.metadata.get("tokenizer.ggml.add_bos_token", "false") == "true"

    def hand_ids(messages: list[dict[str, Any]]) -> list[int]:
        text = _render_by_hand(template, messages, bos_token=bos, eos_token=eos)
        return llama.tokenize(text.encode(), add_bos=add_bos and not text.startswith(bos), special=True)

    def raw(prompt_ids: list[int], max_tokens: int) -> Raw:
        llama.reset()
        ids: list[int] = []
        ended = False
        for token in llama.generate(prompt_ids, top_k=1, temp=0.0, reset=True):
            if llama_cpp.llama_vocab_is_eog(llama._model.vocab, token):
                ended = True
                break
            ids.append(token)
            if len(ids) == max_tokens:
                break
        text = llama.detokenize(ids).decode("utf-8", errors="replace")
        return Raw(list(prompt_ids), ids, text, ended)

    def make(**fields: Any) -> LocalGGMLChatModel:
        return LocalGGMLChatModel(**{"model_path": str(REAL_GGUF), "n_ctx": N_CTX, **GREEDY, **fields})

    def piece(token: int) -> str:
        return llama.detokenize([token]).decode("utf-8", errors="replace")

    yield Side("llamacpp", make, hand_ids, raw, piece, counts_end_token=False)
    llama.close()
    clear_model_cache()


@pytest.fixture(scope="session")
def hf_side() -> Iterator[Side]:
    if HF_SKIP:
        pytest.skip(HF_SKIP)
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    # One intra-op thread: on a busy machine torch's pool spins (the tiny-model suite measured 25x).
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    tokenizer = transformers.AutoTokenizer.from_pretrained(REAL_HF)
    model = transformers.AutoModelForCausalLM.from_pretrained(REAL_HF, dtype=torch.float32)
    model.eval()
    eos_ids = {tokenizer.convert_tokens_to_ids("<|im_end|>"), tokenizer.eos_token_id} - {None}

    def hand_ids(messages: list[dict[str, Any]]) -> list[int]:
        ids = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=True, return_dict=True)
        return list(ids["input_ids"])

    def raw(prompt_ids: list[int], max_tokens: int) -> Raw:
        ids = torch.tensor([prompt_ids])
        with torch.inference_mode():
            out = model.generate(
                input_ids=ids,
                attention_mask=torch.ones_like(ids),
                do_sample=False,
                max_new_tokens=max_tokens,
                eos_token_id=sorted(eos_ids),
                pad_token_id=tokenizer.pad_token_id or tokenizer.eos_token_id,
            )
        new = [int(t) for t in out[0][len(prompt_ids) :]]
        ends = [i for i, t in enumerate(new) if t in eos_ids]
        kept = new[: ends[0]] if ends else new
        return Raw(list(prompt_ids), kept, tokenizer.decode(kept, skip_special_tokens=True), bool(ends))

    def make(**fields: Any) -> HFLocalChatModel:
        return HFLocalChatModel(**{"model": str(REAL_HF), "dtype": "float32", "device": "cpu", **GREEDY, **fields})

    def piece(token: int) -> str:
        return str(tokenizer.decode([token]))

    yield Side("transformers", make, hand_ids, raw, piece, counts_end_token=True)
    torch.set_num_threads(threads)
    clear_model_cache()


@pytest.fixture(params=["llamacpp", "transformers"])
def side(request: pytest.FixtureRequest) -> Side:
    """Each test that takes ``side`` runs on both backends."""
    name = "gguf_side" if request.param == "llamacpp" else "hf_side"
    return request.getfixturevalue(name)  # type: ignore[no-any-return]
