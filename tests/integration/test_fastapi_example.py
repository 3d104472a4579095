"""The FastAPI example (``docs/examples/fastapi_server.py``) serves concurrent users from one model.

The example app is imported as a user would run it, pointed at the tiny committed GGUF
through its environment variables, and driven in-process (``httpx.ASGITransport``, no
sockets): streaming and plain clients at once must each get their prompt's sequential
greedy answer, the streams must arrive as several events, and the requests must have
shared decode steps (fewer forward passes than answer tokens).
"""

from __future__ import annotations

import asyncio
import importlib.util
import json
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType

import pytest

from langchain_localllm import clear_model_cache
from langchain_localllm._backends.llamacpp.scheduler import Scheduler

from .conftest import SINGLE, TINY_GGUF, chat_answer, scheduler_threads

fastapi = pytest.importorskip("fastapi")
httpx = pytest.importorskip("httpx")

EXAMPLE = Path(__file__).resolve().parents[2] / "docs" / "examples" / "fastapi_server.py"
STREAMS = 8
PLAIN = 4


def _load_example() -> ModuleType:
    spec = importlib.util.spec_from_file_location("fastapi_server_example", EXAMPLE)
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture
def example(monkeypatch: pytest.MonkeyPatch) -> Iterator[ModuleType]:
    monkeypatch.setenv("LOCALLLM_GGUF", str(TINY_GGUF))
    monkeypatch.setenv("LOCALLLM_MAX_PARALLEL", str(STREAMS))
    monkeypatch.delenv("LOCALLLM_N_CTX", raising=False)
    monkeypatch.delenv("LOCALLLM_MAX_TOKENS", raising=False)
    clear_model_cache()
    yield _load_example()
    clear_model_cache()
    assert scheduler_threads() == []  # the lifespan's unload joined the worker


def _events(body: str) -> list[tuple[str, dict[str, object]]]:
    """``(event, data)`` of each server-sent event in ``body``."""
    out = []
    for block in body.split("\n\n"):
        if not block.strip():
            continue
        event, data = "message", None
        for line in block.splitlines():
            if line.startswith("event: "):
                event = line.removeprefix("event: ")
            elif line.startswith("data: "):
                data = json.loads(line.removeprefix("data: "))
        assert isinstance(data, dict), block
        out.append((event, data))
    return out


async def test_concurrent_streaming_and_plain_clients_get_their_sequential_answers(example: ModuleType) -> None:
    app = example.app
    prompts = SINGLE[: STREAMS + PLAIN]
    async with app.router.lifespan_context(app):
        model = app.state.model
        with model._backend().hold() as loaded:
            scheduler = loaded.scheduler
            steps_before = scheduler.steps if isinstance(scheduler, Scheduler) else 0
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://example") as client:

            async def stream(prompt: str) -> list[tuple[str, dict[str, object]]]:
                async with client.stream("POST", "/chat/stream", json={"message": prompt}) as response:
                    assert response.status_code == 200
                    assert response.headers["content-type"].startswith("text/event-stream")
                    return _events((await response.aread()).decode())

            async def plain(prompt: str) -> dict[str, object]:
                response = await client.post("/chat", json={"message": prompt})
                assert response.status_code == 200
                body = response.json()
                assert isinstance(body, dict)
                return body

            streamed, answered = await asyncio.gather(
                asyncio.gather(*(stream(p) for p in prompts[:STREAMS])),
                asyncio.gather(*(plain(p) for p in prompts[STREAMS:])),
            )
        with model._backend().hold() as loaded:
            scheduler = loaded.scheduler
        assert isinstance(scheduler, Scheduler)
        steps = scheduler.steps - steps_before
        lengths = {p: model.get_num_tokens(chat_answer(p)) for p in prompts}
    for prompt, events in zip(prompts[:STREAMS], streamed, strict=True):
        texts = [str(data["text"]) for event, data in events if event == "message"]
        assert "".join(texts) == chat_answer(prompt)
        assert len(texts) >= min(2, lengths[prompt])  # streamed as events as it was made, not one blob
        assert events[-1] == ("done", {"finish_reason": "stop"})
    for prompt, body in zip(prompts[STREAMS:], answered, strict=True):
        assert body["answer"] == chat_answer(prompt)
        assert body["finish_reason"] == "stop"
    assert max(len(events) for events in streamed) > 5
    assert steps < sum(lengths.values())  # the requests shared decode steps


async def test_per_request_max_tokens_and_validation(example: ModuleType) -> None:
    app = example.app
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://example") as client:
            response = await client.post("/chat", json={"message": SINGLE[0], "max_tokens": 3})
            assert response.json()["finish_reason"] == "length"
            assert response.json()["usage"]["output_tokens"] == 3
            assert (await client.post("/chat", json={"message": ""})).status_code == 422
            assert (await client.post("/chat/stream", json={"message": "x", "max_tokens": 0})).status_code == 422


def test_the_app_refuses_to_start_without_a_model_path(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("LOCALLLM_GGUF", raising=False)
    with pytest.raises(RuntimeError, match="LOCALLLM_GGUF"):
        _load_example().make_model()
