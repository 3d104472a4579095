"""The RAG example of docs/tutorial.md, run as written on the tiny GGUF (so the example cannot rot)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from langchain_localllm import clear_model_cache, model_cache_info

ROOT = Path(__file__).resolve().parents[2]
TUTORIAL = ROOT / "docs" / "tutorial.md"

pytest.importorskip("llama_cpp")
pytest.importorskip("langchain_text_splitters")


def rag_snippet() -> str:
    text = TUTORIAL.read_text(encoding="utf-8")
    found = re.search(r"<!-- rag-example:start -->\n```python\n(.*?)```\n<!-- rag-example:end -->", text, re.DOTALL)
    assert found, "docs/tutorial.md lost its rag-example markers"
    return found.group(1)


def test_the_tutorial_rag_example_runs_as_written(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.chdir(ROOT)  # the snippet names the fixture by its path from the repository root
    clear_model_cache()
    before = model_cache_info().loads
    namespace: dict[str, object] = {"__name__": "tutorial_rag"}
    exec(compile(rag_snippet(), str(TUTORIAL), "exec"), namespace)  # noqa: S102 - our own documentation
    out = capsys.readouterr().out
    retrieved = [line for line in out.splitlines() if line.startswith("retrieved: ")]
    assert len(retrieved) == 2  # k=2 pieces of the handbook
    docs = namespace["docs"]
    assert isinstance(docs, list)
    assert len(docs) >= 4  # the splitter really split it
    pieces = {d.page_content for d in docs}
    assert all(line.removeprefix("retrieved: ") in pieces for line in retrieved)
    answer = out.split(retrieved[-1], 1)[1].strip()
    assert answer  # the chat model answered
    assert model_cache_info().loads == before + 1  # chat and embeddings: one load of the file

    # The chain streams: more than one chunk, which join to the whole answer.
    chain, question = namespace["chain"], namespace["question"]
    chunks = list(chain.stream(question))  # type: ignore[attr-defined]
    assert len(chunks) > 1
    assert "".join(chunks) == chain.invoke(question)  # type: ignore[attr-defined]
