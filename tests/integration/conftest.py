"""Shared fixtures and helpers for the integration tests, on the tiny models this project trains itself.

The corpus and its questions, callback token counters, the thread guards (from
``tests.helpers``) and the one-torch-thread fixture. Test modules import them from here.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from langchain_core.callbacks import AsyncCallbackHandler, BaseCallbackHandler
from langchain_core.messages import AIMessage, BaseMessage, HumanMessage, SystemMessage

from tests.helpers import (
    BAD,
    CORPUS,
    MODELS,
    TINY_GGUF,
    TINY_HF,
    TINY_T5,
    bridge_threads,
    no_bridge_threads_soon,
    scheduler_threads,
)

__all__ = [
    "BAD",
    "CHATS",
    "CN_Q",
    "COMPLETIONS",
    "CORPUS",
    "EMOJI_Q",
    "FRESH_Q",
    "MODELS",
    "POEM_Q",
    "PRICE_TOOL",
    "ROSE_Q",
    "SINGLE",
    "TINY_GGUF",
    "TINY_HF",
    "TINY_T5",
    "TOOL_EXAMPLES",
    "AsyncTokenCounter",
    "ChatExample",
    "CompletionExample",
    "TokenCounter",
    "as_messages",
    "bridge_threads",
    "chat_answer",
    "expected_before",
    "gguf_metadata",
    "no_bridge_threads_soon",
    "raw_greedy",
    "scheduler_threads",
    "write_gguf_variant",
]

POEM_Q = "Write a short poem about flowers."
ROSE_Q = "Rose is which type of flower?"
CN_Q = "昨天有一个客户抱怨他买了花给女朋友之后，两天花就枯了，你说作为客服我应该怎么解释？"
EMOJI_Q = "Say something nice with an emoji."
FRESH_Q = "How do I keep cut flowers fresh?"


@dataclass(frozen=True)
class ChatExample:
    messages: list[dict[str, Any]]
    answer: str
    tools: list[dict[str, Any]] | None = None

    @property
    def system(self) -> str | None:
        return self.messages[0]["content"] if self.messages[0]["role"] == "system" else None

    @property
    def single_turn(self) -> bool:
        roles = [m["role"] for m in self.messages]
        return self.tools is None and roles in (["user"], ["system", "user"])

    @property
    def user(self) -> str:
        return self.messages[-1]["content"]


@dataclass(frozen=True)
class CompletionExample:
    prompt: str
    completion: str


def load_corpus() -> tuple[list[ChatExample], list[CompletionExample]]:
    chats: list[ChatExample] = []
    completions: list[CompletionExample] = []
    for line in CORPUS.read_text(encoding="utf-8").splitlines():
        if not line.strip():
            continue
        row: dict[str, Any] = json.loads(line)
        if "messages" in row:
            *history, last = row["messages"]
            assert last["role"] == "assistant"
            chats.append(ChatExample(history, last["content"], row.get("tools")))
        else:
            completions.append(CompletionExample(row["prompt"], row["completion"]))
    return chats, completions


CHATS, COMPLETIONS = load_corpus()
SINGLE = [ex.user for ex in CHATS if ex.single_turn and ex.system is None]
TOOL_EXAMPLES = [ex for ex in CHATS if ex.tools]
PRICE_TOOL = TOOL_EXAMPLES[0].tools[0] if TOOL_EXAMPLES and TOOL_EXAMPLES[0].tools else {}


def chat_answer(user: str) -> str:
    """The corpus answer to a single-turn question without a system message."""
    for ex in CHATS:
        if ex.single_turn and ex.system is None and ex.user == user:
            return ex.answer
    raise KeyError(user)


@pytest.fixture(scope="session")
def gguf_path() -> Path:
    return TINY_GGUF


@pytest.fixture(scope="session")
def hf_path() -> Path:
    return TINY_HF


def expected_before(answer: str, stops: list[str]) -> str:
    """``answer`` cut at the earliest of ``stops`` that occurs in it."""
    cut = min((answer.find(s) for s in stops if s in answer), default=len(answer))
    return answer[:cut]


def as_messages(dicts: list[dict[str, Any]]) -> list[BaseMessage]:
    """LangChain messages for corpus message dicts (system, user and assistant turns)."""
    kinds = {"system": SystemMessage, "user": HumanMessage, "assistant": AIMessage}
    return [kinds[d["role"]](d["content"]) for d in dicts]


class TokenCounter(BaseCallbackHandler):
    """Records every ``on_llm_new_token`` token, in order."""

    def __init__(self) -> None:
        self.tokens: list[str] = []

    def on_llm_new_token(self, token: str, **kwargs: Any) -> None:
        self.tokens.append(token)


class AsyncTokenCounter(AsyncCallbackHandler):
    """The async handler version of :class:`TokenCounter`."""

    def __init__(self) -> None:
        self.tokens: list[str] = []

    async def on_llm_new_token(self, token: str, **kwargs: Any) -> None:
        self.tokens.append(token)


@pytest.fixture(scope="module")
def one_torch_thread() -> Iterator[None]:
    """One torch intra-op thread for a module (use with ``pytest.mark.usefixtures``).

    The tiny models run fastest on one intra-op thread, and a busy machine (CI, parallel
    jobs) makes torch's thread pool spin: 0.6 s vs 15 s for the corpus on 2 loaded cores.
    """
    torch = pytest.importorskip("torch")
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def gguf_metadata(path: Path, key: str) -> Any:
    """One metadata value of a GGUF file, read with the ``gguf`` package."""
    gguf = pytest.importorskip("gguf")
    return gguf.GGUFReader(str(path)).fields[key].contents()


def write_gguf_variant(
    dst: Path,
    changes: dict[str, Any],
    src: Path = TINY_GGUF,
    add: dict[str, tuple[Any, Any]] | None = None,
    drop: frozenset[str] = frozenset(),
) -> Path:
    """Copy the GGUF ``src`` to ``dst`` with some metadata values replaced; returns ``dst``.

    Every key of ``changes`` must already be in ``src`` (its value type is kept); ``add``
    gives new keys as ``(value, gguf.GGUFValueType)``; ``drop`` names keys left out. The
    tensors are copied as they are, so the variant answers like the fixture unless the
    changed metadata changes the prompt. Build variants in ``tmp_path``; commit none.
    """
    gguf = pytest.importorskip("gguf")
    reader = gguf.GGUFReader(str(src))
    missing = set(changes) - set(reader.fields)
    assert not missing, f"{src.name} has no {sorted(missing)}"
    writer = gguf.GGUFWriter(str(dst), reader.fields["general.architecture"].contents())
    for field in reader.fields.values():
        # GGUF.* are the header's virtual fields; GGUFWriter writes them and the architecture itself.
        if field.name.startswith("GGUF.") or field.name == "general.architecture" or field.name in drop:
            continue
        kind = field.types[0]
        sub_type = field.types[-1] if kind == gguf.GGUFValueType.ARRAY else None
        value = changes[field.name] if field.name in changes else field.contents()
        writer.add_key_value(field.name, value, kind, sub_type=sub_type)
    for key, (value, kind) in (add or {}).items():
        writer.add_key_value(key, value, kind)
    for tensor in reader.tensors:
        writer.add_tensor_info(
            tensor.name, tensor.data.shape, tensor.data.dtype, tensor.data.nbytes, tensor.tensor_type
        )
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_ti_data_to_file()
    for tensor in reader.tensors:
        writer.write_tensor_data(tensor.data, tensor_endianess=reader.endianess)
    writer.close()
    return dst


def raw_greedy(bundle: Any, prompt_ids: list[int], max_new_tokens: int) -> tuple[list[int], bool]:
    """Greedy ``model.generate`` of a loaded HF bundle on ``prompt_ids``, around the package.

    Returns the new token ids before the first EOS, and whether an EOS ended generation
    (``False``: ``max_new_tokens`` did). For a seq2seq model the decoder's start token
    is not a new token.
    """
    torch = pytest.importorskip("torch")
    model = bundle.model
    ids = torch.tensor([prompt_ids], dtype=torch.long, device=model.device)
    with torch.inference_mode():
        out = model.generate(
            input_ids=ids,
            attention_mask=torch.ones_like(ids),
            do_sample=False,
            max_new_tokens=max_new_tokens,
            eos_token_id=sorted(bundle.eos_ids),
            pad_token_id=bundle.pad_id,
        )
    new = [int(t) for t in out[0][1 if bundle.is_seq2seq else len(prompt_ids) :]]
    ends = [i for i, t in enumerate(new) if t in bundle.eos_ids]
    return (new[: ends[0]], True) if ends else (new, False)
