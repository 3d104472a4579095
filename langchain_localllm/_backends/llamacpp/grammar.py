"""JSON schema -> GBNF for llama.cpp's grammar sampler, refusing what the converter would drop.

llama-cpp-python's ``json_schema_to_gbnf`` silently ignores some JSON-schema keywords
(numeric bounds, ``uniqueItems``...). Small bounded integer ranges are rewritten as an
``enum`` it does express; any other such keyword is a :class:`ConstraintError` naming it,
never a grammar that enforces less than the schema says.
"""

from __future__ import annotations

import json
import math
import threading
from collections.abc import Callable, Mapping
from typing import Any

from langchain_localllm._core.tools import call_sequence
from langchain_localllm.errors import ConstraintError

__all__ = ["SchemaGrammars", "wrap_call_grammar"]


class SchemaGrammars:
    """Converts JSON schemas to GBNF once each (a per-backend memo; the converter is slow)."""

    def __init__(self) -> None:
        """Start with no converted schemas."""
        self._grammars: dict[str, str] = {}
        self._lock = threading.Lock()

    def gbnf(self, schema: Mapping[str, Any]) -> str:
        """The GBNF grammar (rule ``root``) of ``schema``.

        Raises:
            ConstraintError: The schema uses a keyword the converter would ignore, or the
                converter fails on it.
        """
        expanded = _enumerate_small_int_ranges(dict(schema))
        _check_gbnf_expressible(expanded)
        key = json.dumps(expanded, sort_keys=True)
        with self._lock:
            if key not in self._grammars:
                from langchain_localllm._backends.llamacpp.load import llama_cpp_module  # noqa: PLC0415

                llama_cpp_module()  # names the extra if llama-cpp-python is missing
                from llama_cpp.llama_grammar import json_schema_to_gbnf  # noqa: PLC0415

                try:
                    self._grammars[key] = json_schema_to_gbnf(key)
                except Exception as e:  # the converter raises assorted types for unsupported schema features
                    msg = (
                        f"llama.cpp cannot express this JSON schema as a grammar ({type(e).__name__}: {e}); "
                        "simplify the schema"
                    )
                    raise ConstraintError(msg) from e
            return self._grammars[key]


def wrap_call_grammar(gbnf: str, wrap: Callable[[str], str]) -> str:
    """Turn a JSON grammar (rule ``root``) into one for the tool parser's call syntax."""
    body = "\n".join(
        ("tool-call-json ::=" + line[len("root ::=") :]) if line.startswith("root ::=") else line
        for line in gbnf.splitlines()
    )
    return f"root ::= {call_sequence(wrap, 'tool-call-json')}\n{body}\n"


_GBNF_UNSUPPORTED = frozenset(
    {
        "minimum",
        "maximum",
        "exclusiveMinimum",
        "exclusiveMaximum",
        "multipleOf",
        "uniqueItems",
        "not",
        "if",
        "then",
        "else",
        "dependentRequired",
        "dependentSchemas",
        "patternProperties",
        "minProperties",
        "maxProperties",
        "contains",
    }
)
"""JSON-schema keywords that llama-cpp-python's schema-to-GBNF converter ignores."""


def _check_gbnf_expressible(node: Any, path: str = "$") -> None:
    """Refuse a schema whose constraints the GBNF converter would silently drop.

    Raises:
        ConstraintError: Naming the first such keyword and where it is.
    """
    if isinstance(node, dict):
        for key, value in node.items():
            if key in _GBNF_UNSUPPORTED:
                msg = (
                    f"llama.cpp cannot express the JSON-schema keyword {key!r} (at {path}) as a grammar; it would be "
                    "silently ignored. Remove it from the schema (e.g. a pydantic Field(ge=..., le=...)), or use "
                    "HFLocalChatModel, whose constraint engine (llguidance) supports it."
                )
                raise ConstraintError(msg)
            if key in ("properties", "$defs", "definitions") and isinstance(value, dict):
                for name, sub in value.items():
                    _check_gbnf_expressible(sub, f"{path}.{name}")
            else:
                _check_gbnf_expressible(value, f"{path}.{key}")
    elif isinstance(node, list):
        for i, item in enumerate(node):
            _check_gbnf_expressible(item, f"{path}[{i}]")


MAX_ENUMERATED_INTS = 4096
"""Bounded integer ranges up to this size are rewritten as an ``enum`` the converter can express."""

_INT_BOUNDS = ("minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum")


def _enumerate_small_int_ranges(node: Any) -> Any:
    """Rewrite ``{"type": "integer", minimum/maximum...}`` with a small range as an ``enum``.

    llama-cpp-python's converter ignores numeric bounds; an enum of the allowed values
    says the same thing in a form it does express. Open or large ranges are left alone
    (and then refused by :func:`_check_gbnf_expressible`).
    """
    if isinstance(node, list):
        return [_enumerate_small_int_ranges(v) for v in node]
    if not isinstance(node, dict):
        return node
    out = {k: _enumerate_small_int_ranges(v) for k, v in node.items()}
    if out.get("type") != "integer" or not any(k in out for k in _INT_BOUNDS):
        return out
    lows = [math.ceil(out["minimum"])] if _is_number(out.get("minimum")) else []
    if _is_number(out.get("exclusiveMinimum")):
        lows.append(math.floor(out["exclusiveMinimum"]) + 1)
    highs = [math.floor(out["maximum"])] if _is_number(out.get("maximum")) else []
    if _is_number(out.get("exclusiveMaximum")):
        highs.append(math.ceil(out["exclusiveMaximum"]) - 1)
    low = max(lows) if lows else None
    high = min(highs) if highs else None
    if low is None or high is None or high - low + 1 > MAX_ENUMERATED_INTS or high < low:
        return out
    for key in _INT_BOUNDS:
        out.pop(key, None)
    out["enum"] = list(range(int(low), int(high) + 1))
    return out


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)
