"""The Hugging Face Hub, used the same way by every backend: offline rules in one place."""

from __future__ import annotations

import os

__all__ = ["offline"]

_TRUE = frozenset({"1", "true", "yes", "on"})


def offline(local_files_only: bool) -> bool:  # noqa: FBT001 - mirrors the field
    """Whether downloads are off: the field, or ``HF_HUB_OFFLINE`` / ``TRANSFORMERS_OFFLINE`` set true."""
    env = (os.environ.get(name, "").strip().lower() for name in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"))
    return local_files_only or any(value in _TRUE for value in env)
