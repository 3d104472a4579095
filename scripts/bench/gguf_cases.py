"""GGUF comparisons (1-4, 7): LocalGGMLLLM vs raw llama-cpp-python and langchain-community."""

from __future__ import annotations

import asyncio
import codecs
import statistics
import time
from pathlib import Path
from typing import Any

from langchain_core.callbacks import BaseCallbackHandler
from langchain_core.language_models.llms import LLM

from langchain_localllm import LocalGGMLLLM, clear_model_cache, model_cache_info
from scripts.bench.harness import Comparison, Goal, Stats, interleave, timed

DECODE_PROMPT = "Once upon a time in a little flower shop"


def _llama_of(llm: LocalGGMLLLM) -> Any:
    with llm._backend().hold() as model:
        return model


def long_prompt(model: Any, n_tokens: int, salt: int = 0) -> str:
    """A prompt of about ``n_tokens`` tokens, starting with ``salt`` so prefixes differ."""
    words = ["rose", "tulip", "lily", "daisy", "orchid", "peony", "iris", "violet", "花", "玫瑰"]
    text = f"{salt}: "
    i = 0
    while len(model.llama.tokenize(text.encode(), add_bos=False, special=False)) < n_tokens:
        text += " ".join(words[(i + k) % len(words)] for k in range(20)) + ". "
        i += 7
    return text


class NoOp(BaseCallbackHandler):
    """A callback handler that does nothing: measures the callback machinery only."""

    def on_llm_new_token(self, token: str, **kwargs: Any) -> None:
        pass


def case_decode(gguf: Path, repeats: int, n_new: int = 256) -> Comparison:
    comp = Comparison("1", f"GGUF decode while streaming {n_new} tokens (tokens/s)")
    llm = LocalGGMLLLM(model_path=str(gguf), temperature=0, max_tokens=n_new, prompt_format="raw")
    model = _llama_of(llm)
    llama = model.llama
    n_ours = (llm.generate([DECODE_PROMPT]).generations[0][0].generation_info or {})["completion_tokens"]
    raw = llama.create_completion(DECODE_PROMPT, max_tokens=n_new, temperature=0)
    n_raw = raw["usage"]["completion_tokens"]
    comp.notes.append(f"tokens generated per run: ours {n_ours}, raw {n_raw}")
    ttft: dict[str, list[float]] = {"ours": [], "raw create_completion": [], "raw generate loop": []}

    def ours() -> float:
        start = time.perf_counter()
        first = None
        for chunk in llm.stream(DECODE_PROMPT):
            if first is None and chunk:
                first = time.perf_counter()
        end = time.perf_counter()
        ttft["ours"].append((first or end) - start)
        return n_ours / (end - start)

    def raw_cc() -> float:
        start = time.perf_counter()
        first = None
        for chunk in llama.create_completion(DECODE_PROMPT, max_tokens=n_new, temperature=0, stream=True):
            if first is None and chunk["choices"][0]["text"]:
                first = time.perf_counter()
        end = time.perf_counter()
        ttft["raw create_completion"].append((first or end) - start)
        return n_raw / (end - start)

    eos = llama.token_eos()

    def raw_loop() -> float:
        start = time.perf_counter()
        tokens = llama.tokenize(DECODE_PROMPT.encode(), add_bos=True, special=True)
        decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        first = None
        n = 0
        parts = []
        for tok in llama.generate(tokens, temp=0, top_k=40, top_p=0.95, min_p=0.05):
            if tok == eos:
                break
            n += 1
            text = decoder.decode(llama.detokenize([tok]))
            if text:
                parts.append(text)
                if first is None:
                    first = time.perf_counter()
            if n >= n_new:
                break
        end = time.perf_counter()
        ttft["raw generate loop"].append((first or end) - start)
        return n / (end - start)

    stats = interleave(
        {"ours": ours, "raw create_completion": raw_cc, "raw generate loop": raw_loop}, repeats=repeats, unit="tok/s"
    )
    comp.sides = list(stats.values())
    for name, values in ttft.items():
        stats[name].extra["ttft_median_ms"] = statistics.median(values[-repeats:]) * 1000
    med = {k: v.median for k, v in stats.items()}
    comp.goals.append(
        Goal("ours / raw create_completion(stream=True)", med["ours"] / med["raw create_completion"], 1.00)
    )
    comp.goals.append(Goal("ours / raw generate() loop", med["ours"] / med["raw generate loop"], 0.97))
    t_ours = statistics.median(ttft["ours"][-repeats:])
    for raw_name in ("raw generate loop", "raw create_completion"):
        t_raw = statistics.median(ttft[raw_name][-repeats:])
        comp.goals.append(
            Goal(
                f"TTFT ours - {raw_name}, within max(3 ms, 3%)",
                (t_ours - t_raw) * 1000,
                max(3.0, 0.03 * t_raw * 1000),
                higher_is_better=False,
                note=f"ours {t_ours * 1000:.2f} ms, raw {t_raw * 1000:.2f} ms",
                unit=" ms",
            )
        )
    return comp


def case_prefill(gguf: Path, repeats: int, n_prompt: int = 1000) -> Comparison:
    from langchain_community.llms import LlamaCpp
    from llama_cpp import Llama

    comp = Comparison("2", f"GGUF prefill of a ~{n_prompt}-token prompt, default settings (seconds to first token)")
    ours_llm = LocalGGMLLLM(model_path=str(gguf), max_tokens=1, temperature=0, prompt_format="raw")
    model = _llama_of(ours_llm)
    prompts = [long_prompt(model, n_prompt, salt) for salt in range(repeats + 1)]
    n_tok = len(model.llama.tokenize(prompts[0].encode(), add_bos=False, special=False))
    raw = Llama(model_path=str(gguf), n_ctx=2048, verbose=False)
    comp.notes.append(f"prompt tokens: {n_tok}; ours: n_ctx={model.n_ctx}, n_batch={ours_llm.n_batch}")
    comp.notes.append(
        f"raw llama-cpp-python: defaults except n_ctx=2048 (its default 512 cannot hold the prompt); n_batch={raw.n_batch}"
    )
    try:
        LlamaCpp(model_path=str(gguf), max_tokens=1, verbose=False).invoke(prompts[0])
        comp.notes.append("langchain_community LlamaCpp with its defaults accepted the prompt")
    except Exception as e:
        comp.notes.append(
            f"langchain_community LlamaCpp with its defaults (n_ctx=512) FAILED: {type(e).__name__}: {str(e)[:120]}"
        )
    peer = LlamaCpp(model_path=str(gguf), max_tokens=1, n_ctx=2048, temperature=0, verbose=False)
    comp.notes.append(f"LlamaCpp then run with n_ctx=2048 and its default n_batch={peer.n_batch}")
    counter = {"i": 0}

    def next_prompt() -> str:
        counter["i"] += 1
        return prompts[counter["i"] % len(prompts)]

    def ours() -> float:
        return timed(lambda: ours_llm.invoke(next_prompt()))[0]

    def raw_side() -> float:
        return timed(lambda: raw.create_completion(next_prompt(), max_tokens=1, temperature=0))[0]

    def peer_side() -> float:
        return timed(lambda: peer.invoke(next_prompt()))[0]

    stats = interleave(
        {"ours": ours, "raw llama-cpp-python": raw_side, "LlamaCpp (n_ctx=2048)": peer_side}, repeats=repeats
    )
    comp.sides = list(stats.values())
    med = {k: v.median for k, v in stats.items()}
    comp.goals.append(Goal("speed ours / raw defaults", med["raw llama-cpp-python"] / med["ours"], 0.95))
    comp.goals.append(Goal("speed ours / LlamaCpp defaults", med["LlamaCpp (n_ctx=2048)"] / med["ours"], 2.0))
    return comp


class HandWrittenLLM(LLM):
    """The tutorial's pattern: construct ``Llama`` inside ``_call`` (reloads every call)."""

    model_path: str

    @property
    def _llm_type(self) -> str:
        return "hand-written"

    def _call(self, prompt: str, stop: list[str] | None = None, run_manager: Any = None, **kwargs: Any) -> str:
        from llama_cpp import Llama

        llm = Llama(model_path=self.model_path, verbose=False)
        return str(llm(prompt, max_tokens=8)["choices"][0]["text"])


def case_loading(gguf: Path, repeats: int) -> Comparison:
    comp = Comparison("3", "Loading: first load, a second instance, 100 calls, vs reloading per call")
    clear_model_cache()
    loads0 = model_cache_info().loads
    first, _ = timed(lambda: LocalGGMLLLM(model_path=str(gguf), max_tokens=1, temperature=0).invoke("hi"))
    seconds = [
        timed(lambda: LocalGGMLLLM(model_path=str(gguf), max_tokens=1, temperature=0).invoke("hi"))[0]
        for _ in range(repeats)
    ]
    second = statistics.median(seconds)
    comp.sides.append(Stats("first instance: load + first call", [first]))
    comp.sides.append(Stats("second instance + first call", seconds))
    comp.goals.append(Goal("second / first load", second / first, 0.01, higher_is_better=False))
    llm = LocalGGMLLLM(model_path=str(gguf), max_tokens=8, temperature=0, prompt_format="raw")
    before = model_cache_info().loads
    hundred, _ = timed(lambda: [llm.invoke("Once upon a time") for _ in range(100)])
    loads = model_cache_info().loads - before
    comp.notes.append(f"loads over the whole case: {model_cache_info().loads - loads0}; during 100 calls: {loads}")
    comp.goals.append(Goal("extra loads during 100 calls", float(loads), 0.0, higher_is_better=False, unit=""))
    hand = HandWrittenLLM(model_path=str(gguf))
    n_hand = max(3, repeats)
    hand_time, _ = timed(lambda: [hand.invoke("Once upon a time") for _ in range(n_hand)])
    ours_rate = 100 / hundred
    hand_rate = n_hand / hand_time
    comp.sides.append(Stats("ours calls/s (8 tokens)", [ours_rate], unit="calls/s"))
    comp.sides.append(Stats("hand-written Llama-in-_call calls/s", [hand_rate], unit="calls/s"))
    comp.notes.append(f"calls/s: ours {ours_rate:.1f}, hand-written {hand_rate:.2f} ({ours_rate / hand_rate:.0f}x)")
    return comp


def case_multiturn(gguf: Path, repeats: int, n_history: int = 1500) -> Comparison:
    comp = Comparison("4", f"Multi-turn: a {n_history}-token history, then one more turn (time to first token)")
    llm = LocalGGMLLLM(model_path=str(gguf), max_tokens=16, temperature=0, prompt_format="raw")
    other = LocalGGMLLLM(model_path=str(gguf), max_tokens=16, temperature=0.5, seed=1, prompt_format="raw")
    # prefix_cache="longest" reuses every matching cell (llama-cpp-python's way): what the
    # default "exact" reuse (aligned prefill chunks only, deterministic answers) costs.
    longest = LocalGGMLLLM(
        model_path=str(gguf), max_tokens=16, temperature=0, prompt_format="raw", prefix_cache="longest"
    )
    model = _llama_of(llm)
    firsts, seconds, across, reusing_all = [], [], [], []
    for salt in range(repeats + 1):
        history = long_prompt(model, n_history, salt=1000 + salt)

        def ttft(instance: LocalGGMLLLM, prompt: str) -> float:
            start = time.perf_counter()
            for chunk in instance.stream(prompt, max_tokens=1):
                if chunk:
                    break
            return time.perf_counter() - start

        t1 = ttft(llm, history)
        answer = llm.invoke(history)
        t2 = ttft(llm, history + answer + "\nUser: and roses?\nAssistant:")
        t3 = ttft(other, history + answer + "\nUser: and tulips?\nAssistant:")
        longest.invoke(history)
        t4 = ttft(longest, history + answer + "\nUser: and roses?\nAssistant:")
        if salt:  # the first round warms up
            firsts.append(t1)
            seconds.append(t2)
            across.append(t3)
            reusing_all.append(t4)
    comp.sides = [
        Stats("first turn", firsts),
        Stats("second turn, same instance", seconds),
        Stats("second turn, another instance", across),
        Stats('second turn, prefix_cache="longest"', reusing_all),
    ]
    comp.notes.append(
        f"exact / longest prefix reuse, second-turn TTFT: {statistics.median(seconds) / statistics.median(reusing_all):.2f}x"
    )
    comp.goals.append(
        Goal("second / first TTFT", statistics.median(seconds) / statistics.median(firsts), 0.2, higher_is_better=False)
    )
    comp.goals.append(
        Goal(
            "second (other instance) / first TTFT",
            statistics.median(across) / statistics.median(firsts),
            0.2,
            higher_is_better=False,
        )
    )
    return comp


def case_callbacks_async(gguf: Path, repeats: int, n_new: int = 256) -> Comparison:
    comp = Comparison("7", "Callbacks and async")
    llm = LocalGGMLLLM(model_path=str(gguf), temperature=0, max_tokens=n_new, prompt_format="raw")
    _llama_of(llm)
    n = (llm.generate([DECODE_PROMPT]).generations[0][0].generation_info or {})["completion_tokens"]
    handler = NoOp()

    def plain() -> float:
        return n / timed(lambda: list(llm.stream(DECODE_PROMPT)))[0]

    def with_cb() -> float:
        return n / timed(lambda: list(llm.stream(DECODE_PROMPT, config={"callbacks": [handler]})))[0]

    stats = interleave({"stream": plain, "stream + no-op callback": with_cb}, repeats=repeats, unit="tok/s")
    comp.sides = list(stats.values())
    comp.goals.append(
        Goal("with / without no-op callback", stats["stream + no-op callback"].median / stats["stream"].median, 0.98)
    )

    async def lag_during_astream() -> list[float]:
        lags: list[float] = []
        done = asyncio.Event()

        async def ticker() -> None:
            while not done.is_set():
                start = time.perf_counter()
                await asyncio.sleep(0.001)
                lags.append(time.perf_counter() - start - 0.001)

        task = asyncio.create_task(ticker())
        for _ in range(3):
            async for _chunk in llm.astream(DECODE_PROMPT, max_tokens=n_new):
                pass
        done.set()
        await task
        return lags

    lags = sorted(asyncio.run(lag_during_astream()))
    p99 = lags[int(0.99 * (len(lags) - 1))] * 1000
    comp.sides.append(Stats("event-loop lag during astream (p99, ms)", [p99], unit="ms", extra={"ticks": len(lags)}))
    comp.goals.append(Goal("event-loop p99 lag", p99, 10.0, higher_is_better=False, unit=" ms"))

    async def one() -> None:
        async for _chunk in llm.astream(DECODE_PROMPT):
            pass

    async def concurrent() -> float:
        start = time.perf_counter()
        await asyncio.gather(one(), one())
        return time.perf_counter() - start

    async def sequential() -> float:
        start = time.perf_counter()
        await one()
        await one()
        return time.perf_counter() - start

    conc = interleave(
        {
            "two concurrent astreams": lambda: asyncio.run(concurrent()),
            "two astreams back to back": lambda: asyncio.run(sequential()),
        },
        repeats=repeats,
    )
    comp.sides.extend(conc.values())
    comp.goals.append(
        Goal(
            "concurrent / back-to-back time",
            conc["two concurrent astreams"].median / conc["two astreams back to back"].median,
            1.05,
            higher_is_better=False,
        )
    )
    return comp


def case_grammar_cost(gguf: Path, repeats: int, n_new: int = 256) -> Comparison:
    """Constrained decoding's cost: the same model, free text vs a JSON-schema grammar."""
    comp = Comparison("9", f"Constrained decoding cost on GGUF, {n_new} tokens (tokens/s)")
    schema = {
        "type": "object",
        "properties": {"flower": {"type": "string"}, "notes": {"type": "array", "items": {"type": "string"}}},
        "required": ["flower", "notes"],
    }
    free = LocalGGMLLLM(model_path=str(gguf), temperature=0, max_tokens=n_new, prompt_format="raw")
    constrained = LocalGGMLLLM(
        model_path=str(gguf), temperature=0, max_tokens=n_new, prompt_format="raw", json_schema=schema
    )
    _llama_of(free)

    def rate(llm: LocalGGMLLLM) -> float:
        seconds, result = timed(lambda: llm.generate([DECODE_PROMPT]))
        return (result.generations[0][0].generation_info or {})["completion_tokens"] / seconds

    stats = interleave(
        {"unconstrained": lambda: rate(free), "JSON-schema grammar": lambda: rate(constrained)},
        repeats=repeats,
        unit="tok/s",
    )
    comp.sides = list(stats.values())
    ratio = stats["JSON-schema grammar"].median / stats["unconstrained"].median
    comp.notes.append(f"constrained / unconstrained tokens/s: {ratio:.3f} (report only)")
    return comp
