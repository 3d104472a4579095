"""The unit of generated output shared by the backends and the chat/LLM classes."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

__all__ = ["Piece"]


@dataclass
class Piece:
    """One step of output: emit-safe text, and on the last piece the final info."""

    text: str
    info: dict[str, Any] | None = None
    logprobs: list[dict[str, Any]] | None = None
