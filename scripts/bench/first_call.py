"""Comparisons 10a and 10b: the first call on a GGUF file, ours (construct + first invoke) vs raw llama-cpp-python.

Each run loads the file afresh: ours is ``LocalGGMLLLM(...).invoke`` after the model cache is
cleared, raw is ``Llama(...)`` plus one ``create_completion``; both generate 8 tokens greedily
from the same raw prompt with the same ``n_ctx``, on one thread. Two files: a real GGUF (``--real-gguf`` or
``LOCALLLM_REAL_GGUF``; skipped when neither is given) and a 262,144-token vocabulary built
from the tiny fixture model (:mod:`scripts.bench.large_vocab`), where per-token work shows.
"""

from __future__ import annotations

import contextlib
import gc
import statistics
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from langchain_localllm import LocalGGMLChatModel, LocalGGMLLLM, clear_model_cache
from scripts.bench.harness import Comparison, Goal, Stats

PROMPT = "Once upon a time"
N_NEW = 8
GOAL = 1.1
THREADS = {"n_threads": 1, "n_threads_batch": 1}
"""On both sides: what is timed is loading, and on a busy machine llama.cpp's spinning thread pool
turned an 8-token call into seconds now and then (one run's median went from 0.27 s to 6.9 s)."""


@contextlib.contextmanager
def _extra_bufts(value: bool) -> Iterator[None]:
    """Raw ``Llama()`` with the package's ``use_extra_bufts`` choice (off on AMX-INT8 CPUs, where it crashes)."""
    import llama_cpp.llama_cpp as bindings

    default_params = bindings.llama_model_default_params

    def params() -> Any:
        out = default_params()
        if hasattr(out, "use_extra_bufts"):
            out.use_extra_bufts = value
        return out

    bindings.llama_model_default_params = params
    try:
        yield
    finally:
        bindings.llama_model_default_params = default_params


def _interleave_both_ways(sides: dict[str, Any], *, repeats: int) -> dict[str, Stats]:
    """``harness.interleave`` with every other round run in reverse order (one warm-up round).

    A fresh load is sensitive to what ran just before it (memory freed, pages cached); a fixed
    order would give one side the same neighbour every round.
    """
    for fn in sides.values():
        fn()
    stats = {name: Stats(name) for name in sides}
    order = list(sides.items())
    for i in range(repeats):
        for name, fn in order if i % 2 == 0 else order[::-1]:
            stats[name].samples.append(fn())
    return stats


def case_first_call(number: str, path: Path, label: str, repeats: int) -> Comparison:
    from llama_cpp import Llama

    from langchain_localllm._backends.llamacpp.load import _extra_bufts as extra_bufts_setting
    from langchain_localllm._backends.llamacpp.load import _load_patches

    comp = Comparison(
        number, f"First call on {label}: construct + first invoke ({N_NEW} new tokens, greedy), fresh load"
    )
    extra_bufts = extra_bufts_setting(None)
    clear_model_cache()
    probe = LocalGGMLLLM(model_path=str(path), max_tokens=N_NEW, temperature=0, prompt_format="raw", **THREADS)
    with probe._backend().hold() as model:
        n_ctx, n_vocab = model.n_ctx, model.info.n_vocab
    clear_model_cache()
    outputs: dict[str, str] = {}

    def ours() -> float:
        clear_model_cache()
        gc.collect()
        start = time.perf_counter()
        llm = LocalGGMLLLM(model_path=str(path), max_tokens=N_NEW, temperature=0, prompt_format="raw", **THREADS)
        outputs["ours"] = llm.invoke(PROMPT)
        elapsed = time.perf_counter() - start
        clear_model_cache()
        return elapsed

    def ours_chat() -> float:
        clear_model_cache()
        gc.collect()
        start = time.perf_counter()
        chat = LocalGGMLChatModel(model_path=str(path), max_tokens=N_NEW, temperature=0, **THREADS)
        chat.invoke(PROMPT)
        elapsed = time.perf_counter() - start
        clear_model_cache()
        return elapsed

    def raw_side(*, patched: bool) -> float:
        gc.collect()
        patches = _load_patches(extra_bufts=extra_bufts) if patched else _extra_bufts(extra_bufts)
        start = time.perf_counter()
        with patches:
            llama = Llama(model_path=str(path), n_ctx=n_ctx, verbose=False, **THREADS)
        out = llama.create_completion(PROMPT, max_tokens=N_NEW, temperature=0)
        elapsed = time.perf_counter() - start
        outputs["raw"] = out["choices"][0]["text"]
        llama.close()
        return elapsed

    sides = {
        "ours: LocalGGMLLLM + invoke": ours,
        "raw: Llama() + create_completion": lambda: raw_side(patched=False),
        "raw, chat templates not compiled": lambda: raw_side(patched=True),
        "ours: LocalGGMLChatModel + invoke (chat template)": ours_chat,
    }
    stats = _interleave_both_ways(sides, repeats=repeats)
    comp.sides = list(stats.values())
    med = {name: s.median for name, s in stats.items()}
    ours_med = med["ours: LocalGGMLLLM + invoke"]
    comp.goals.append(
        Goal("ours / raw first call", ours_med / med["raw: Llama() + create_completion"], GOAL, higher_is_better=False)
    )
    comp.notes.append(
        f"{path.name}: {n_vocab} tokens; on both sides n_ctx={n_ctx}, use_extra_bufts={extra_bufts}, one thread"
    )
    comp.notes.append(
        f"ours / raw with chat templates not compiled (llama-cpp-python compiles them at load; "
        f"the package on first use): {ours_med / med['raw, chat templates not compiled']:.3f} (report only)"
    )
    comp.notes.append(f"same text: {outputs.get('ours') == outputs.get('raw')} ({outputs.get('ours')!r})")
    return comp


def cases(real_gguf: Path | None, models_dir: Path, repeats: int) -> list[tuple[str, Any]]:
    """The first-call comparisons to run: (label, thunk) pairs."""
    from scripts.bench.large_vocab import LARGE_VOCAB, write_large_vocab_gguf

    out: list[tuple[str, Any]] = []
    if real_gguf is not None and real_gguf.is_file():
        out.append((real_gguf.name, lambda: case_first_call("10a", real_gguf, real_gguf.name, repeats)))
    else:
        print(f"(comparison 10 on a real GGUF skipped: give --real-gguf or LOCALLLM_REAL_GGUF; got {real_gguf})")

    def large() -> Comparison:
        path = write_large_vocab_gguf(models_dir / f"tiny-vocab{LARGE_VOCAB}.gguf", LARGE_VOCAB)
        return case_first_call("10b", path, f"a {LARGE_VOCAB:,}-token vocabulary", repeats)

    out.append((f"vocab{LARGE_VOCAB}", large))
    return out


def phases(path: Path, rounds: int = 5) -> dict[str, float]:
    """Median seconds of each phase over interleaved fresh loads (no goal; for before/after checks).

    ``read_gguf_info``, ``load_llama`` (ours, no call), raw ``Llama()``, our first call and raw
    ``Llama()`` + one call; one warm-up round. Works on older checkouts too (same functions).
    """
    from llama_cpp import Llama

    from langchain_localllm._backends.llamacpp.gguf import read_gguf_info
    from langchain_localllm._backends.llamacpp.load import load_llama
    from langchain_localllm._backends.llamacpp.settings import LoadSettings

    n_ctx = min(read_gguf_info(path).context_length or 4096, 4096)  # ours' default

    def first() -> None:
        LocalGGMLLLM(model_path=str(path), max_tokens=N_NEW, temperature=0, prompt_format="raw", **THREADS).invoke(
            PROMPT
        )

    def raw() -> Any:
        llama = Llama(model_path=str(path), n_ctx=n_ctx, verbose=False, **THREADS)
        llama.create_completion(PROMPT, max_tokens=N_NEW, temperature=0)
        return llama

    sides = {
        "read_gguf_info": lambda: read_gguf_info(path),
        "load_llama": lambda: load_llama(path, LoadSettings(model_path=str(path), **THREADS)),
        "raw Llama()": lambda: Llama(model_path=str(path), n_ctx=n_ctx, verbose=False, **THREADS),
        "first call": first,
        "raw Llama() + call": raw,
    }
    samples: dict[str, list[float]] = {name: [] for name in sides}
    for i in range(rounds + 1):
        for name, fn in sides.items():
            gc.collect()
            start = time.perf_counter()
            out = fn()
            elapsed = time.perf_counter() - start
            if hasattr(out, "close"):
                out.close()  # freeing is not timed, on either side
            del out
            clear_model_cache()
            if i:
                samples[name].append(elapsed)
    return {name: statistics.median(values) for name, values in samples.items()}


if __name__ == "__main__":
    import sys

    target = Path(sys.argv[1])
    result = phases(target, int(sys.argv[2]) if len(sys.argv) > 2 else 5)
    print(target.name, " ".join(f"{k}={v:.3f}s" for k, v in result.items()))
    print(f"first call / raw = {result['first call'] / result['raw Llama() + call']:.3f}")
