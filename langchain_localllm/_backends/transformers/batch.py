"""``batch()`` on transformers: a group of conversations answered by one padded ``generate``."""

from __future__ import annotations

import threading
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from langchain_localllm._backends.transformers.generate import generate_rows
from langchain_localllm._backends.transformers.load import HFBundle, require_generative
from langchain_localllm._backends.transformers.prompt import render_prompt, row_budget
from langchain_localllm._backends.transformers.settings import Sampling
from langchain_localllm._core.messages import ChatDict
from langchain_localllm._core.output import Piece

__all__ = ["BatchPlan", "run_batch"]


def run_batch(
    bundle: HFBundle,
    conversations: Sequence[Sequence[ChatDict] | BaseException],
    sampling: Sampling,
    stops: Sequence[str],
    chat_template: str | None,
    *,
    cancel: threading.Event,
    literal: bool = True,
) -> list[list[Piece] | BaseException]:
    """Answer several conversations with one padded ``generate`` call, in this thread.

    Returns, per conversation, its pieces or the exception that conversation raised
    (a template error, a context overflow...). An error inside ``generate`` is
    returned for every conversation that was in the call.
    """
    require_generative(bundle)
    results: list[list[Piece] | BaseException] = []
    prompts: list[list[int]] = []
    budgets: list[int] = []
    numbers: list[int] = []
    for number, conversation in enumerate(conversations):
        if isinstance(conversation, BaseException):
            results.append(conversation)
            continue
        try:
            prompt = render_prompt(bundle, conversation, chat_template, literal=literal)
            budget = row_budget(bundle, len(prompt), sampling.max_tokens)
        except Exception as e:  # noqa: BLE001 - reported for this input only
            results.append(e)
            continue
        results.append([])
        prompts.append(prompt)
        budgets.append(budget)
        numbers.append(number)
    if not prompts:
        return results

    def collect(row: int, piece: Piece) -> None:
        target = results[row]
        if isinstance(target, list):
            target.append(piece)

    try:
        generate_rows(
            bundle, prompts, budgets, sampling=sampling, stops=stops, emit=collect, cancels=(cancel,), rows=numbers
        )
    except Exception as e:  # noqa: BLE001 - every input of the failed call gets the error
        for number in numbers:
            results[number] = e
    return results


class BatchPlan:
    """A group of conversations that ``batch()`` answers with one padded ``generate``.

    ``batch()`` creates the plan, then invokes the model once per input as usual.
    The first invocation that :meth:`claim` s a slot runs the whole group
    (:meth:`pieces`); the others replay their slot's precomputed pieces. A slot is
    matched by its converted messages and call options, so an input that never
    reaches the model (e.g. an LLM-cache hit) cannot shift the others.
    """

    def __init__(
        self,
        owner: object,
        conversations: Sequence[Sequence[ChatDict] | BaseException],
        stop: Sequence[str] | None,
        kwargs: Mapping[str, Any],
    ) -> None:
        """Plan ``conversations`` for model instance ``owner`` with one stop list and call options."""
        self.owner_id = id(owner)
        self.conversations = list(conversations)
        self.stop = list(stop) if stop else None
        self.kwargs = dict(kwargs)
        self._claimed = [False] * len(self.conversations)
        self._results: list[list[Piece] | BaseException] | None = None
        self._lock = threading.Lock()

    def claim(
        self, owner: object, conversation: Sequence[ChatDict], stop: Sequence[str] | None, kwargs: Mapping[str, Any]
    ) -> int | None:
        """Return the slot of the first unclaimed, matching conversation (or None)."""
        same_call = (list(stop) if stop else None) == self.stop and dict(kwargs) == self.kwargs
        if id(owner) != self.owner_id or not same_call:
            return None
        with self._lock:
            for slot, planned in enumerate(self.conversations):
                if not self._claimed[slot] and planned == list(conversation):
                    self._claimed[slot] = True
                    return slot
        return None

    def pieces(self, slot: int, compute: Callable[[], list[list[Piece] | BaseException]]) -> list[Piece]:
        """The pieces of ``slot``, computing the whole group on first use."""
        with self._lock:
            if self._results is None:
                try:
                    self._results = compute()
                except Exception as e:  # noqa: BLE001 - the load or setup failed for the whole group
                    self._results = [e] * len(self.conversations)
            result = self._results[slot]
        if isinstance(result, BaseException):
            raise result
        return result
