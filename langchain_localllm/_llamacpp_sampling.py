"""Sampling settings shared by the model classes over llama.cpp.

:class:`LlamaCppSamplingMixin` holds the per-call generation fields (LangChain's
names, llama.cpp's defaults) and turns fields plus call-time options into one
:class:`~langchain_localllm._llamacpp.Sampling`. Nothing here causes a reload,
except ``logprobs``, which needs the model loaded with ``logits_all``.
"""

from __future__ import annotations

import json
import math
import threading
from typing import Any, Literal

from langchain_core.language_models import LangSmithParams
from pydantic import BaseModel, Field, PrivateAttr, model_validator

from langchain_localllm._llamacpp import Sampling, llama_cpp_module
from langchain_localllm._options import check_bounds
from langchain_localllm._stop import merge_stops

__all__ = ["CALL_OPTIONS", "LlamaCppSamplingMixin"]

CALL_OPTIONS = frozenset(
    {
        "temperature",
        "top_p",
        "top_k",
        "min_p",
        "repeat_penalty",
        "frequency_penalty",
        "presence_penalty",
        "seed",
        "max_tokens",
        "grammar",
        "json_schema",
        "logprobs",
    }
)

# Call-time options obey the same bounds as the fields: (minimum, maximum, minimum is exclusive).
_BOUNDS: dict[str, tuple[float, float | None, bool]] = {
    "temperature": (0.0, None, False),
    "top_p": (0.0, 1.0, False),
    "top_k": (0, None, False),
    "min_p": (0.0, 1.0, False),
    "repeat_penalty": (0.0, None, True),
    "max_tokens": (1, None, False),
    "seed": (0, None, False),
    "logprobs": (0, None, False),
}


class LlamaCppSamplingMixin(BaseModel):
    """Per-call generation settings for llama.cpp models (overridable per call)."""

    temperature: float = Field(default=0.8, ge=0.0)
    """Sampling temperature; 0 is greedy (deterministic). Default: 0.8 (llama.cpp's)."""

    top_p: float = Field(default=0.95, ge=0.0, le=1.0)
    """Nucleus sampling threshold. Default: 0.95."""

    top_k: int = Field(default=40, ge=0)
    """Sample among the k most likely tokens; 0 disables. Default: 40."""

    min_p: float = Field(default=0.05, ge=0.0, le=1.0)
    """Drop tokens below this fraction of the best token's probability. Default: 0.05."""

    repeat_penalty: float = Field(default=1.0, gt=0.0)
    """Penalty for repeating recent tokens; 1.0 disables. Default: 1.0."""

    frequency_penalty: float = 0.0
    """OpenAI-style frequency penalty. Default: 0.0."""

    presence_penalty: float = 0.0
    """OpenAI-style presence penalty. Default: 0.0."""

    max_tokens: int | None = Field(default=256, ge=1)
    """Most tokens to generate; None = until end of turn or the context is full. Default: 256."""

    seed: int | None = Field(default=None, ge=0)
    """Sampling seed for reproducible non-greedy output. Default: None (random per call)."""

    stop: list[str] | None = None
    """Stop strings, merged with those given per call; never part of the output. Default: None."""

    logprobs: int | None = Field(default=None, ge=0)
    """Return each token's log-probability and this many top alternatives in
    ``generation_info["logprobs"]``. Loads the model with ``logits_all`` (a separate cache
    entry). Default: None (off)."""

    grammar: str | None = None
    """A GBNF grammar that constrains the output. Default: None."""

    json_schema: dict[str, Any] | None = None
    """A JSON schema the output must match (converted to a GBNF grammar). Default: None."""

    _schema_grammars: dict[str, str] = PrivateAttr(default_factory=dict)
    _schema_lock: threading.Lock = PrivateAttr(default_factory=threading.Lock)

    @model_validator(mode="after")
    def _check_grammar_options(self) -> LlamaCppSamplingMixin:
        if self.grammar is not None and self.json_schema is not None:
            msg = "give grammar or json_schema, not both"
            raise ValueError(msg)
        return self

    def _ls_params(
        self, model_type: Literal["llm", "chat"], model_name: str, stop: list[str] | None, kwargs: dict[str, Any]
    ) -> LangSmithParams:
        """LangSmith's standard parameters: provider, model, type, temperature, max_tokens, stops."""
        params = LangSmithParams(
            ls_provider="llamacpp",
            ls_model_name=model_name,
            ls_model_type=model_type,
            ls_temperature=kwargs.get("temperature", self.temperature),
        )
        max_tokens = kwargs.get("max_tokens", self.max_tokens)
        if max_tokens is not None:
            params["ls_max_tokens"] = max_tokens
        stops = merge_stops(self.stop, stop)
        if stops:
            params["ls_stop"] = stops
        return params

    def _needs_logits_all(self) -> bool:
        return self.logprobs is not None

    def _sampling(self, kwargs: dict[str, Any]) -> Sampling:
        unknown = set(kwargs) - CALL_OPTIONS
        if unknown:
            msg = f"unknown call options {sorted(unknown)}; supported: {sorted(CALL_OPTIONS)}"
            raise TypeError(msg)
        check_bounds(kwargs, _BOUNDS)
        opts = {name: kwargs.get(name, getattr(self, name)) for name in CALL_OPTIONS}
        grammar = opts["grammar"]
        if opts["json_schema"] is not None:
            if grammar is not None:
                msg = "give grammar or json_schema, not both"
                raise ValueError(msg)
            grammar = self._schema_to_grammar(opts["json_schema"])
        return Sampling(
            temperature=opts["temperature"],
            top_p=opts["top_p"],
            top_k=opts["top_k"],
            min_p=opts["min_p"],
            repeat_penalty=opts["repeat_penalty"],
            frequency_penalty=opts["frequency_penalty"],
            presence_penalty=opts["presence_penalty"],
            seed=opts["seed"],
            max_tokens=opts["max_tokens"],
            grammar=grammar,
            logprobs=opts["logprobs"],
        )

    def _schema_to_grammar(self, schema: dict[str, Any]) -> str:
        schema = _enumerate_small_int_ranges(schema)
        _check_gbnf_expressible(schema)
        key = json.dumps(schema, sort_keys=True)
        with self._schema_lock:
            if key not in self._schema_grammars:
                llama_cpp_module()  # names the extra if llama-cpp-python is missing
                from llama_cpp.llama_grammar import json_schema_to_gbnf  # noqa: PLC0415

                try:
                    self._schema_grammars[key] = json_schema_to_gbnf(key)
                except Exception as e:  # the converter raises assorted types for unsupported schema features
                    msg = (
                        f"llama.cpp cannot express this JSON schema as a grammar ({type(e).__name__}: {e}); "
                        "simplify the schema"
                    )
                    raise ValueError(msg) from e
            return self._schema_grammars[key]


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
        ValueError: Naming the first such keyword and where it is.
    """
    if isinstance(node, dict):
        for key, value in node.items():
            if key in _GBNF_UNSUPPORTED:
                msg = (
                    f"llama.cpp cannot express the JSON-schema keyword {key!r} (at {path}) as a grammar; it would be "
                    "silently ignored. Remove it from the schema (e.g. a pydantic Field(ge=..., le=...)), or use "
                    "HFLocalChatModel, whose constraint engine (llguidance) supports it."
                )
                raise ValueError(msg)
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
