"""One source of truth for settings: the pydantic fields.

A backend declares its settings once, as a *field group*: a pydantic model whose
fields (with their bounds and attribute docstrings) the LangChain classes inherit.
The backend's typed, frozen view of the same group is a :class:`Settings` subclass
of it, filled from a model instance with :meth:`Settings.of` — so the load settings,
the sampling settings, the call options a class accepts and their bounds all come
from the one field declaration. Per-call options (``llm.invoke(q, temperature=0.2)``)
are validated by pydantic against the same fields, NaN and infinities included.

Adding a parameter is one line in the field group; the backend then reads it by name.
"""

from __future__ import annotations

from collections.abc import Hashable, Iterable, Mapping
from typing import Any

from pydantic import BaseModel, ConfigDict, ValidationError
from typing_extensions import Self

from langchain_localllm.errors import InvalidParameterError

__all__ = ["FieldGroup", "Settings", "check_known", "hashable"]


class FieldGroup(BaseModel):
    """Base of a group of fields that a LangChain class inherits and a backend reads."""

    model_config = ConfigDict(protected_namespaces=(), allow_inf_nan=False)


class Settings(BaseModel):
    """A frozen, validated snapshot of a field group: the backend's typed view of it.

    Subclass it together with the field group: ``class Sampling(SamplingFields, Settings)``.
    """

    model_config = ConfigDict(frozen=True, extra="forbid", protected_namespaces=(), allow_inf_nan=False)

    @classmethod
    def names(cls) -> frozenset[str]:
        """The setting names (the field group's fields plus any the subclass adds)."""
        return frozenset(cls.model_fields)

    @classmethod
    def of(cls, owner: BaseModel, overrides: Mapping[str, Any] | None = None, /, **extra: Any) -> Self:
        """The settings of ``owner`` (a model inheriting the field group), with per-call ``overrides``.

        Raises:
            InvalidParameterError: An override is unknown, of the wrong type, out of bounds, or
                not finite.
        """
        values = {name: getattr(owner, name) for name in cls.model_fields if name not in extra and hasattr(owner, name)}
        if overrides:
            values.update(overrides)
        values.update(extra)
        try:
            return cls.model_validate(values)
        except ValidationError as e:
            raise InvalidParameterError(_describe(e)) from e

    def key(self) -> Hashable:
        """A hashable form of these settings (for cache keys)."""
        return hashable(self.model_dump())


def check_known(options: Iterable[str], supported: Iterable[str]) -> None:
    """Raise :class:`InvalidParameterError` naming any call option not in ``supported``."""
    allowed = frozenset(supported)
    unknown = sorted(set(options) - allowed)
    if unknown:
        msg = f"unknown call options {unknown}; supported: {sorted(allowed)}"
        raise InvalidParameterError(msg)


def _describe(error: ValidationError) -> str:
    parts = []
    for item in error.errors(include_url=False):
        where = ".".join(str(p) for p in item["loc"]) or "options"
        parts.append(f"{where}: {item['msg']} (got {item.get('input')!r})")
    return "invalid option " + "; ".join(parts)


def hashable(value: Any) -> Hashable:
    """A hashable equivalent of ``value`` (dicts and lists become sorted tuples)."""
    if isinstance(value, Mapping):
        return tuple(sorted((str(k), hashable(v)) for k, v in value.items()))
    if isinstance(value, list | tuple | set | frozenset):
        items = [hashable(v) for v in value]
        return tuple(sorted(items, key=repr)) if isinstance(value, set | frozenset) else tuple(items)
    try:
        hash(value)
    except TypeError:
        return repr(value)
    return value  # type: ignore[no-any-return]
