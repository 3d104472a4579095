"""Stop sequences and UTF-8 safety for streamed text, shared by every backend.

Backends produce text a token at a time. Two things must hold for what we emit:

* a stop string never appears in the output, whether it is one token, spans several
  tokens, or starts in the middle of a token; and while streaming we hold back only
  the tail that could still grow into a stop string;
* a multi-byte UTF-8 character split across tokens (Chinese, emoji) is never emitted
  half-done.

:class:`StopBuffer` does the first on text; :class:`ByteStream` does both for
backends that produce raw bytes per token (llama.cpp).
"""

from __future__ import annotations

import codecs
from collections.abc import Iterable

from langchain_localllm.errors import InvalidParameterError

__all__ = ["ByteStream", "StopBuffer", "merge_stops"]


def merge_stops(*groups: Iterable[str] | None) -> list[str]:
    """Merge stop lists (e.g. construction-time and call-time), dropping empties and duplicates.

    Order is kept: the first occurrence of each string wins.
    """
    merged: dict[str, None] = {}
    for group in groups:
        if group is None:
            continue
        if isinstance(group, str):
            msg = f"stop must be a list of strings, got the string {group!r}; wrap it in a list"
            raise InvalidParameterError(msg)
        for stop in group:
            if not isinstance(stop, str):
                msg = f"stop sequences must be strings, got {stop!r}"
                raise InvalidParameterError(msg)
            if stop:
                merged[stop] = None
    return list(merged)


class StopBuffer:
    r"""Cuts streamed text at the first stop string, holding back only what could still match.

    Example:
        >>> buf = StopBuffer(["\\nUser:"])
        >>> buf.push("Hello\\nUs"), buf.push("er: hi"), buf.stopped
        ('Hello', '', True)
    """

    __slots__ = ("_pending", "_stops", "matched", "stopped", "tail")

    def __init__(self, stops: Iterable[str]) -> None:
        """Create a buffer for ``stops`` (empty strings are ignored)."""
        self._stops = tuple(s for s in dict.fromkeys(stops) if s)
        self._pending = ""
        self.stopped = False
        """True once a stop string was found; everything after it is discarded."""
        self.matched: str | None = None
        """The stop string that ended the text, if any."""
        self.tail = ""
        """Once stopped: the text from the stop string on (the stop string included), which
        :meth:`push` did not return. Tool calling uses a marker as the "stop" and parses this."""

    @property
    def pending(self) -> str:
        """Text held back because it could be the start of a stop string."""
        return self._pending

    def push(self, text: str) -> str:
        """Add ``text``; return the part that can be emitted now."""
        if self.stopped:
            return ""
        if not self._stops:
            return text
        buf = self._pending + text if self._pending else text
        cut = -1
        for stop in self._stops:
            at = buf.find(stop)
            if at != -1 and (cut == -1 or at < cut):
                cut = at
                self.matched = stop
        if cut != -1:
            self.stopped = True
            self._pending = ""
            self.tail = buf[cut:]
            return buf[:cut]
        hold = 0
        for stop in self._stops:
            # Longest proper prefix of `stop` that `buf` ends with.
            for k in range(min(len(stop) - 1, len(buf)), hold, -1):
                if buf.endswith(stop[:k]):
                    hold = k
                    break
        if hold:
            self._pending = buf[-hold:]
            return buf[:-hold]
        self._pending = ""
        return buf

    def flush(self) -> str:
        """End of text: return what was held back (it never became a stop string)."""
        if self.stopped:
            return ""
        out, self._pending = self._pending, ""
        return out


class ByteStream:
    """Turns per-token bytes into emit-safe text: whole UTF-8 characters, stops cut.

    Incomplete UTF-8 sequences wait for the next token's bytes. Bytes that can never
    be valid UTF-8 become U+FFFD (the backend produced them; hiding them would lie).
    A character left incomplete when generation ends (e.g. cut by ``max_tokens``) is
    dropped rather than emitted half-done.
    """

    __slots__ = ("_decoder", "stops")

    def __init__(self, stops: Iterable[str]) -> None:
        """Create a stream that cuts at ``stops``."""
        self._decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        self.stops = StopBuffer(stops)

    def push(self, data: bytes) -> str:
        """Add one token's bytes; return the text that can be emitted now."""
        text = self._decoder.decode(data)
        return self.stops.push(text) if text else ""

    def finish(self) -> str:
        """End of generation: return the held-back text (never a partial character)."""
        # Drop an incomplete trailing character instead of emitting U+FFFD for it.
        self._decoder.reset()
        return self.stops.flush()
