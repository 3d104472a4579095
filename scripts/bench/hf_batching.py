"""Comparison 11f: continuous batching on transformers (``HFLocalChatModel(max_parallel)``).

One HF bench checkpoint, loaded once (``max_parallel`` is not a load setting: every side shares
the weights), sides interleaved:

* 16 prompts x 32 new tokens: ``batch()`` with ``max_parallel=16`` vs 16 ``invoke`` calls one
  after another (today's sequential path), and vs today's padded ``batch()`` (``max_parallel=1``);
* 8 concurrent ``ainvoke``: gathered on ``max_parallel=8`` vs awaited one after another;
* one request alone: decode tokens/s and time to first token, ``max_parallel=8`` vs ``1``.

    python -m scripts.bench.run --only 11f --quick        # from the repo root
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any

from langchain_localllm import HFLocalChatModel
from scripts.bench.batching import prompts
from scripts.bench.harness import Comparison, Goal, Stats, interleave

N_PROMPTS = 16
N_CONCURRENT = 8


def _chat(hf: Path, max_parallel: int, n_new: int) -> HFLocalChatModel:
    return HFLocalChatModel(model=str(hf), device="cpu", temperature=0, max_tokens=n_new, max_parallel=max_parallel)


def case_hf_batching(hf: Path, repeats: int, *, quick: bool) -> Comparison:
    """The three goals of issue 13 for transformers, as ratios in this one process."""
    torch = __import__("torch")
    n_new = 16 if quick else 32
    comp = Comparison("11f", "transformers continuous batching (HFLocalChatModel max_parallel) vs one at a time")
    comp.notes.append(f"torch intra-op threads: {torch.get_num_threads()}; {n_new} new tokens a request")
    today = _chat(hf, 1, n_new)
    sixteen = _chat(hf, N_PROMPTS, n_new)
    eight = _chat(hf, N_CONCURRENT, n_new)
    batch = prompts(N_PROMPTS)
    today.invoke(batch[0])
    for model in (sixteen, eight):
        model.batch(batch[:2])
    tokens = sum(int((m.usage_metadata or {}).get("output_tokens", 0)) for m in today.batch(batch))

    def rate(fn: Callable[[], object]) -> float:
        start = time.perf_counter()
        fn()
        return tokens / (time.perf_counter() - start)

    stats = interleave(
        {
            "16 invoke one after another, max_parallel=1": lambda: rate(lambda: [today.invoke(p) for p in batch]),
            "batch(16) padded, max_parallel=1": lambda: rate(lambda: today.batch(batch)),
            "batch(16), max_parallel=16": lambda: rate(lambda: sixteen.batch(batch)),
        },
        repeats=repeats,
        unit="tok/s",
    )
    comp.sides.extend(stats.values())
    scheduled = stats["batch(16), max_parallel=16"].median
    comp.goals.append(
        Goal(
            "batch of 16: max_parallel=16 / sequential",
            scheduled / stats["16 invoke one after another, max_parallel=1"].median,
            3.0,
        )
    )
    comp.notes.append(
        f"max_parallel=16 / today's padded batch(): {scheduled / stats['batch(16) padded, max_parallel=1'].median:.2f}x"
    )

    few = batch[:N_CONCURRENT]
    few_tokens = sum(int((m.usage_metadata or {}).get("output_tokens", 0)) for m in today.batch(few))

    async def serialized() -> None:
        for p in few:
            await today.ainvoke(p)

    async def gathered() -> None:
        await asyncio.gather(*(eight.ainvoke(p) for p in few))

    def arate(coro: Callable[[], Coroutine[Any, Any, None]]) -> float:
        start = time.perf_counter()
        asyncio.run(coro())
        return few_tokens / (time.perf_counter() - start)

    stats = interleave(
        {
            "8 ainvoke serialized, max_parallel=1": lambda: arate(serialized),
            "8 concurrent ainvoke, max_parallel=8": lambda: arate(gathered),
        },
        repeats=repeats,
        unit="tok/s",
    )
    comp.sides.extend(stats.values())
    comp.goals.append(
        Goal(
            "8 concurrent ainvoke: max_parallel=8 / serialized",
            stats["8 concurrent ainvoke, max_parallel=8"].median / stats["8 ainvoke serialized, max_parallel=1"].median,
            2.5,
        )
    )

    ttft: dict[str, list[float]] = {"1": [], "8": []}
    alone_prompt = batch[3]

    def alone(model: HFLocalChatModel, key: str) -> float:
        start = time.perf_counter()
        first = None
        n = 0
        for chunk in model.stream(alone_prompt):
            if first is None and chunk.content:
                first = time.perf_counter()
            if chunk.usage_metadata:
                n = int(chunk.usage_metadata["output_tokens"])
        end = time.perf_counter()
        ttft[key].append(((first or end) - start) * 1000)
        return n / (end - start)

    stats = interleave(
        {
            "one request alone, max_parallel=1": lambda: alone(today, "1"),
            "one request alone, max_parallel=8": lambda: alone(eight, "8"),
        },
        repeats=repeats,
        unit="tok/s",
    )
    comp.sides.extend(stats.values())
    comp.sides.append(Stats("time to first token, max_parallel=1", ttft["1"], unit="ms"))
    comp.sides.append(Stats("time to first token, max_parallel=8", ttft["8"], unit="ms"))
    comp.goals.append(
        Goal(
            "alone tokens/s: max_parallel=8 / 1",
            stats["one request alone, max_parallel=8"].median / stats["one request alone, max_parallel=1"].median,
            0.97,
        )
    )
    first_1, first_8 = sorted(ttft["1"])[len(ttft["1"]) // 2], sorted(ttft["8"])[len(ttft["8"]) // 2]
    comp.goals.append(
        Goal("alone time to first token: max_parallel=8 / 1", first_8 / first_1, 1.03, higher_is_better=False)
    )
    return comp
