"""Shared fixtures for the integration tests: the tiny models this project trains itself."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

MODELS = Path(__file__).resolve().parents[1] / "fixtures" / "models"
CORPUS = MODELS / "corpus.jsonl"
TINY_GGUF = MODELS / "tiny-chat.gguf"
TINY_HF = MODELS / "tiny-chat"
TINY_T5 = MODELS / "tiny-t5"
BAD = MODELS / "bad"


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
