"""The chat models' ``profile`` (langchain-core's ``ModelProfile``): what is true of a local model.

Resolved at construction, without loading anything: ``max_input_tokens`` is given only
when the context is known from the settings (llama.cpp's ``n_ctx``) or a small config file
already on disk (a transformers checkpoint's ``config.json``).

``structured_output`` is False on purpose: langchain's agents read it to choose the
provider strategy (``response_format``) over the tool strategy, also for agents with
tools; here ``response_format`` constrains the whole answer to the schema, so it cannot be
combined with tools the model may call, while the tool strategy (a forced, constrained
call of a schema tool) works with or without tools. ``response_format`` itself is
accepted (``ProviderStrategy`` without tools works).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, cast

if TYPE_CHECKING:
    from langchain_core.language_models import ModelProfile

__all__ = ["local_profile"]


def local_profile(*, name: str, max_input_tokens: int | None) -> ModelProfile:
    """The profile of a local text model served by this package."""
    profile: dict[str, Any] = {
        "name": name,
        "open_weights": True,
        "text_inputs": True,
        "text_outputs": True,
        "image_inputs": False,
        "image_url_inputs": False,
        "pdf_inputs": False,
        "audio_inputs": False,
        "video_inputs": False,
        "image_outputs": False,
        "audio_outputs": False,
        "video_outputs": False,
        "image_tool_message": False,
        "pdf_tool_message": False,
        "attachment": False,
        "tool_calling": True,
        "tool_choice": True,
        "tool_call_streaming": True,
        "structured_output": False,
        "reasoning_output": False,
        "temperature": True,
    }
    if max_input_tokens:
        profile["max_input_tokens"] = max_input_tokens
    return cast("ModelProfile", profile)
