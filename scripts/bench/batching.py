"""Comparison 11: continuous batching on llama.cpp (``max_parallel``) against today's one-at-a-time path.

Both sides load the same GGUF in this one process (two cache entries: ``max_parallel`` is a
load setting) and run interleaved:

* ``LocalGGMLLLM.batch`` of 16 prompts x 64 new tokens: ``max_parallel=16`` vs ``1``;
* 8 concurrent ``ainvoke``: gathered on ``max_parallel=8`` vs 8 awaited one after another on ``1``;
* one request alone (decode tokens/s and time to first token): ``max_parallel=8`` vs ``1``.

11b-11e (``--only 11b,11c,11d,11e``):

* 11b: aggregate tokens/s and p50/p99 time to first token at 1, 2, 4, 8, 16 concurrent ``astream``
  calls on one ``max_parallel=16`` model (llama.cpp; transformers once ``HFLocalChatModel`` has
  ``max_parallel``);
* 11c: with a busy-loop process on core 0, a batch of 16 and 8 concurrent calls vs sequential,
  under three llama.cpp thread policies (and transformers when available);
* 11d: the time to first token of a request arriving while 7 others decode, against its own
  prefill alone plus two decode steps measured under the 7;
* 11e: how many of 16 batched greedy answers equal their sequential answers token for token.

    python -m scripts.bench.run --only 11 --quick          # from the repo root
    python -m scripts.bench.batching [--gguf FILE] [--parallel 4,8,16]   # the default-choice sweep
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import multiprocessing
import os
import statistics
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from langchain_core.language_models import BaseChatModel

from langchain_localllm import LocalGGMLChatModel, LocalGGMLLLM, clear_model_cache
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


# -- 11b-11e: concurrency table, CPU contention, a late arrival, greedy match ---------------------

CONCURRENCY = (1, 2, 4, 8, 16)


def _chat(gguf: Path, max_parallel: int, n_new: int, **kwargs: Any) -> LocalGGMLChatModel:
    chat = LocalGGMLChatModel(
        model_path=str(gguf), temperature=0, max_tokens=n_new, max_parallel=max_parallel, **kwargs
    )
    chat.load()
    return chat


def _hf_chat(hf: Path, max_parallel: int, n_new: int) -> BaseChatModel | None:
    """``HFLocalChatModel`` with ``max_parallel`` once that field exists (the transformers scheduler), else None."""
    from langchain_localllm import HFLocalChatModel

    if "max_parallel" not in HFLocalChatModel.model_fields:
        return None
    kwargs: dict[str, Any] = {"model": str(hf), "max_parallel": max_parallel, "max_tokens": n_new, "temperature": 0}
    chat = HFLocalChatModel(**kwargs)
    chat.load()
    return chat


@dataclass
class Streamed:
    """One ``asyncio.gather`` of streaming requests: wall time, tokens, each request's time to first token."""

    seconds: float
    tokens: int
    ttft: list[float]

    @property
    def rate(self) -> float:
        return self.tokens / self.seconds


async def _one_stream(chat: BaseChatModel, prompt: str, start: float, **options: Any) -> tuple[float, int]:
    first, tokens = None, 0
    async for chunk in chat.astream(prompt, **options):
        if first is None and chunk.content:
            first = time.perf_counter()
        if chunk.usage_metadata:
            tokens = int(chunk.usage_metadata["output_tokens"])
    end = time.perf_counter()
    return (first or end) - start, tokens


def streamed(chat: BaseChatModel, batch: list[str]) -> Streamed:
    """Run ``batch`` as concurrent ``astream`` calls on one event loop."""

    async def run() -> Streamed:
        start = time.perf_counter()
        results = await asyncio.gather(*(_one_stream(chat, p, start) for p in batch))
        return Streamed(time.perf_counter() - start, sum(n for _, n in results), [t for t, _ in results])

    return asyncio.run(run())


def _quantile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def _table(comp: Comparison, label: str, chat: BaseChatModel, repeats: int) -> dict[int, float]:
    rates: dict[int, float] = {}
    streamed(chat, prompts(4))  # warm-up
    for c in CONCURRENCY:
        runs = [streamed(chat, prompts(c)) for _ in range(repeats)]
        ttft = [t for r in runs for t in r.ttft]
        stats = Stats(
            f"{label}: {c} concurrent astream",
            [r.rate for r in runs],
            unit="tok/s",
            extra={"ttft_p50_ms": 1000 * _quantile(ttft, 0.5), "ttft_p99_ms": 1000 * _quantile(ttft, 0.99)},
        )
        comp.sides.append(stats)
        rates[c] = stats.median
        comp.notes.append(
            f"{label} c={c:>2}: {stats.median:7.1f} tok/s aggregate, time to first token "
            f"p50 {stats.extra['ttft_p50_ms']:.0f} ms / p99 {stats.extra['ttft_p99_ms']:.0f} ms"
        )
    return rates


def case_concurrency(gguf: Path, hf: Path, repeats: int, *, quick: bool) -> Comparison:
    """11b: aggregate tokens/s and p50/p99 time to first token at 1-16 concurrent streams."""
    comp = Comparison("11b", "concurrent streaming requests on one max_parallel=16 model: tok/s and TTFT")
    n_new = 32 if quick else 64
    runs = max(2, repeats // 2)
    rates = _table(comp, "llama.cpp", _chat(gguf, 16, n_new), runs)
    comp.goals.append(Goal("llama.cpp aggregate tok/s, 16 concurrent / 1", rates[16] / rates[1], 2.0))
    clear_model_cache()
    hf_chat = _hf_chat(hf, 16, n_new)
    if hf_chat is None:
        comp.notes.append("HF skipped: HFLocalChatModel has no max_parallel field yet")
    else:
        rates = _table(comp, "transformers", hf_chat, runs)
        comp.goals.append(Goal("transformers aggregate tok/s, 16 concurrent / 1", rates[16] / rates[1], 2.0))
        clear_model_cache()
    comp.notes.append(f"each request {n_new} new tokens (greedy, max_tokens); {runs} runs per row")
    return comp


def _spin(core: int | None, stop: Any) -> None:
    """A busy loop (the contending process), pinned to ``core`` where the platform allows."""
    if core is not None and hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, {core})
    while not stop.is_set():
        for _ in range(100_000):
            pass


@contextlib.contextmanager
def busy_core(core: int | None = 0) -> Iterator[None]:
    """One busy-loop process on ``core`` for the duration (started and stopped here)."""
    ctx = multiprocessing.get_context("spawn")
    stop = ctx.Event()
    proc = ctx.Process(target=_spin, args=(core, stop), daemon=True)
    proc.start()
    try:
        time.sleep(0.2)
        yield
    finally:
        stop.set()
        proc.join(5)
        if proc.is_alive():
            proc.terminate()
            proc.join()


def _sequential_rate(chat: BaseChatModel, batch: list[str]) -> float:
    start = time.perf_counter()
    tokens = sum(int((chat.invoke(p).usage_metadata or {}).get("output_tokens", 0)) for p in batch)
    return tokens / (time.perf_counter() - start)


def _batch_rate(chat: BaseChatModel, batch: list[str]) -> float:
    start = time.perf_counter()
    tokens = sum(int((m.usage_metadata or {}).get("output_tokens", 0)) for m in chat.batch(batch))
    return tokens / (time.perf_counter() - start)


def _contended(
    comp: Comparison, label: str, one: BaseChatModel, many: BaseChatModel, repeats: int
) -> tuple[float, float]:
    sixteen, eight = prompts(16), prompts(8)
    stats = interleave(
        {
            f"{label}: 16 sequential": lambda: _sequential_rate(one, sixteen),
            f"{label}: batch of 16": lambda: _batch_rate(many, sixteen),
            f"{label}: 8 sequential": lambda: _sequential_rate(one, eight),
            f"{label}: 8 concurrent astream": lambda: streamed(many, eight).rate,
        },
        repeats=repeats,
        unit="tok/s",
    )
    comp.sides.extend(stats.values())
    batch = stats[f"{label}: batch of 16"].median / stats[f"{label}: 16 sequential"].median
    concurrent = stats[f"{label}: 8 concurrent astream"].median / stats[f"{label}: 8 sequential"].median
    comp.notes.append(f"{label}: batch(16) {batch:.2f}x sequential, 8 concurrent {concurrent:.2f}x sequential")
    return batch, concurrent


def case_contention(gguf: Path, hf: Path, repeats: int, *, quick: bool) -> Comparison:
    """11c: batching vs sequential with one core taken by a busy process (does batching collapse?)."""
    comp = Comparison("11c", "batching under CPU contention (a busy-loop process on core 0)")
    n_new = 32 if quick else 64
    runs = max(2, repeats // 2)
    policies: list[tuple[str, dict[str, Any]]] = [
        ("llama.cpp default threads", {}),
        ("llama.cpp n_threads=1 n_threads_batch=1", {"n_threads": 1, "n_threads_batch": 1}),
        ("llama.cpp n_threads=2 n_threads_batch=2", {"n_threads": 2, "n_threads_batch": 2}),
    ]
    with busy_core(0):
        for i, (label, threads) in enumerate(policies):
            one, many = _chat(gguf, 1, n_new, **threads), _chat(gguf, 16, n_new, **threads)
            batch, concurrent = _contended(comp, label, one, many, runs)
            if i == 0:  # the goals are on the package's defaults; the others say which policy holds
                comp.goals.append(Goal(f"{label}: batch of 16 / sequential, core 0 busy", batch, 2.0))
                comp.goals.append(Goal(f"{label}: 8 concurrent / sequential, core 0 busy", concurrent, 2.0))
            clear_model_cache()
        hf_one, hf_many = _hf_chat(hf, 1, n_new), _hf_chat(hf, 16, n_new)
        if hf_one is None or hf_many is None:
            comp.notes.append("HF skipped: HFLocalChatModel has no max_parallel field yet")
        else:
            import torch

            label = f"transformers (torch intra-op threads {torch.get_num_threads()})"
            batch, concurrent = _contended(comp, label, hf_one, hf_many, runs)
            comp.goals.append(Goal("transformers: batch of 16 / sequential, core 0 busy", batch, 2.0))
            comp.goals.append(Goal("transformers: 8 concurrent / sequential, core 0 busy", concurrent, 2.0))
            clear_model_cache()
    comp.notes.append(
        f"{os.cpu_count()} CPUs; each request {n_new} new tokens; llama.cpp's default threads: "
        "generation cpu_count // 2, prompt cpu_count"
    )
    return comp


def case_late_arrival(gguf: Path, repeats: int, *, quick: bool) -> Comparison:
    """11d: a request arriving while 7 others decode: TTFT vs its prefill alone + 2 decode steps."""
    comp = Comparison("11d", "a request arriving while 7 others decode: time to first token")
    chat = _chat(gguf, 8, 16)
    late_prompt = prompts(9)[8]
    n_busy = 256 if quick else 512

    def alone() -> float:
        start = time.perf_counter()
        for chunk in chat.stream(late_prompt, max_tokens=16):
            if chunk.content:
                break
        return time.perf_counter() - start

    async def arrival() -> tuple[float, float]:
        scheduler = _scheduler_of(chat)
        begin = scheduler.steps
        busy = [asyncio.create_task(_consume(chat, p, n_busy)) for p in prompts(7)]
        while scheduler.steps - begin < 40:  # noqa: ASYNC110 - the worker thread counts; every busy request decodes by then
            await asyncio.sleep(0.005)
        s0, t0 = scheduler.steps, time.perf_counter()
        await asyncio.sleep(0.2)
        step = (time.perf_counter() - t0) / max(1, scheduler.steps - s0)
        start = time.perf_counter()
        ttft, _ = await _one_stream(chat, late_prompt, start, max_tokens=4)
        for task in busy:
            task.cancel()
        await asyncio.gather(*busy, return_exceptions=True)
        return ttft, step

    alone_s, late_s, step_s = [], [], []
    alone()
    for _ in range(repeats):
        alone_s.append(alone())
        ttft, step = asyncio.run(arrival())
        late_s.append(ttft)
        step_s.append(step)
    prefill = statistics.median(alone_s)
    step = statistics.median(step_s)
    late = statistics.median(late_s)
    comp.sides += [
        Stats("prefill alone (its time to first token)", alone_s),
        Stats("decode step under 7 running", step_s),
        Stats("time to first token, arriving while 7 decode", late_s),
    ]
    comp.goals.append(
        Goal(
            "late arrival TTFT / (its prefill alone + 2 decode steps under 7)",
            late / (prefill + 2 * step),
            1.0,
            higher_is_better=False,
            note=f"{1000 * late:.1f} ms vs {1000 * prefill:.1f} + 2 x {1000 * step:.1f} ms",
        )
    )
    clear_model_cache()
    return comp


async def _consume(chat: BaseChatModel, prompt: str, n: int) -> None:
    async for _ in chat.astream(prompt, max_tokens=n):
        pass


def _scheduler_of(chat: LocalGGMLChatModel) -> Any:
    with chat._backend().hold() as loaded:
        return loaded.scheduler


def case_greedy_match(gguf: Path) -> Comparison:
    """11e: how many of 16 batched greedy answers equal their sequential answers token for token."""
    comp = Comparison("11e", "greedy answers under batching vs sequential (16 prompts, random bench model)")
    batch = prompts(16)
    n_new = 64
    one = _llm(gguf, 1, n_new)
    sequential = [_token_ids(one, p) for p in batch]
    many = _llm(gguf, 16, n_new)
    batched = [_token_ids(many, text, prompt=p) for p, text in zip(batch, many.batch(batch), strict=True)]
    same = sum(a == b for a, b in zip(sequential, batched, strict=True))
    first_diff = [
        next((i for i, (x, y) in enumerate(zip(a, b, strict=False)) if x != y), min(len(a), len(b)))
        for a, b in zip(sequential, batched, strict=True)
        if a != b
    ]
    comp.sides.append(Stats("batched answers equal to the sequential ones", [float(same)], unit="of 16"))
    comp.notes.append(
        f"{same}/16 identical token for token"
        + (f"; the others first differ at tokens {first_diff}" if first_diff else "")
        + ". They can differ "
        "because llama.cpp's kernels sum in an order that depends on the batch shape, so logits differ in the "
        "last bits, and on a random model many greedy choices are near-ties that such a difference flips (then "
        "the rest of the answer follows the other branch)."
    )
    comp.goals.append(Goal("batched greedy answers identical to sequential (share of 16)", same / 16, 0.75))
    clear_model_cache()
    return comp


def _token_ids(llm: LocalGGMLLLM, text_or_prompt: str, *, prompt: str | None = None) -> list[int]:
    """The answer's tokens (``prompt`` given: ``text_or_prompt`` is the answer; else it is generated)."""
    text = llm.invoke(text_or_prompt) if prompt is None else text_or_prompt
    # The model's own tokenizer: LangChain's get_token_ids would fall back to GPT-2's (downloaded).
    with llm._backend().hold() as loaded:
        ids: list[int] = loaded.llama.tokenize(text.encode("utf-8"), add_bos=False, special=True)
    return ids
