"""What a loaded llama.cpp model's KV cache holds (see ``sequence.py`` for how it is used)."""

from __future__ import annotations

import weakref
from dataclasses import dataclass, field
from typing import Any

__all__ = ["KVState"]


@dataclass
class KVState:
    """The tokens in the context's one KV sequence (seq 0), and whose cells they are."""

    tokens: list[int] = field(default_factory=list)
    """The tokens at positions ``0..len-1``."""
    exact: int = 0
    """How many leading positions were computed by full aligned prefill chunks."""
    owner: weakref.ref[Any] | None = None
    """The unfinished generation these cells belong to (saved before another takes over)."""

    def forget(self, llama: Any) -> None:
        """Drop every cell of ``llama``'s context (e.g. after a failed decode: the content is unknown)."""
        llama._ctx.kv_cache_clear()  # noqa: SLF001 - llama-cpp-python's context wrapper
        self.tokens = []
        self.exact = 0
        self.owner = None
