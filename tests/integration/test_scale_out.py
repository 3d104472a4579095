"""The scale-out path of ``docs/real-models.md``: one chain, in process and against a server.

When one process is not enough, the same GGUF is served by llama.cpp's OpenAI-compatible
server (here llama-cpp-python's ``llama_cpp.server``; ``llama-server`` and vLLM speak the
same API) and the chain swaps ``LocalGGMLChatModel`` for ``langchain-openai``'s
``ChatOpenAI(base_url=...)``. Both give the same greedy answer.
"""

from __future__ import annotations

import importlib.util
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from langchain_core.language_models import BaseChatModel
from langchain_core.output_parsers import StrOutputParser
from langchain_core.prompts import ChatPromptTemplate

from langchain_localllm import LocalGGMLChatModel

from .conftest import ROSE_Q, chat_answer

pytestmark = pytest.mark.skipif(
    importlib.util.find_spec("langchain_openai") is None or importlib.util.find_spec("uvicorn") is None,
    reason="needs langchain-openai and llama-cpp-python's server extras (pip install -e '.[test]')",
)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="module")
def server(gguf_path: Path) -> Iterator[str]:
    port = _free_port()
    command = [sys.executable, "-m", "llama_cpp.server", "--model", str(gguf_path), "--port", str(port)]
    command += ["--host", "127.0.0.1", "--n_ctx", "512", "--model_alias", "tiny-chat"]
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    base = f"http://127.0.0.1:{port}/v1"
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                with urllib.request.urlopen(f"{base}/models", timeout=2):  # noqa: S310 - loopback
                    break
            except OSError:
                if process.poll() is not None or time.monotonic() > deadline:
                    pytest.fail(f"llama_cpp.server did not start (exit code {process.poll()})")
                time.sleep(0.2)
        yield base
    finally:
        process.terminate()
        process.wait(timeout=30)


def _chain(model: BaseChatModel) -> object:
    prompt = ChatPromptTemplate.from_messages([("human", "{question}")])
    return prompt | model | StrOutputParser()


def test_the_same_chain_runs_in_process_and_against_an_openai_compatible_server(gguf_path: Path, server: str) -> None:
    from langchain_openai import ChatOpenAI

    local = LocalGGMLChatModel(model_path=str(gguf_path), temperature=0, max_tokens=64)
    remote = ChatOpenAI(base_url=server, api_key="unused", model="tiny-chat", temperature=0, max_tokens=64)
    answers = [_chain(model).invoke({"question": ROSE_Q}) for model in (local, remote)]  # type: ignore[attr-defined]
    assert answers[0] == chat_answer(ROSE_Q)
    assert answers[1] == answers[0]
    streamed = "".join(_chain(remote).stream({"question": ROSE_Q}))  # type: ignore[attr-defined]
    assert streamed == answers[0]
