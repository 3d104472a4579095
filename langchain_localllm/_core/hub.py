"""The Hugging Face Hub, used the same way by every backend: offline rules in one place."""

from __future__ import annotations

import os
from typing import Any

__all__ = ["forbid_hub_network", "offline"]

_TRUE = frozenset({"1", "true", "yes", "on"})


def offline(local_files_only: bool) -> bool:  # noqa: FBT001 - mirrors the field
    """Whether downloads are off: the field, or ``HF_HUB_OFFLINE`` / ``TRANSFORMERS_OFFLINE`` set true."""
    env = (os.environ.get(name, "").strip().lower() for name in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"))
    return local_files_only or any(value in _TRUE for value in env)


def forbid_hub_network() -> None:
    """Keep huggingface_hub off the network once the caller has said "no downloads".

    huggingface_hub (1.x) builds its user-agent header with an "agent harness" registry
    that it fetches from the Hub once per process, even for ``local_files_only=True``
    calls, unless ``HF_HUB_OFFLINE`` was set. With downloads off, the registry is set to
    the empty one huggingface_hub itself falls back to when the Hub is unreachable (only
    the user-agent's agent field is affected), so no connection is ever attempted.
    """
    try:
        from huggingface_hub.utils import _detect_agent  # noqa: PLC0415
    except ImportError:  # an older huggingface_hub: no registry
        return
    if getattr(_detect_agent, "_registry", "absent") is None:
        empty: Any = getattr(_detect_agent, "_EMPTY_REGISTRY", {"standardEnvVars": [], "harnesses": {}})
        _detect_agent._registry = empty  # noqa: SLF001 - see the docstring
