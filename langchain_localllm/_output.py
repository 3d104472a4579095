"""The unit of generated output shared by the backends and the chat/LLM classes."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from langchain_core.messages import AIMessage, AIMessageChunk
from langchain_core.outputs import ChatGeneration, ChatGenerationChunk, ChatResult

__all__ = ["ChunkAggregate", "Piece"]


@dataclass
class Piece:
    """One step of output: emit-safe text, and on the last piece the final info."""

    text: str
    info: dict[str, Any] | None = None
    logprobs: list[dict[str, Any]] | None = None


class ChunkAggregate:
    """Joins a chat model's streamed chunks into one ``ChatResult``, in linear time.

    Text is joined once; ``tool_call_chunks`` and per-token ``logprobs`` are collected;
    usage and metadata come from the last chunk (the one carrying ``usage_metadata``).
    """

    __slots__ = ("last", "logprobs", "texts", "tool_call_chunks")

    def __init__(self) -> None:
        """Start empty."""
        self.texts: list[str] = []
        self.last: ChatGenerationChunk | None = None
        self.tool_call_chunks: list[Any] = []
        self.logprobs: list[Any] = []

    def add(self, chunk: ChatGenerationChunk) -> None:
        """Add the next chunk."""
        self.texts.append(chunk.text)
        message = chunk.message
        if isinstance(message, AIMessageChunk):
            self.tool_call_chunks.extend(message.tool_call_chunks)
            self.logprobs.extend(message.response_metadata.get("logprobs") or [])
            if message.usage_metadata is not None:
                self.last = chunk

    def result(self) -> ChatResult:
        """The aggregated generation."""
        last = self.last
        last_message = last.message if last is not None and isinstance(last.message, AIMessageChunk) else None
        metadata = dict(last_message.response_metadata) if last_message is not None else {}
        if self.logprobs:
            metadata["logprobs"] = self.logprobs
        calls = AIMessageChunk(content="", tool_call_chunks=self.tool_call_chunks)
        message = AIMessage(
            content="".join(self.texts),
            tool_calls=calls.tool_calls,
            invalid_tool_calls=calls.invalid_tool_calls,
            usage_metadata=last_message.usage_metadata if last_message is not None else None,
            response_metadata=metadata,
        )
        info = dict(last.generation_info or {}) if last is not None else None
        return ChatResult(generations=[ChatGeneration(message=message, generation_info=info or None)])
