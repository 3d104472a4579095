"""Comparison 11: continuous batching on llama.cpp (``max_parallel``) against today's one-at-a-time path.

Both sides load the same GGUF in this one process (two cache entries: ``max_parallel`` is a
load setting) and run interleaved:

* ``LocalGGMLLLM.batch`` of 16 prompts x 64 new tokens: ``max_parallel=16`` vs ``1``;
* 8 concurrent ``ainvoke``: gathered on ``max_parallel=8`` vs 8 awaited one after another on ``1``;
* one request alone (decode tokens/s and time to first token): ``max_parallel=8`` vs ``1``.

    python -m scripts.bench.run --only 11 --quick          # from the repo root
    python -m scripts.bench.batching [--gguf FILE] [--parallel 4,8,16]   # the default-choice sweep
"""

from __future__ import annotations

import argparse
import asyncio
import time
from pathlib import Path

from langchain_localllm import LocalGGMLLLM, clear_model_cache
from scripts.bench.harness import Comparison, Goal, Stats, interleave

HERE = Path(__file__).resolve().parent
SEED_TEXT = "Once upon a time in a little flower shop"


def prompts(n: int) -> list[str]:
    """``n`` different raw prompts of mixed length (8 to 40 words)."""
    words = ["rose", "tulip", "lily", "daisy", "orchid", "peony", "iris", "violet"]
    return [
        f"{i}: {SEED_TEXT} " + " ".join(words[(i + k) % len(words)] for k in range(8 + (i * 5) % 33)) for i in range(n)
    ]


def _llm(gguf: Path, max_parallel: int, n_new: int) -> LocalGGMLLLM:
    llm = LocalGGMLLLM(
        model_path=str(gguf), temperature=0, max_tokens=n_new, prompt_format="raw", max_parallel=max_parallel
    )
    llm.load()
    return llm


def _tokens(llm: LocalGGMLLLM, batch: list[str]) -> int:
    result = llm.generate(batch)
    return sum(int((g[0].generation_info or {})["completion_tokens"]) for g in result.generations)


def case_batching(gguf: Path, repeats: int, *, quick: bool) -> Comparison:
    comp = Comparison("11", "llama.cpp continuous batching (max_parallel) vs one request at a time")
    n_new = 64
    today = _llm(gguf, 1, n_new)
    sixteen = _llm(gguf, 16, n_new)
    eight = _llm(gguf, 8, n_new)
    batch = prompts(16)
    n_batch = _tokens(today, batch)
    comp.notes.append(f"batch: 16 prompts, {n_batch} new tokens per run (today's path); 2 cores shared")

    def batch_side(llm: LocalGGMLLLM) -> float:
        start = time.perf_counter()
        n = _tokens(llm, batch)
        return n / (time.perf_counter() - start)

    stats = interleave(
        {
            "batch(16) max_parallel=1": lambda: batch_side(today),
            "batch(16) max_parallel=16": lambda: batch_side(sixteen),
        },
        repeats=repeats,
        unit="tok/s",
    )
    comp.sides.extend(stats.values())
    comp.goals.append(
        Goal(
            "batch of 16 x 64 tokens: max_parallel=16 / 1",
            stats["batch(16) max_parallel=16"].median / stats["batch(16) max_parallel=1"].median,
            3.0,
        )
    )

    calls = prompts(8)

    async def gathered(llm: LocalGGMLLLM) -> float:
        start = time.perf_counter()
        results = await asyncio.gather(*(llm.agenerate([p]) for p in calls))
        n = sum(int((r.generations[0][0].generation_info or {})["completion_tokens"]) for r in results)
        return n / (time.perf_counter() - start)

    async def serialized(llm: LocalGGMLLLM) -> float:
        start = time.perf_counter()
        n = 0
        for p in calls:
            r = await llm.agenerate([p])
            n += int((r.generations[0][0].generation_info or {})["completion_tokens"])
        return n / (time.perf_counter() - start)

    stats = interleave(
        {
            "8 ainvoke serialized, max_parallel=1": lambda: asyncio.run(serialized(today)),
            "8 concurrent ainvoke, max_parallel=8": lambda: asyncio.run(gathered(eight)),
        },
        repeats=repeats,
        unit="tok/s",
    )
    comp.sides.extend(stats.values())
    comp.goals.append(
        Goal(
            "8 concurrent ainvoke / 8 serialized (aggregate tok/s)",
            stats["8 concurrent ainvoke, max_parallel=8"].median / stats["8 ainvoke serialized, max_parallel=1"].median,
            2.5,
        )
    )

    alone_new = 128 if quick else 256
    ttft: dict[str, list[float]] = {"1": [], "8": []}

    def alone(llm: LocalGGMLLLM, key: str) -> float:
        start = time.perf_counter()
        first = None
        for chunk in llm.stream(SEED_TEXT, max_tokens=alone_new):
            if first is None and chunk:
                first = time.perf_counter()
        end = time.perf_counter()
        ttft[key].append((first or end) - start)
        return alone_new / (end - start)

    stats = interleave(
        {
            "one request alone, max_parallel=1": lambda: alone(today, "1"),
            "one request alone, max_parallel=8": lambda: alone(eight, "8"),
        },
        repeats=repeats * 2,
        unit="tok/s",
    )
    comp.sides.extend(stats.values())
    warm = 1  # interleave's warm-up run is recorded in ttft too
    first_1, first_8 = (
        Stats("time to first token, max_parallel=1", ttft["1"][warm:]),
        Stats("time to first token, max_parallel=8", ttft["8"][warm:]),
    )
    comp.sides.extend([first_1, first_8])
    comp.goals.append(
        Goal(
            "alone decode tok/s: max_parallel=8 / 1",
            stats["one request alone, max_parallel=8"].median / stats["one request alone, max_parallel=1"].median,
            0.97,
        )
    )
    comp.goals.append(
        Goal(
            "alone time to first token: max_parallel=8 / 1",
            first_8.median / first_1.median,
            1.03,
            higher_is_better=False,
        )
    )
    clear_model_cache()
    return comp


def sweep(gguf: Path, parallels: list[int], repeats: int) -> None:
    """Print batch(16) and one-request-alone rates per max_parallel (how the default was chosen)."""
    n_new = 64
    batch = prompts(16)
    llms = {p: _llm(gguf, p, n_new) for p in [1, *parallels]}

    def alone(llm: LocalGGMLLLM) -> float:
        start = time.perf_counter()
        list(llm.stream(SEED_TEXT, max_tokens=128))
        return 128 / (time.perf_counter() - start)

    def batch_rate(llm: LocalGGMLLLM) -> float:
        start = time.perf_counter()
        n = _tokens(llm, batch)
        return n / (time.perf_counter() - start)

    rates = interleave({f"alone p={p}": lambda llm=llm: alone(llm) for p, llm in llms.items()}, repeats=repeats)
    rates |= interleave({f"batch16 p={p}": lambda llm=llm: batch_rate(llm) for p, llm in llms.items()}, repeats=repeats)
    base_alone, base_batch = rates["alone p=1"].median, rates["batch16 p=1"].median
    for p in llms:
        a, b = rates[f"alone p={p}"].median, rates[f"batch16 p={p}"].median
        print(
            f"max_parallel={p:>3}: alone {a:7.1f} tok/s ({a / base_alone:.3f}x)  batch(16) {b:7.1f} tok/s ({b / base_batch:.2f}x)"
        )
    clear_model_cache()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--gguf", type=Path, default=HERE.parents[1] / ".bench-models" / "bench-30m-q8_0.gguf")
    parser.add_argument("--parallel", default="2,4,8,16")
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    sweep(args.gguf, [int(p) for p in args.parallel.split(",")], args.repeats)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
