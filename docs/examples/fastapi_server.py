r"""Serve concurrent streaming users from one GGUF model with continuous batching.

One :class:`~langchain_localllm.LocalGGMLChatModel` is loaded once, in the app's lifespan,
with ``max_parallel`` slots: every request, streaming or not, goes through the model's one
scheduler thread, and the requests in flight share each decode step. Nothing here blocks
the event loop (``astream`` / ``ainvoke`` await the scheduler's pieces), and a client that
disconnects mid-stream frees its slot at the next step.

Run it (from the repository root)::

    pip install "fastapi>=0.100" "uvicorn>=0.22"
    LOCALLLM_GGUF=/path/to/model.gguf LOCALLLM_MAX_PARALLEL=8 \
        uvicorn docs.examples.fastapi_server:app --port 8000

    curl -N localhost:8000/chat/stream -H 'content-type: application/json' \
        -d '{"message": "Write a short poem about flowers."}'
    curl localhost:8000/chat -H 'content-type: application/json' -d '{"message": "Hi!"}'

Environment:

* ``LOCALLLM_GGUF`` (required): the GGUF file.
* ``LOCALLLM_MAX_PARALLEL`` (default 8): requests decoded together; more wait for a slot.
  Each slot holds its own ``n_ctx`` KV cells, so memory grows with it.
* ``LOCALLLM_N_CTX`` (optional): the context window of each request.
* ``LOCALLLM_MAX_TOKENS`` (default 256): the most tokens one answer may have.
"""

# ruff: noqa: INP001 - a standalone example, run from the repository root
from __future__ import annotations

import asyncio
import json
import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import StreamingResponse
from pydantic import BaseModel, Field

from langchain_localllm import LocalGGMLChatModel

__all__ = ["ChatRequest", "app", "make_model"]


class ChatRequest(BaseModel):
    """One user turn (and optionally the turns before it)."""

    message: str = Field(min_length=1)
    history: list[tuple[str, str]] = Field(default_factory=list)
    """Earlier ``(role, text)`` turns, oldest first; role is ``"user"`` or ``"assistant"``."""
    system: str | None = None
    max_tokens: int | None = Field(default=None, ge=1, le=4096)
    temperature: float = Field(default=0.0, ge=0.0, le=2.0)


def make_model() -> LocalGGMLChatModel:
    """The app's one model, configured from the environment and loaded (call it once)."""
    path = os.environ.get("LOCALLLM_GGUF")
    if not path:
        msg = "set LOCALLLM_GGUF to the GGUF file to serve"
        raise RuntimeError(msg)
    kwargs: dict[str, Any] = {}
    if os.environ.get("LOCALLLM_N_CTX"):
        kwargs["n_ctx"] = int(os.environ["LOCALLLM_N_CTX"])
    model = LocalGGMLChatModel(
        model_path=path,
        max_parallel=int(os.environ.get("LOCALLLM_MAX_PARALLEL", "8")),
        max_tokens=int(os.environ.get("LOCALLLM_MAX_TOKENS", "256")),
        temperature=0,
        **kwargs,
    )
    model.load()  # the weights and the multi-sequence context, before the first request
    return model


@asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    """Load the model once at start-up (off the event loop) and unload it at shutdown."""
    app.state.model = await asyncio.to_thread(make_model)
    try:
        yield
    finally:
        app.state.model.unload()  # joins the scheduler thread and frees the native memory


app = FastAPI(title="langchain-localllm: concurrent chat", lifespan=lifespan)


def _messages(body: ChatRequest) -> list[tuple[str, str]]:
    turns = [("system", body.system)] if body.system else []
    return [*turns, *body.history, ("user", body.message)]


def _options(body: ChatRequest) -> dict[str, Any]:
    options: dict[str, Any] = {"temperature": body.temperature}
    if body.max_tokens is not None:
        options["max_tokens"] = body.max_tokens
    return options


def _event(data: dict[str, Any], event: str | None = None) -> str:
    head = f"event: {event}\n" if event else ""
    return f"{head}data: {json.dumps(data)}\n\n"


@app.post("/chat")
async def chat(body: ChatRequest, request: Request) -> dict[str, Any]:
    """The whole answer at once."""
    model: LocalGGMLChatModel = request.app.state.model
    message = await model.ainvoke(_messages(body), **_options(body))
    return {
        "answer": message.content,
        "finish_reason": message.response_metadata.get("finish_reason"),
        "usage": message.usage_metadata,
    }


@app.post("/chat/stream")
async def chat_stream(body: ChatRequest, request: Request) -> StreamingResponse:
    """The answer as server-sent events: ``data: {"text": ...}`` per chunk, then ``event: done``."""
    model: LocalGGMLChatModel = request.app.state.model

    async def events() -> AsyncIterator[str]:
        finish: Any = None
        async for chunk in model.astream(_messages(body), **_options(body)):
            if chunk.content:
                yield _event({"text": chunk.content})
            finish = chunk.response_metadata.get("finish_reason") or finish
        yield _event({"finish_reason": finish}, event="done")

    return StreamingResponse(events(), media_type="text/event-stream", headers={"Cache-Control": "no-cache"})
