"""The errors raised by ``langchain_localllm``.

Every error the package raises on purpose derives from :class:`LocalLLMError`, and
also from the built-in (or langchain-core) exception a caller would naturally catch,
so ``except FileNotFoundError`` or ``except ValueError`` keep working::

    LocalLLMError
    ├── ModelNotFoundError          (FileNotFoundError; langchain-core's ModelNotFoundError
    │                                where the installed langchain-core defines it)
    ├── ModelFormatError            (ValueError)
    │   ├── LegacyGGMLFormatError   the file is pre-GGUF GGML/GGMF/GGJT: convert it
    │   └── InvalidModelFileError   not a model file, truncated or corrupt
    ├── ModelLoadError              (RuntimeError) the backend refused a model that passed
    │                                our checks (unknown architecture, out of memory, ...)
    ├── ContextWindowExceededError  (langchain-core's ContextOverflowError where defined,
    │                                else ValueError) the prompt does not fit the context window
    ├── ChatTemplateError           (ValueError) no usable chat template / render failed
    ├── UnsupportedContentError     (ValueError) images, audio or files sent to a text-only model
    ├── InvalidParameterError       (ValueError, TypeError) a field or call option out of range,
    │                                of the wrong type, or unknown
    ├── ConstraintError             (ValueError) a grammar or JSON schema the backend cannot
    │                                compile or express
    ├── MissingDependencyError      (ImportError) an optional extra is not installed
    └── GenerationError             (RuntimeError) the backend failed while generating
                                     (a native error, CUDA out of memory, ...)

Backend exceptions are mapped to this tree where the backend is called (as httpx maps
transport errors), with the original exception chained as ``__cause__``. Each message
says what went wrong *and* how to fix it.
"""

from __future__ import annotations

from typing import Any

from langchain_core import exceptions as _lc_exceptions

__all__ = [
    "ChatTemplateError",
    "ConstraintError",
    "ContextWindowExceededError",
    "GenerationError",
    "InvalidModelFileError",
    "InvalidParameterError",
    "LegacyGGMLFormatError",
    "LocalLLMError",
    "MissingDependencyError",
    "ModelFormatError",
    "ModelLoadError",
    "ModelNotFoundError",
    "UnsupportedContentError",
]


def _lc_base(name: str, fallback: type[Exception]) -> tuple[type[Exception], ...]:
    """Return ``(langchain_core.exceptions.<name>, fallback)`` or ``(fallback,)``.

    Newer langchain-core releases define some of these errors; older ones do not.
    """
    found: Any = getattr(_lc_exceptions, name, None)
    if isinstance(found, type) and issubclass(found, Exception):
        if issubclass(found, fallback):
            return (found,)
        return (found, fallback)
    return (fallback,)


class LocalLLMError(Exception):
    """Base class of every error raised by ``langchain_localllm``."""


class ModelNotFoundError(LocalLLMError, *_lc_base("ModelNotFoundError", FileNotFoundError)):  # type: ignore[misc]
    """The model file, directory or hub id could not be found locally.

    Raised for a missing path, a directory where a file was expected, or a hub
    model that is not in the local cache while downloads are disabled.
    """


class ModelFormatError(LocalLLMError, ValueError):
    """The model file exists but is not in a format the backend can load."""


class LegacyGGMLFormatError(ModelFormatError):
    """The file is a legacy GGML/GGMF/GGJT model, which llama.cpp no longer reads.

    llama.cpp replaced these formats with GGUF in August 2023. Download the GGUF
    build of the same model, or convert the original weights with llama.cpp's
    ``convert_hf_to_gguf.py``.
    """


class InvalidModelFileError(ModelFormatError):
    """The file is not a GGUF model, or is truncated or corrupt."""


class ModelLoadError(LocalLLMError, RuntimeError):
    """The backend could not load a model that passed the package's own checks.

    For example an architecture the installed llama.cpp or transformers does not know,
    weights that do not fit in memory, or a checkpoint that needs ``trust_remote_code``.
    The message names the model and the backend's own reason.
    """


class ContextWindowExceededError(LocalLLMError, *_lc_base("ContextOverflowError", ValueError)):  # type: ignore[misc]
    """The prompt needs more tokens than the model's context window holds.

    Attributes:
        prompt_tokens: Number of tokens in the rendered prompt.
        context_window: The context size the model was loaded with.
    """

    def __init__(self, message: str, *, prompt_tokens: int, context_window: int) -> None:
        """Create the error with the token counts that caused it."""
        super().__init__(message)
        self.prompt_tokens = prompt_tokens
        self.context_window = context_window


class ChatTemplateError(LocalLLMError, ValueError):
    """The model has no chat template, or the template failed to render."""


class UnsupportedContentError(LocalLLMError, ValueError):
    """A message holds content a text-only local model cannot take (images, audio, files)."""


class InvalidParameterError(LocalLLMError, ValueError, TypeError):
    """A call option is unknown, of the wrong type, or outside its field's bounds.

    Derives from both ``ValueError`` and ``TypeError`` so either ``except`` keeps working.
    """


class ConstraintError(LocalLLMError, ValueError):
    """A grammar or JSON schema that the backend cannot compile, or would only partly enforce."""


class MissingDependencyError(LocalLLMError, ImportError):
    """An optional backend is not installed; the message names the extra to install."""


class GenerationError(LocalLLMError, RuntimeError):
    """The backend failed while generating."""
