#!/usr/bin/env python
"""Stream answers from local models through LangChain, token by token.

By default it runs the tiny models this project trains (``tests/fixtures/models``),
so it works offline in seconds. Point it at real models with ``--gguf`` / ``--hf``::

    make demo
    make demo ARGS="--gguf ~/models/qwen2.5-0.5b-instruct-q8_0.gguf --hf Qwen/Qwen2.5-0.5B-Instruct"
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

from langchain_core.callbacks import BaseCallbackHandler
from langchain_core.output_parsers import StrOutputParser
from langchain_core.prompts import ChatPromptTemplate, PromptTemplate

from langchain_localllm import HFLocalChatModel, LocalGGMLLLM

ROOT = Path(__file__).resolve().parents[1]
TINY_GGUF = ROOT / "tests" / "fixtures" / "models" / "tiny-chat.gguf"
TINY_HF = ROOT / "tests" / "fixtures" / "models" / "tiny-chat"

QUESTIONS = [
    "Rose is which type of flower?",
    "昨天有一个客户抱怨他买了花给女朋友之后，两天花就枯了，你说作为客服我应该怎么解释？",
    "Write a short poem about flowers.",
]


class PrintTokens(BaseCallbackHandler):
    """Prints each token the moment the model produces it."""

    def __init__(self) -> None:
        self.count = 0

    def on_llm_new_token(self, token: str, **kwargs: Any) -> None:
        self.count += 1
        sys.stdout.write(token)
        sys.stdout.flush()


def demo_gguf(path: str, questions: list[str]) -> None:
    print(f"\n=== LocalGGMLLLM (llama.cpp) on {path} ===")
    llm = LocalGGMLLLM(model_path=path, temperature=0, max_tokens=256)
    llm.load()  # once per process; every later call reuses it
    chain = PromptTemplate.from_template("{question}") | llm | StrOutputParser()
    for question in questions:
        printer = PrintTokens()
        print(f"\nQ: {question}\nA: ", end="", flush=True)
        start = time.perf_counter()
        chain.invoke({"question": question}, config={"callbacks": [printer]})
        elapsed = time.perf_counter() - start
        print(f"\n   [{printer.count} chunks streamed in {elapsed * 1000:.0f} ms]")


def demo_hf(model: str, questions: list[str]) -> None:
    print(f"\n=== HFLocalChatModel (transformers) on {model} ===")
    chat = HFLocalChatModel(model=model, max_tokens=256)
    chat.load()
    chain = ChatPromptTemplate.from_messages([("human", "{question}")]) | chat | StrOutputParser()
    for question in questions:
        print(f"\nQ: {question}\nA: ", end="", flush=True)
        start = time.perf_counter()
        n = 0
        for piece in chain.stream({"question": question}):
            n += 1
            print(piece, end="", flush=True)
        print(f"\n   [{n} chunks streamed in {(time.perf_counter() - start) * 1000:.0f} ms]")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--gguf", default=str(TINY_GGUF), help="a local .gguf file (default: the tiny fixture)")
    parser.add_argument("--hf", default=str(TINY_HF), help="a local HF model dir or hub id (default: the tiny fixture)")
    parser.add_argument("--question", action="append", help="ask this instead (repeatable)")
    parser.add_argument("--skip-hf", action="store_true", help="only run the llama.cpp demo")
    args = parser.parse_args()
    questions = args.question or QUESTIONS
    demo_gguf(args.gguf, questions)
    if not args.skip_hf:
        demo_hf(args.hf, questions)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
