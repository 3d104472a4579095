"""``with_structured_output`` for the chat models: constrained decoding, then parsing.

``method="json_schema"`` (default) binds the schema as a decoding constraint, so even a
small model can only produce JSON that matches it; ``"function_calling"`` forces a
call of a tool built from the schema (also constrained); ``"json_mode"`` constrains
to any JSON object. The result is parsed into the pydantic model or a dict, and
``include_raw=True`` returns ``{"raw", "parsed", "parsing_error"}`` like LangChain's
other chat models.
"""

from __future__ import annotations

from operator import itemgetter
from typing import Any

from langchain_core.exceptions import OutputParserException
from langchain_core.language_models import BaseChatModel
from langchain_core.messages import BaseMessage
from langchain_core.output_parsers import JsonOutputKeyToolsParser, JsonOutputParser, PydanticOutputParser
from langchain_core.output_parsers.openai_tools import PydanticToolsParser
from langchain_core.runnables import Runnable, RunnableLambda, RunnableMap, RunnablePassthrough
from langchain_core.utils.function_calling import convert_to_json_schema, convert_to_openai_tool
from pydantic import BaseModel
from pydantic.v1 import BaseModel as BaseModelV1

from langchain_localllm.errors import InvalidParameterError

__all__ = ["with_structured_output"]

_METHODS = ("json_schema", "function_calling", "json_mode")


def _require_complete(message: BaseMessage) -> BaseMessage:
    """Refuse an answer that ``max_tokens`` cut off before its JSON was complete.

    LangChain's JSON parser completes partial JSON (``{"a": "x`` parses as
    ``{"a": "x"}``), which would pass a truncated answer off as a whole one.
    """
    if message.response_metadata.get("finish_reason") == "length":
        msg = (
            "the structured answer was cut off by max_tokens before the JSON was complete; "
            "raise max_tokens or bound the schema (maxLength / maxItems)"
        )
        raise OutputParserException(msg, llm_output=message.text)
    return message


def _is_pydantic(schema: Any) -> bool:
    """A pydantic v2 model, or a ``pydantic.v1`` model (still accepted by LangChain)."""
    if not isinstance(schema, type):
        return False
    return issubclass(schema, (BaseModel, BaseModelV1))


def with_structured_output(
    chat: BaseChatModel,
    schema: Any,
    *,
    method: str = "json_schema",
    include_raw: bool = False,
    **kwargs: Any,
) -> Runnable[Any, Any]:
    """Build the structured-output runnable for ``chat`` (see the module docstring)."""
    if kwargs:
        msg = f"unsupported arguments {sorted(kwargs)}"
        raise InvalidParameterError(msg)
    if method not in _METHODS:
        msg = f"method must be one of {_METHODS}, got {method!r}"
        raise InvalidParameterError(msg)
    if schema is None and method != "json_mode":
        msg = f"schema is required for method={method!r}"
        raise InvalidParameterError(msg)
    pydantic = _is_pydantic(schema)
    parser: Runnable[Any, Any]
    if method == "function_calling":
        name = convert_to_openai_tool(schema)["function"]["name"]
        llm = chat.bind_tools(
            [schema], tool_choice=name, ls_structured_output_format={"kwargs": {"method": method}, "schema": schema}
        )
        if pydantic:
            parser = PydanticToolsParser(tools=[schema], first_tool_only=True)
        else:
            parser = JsonOutputKeyToolsParser(key_name=name, first_tool_only=True)
    else:
        json_schema = {"type": "object"} if method == "json_mode" else convert_to_json_schema(schema)
        llm = chat.bind(
            json_schema=json_schema, ls_structured_output_format={"kwargs": {"method": method}, "schema": schema}
        )
        base = PydanticOutputParser(pydantic_object=schema) if pydantic else JsonOutputParser()
        parser = RunnableLambda(_require_complete) | base
    if not include_raw:
        return llm | parser
    parse_raw = RunnablePassthrough.assign(
        parsed=itemgetter("raw") | parser, parsing_error=RunnableLambda(lambda _: None)
    )
    on_error = RunnablePassthrough.assign(parsed=RunnableLambda(lambda _: None))
    return RunnableMap(raw=llm) | parse_raw.with_fallbacks([on_error], exception_key="parsing_error")
