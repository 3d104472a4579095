"""Constrained decoding for transformers, through llguidance.

llguidance (the Rust engine behind Microsoft's guidance) compiles a JSON schema or a
Lark grammar against the model's tokenizer and gives, at every step, the set of
tokens that keep the output valid; :class:`GrammarProcessor` is a transformers logits
processor that masks everything else. It was chosen over xgrammar (which pulls in
triton and apache-tvm-ffi on Linux), outlines (heavy) and lm-format-enforcer (pure
Python, slower): llguidance has no Python dependencies and ships manylinux wheels.
"""

from __future__ import annotations

import importlib
import json
import threading
import weakref
from collections.abc import Callable
from typing import Any

from langchain_localllm._core.imports import import_optional
from langchain_localllm._core.tools import call_sequence
from langchain_localllm.errors import ConstraintError

__all__ = ["GrammarProcessor", "json_schema_grammar", "tool_call_grammar"]

_tokenizers: weakref.WeakKeyDictionary[Any, Any] = weakref.WeakKeyDictionary()
_tokenizers_lock = threading.Lock()


def _llguidance() -> Any:
    return import_optional("llguidance")


_COMPACT = {"whitespace_flexible": False}
"""llguidance options: no free whitespace between JSON tokens. With it, a model can pad
forever with newlines (the tiny test model does) and never close the object."""


def _closed(node: Any) -> Any:
    """Objects without ``additionalProperties`` get ``false``.

    JSON Schema allows extra keys by default, and a constrained model will use that
    freedom (a repeated ``"name"`` key silently replaced a tool's name in testing);
    generated objects should hold exactly the declared properties, as in OpenAI's
    strict mode and llama.cpp's converter.
    """
    if isinstance(node, dict):
        out = {k: _closed(v) for k, v in node.items()}
        if ("properties" in out or out.get("type") == "object") and "additionalProperties" not in out:
            out["additionalProperties"] = False
        return out
    if isinstance(node, list):
        return [_closed(v) for v in node]
    return node


def _compact(schema: dict[str, Any]) -> dict[str, Any]:
    closed = _closed(schema)
    return {**closed, "x-guidance": {**_COMPACT, **schema.get("x-guidance", {})}}


def json_schema_grammar(schema: dict[str, Any]) -> str:
    """A llguidance grammar for JSON matching ``schema``."""
    return str(_llguidance().LLMatcher.grammar_from_json_schema(json.dumps(_compact(schema))))


def tool_call_grammar(schema: dict[str, Any], wrap: Callable[[str], str]) -> str:
    """A grammar for one call (JSON matching ``schema``) in the parser's syntax (``wrap``)."""
    lark = f"start: {call_sequence(wrap, 'call')}\ncall: %json {json.dumps(_compact(schema))}\n"
    return str(_llguidance().LLMatcher.grammar_from_lark(lark))


def _lltokenizer(tokenizer: Any, n_vocab: int) -> Any:
    """The llguidance view of ``tokenizer`` (built once per tokenizer and vocabulary size)."""
    _llguidance()  # names the extra if llguidance is missing
    with _tokenizers_lock:
        cached = _tokenizers.get(tokenizer)
        if cached is None or cached[0] != n_vocab:
            cached = (n_vocab, importlib.import_module("llguidance.hf").from_tokenizer(tokenizer, n_vocab=n_vocab))
            _tokenizers[tokenizer] = cached
    return cached[1]


class GrammarProcessor:
    """A transformers logits processor that keeps every row inside ``grammar``.

    One llguidance matcher per batch row: each step it consumes the row's last token
    and masks the logits of every token the grammar does not allow next. A row whose
    grammar is complete can only end (EOS).
    """

    def __init__(self, tokenizer: Any, n_vocab: int, grammar: str, rows: int) -> None:
        """Compile ``grammar`` for ``rows`` rows.

        Raises:
            ConstraintError: llguidance cannot compile the grammar (e.g. an unsupported schema).
        """
        llg = _llguidance()
        self._torch_ops = importlib.import_module("llguidance.torch")
        lltok = _lltokenizer(tokenizer, n_vocab)
        self.matchers = [llg.LLMatcher(lltok, grammar) for _ in range(rows)]
        error = self.matchers[0].get_error() if self.matchers and self.matchers[0].is_error() else ""
        if error:
            msg = f"llguidance cannot express this schema or grammar: {error}"
            raise ConstraintError(msg)
        self.bitmask = self._torch_ops.allocate_token_bitmask(rows, lltok.vocab_size)
        self._started = False

    def __call__(self, input_ids: Any, scores: Any) -> Any:
        """Mask ``scores`` to the tokens each row's grammar allows next."""
        if self._started:
            for matcher, token in zip(self.matchers, input_ids[:, -1].tolist(), strict=True):
                if not matcher.is_stopped():
                    matcher.consume_token(token)
        self._started = True
        for row, matcher in enumerate(self.matchers):
            self._torch_ops.fill_next_token_bitmask(matcher, self.bitmask, row)
        self._torch_ops.apply_token_bitmask_inplace(scores, self.bitmask.to(scores.device))
        return scores
