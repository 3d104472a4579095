"""Rendering a model's own Jinja chat template, in a bounded sandbox.

Chat templates ship inside model files (GGUF ``tokenizer.chat_template``,
``tokenizer_config.json``), so they are untrusted code. They are rendered in Jinja's
:class:`~jinja2.sandbox.ImmutableSandboxedEnvironment` (no attribute escapes, no mutation
of the caller's data), with the helpers Hugging Face templates expect (``raise_exception``,
``strftime_now``, a ``tojson`` that keeps non-ASCII text readable, ``namespace``), and with
bounds a sandbox alone does not give:

* loop iterations over ``range`` and calls, counted per render (a nested
  ``range(100000)`` CPU bomb stops within a second);
* the size of strings and lists that ``*``, ``+``, filters and methods may build, and of
  the output;
* wall time (checked at every call, filter, loop step and output chunk);
* recursion (macros calling themselves).

Every failure — a template that does not compile, raises, recurses, allocates too much,
runs too long, or is not a string — is a :class:`~langchain_localllm.errors.ChatTemplateError`
naming the cause.
"""

from __future__ import annotations

import contextvars
import datetime as dt
import functools
import json
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, NoReturn

from langchain_localllm.errors import ChatTemplateError

__all__ = ["TemplateLimits", "render_chat_template"]


@dataclass(frozen=True)
class TemplateLimits:
    """How much one render may do."""

    steps: int = 1_000_000
    """Loop iterations over ``range`` plus calls (functions, macros, methods, filters)."""
    size: int = 4_000_000
    """Characters (or items) of any one string or list a template builds, and of the output."""
    seconds: float = 5.0
    """Wall time."""


LIMITS = TemplateLimits()


class _Budget:
    __slots__ = ("deadline", "limits", "steps")

    def __init__(self, limits: TemplateLimits) -> None:
        self.limits = limits
        self.steps = 0
        self.deadline = time.monotonic() + limits.seconds

    def step(self, n: int = 1) -> None:
        self.steps += n
        if self.steps > self.limits.steps:
            msg = f"the chat template ran more than {self.limits.steps} loop steps and calls (a runaway loop)"
            raise ChatTemplateError(msg)
        if time.monotonic() > self.deadline:
            msg = f"the chat template took more than {self.limits.seconds} s to render"
            raise ChatTemplateError(msg)

    def check_size(self, value: Any) -> Any:
        if isinstance(value, str | list | tuple | bytes) and len(value) > self.limits.size:
            msg = f"the chat template built a value of {len(value)} items (more than {self.limits.size})"
            raise ChatTemplateError(msg)
        return value

    def check_output(self, size: int) -> None:
        if size > self.limits.size:
            msg = f"the chat template rendered more than {self.limits.size} characters"
            raise ChatTemplateError(msg)
        self.step(0)

    def check_int(self, value: Any) -> None:
        if isinstance(value, int) and not isinstance(value, bool) and abs(value) > self.limits.size:
            msg = f"the chat template used the number {value} as a size or count (more than {self.limits.size})"
            raise ChatTemplateError(msg)


_budget: contextvars.ContextVar[_Budget | None] = contextvars.ContextVar("langchain_localllm_template", default=None)


def _current() -> _Budget:
    budget = _budget.get()
    if budget is None:  # compiled templates are only rendered through render_chat_template
        budget = _Budget(LIMITS)
        _budget.set(budget)
    return budget


def _raise_exception(message: str) -> NoReturn:
    msg = f"the chat template raised an error: {message}"
    raise ChatTemplateError(msg)


def _strftime_now(fmt: str) -> str:
    return dt.datetime.now().astimezone().strftime(fmt)  # local time, as transformers' templates get it


def _tojson(
    value: Any,
    ensure_ascii: bool = False,  # noqa: FBT001, FBT002 - Jinja filter signature
    indent: int | None = None,
    separators: tuple[str, str] | None = None,
    sort_keys: bool = False,  # noqa: FBT001, FBT002
) -> str:
    return json.dumps(value, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys)


def _bounded_range(*args: int) -> range:
    """``range``, with its length charged to the step budget up front (and bounded like Jinja's)."""
    budget = _current()
    for value in args:
        budget.check_int(value)
    values = range(*args)
    budget.step(len(values))
    return values


_SIZING_FILTERS = frozenset({"center", "indent", "wordwrap", "batch", "slice"})
"""Filters whose integer arguments size what they build (checked before they run)."""
_SIZING_METHODS = frozenset({"ljust", "rjust", "center", "zfill", "expandtabs"})
"""``str`` methods whose integer arguments size what they build."""


def _bounded_filter(name: str, function: Callable[..., Any]) -> Callable[..., Any]:
    sizing = name in _SIZING_FILTERS

    @functools.wraps(function)  # keeps Jinja's pass_context / pass_eval_context marks
    def bounded(*args: Any, **kwargs: Any) -> Any:
        budget = _current()
        budget.step()
        if sizing:
            for value in (*args[1:], *kwargs.values()):
                budget.check_int(value)
        return budget.check_size(function(*args, **kwargs))

    bounded.__name__ = f"bounded_{name}"
    return bounded


@functools.lru_cache(maxsize=1)
def _environment() -> Any:  # noqa: C901 - the sandbox's hooks, kept together
    from jinja2 import nodes  # noqa: PLC0415
    from jinja2.ext import Extension, loopcontrols  # noqa: PLC0415
    from jinja2.sandbox import ImmutableSandboxedEnvironment  # noqa: PLC0415
    from jinja2.utils import Namespace  # noqa: PLC0415

    class BoundedNamespace(Namespace):
        def __setitem__(self, name: str, value: Any) -> None:
            if isinstance(name, str) and name.startswith("_"):
                msg = f"the chat template stored the underscore attribute {name!r} on a namespace"
                raise ChatTemplateError(msg)
            super().__setitem__(name, _current().check_size(value))

    class BoundedEnvironment(ImmutableSandboxedEnvironment):
        intercepted_binops = frozenset({"*", "**", "+"})

        def call(self, context: Any, obj: Any, /, *args: Any, **kwargs: Any) -> Any:
            budget = _current()
            budget.step()
            if getattr(obj, "__name__", None) in _SIZING_METHODS and isinstance(getattr(obj, "__self__", None), str):
                for value in (*args, *kwargs.values()):
                    budget.check_int(value)
            return budget.check_size(super().call(context, obj, *args, **kwargs))

        def call_binop(self, context: Any, operator: str, left: Any, right: Any) -> Any:
            budget = _current()
            budget.step()
            if operator == "**":
                budget.check_int(right if isinstance(right, int) else 0)
                if isinstance(left, int) and isinstance(right, int) and abs(left) > 1 and right > 64:  # noqa: PLR2004
                    msg = f"the chat template computed {left} ** {right} (too large)"
                    raise ChatTemplateError(msg)
            if operator == "*":
                for count, other in ((left, right), (right, left)):
                    if isinstance(count, int) and isinstance(other, str | list | tuple):
                        budget.check_int(count * max(len(other), 1))
            return budget.check_size(super().call_binop(context, operator, left, right))

    class Generation(Extension):
        """``{% generation %}...{% endgeneration %}`` (transformers' assistant-mask tag): renders its body."""

        tags = {"generation"}  # noqa: RUF012 - Jinja reads the class attribute

        def parse(self, parser: Any) -> Any:
            lineno = next(parser.stream).lineno
            body = parser.parse_statements(("name:endgeneration",), drop_needle=True)
            return nodes.Scope(body).set_lineno(lineno)

    env = BoundedEnvironment(
        trim_blocks=True, lstrip_blocks=True, extensions=[loopcontrols, Generation], keep_trailing_newline=False
    )
    env.filters = {name: _bounded_filter(name, f) for name, f in env.filters.items()}
    env.filters["tojson"] = _bounded_filter("tojson", _tojson)
    env.globals["raise_exception"] = _raise_exception
    env.globals["strftime_now"] = _strftime_now
    env.globals["range"] = _bounded_range
    env.globals["namespace"] = BoundedNamespace
    return env


@functools.lru_cache(maxsize=32)
def _compile(template: str) -> Any:
    from jinja2 import TemplateError  # noqa: PLC0415

    try:
        return _environment().from_string(template)
    except TemplateError as e:
        msg = f"the chat template does not compile: {e}"
        raise ChatTemplateError(msg) from e
    except (RecursionError, MemoryError, ValueError, TypeError, OverflowError) as e:
        msg = f"the chat template does not compile ({type(e).__name__}: {e})"
        raise ChatTemplateError(msg) from e


def render_chat_template(
    template: str,
    messages: Sequence[Mapping[str, Any]],
    *,
    add_generation_prompt: bool = True,
    tools: Sequence[Mapping[str, Any]] | None = None,
    limits: TemplateLimits = LIMITS,
    **variables: Any,
) -> str:
    """Render ``messages`` with a Jinja chat template in a bounded sandbox.

    Args:
        template: The Jinja source.
        messages: OpenAI-style message dicts (``role``, ``content``, ...).
        add_generation_prompt: Append the assistant turn's opening.
        tools: Tool JSON schemas passed to the template as ``tools``.
        limits: How much the render may do.
        **variables: Further template variables (``bos_token``, ``eos_token``...).

    Raises:
        ChatTemplateError: The template is not a string, does not compile, raises, or
            exceeds a limit while rendering.
    """
    if not isinstance(template, str):
        msg = f"the chat template must be a string, got {type(template).__name__}"
        raise ChatTemplateError(msg)
    from jinja2 import TemplateError  # noqa: PLC0415

    compiled = _compile(template)
    budget = _Budget(limits)
    token = _budget.set(budget)
    try:
        parts: list[str] = []
        size = 0
        stream = compiled.generate(
            messages=list(messages),
            add_generation_prompt=add_generation_prompt,
            tools=list(tools) if tools else None,
            **variables,
        )
        for part in stream:
            size += len(part)
            budget.check_output(size)
            parts.append(part)
        return "".join(parts)
    except ChatTemplateError:
        raise
    except TemplateError as e:
        msg = f"the chat template failed to render these messages: {e}"
        raise ChatTemplateError(msg) from e
    except (RecursionError, MemoryError) as e:
        msg = f"the chat template failed to render ({type(e).__name__}: it recurses or allocates without bound)"
        raise ChatTemplateError(msg) from e
    except Exception as e:  # a template is untrusted code: any failure of it is a template error
        msg = f"the chat template failed to render these messages ({type(e).__name__}: {e})"
        raise ChatTemplateError(msg) from e
    finally:
        _budget.reset(token)
