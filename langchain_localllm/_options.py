"""Validation of per-call options, shared by every model class.

Fields are validated by pydantic at construction; options given per call
(``llm.invoke(q, temperature=0.2)``) get the same bounds through :func:`check_bounds`.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

__all__ = ["Bounds", "check_bounds"]

Bounds = Mapping[str, tuple[float, float | None, bool]]
"""name -> (minimum, maximum or None, whether the minimum itself is excluded)."""


def check_bounds(kwargs: Mapping[str, Any], bounds: Bounds) -> None:
    """Raise ``TypeError``/``ValueError`` for a call option outside its field's bounds.

    ``None`` values and names without bounds pass through.
    """
    for name, value in kwargs.items():
        if value is None or name not in bounds:
            continue
        low, high, exclusive = bounds[name]
        if isinstance(value, bool) or not isinstance(value, int | float):
            msg = f"{name} must be a number, got {value!r}"
            raise TypeError(msg)
        if value < low or (exclusive and value == low) or (high is not None and value > high):
            bound = f"> {low}" if exclusive else f">= {low}" + (f" and <= {high}" if high is not None else "")
            msg = f"{name} must be {bound}, got {value!r}"
            raise ValueError(msg)
