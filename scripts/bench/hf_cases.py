"""HF comparisons (5, 6, 9b) on CPU: HFLocalChatModel vs raw transformers and langchain-huggingface.

Also the raw-transformers helpers that comparison 8 (gpu.py) reuses; this module imports
nothing from gpu.py.
"""

from __future__ import annotations

import statistics
import threading
import time
from pathlib import Path
from typing import Any

from langchain_core.messages import HumanMessage

from langchain_localllm.chat_models import HFLocalChatModel
from scripts.bench.harness import Comparison, Goal, Stats, interleave, timed

STREAM_PROMPT = "Tell me a long story about a rose garden."
WORDS = ["rose", "tulip", "lily", "daisy", "orchid", "peony", "iris", "violet", "花", "玫瑰", "garden", "vase"]


def load_raw(hf: Path, device: str = "cpu", dtype: str = "float32") -> tuple[Any, Any]:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(hf)
    model = AutoModelForCausalLM.from_pretrained(hf, dtype=getattr(torch, dtype)).to(device).eval()
    return model, tok


def encode(tok: Any, texts: list[str], device: str = "cpu") -> Any:
    convs = [[{"role": "user", "content": t}] for t in texts]
    tok.padding_side = "left"
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    enc = tok.apply_chat_template(
        convs if len(convs) > 1 else convs[0],
        add_generation_prompt=True,
        tokenize=True,
        return_dict=True,
        return_tensors="pt",
        padding=len(convs) > 1,
    )
    return {k: v.to(device) for k, v in enc.items()}


def raw_stream(model: Any, tok: Any, enc: Any, n_new: int, **gen: Any) -> tuple[float, float, int]:
    """``generate`` + ``TextIteratorStreamer`` in a thread: (seconds, ttft, tokens)."""
    from transformers import TextIteratorStreamer

    streamer = TextIteratorStreamer(tok, skip_prompt=True, skip_special_tokens=True)
    out: dict[str, Any] = {}

    def run() -> None:
        out["ids"] = model.generate(**enc, max_new_tokens=n_new, do_sample=False, streamer=streamer, **gen)

    start = time.perf_counter()
    worker = threading.Thread(target=run)
    worker.start()
    first = None
    for text in streamer:
        if first is None and text:
            first = time.perf_counter()
    worker.join()
    end = time.perf_counter()
    n = int(out["ids"].shape[1] - enc["input_ids"].shape[1])
    return end - start, (first or end) - start, n


def ours_stream(chat: HFLocalChatModel, prompt: str, **kwargs: Any) -> tuple[float, float, int]:
    start = time.perf_counter()
    first = None
    n = 0
    for chunk in chat.stream([HumanMessage(prompt)], **kwargs):
        if first is None and chunk.content:
            first = time.perf_counter()
        if chunk.usage_metadata:
            n = chunk.usage_metadata["output_tokens"]
    end = time.perf_counter()
    return end - start, (first or end) - start, n


def peer_chat(model: Any, tok: Any, n_new: int) -> Any:
    from langchain_huggingface import ChatHuggingFace, HuggingFacePipeline
    from transformers import pipeline

    pipe = pipeline("text-generation", model=model, tokenizer=tok, max_new_tokens=n_new, do_sample=False)
    llm = HuggingFacePipeline(pipeline=pipe, model_id="bench")
    return ChatHuggingFace(llm=llm, tokenizer=tok, model_id="bench")


def case_stream(hf: Path, repeats: int, *, quick: bool) -> Comparison:
    n_new = 128 if quick else 256
    comp = Comparison("5", f"HF streaming {n_new} tokens on CPU (tokens/s)")
    model, tok = load_raw(hf)
    chat = HFLocalChatModel.from_model_and_tokenizer(model, tok, max_tokens=n_new, temperature=0)
    enc = encode(tok, [STREAM_PROMPT])
    peer = peer_chat(model, tok, n_new)
    counts: dict[str, int] = {}

    def ours() -> float:
        seconds, _, n = ours_stream(chat, STREAM_PROMPT)
        counts["ours"] = n
        return n / seconds

    def raw() -> float:
        seconds, _, n = raw_stream(model, tok, enc, n_new)
        counts["raw"] = n
        return n / seconds

    def peer_side() -> float:
        seconds, _ = timed(lambda: "".join(str(c.content) for c in peer.stream([HumanMessage(STREAM_PROMPT)])))
        return counts.get("raw", n_new) / seconds

    stats = interleave(
        {"ours": ours, "raw generate + TextIteratorStreamer": raw, "ChatHuggingFace.stream": peer_side},
        repeats=repeats,
        unit="tok/s",
    )
    comp.sides = list(stats.values())
    med = {k: v.median for k, v in stats.items()}
    comp.notes.append(f"tokens per run: {counts}")
    comp.goals.append(
        Goal("ours / raw generate + streamer", med["ours"] / med["raw generate + TextIteratorStreamer"], 0.95)
    )
    comp.notes.append(
        f"ours / ChatHuggingFace.stream: {med['ours'] / med['ChatHuggingFace.stream']:.2f}x (report only)"
    )

    long_n, short_n = (512 if quick else 1024), 128
    per_token: dict[str, list[float]] = {"ours 128": [], "ours long": [], "raw 128": [], "raw long": []}
    for _ in range(max(3, repeats // 2)):
        for label, n in (("128", short_n), ("long", long_n)):
            seconds, _, got = ours_stream(chat, STREAM_PROMPT, max_tokens=n)
            per_token[f"ours {label}"].append(seconds / max(got, 1))
            seconds, _, got = raw_stream(model, tok, enc, n)
            per_token[f"raw {label}"].append(seconds / max(got, 1))
    ours_ratio = statistics.median(per_token["ours long"]) / statistics.median(per_token["ours 128"])
    raw_ratio = statistics.median(per_token["raw long"]) / statistics.median(per_token["raw 128"])
    at_long = statistics.median(per_token["ours long"]) / statistics.median(per_token["raw long"])
    for name, values in per_token.items():
        comp.sides.append(Stats(f"per-token time, {name}", [v * 1000 for v in values], unit="ms"))
    comp.goals.append(
        Goal(
            f"ours per-token time at {long_n} / at 128 new tokens",
            ours_ratio,
            1.05,
            higher_is_better=False,
            note=f"raw generate's own ratio: {raw_ratio:.3f} (attention over a longer context)",
        )
    )
    comp.goals.append(
        Goal(
            f"ours / raw per-token time at {long_n} new tokens",
            at_long,
            1.0,
            higher_is_better=False,
            note="no growth beyond the backend's",
        )
    )
    return comp


def raw_sequential_texts(model: Any, tok: Any, singles: list[Any], n_new: int) -> list[str]:
    """Greedy answers of raw ``generate``, one prompt at a time."""
    out = []
    for enc in singles:
        ids = model.generate(**enc, max_new_tokens=n_new, do_sample=False)
        out.append(tok.decode(ids[0, enc["input_ids"].shape[1] :], skip_special_tokens=True))
    return out


def raw_padded_texts(model: Any, tok: Any, padded: Any, n_new: int) -> list[str]:
    """Greedy answers of one raw left-padded ``generate``."""
    ids = model.generate(**padded, max_new_tokens=n_new, do_sample=False)
    return list(tok.batch_decode(ids[:, padded["input_ids"].shape[1] :], skip_special_tokens=True))


def count_equal(a: list[str], b: list[str]) -> int:
    """How many answers are equal (a raw decode renders a character cut off by the token
    budget as U+FFFD; ours drops it, so a trailing U+FFFD is ignored)."""
    return sum(x.rstrip("\ufffd").strip() == y.rstrip("\ufffd").strip() for x, y in zip(a, b, strict=True))


def batch_prompts(n: int = 16) -> list[str]:
    return [" ".join(WORDS[(i + k) % len(WORDS)] for k in range(3 + 5 * i)) for i in range(n)]


def case_batch(hf: Path, repeats: int, *, quick: bool, device: str = "cpu", dtype: str = "float32") -> Comparison:
    n_new = 64  # the goal's workload, also with --quick: fewer tokens shift the ratios toward prefill
    del quick
    prompts = batch_prompts(16)
    comp = Comparison("6", f"HF batch of 16 prompts of mixed length, {n_new} new tokens ({device}, {dtype}; seconds)")
    model, tok = load_raw(hf, device, dtype)
    chat = HFLocalChatModel.from_model_and_tokenizer(model, tok, max_tokens=n_new, temperature=0, batch_size=16)
    inputs = [[HumanMessage(p)] for p in prompts]
    singles = [encode(tok, [p], device) for p in prompts]
    padded = encode(tok, prompts, device)
    peer = peer_chat(model, tok, n_new)

    last: dict[str, list[str]] = {}  # the answers of each side's last timed run, compared below

    def keep(side: str, texts: list[str]) -> None:
        last[side] = texts

    stats = interleave(
        {
            "ours batch": lambda: timed(lambda: keep("ours", [str(m.content) for m in chat.batch(inputs)]))[0],
            "raw sequential generate": lambda: timed(
                lambda: keep("seq", raw_sequential_texts(model, tok, singles, n_new))
            )[0],
            "raw one left-padded generate": lambda: timed(
                lambda: keep("padded", raw_padded_texts(model, tok, padded, n_new))
            )[0],
            "ChatHuggingFace.batch": lambda: timed(lambda: peer.batch(inputs))[0],
        },
        repeats=repeats,
    )
    comp.sides = list(stats.values())
    med = {k: v.median for k, v in stats.items()}
    comp.goals.append(Goal("speed ours / raw sequential loop", med["raw sequential generate"] / med["ours batch"], 4.0))
    comp.goals.append(
        Goal("speed ours / one raw padded generate", med["raw one left-padded generate"] / med["ours batch"], 0.9)
    )
    comp.goals.append(Goal("speed ours / ChatHuggingFace.batch", med["ChatHuggingFace.batch"] / med["ours batch"], 3.0))
    ours_texts, seq, raw_padded = last["ours"], last["seq"], last["padded"]
    same = count_equal(ours_texts, seq)
    raw_same = count_equal(raw_padded, seq)
    ours_vs_raw_padded = count_equal(ours_texts, raw_padded)
    comp.notes.append(
        f"batched outputs equal to sequential greedy outputs: ours {same}/16, raw padded generate {raw_same}/16; "
        f"ours equal to raw padded generate: {ours_vs_raw_padded}/16 (texts compared without a trailing "
        "U+FFFD: a raw decode renders a character cut off by the token budget as U+FFFD, ours drops it)"
    )
    comp.goals.append(Goal("outputs equal to sequential greedy", same / 16, 1.0, unit=""))
    return comp


def case_grammar_cost(hf: Path, repeats: int, *, quick: bool) -> Comparison:
    """llguidance-constrained decoding's cost on transformers: free text vs a JSON schema."""
    n_new = 64 if quick else 128
    comp = Comparison("9b", f"Constrained decoding cost on HF (llguidance), {n_new} tokens (tokens/s)")
    model, tok = load_raw(hf)
    chat = HFLocalChatModel.from_model_and_tokenizer(model, tok, max_tokens=n_new, temperature=0)
    schema = {
        "type": "object",
        "properties": {"flower": {"type": "string"}, "notes": {"type": "array", "items": {"type": "string"}}},
        "required": ["flower", "notes"],
    }

    def rate(**kwargs: Any) -> float:
        seconds, msg = timed(lambda: chat.invoke([HumanMessage(STREAM_PROMPT)], **kwargs))
        return (msg.usage_metadata or {}).get("output_tokens", 0) / seconds

    stats = interleave(
        {"unconstrained": rate, "JSON-schema (llguidance)": lambda: rate(json_schema=schema)},
        repeats=repeats,
        unit="tok/s",
    )
    comp.sides = list(stats.values())
    ratio = stats["JSON-schema (llguidance)"].median / stats["unconstrained"].median
    comp.notes.append(f"constrained / unconstrained tokens/s: {ratio:.3f} (report only)")
    return comp
