"""What a backend produces (:class:`Piece`, :class:`FinishInfo`) and how it becomes LangChain output.

Every backend yields pieces; this module is the one place where a piece becomes a
``GenerationChunk`` (:func:`llm_chunk`) or a ``ChatGenerationChunk`` (:func:`chat_chunk`),
and where streamed chunks are joined back into one result (:class:`ChunkAggregate`),
for all three model classes.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal, cast

from langchain_core.messages import AIMessage, AIMessageChunk, InvalidToolCall, ToolCall
from langchain_core.messages.ai import UsageMetadata
from langchain_core.messages.tool import ToolCallChunk, tool_call_chunk
from langchain_core.outputs import ChatGeneration, ChatGenerationChunk, ChatResult, Generation, GenerationChunk

__all__ = ["ChunkAggregate", "FinishInfo", "FinishReason", "Piece", "chat_chunk", "llm_chunk"]

FinishReason = Literal["stop", "length", "cancelled"]
"""``"stop"``: an end-of-turn token or a stop string; ``"length"``: ``max_tokens`` or the
context window; ``"cancelled"``: the consumer went away."""


@dataclass(frozen=True, slots=True)
class FinishInfo:
    """How one generation ended, and its token counts."""

    finish_reason: FinishReason
    prompt_tokens: int
    completion_tokens: int
    stop_sequence: str | None = None
    """The stop string that ended the answer, if one did."""

    @property
    def total_tokens(self) -> int:
        """Prompt plus completion tokens."""
        return self.prompt_tokens + self.completion_tokens

    def generation_info(self) -> dict[str, Any]:
        """The LLM's ``generation_info`` for the last chunk."""
        return {
            "finish_reason": self.finish_reason,
            "stop_sequence": self.stop_sequence,
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": self.completion_tokens,
            "total_tokens": self.total_tokens,
        }


@dataclass(slots=True)
class Piece:
    """One step of output: emit-safe text (whole characters, no stop string); the last one has ``finish``."""

    text: str
    finish: FinishInfo | None = None
    logprobs: list[dict[str, Any]] | None = None


def llm_chunk(piece: Piece) -> GenerationChunk:
    """The ``LLM`` chunk for one piece."""
    info: dict[str, Any] | None = None
    if piece.finish is not None or piece.logprobs is not None:
        info = piece.finish.generation_info() if piece.finish is not None else {}
        if piece.logprobs is not None:
            info["logprobs"] = piece.logprobs
    return GenerationChunk(text=piece.text, generation_info=info)


def chat_chunk(
    text: str,
    piece: Piece,
    *,
    model_name: str,
    provider: str,
    tool_calls: Sequence[ToolCall] = (),
    invalid_tool_calls: Sequence[InvalidToolCall] = (),
) -> ChatGenerationChunk | None:
    """The chat chunk for one piece (``text`` may differ from ``piece.text`` when tool calls are held back).

    Returns None for a non-final piece with nothing to show. The last chunk carries the usage,
    ``finish_reason`` (``"tool_calls"`` when it ends in at least one valid call, never for
    invalid calls alone), ``stop_sequence``, the model's name and provider, and the calls:
    each as a ``tool_call_chunk`` and, on this chunk, ``invalid_tool_calls`` with their
    errors. The invalid calls' ``args`` must be text langchain-core cannot parse into a call
    (``ToolPlan`` gives them as JSON strings), since it rebuilds calls from the chunks.
    """
    finish = piece.finish
    if finish is None:
        if not text and not piece.logprobs:
            return None
        extra: dict[str, Any] = {"logprobs": piece.logprobs} if piece.logprobs else {}
        return ChatGenerationChunk(message=AIMessageChunk(content=text, response_metadata=extra))
    reason: str = finish.finish_reason
    if tool_calls and reason == "stop":
        reason = "tool_calls"
    chunks = [
        tool_call_chunk(name=call["name"], args=json.dumps(call["args"], ensure_ascii=False), id=call["id"], index=i)
        for i, call in enumerate(tool_calls)
    ]
    chunks.extend(
        tool_call_chunk(name=bad.get("name"), args=bad.get("args"), id=bad.get("id"), index=j)
        for j, bad in enumerate(invalid_tool_calls, start=len(chunks))
    )
    info: dict[str, Any] = {"finish_reason": reason}
    if finish.stop_sequence is not None:
        info["stop_sequence"] = finish.stop_sequence
    metadata: dict[str, Any] = {"model_name": model_name, "model_provider": provider, **info}
    if piece.logprobs:
        metadata["logprobs"] = piece.logprobs
    usage = cast(
        "UsageMetadata",
        {
            "input_tokens": finish.prompt_tokens,
            "output_tokens": finish.completion_tokens,
            "total_tokens": finish.total_tokens,
        },
    )
    message = AIMessageChunk(
        content=text,
        tool_call_chunks=chunks,
        usage_metadata=usage,
        response_metadata=metadata,
        chunk_position="last",
    )
    if invalid_tool_calls:  # rebuilt from the chunks without their errors: give them back
        message.invalid_tool_calls = list(invalid_tool_calls)
    return ChatGenerationChunk(message=message, generation_info=info)


class ChunkAggregate:
    """Joins streamed chunks (an LLM's or a chat model's) into one result, in linear time.

    Text is joined once; per-token ``logprobs`` and ``tool_call_chunks`` are collected;
    ``generation_info`` keys are merged (the last value wins); usage and metadata come
    from the chat chunk that carries ``usage_metadata``.
    """

    __slots__ = ("errors", "info", "last_message", "logprobs", "texts", "tool_call_chunks")

    def __init__(self) -> None:
        """Start empty."""
        self.texts: list[str] = []
        self.info: dict[str, Any] = {}
        self.logprobs: list[Any] = []
        self.tool_call_chunks: list[ToolCallChunk] = []
        self.errors: dict[str | None, str | None] = {}
        """The errors of invalid calls by call id (the chunks carry no errors)."""
        self.last_message: AIMessageChunk | None = None

    def add(self, chunk: Generation) -> None:
        """Add the next chunk (a ``GenerationChunk`` or a ``ChatGenerationChunk``)."""
        self.texts.append(chunk.text)
        if chunk.generation_info:
            for key, value in chunk.generation_info.items():
                if key == "logprobs":
                    self.logprobs.extend(value)
                else:
                    self.info[key] = value
        message = getattr(chunk, "message", None)
        if isinstance(message, AIMessageChunk):
            self.tool_call_chunks.extend(message.tool_call_chunks)
            self.errors.update((bad.get("id"), bad.get("error")) for bad in message.invalid_tool_calls)
            self.logprobs.extend(message.response_metadata.get("logprobs") or [])
            if message.usage_metadata is not None:
                self.last_message = message

    def generation(self) -> Generation:
        """The aggregated ``LLM`` generation."""
        info = dict(self.info)
        if self.logprobs:
            info["logprobs"] = self.logprobs
        return Generation(text="".join(self.texts), generation_info=info or None)

    def chat_result(self) -> ChatResult:
        """The aggregated chat result."""
        last = self.last_message
        metadata = dict(last.response_metadata) if last is not None else {}
        if self.logprobs:
            metadata["logprobs"] = self.logprobs
        calls = AIMessageChunk(content="", tool_call_chunks=self.tool_call_chunks)
        message = AIMessage(
            content="".join(self.texts),
            tool_calls=calls.tool_calls,
            invalid_tool_calls=[
                {**bad, "error": self.errors.get(bad.get("id"), bad.get("error"))} for bad in calls.invalid_tool_calls
            ],
            usage_metadata=last.usage_metadata if last is not None else None,
            response_metadata=metadata,
        )
        return ChatResult(generations=[ChatGeneration(message=message, generation_info=dict(self.info) or None)])
