"""Prefill of a mixed-length batch in length-sorted groups, decoded together from one cache.

A left-padded batch computes its prompts over the longest prompt's width: with 16
chat prompts of 22 to 185 tokens, 44% of the prefill is padding. Splitting the batch
into length-sorted ``generate`` calls removes that waste but repeats every decode step
once per group, which costs more than it saves (measured on CPU:
``scripts/bench/batch_split.py``).

This module keeps one decode and shrinks only the prefill. It runs each group of
similar-length prompts through the model (all but each row's last token). Then it
left-pads every row's keys and values to the batch width and hands the merged
``DynamicCache`` to ``generate``. ``generate`` then feeds just the last prompt token
of each row and decodes all rows together, exactly as after its own padded prefill:

* the positions are those ``generate`` derives from the attention mask;
* the padded slots are masked out.

Only plain caches are merged: every layer a full ``DynamicLayer`` (no sliding window,
no linear-attention or recurrent state). Anything else gets the ordinary padded
prefill.
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Iterator, Sequence
from typing import Any

from langchain_localllm._core.imports import import_optional

__all__ = ["MIN_ROWS", "cache_argument", "merged_prefill", "plan_groups"]

MIN_ROWS = 4
"""Batches with fewer rows are prefilled as one padded batch."""

GROUPS = 4
"""How many length-sorted groups a batch is prefilled in (4 measured best of 1, 2, 4 on CPU)."""

MIN_SAVING = 0.2
"""The grouped prefill must skip at least this fraction of the padded prompt tokens."""


def plan_groups(lengths: Sequence[int]) -> list[list[int]] | None:
    """Row indices in length-sorted groups, or None when grouping would not pay off."""
    n = len(lengths)
    if n < MIN_ROWS or min(lengths) < 2:  # noqa: PLR2004 - every row needs a token left for generate
        return None
    order = sorted(range(n), key=lambda i: lengths[i])
    size = math.ceil(n / min(GROUPS, n // 2))
    groups = [order[i : i + size] for i in range(0, n, size)]
    padded = n * max(lengths)
    grouped = sum(len(group) * max(lengths[i] for i in group) for group in groups)
    return groups if grouped <= (1 - MIN_SAVING) * padded else None


def cache_argument(model: Any) -> str | None:
    """The name under which ``model`` takes its KV cache.

    ``cache`` (transformers 5.24 on), ``past_key_values`` (earlier), or None (neither:
    no merged prefill).
    """
    parameters = inspect.signature(model.forward).parameters
    return next((name for name in ("cache", "past_key_values") if name in parameters), None)


def merged_prefill(
    model: Any, prompts: Sequence[Sequence[int]], pad_id: int, device: Any, groups: Sequence[Sequence[int]]
) -> Any | None:
    """Prefill ``prompts`` group by group; return one left-padded ``DynamicCache`` for all rows.

    The cache holds every row's prompt except its last token, at the width of a
    left-padded batch of all ``prompts``. Returns None, before any forward pass, when
    the model's cache is not plain or its ``forward`` lacks an argument this needs
    (see the module docstring); the caller then prefills as one padded batch.
    Peak memory is about one batch-wide cache plus one layer. Run it under
    ``torch.inference_mode()``.
    """
    torch = import_optional("torch")
    cache_utils = import_optional("transformers").cache_utils
    dynamic_cache, dynamic_layer = cache_utils.DynamicCache, getattr(cache_utils, "DynamicLayer", None)
    argument = cache_argument(model)
    parameters = inspect.signature(model.forward).parameters
    if (
        argument is None
        or dynamic_layer is None
        or not {"attention_mask", "position_ids", "use_cache"} <= set(parameters)
        or "ddp_cache_data" not in inspect.signature(dynamic_cache.__init__).parameters
        or not _plain(dynamic_cache(config=model.config), dynamic_layer, allow_empty=True)
    ):
        return None
    extra = {"logits_to_keep": 1} if "logits_to_keep" in parameters else {}
    width = max(len(p) for p in prompts)
    keys: list[Any] = []  # per layer: (rows, kv heads, width - 1, head dim), filled group by group
    values: list[Any] = []
    for group in groups:
        group_width = max(len(prompts[i]) for i in group)
        ids = [[pad_id] * (group_width - len(prompts[i])) + list(prompts[i]) for i in group]
        mask = torch.tensor(
            [[0] * (group_width - len(prompts[i])) + [1] * len(prompts[i]) for i in group], device=device
        )
        positions = (mask.cumsum(-1) - 1).clamp(min=0)  # the real tokens' positions, as in one padded batch
        cache = dynamic_cache(config=model.config)
        model(
            input_ids=torch.tensor(ids, dtype=torch.long, device=device)[:, :-1],
            attention_mask=mask[:, :-1],
            position_ids=positions[:, :-1],
            use_cache=True,
            **{argument: cache},
            **extra,
        )
        if not _plain(cache, dynamic_layer, allow_empty=False):
            return None
        rows = torch.tensor(list(group), device=device)
        start = width - group_width  # left padding of this group's rows in the whole batch
        for index, layer in enumerate(cache.layers):
            if index == len(keys):
                shape = (len(prompts), *layer.keys.shape[1:2], width - 1, *layer.keys.shape[3:])
                keys.append(layer.keys.new_zeros(shape))
                values.append(layer.values.new_zeros(shape))
            keys[index][rows, :, start:] = layer.keys
            values[index][rows, :, start:] = layer.values
        del cache
    return dynamic_cache(ddp_cache_data=_drain(keys, values))


def _plain(cache: Any, dynamic_layer: type, *, allow_empty: bool) -> bool:
    """Every layer of ``cache`` is a full-attention ``DynamicLayer`` (none yet: ``allow_empty``)."""
    layers = getattr(cache, "layers", None)
    if not layers:
        return allow_empty
    return all(type(layer) is dynamic_layer for layer in layers)


def _drain(keys: list[Any], values: list[Any]) -> Iterator[tuple[Any, Any]]:
    """Hand the layers over one at a time, dropping ours as the cache copies each in."""
    keys.reverse()
    values.reverse()
    while keys:
        yield keys.pop(), values.pop()
