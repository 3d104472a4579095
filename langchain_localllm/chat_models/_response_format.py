"""The ``response_format`` call option: OpenAI-style structured output as a decoding constraint.

langchain's agents (``create_agent(..., response_format=ProviderStrategy(Schema))``) bind
``response_format={"type": "json_schema", "json_schema": {"name", "schema", "strict"}}``
through ``bind_tools`` and read the answer's JSON from the message content. Here that
schema becomes the same constraint ``with_structured_output`` uses, so the content always
parses; ``{"type": "json_object"}`` constrains to a JSON object, ``{"type": "text"}`` to
nothing. A pydantic model or TypedDict class is accepted too.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from langchain_core.utils.function_calling import convert_to_json_schema

from langchain_localllm._core.tools import ToolPlan
from langchain_localllm.errors import InvalidParameterError

__all__ = ["requested_schema", "response_format_schema"]

_FORMS = (
    "response_format must be {'type': 'json_schema', 'json_schema': {'name': ..., 'schema': {...}}}, "
    "{'type': 'json_object'}, {'type': 'text'} or a pydantic model / TypedDict class"
)


def response_format_schema(response_format: Any) -> dict[str, Any] | None:
    """The JSON schema the answer must match for ``response_format`` (None: unconstrained text).

    Raises:
        InvalidParameterError: ``response_format`` is none of the accepted forms.
    """
    if response_format is None:
        return None
    if isinstance(response_format, type):
        try:
            return dict(convert_to_json_schema(response_format))
        except (TypeError, ValueError) as e:
            msg = f"{_FORMS}; got the class {response_format.__name__}: {e}"
            raise InvalidParameterError(msg) from e
    if not isinstance(response_format, Mapping):
        msg = f"{_FORMS}; got {response_format!r}"
        raise InvalidParameterError(msg)
    kind = response_format.get("type")
    if kind == "text":
        return None
    if kind == "json_object":
        return {"type": "object"}
    if kind == "json_schema":
        spec = response_format.get("json_schema")
        schema = spec.get("schema") if isinstance(spec, Mapping) else None
        if not isinstance(schema, Mapping):
            msg = f"{_FORMS}; response_format['json_schema'] has no 'schema' object (got {spec!r})"
            raise InvalidParameterError(msg)
        return dict(schema)
    msg = f"{_FORMS}; got type {kind!r}"
    raise InvalidParameterError(msg)


def requested_schema(options: Mapping[str, Any], plan: ToolPlan) -> Mapping[str, Any] | None:
    """The schema a call constrains its answer to: ``json_schema`` or ``response_format``.

    Raises:
        InvalidParameterError: Both are given, ``response_format`` is malformed, or it comes
            with tools the model may call (``tool_choice="auto"``): the constraint would make
            every tool call impossible.
    """
    schema: Mapping[str, Any] | None = options.get("json_schema")
    if options.get("response_format") is None:
        return schema
    from_format = response_format_schema(options["response_format"])
    if from_format is None:
        return schema
    if schema is not None:
        msg = "give json_schema (with_structured_output) or response_format, not both"
        raise InvalidParameterError(msg)
    if plan.active and plan.choice == "auto":
        msg = (
            "response_format with tools the model may call (tool_choice='auto') is not supported: decoding "
            "constrained to the schema could never call a tool. With langchain's create_agent use "
            "response_format=ToolStrategy(Schema) (the answer is a forced, constrained call of a schema tool), "
            "or bind no tools"
        )
        raise InvalidParameterError(msg)
    return from_format
