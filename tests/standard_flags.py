"""What the package's chat models declare to LangChain's standard suites, in one place."""

from __future__ import annotations

from typing import Any


class LocalChatModelFlags:
    """Feature flags shared by every chat model in the package (mixed in before the suite)."""

    @property
    def has_tool_calling(self) -> bool:
        return True

    @property
    def has_tool_choice(self) -> bool:
        return True

    @property
    def has_structured_output(self) -> bool:
        return True

    @property
    def supports_json_mode(self) -> bool:
        return True

    @property
    def returns_usage_metadata(self) -> bool:
        return True

    @property
    def standard_chat_model_params(self) -> dict[str, Any]:
        # The suites' defaults add `timeout`, `max_retries` and `api_key`: client settings of
        # hosted APIs. A local model has none of them and rejects unknown fields (extra="forbid").
        params = dict(super().standard_chat_model_params)  # type: ignore[misc]
        for hosted_only in ("timeout", "max_retries", "api_key"):
            params.pop(hosted_only, None)
        return params
