"""Incremental detokenizing for transformers tokenizers (prefix/read offsets, as in TGI and vLLM)."""

from __future__ import annotations

from typing import Any

__all__ = ["IncrementalDetokenizer"]


class IncrementalDetokenizer:
    """Decodes generated tokens a few at a time (prefix/read offsets, as in TGI and vLLM).

    Each step decodes only a short window (the tokens of the previous emitted piece
    plus the pending ones) and emits the new suffix, so the cost per token does not
    grow with the answer. Text ending in U+FFFD (an incomplete UTF-8 sequence, e.g.
    one byte of a Chinese character or emoji) is held until the character completes.
    The concatenated output equals ``tokenizer.decode(all_ids, skip_special_tokens=True)``.
    """

    __slots__ = ("_decode", "_ids", "_prefix", "_read")

    def __init__(self, tokenizer: Any) -> None:
        """Create a detokenizer for ``tokenizer`` (special tokens are skipped)."""
        self._ids: list[int] = []
        self._prefix = 0
        self._read = 0

        def decode(ids: list[int]) -> str:
            return str(tokenizer.decode(ids, skip_special_tokens=True, clean_up_tokenization_spaces=False))

        self._decode = decode

    def push(self, token_id: int) -> str:
        """Add one token; return the text that is complete now (may be empty)."""
        self._ids.append(token_id)
        prefix_text = self._decode(self._ids[self._prefix : self._read])
        full_text = self._decode(self._ids[self._prefix :])
        if len(full_text) > len(prefix_text) and not full_text.endswith("\ufffd"):
            self._prefix, self._read = self._read, len(self._ids)
            return full_text[len(prefix_text) :]
        return ""

    def flush(self) -> str:
        """End of generation: the held text, minus a trailing incomplete character."""
        prefix_text = self._decode(self._ids[self._prefix : self._read])
        full_text = self._decode(self._ids[self._prefix :])
        self._prefix = self._read = len(self._ids)
        return full_text[len(prefix_text) :].rstrip("\ufffd") if len(full_text) > len(prefix_text) else ""
