"""Lazy imports of the optional heavy backends.

``import langchain_localllm`` must stay cheap: torch, transformers and llama_cpp are
imported only when a model is first used, through these helpers, which turn a
missing package into a :class:`~langchain_localllm.errors.MissingDependencyError`
that names the extra to install.
"""

from __future__ import annotations

import importlib
from types import ModuleType

from langchain_localllm.errors import MissingDependencyError

_EXTRAS = {
    "llama_cpp": ("llama-cpp-python", "llamacpp"),
    "torch": ("torch", "hf"),
    "transformers": ("transformers", "hf"),
    "llguidance": ("llguidance", "hf"),
}


def import_optional(module: str) -> ModuleType:
    """Import ``module`` or raise an error that says which extra provides it.

    Args:
        module: Top-level module name, one of ``llama_cpp``, ``torch``, ``transformers``.

    Returns:
        The imported module.

    Raises:
        MissingDependencyError: The module is not installed.
    """
    try:
        return importlib.import_module(module)
    except ImportError as e:
        dist, extra = _EXTRAS.get(module, (module, "all"))
        msg = (
            f"{dist} is required for this model class but is not installed "
            f'({e}). Install it with: pip install "langchain-localllm[{extra}]"'
        )
        raise MissingDependencyError(msg, name=module) from e
