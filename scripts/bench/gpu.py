"""Comparison 8: comparisons 5 and 6 (HF streaming and batching) on a CUDA GPU in bfloat16.

Builds a random-initialised ~0.43B-parameter Llama on the device (hidden 1024, 24 layers,
16 heads, 4 KV heads, intermediate 4096, vocab 32000) with a 32k byte-level tokenizer
(``models.build_tokenizer_32k``), loads it once, and runs every side on that one model:
raw ``generate`` (default dynamic cache; static cache; with a ``TextIteratorStreamer``),
``HFLocalChatModel`` invoke / stream / batch, and langchain-huggingface's
``ChatHuggingFace`` (when installed). Steps run in priority order; a step that would not
fit in ``--budget-s`` is skipped and says so. Results go to ``--out``/gpu.json after every
step, with tokens/s and the fraction of the measured memory bandwidth.

    python -m scripts.bench.gpu --tokenizer .bench-models/tok32k --out /tmp/gpu   # from the repo root
    python -m scripts.bench.gpu --device cpu --small      # smoke test of the script itself
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from scripts.bench.harness import Comparison, Goal, Stats, interleave, timed
from scripts.bench.hf_cases import (
    STREAM_PROMPT,
    batch_prompts,
    count_equal,
    encode,
    ours_stream,
    peer_chat,
    raw_padded_texts,
    raw_sequential_texts,
    raw_stream,
)

HERE = Path(__file__).resolve().parent
BATCH_NEW = 64


class Run:
    """Steps with a time budget; results saved after each step."""

    def __init__(self, out: Path, budget_s: float, steps: str) -> None:
        self.out = out
        self.wanted = set(steps.split(",")) if steps else None
        self.deadline = time.perf_counter() + budget_s
        self.data: dict[str, Any] = {"steps": {}}
        out.mkdir(parents=True, exist_ok=True)

    def save(self) -> None:
        (self.out / "gpu.json").write_text(json.dumps(self.data, indent=1, default=str))

    def step(self, name: str, fn: Callable[[], Any], estimate_s: float = 0.0, key: str = "") -> Any:
        left = self.deadline - time.perf_counter()
        print(f"-- {name} ({left:.0f} s of budget left)", flush=True)
        start = time.perf_counter()
        if key and self.wanted is not None and key not in self.wanted:
            value: Any = {"skipped": "not selected (--steps)"}
        elif estimate_s > left:
            value = {"skipped": f"time budget: needs about {estimate_s:.0f} s, {left:.0f} s left"}
        else:
            try:
                value = fn()
            except Exception as e:
                value = {"error": f"{type(e).__name__}: {e}"}
        wall = time.perf_counter() - start
        self.data["steps"][name] = {"value": value, "wall_s": round(wall, 2)}
        print(f"   {json.dumps(value, default=str)[:400]} ({wall:.1f} s)", flush=True)
        self.save()
        return value


def ok(value: Any) -> bool:
    return isinstance(value, dict) and "error" not in value and "skipped" not in value


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=Path("bench-results/gpu"))
    parser.add_argument("--tokenizer", type=Path, default=HERE.parents[1] / ".bench-models" / "tok32k")
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--small", action="store_true", help="a tiny model (smoke test)")
    parser.add_argument("--new", type=int, default=128, help="new tokens per batch-1 run")
    parser.add_argument("--long", type=int, default=1024, help="new tokens for the per-token growth check")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--budget-s", type=float, default=420.0, help="skip steps that would not fit")
    parser.add_argument(
        "--steps",
        default="",
        help="comma-separated optional steps to run (default all): batch,rawequal,static,streamer,growth,peer,dynamic",
    )
    args = parser.parse_args()

    import torch
    import transformers
    from langchain_core.messages import HumanMessage
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    from langchain_localllm import HFLocalChatModel
    from langchain_localllm._backends.transformers.device import call_on_device_thread

    run = Run(args.out, args.budget_s, args.steps)
    dev = args.device
    cuda = dev == "cuda"
    run.data["versions"] = {"torch": torch.__version__, "transformers": transformers.__version__}
    run.data["gpu"] = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "none"
    run.data["args"] = {k: str(v) for k, v in vars(args).items()}

    def sync() -> None:
        if cuda:
            torch.cuda.synchronize()

    def bandwidth() -> dict[str, float]:
        n = (1 << 30) if cuda else (1 << 26)
        x = torch.empty(n, dtype=torch.uint8, device=dev).random_()
        y = torch.empty_like(x)
        y.copy_(x)
        sync()
        start = time.perf_counter()
        for _ in range(10):
            y.copy_(x)
        sync()
        return {"copy_GBps_read_plus_write": 2 * n * 10 / (time.perf_counter() - start) / 1e9}

    bw = run.step("bandwidth", bandwidth)
    tok = AutoTokenizer.from_pretrained(args.tokenizer)
    dtype = torch.bfloat16 if cuda else torch.float32
    size = (
        {"hidden_size": 128, "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2}
        | {"intermediate_size": 256}
        if args.small
        else {"hidden_size": 1024, "num_hidden_layers": 24, "num_attention_heads": 16, "num_key_value_heads": 4}
        | {"intermediate_size": 4096}
    )
    config = LlamaConfig(
        vocab_size=len(tok),
        max_position_embeddings=4096,
        tie_word_embeddings=False,
        bos_token_id=None,
        eos_token_id=[tok.convert_tokens_to_ids("<|im_end|>"), tok.convert_tokens_to_ids("<|endoftext|>")],
        pad_token_id=tok.convert_tokens_to_ids("<|endoftext|>"),
        **size,
    )
    torch.manual_seed(0)
    with torch.device(dev):
        model = LlamaForCausalLM(config).to(dtype).eval()
    params = sum(p.numel() for p in model.parameters())
    run.data["model"] = {"params": params, "dtype": str(dtype), **size}
    bytes_per_token = params * model.dtype.itemsize
    enc = encode(tok, [STREAM_PROMPT], dev)
    prompt_len = int(enc["input_ids"].shape[1])
    messages = [HumanMessage(STREAM_PROMPT)]

    def frac(tok_s: float) -> float:
        return bytes_per_token * tok_s / (bw["copy_GBps_read_plus_write"] * 1e9) if ok(bw) else 0.0

    def summary(stats: Stats) -> dict[str, Any]:
        extra = {"bandwidth_fraction_median": frac(stats.median)} if stats.unit == "tok/s" else {}
        return {**stats.summary(), **extra, "samples": stats.samples}

    def raw_rate(n_new: int, **kw: Any) -> float:
        sync()
        start = time.perf_counter()
        ids = model.generate(**enc, max_new_tokens=n_new, do_sample=False, **kw)
        sync()
        return int(ids.shape[1] - prompt_len) / (time.perf_counter() - start)

    # The model is shared by every side; ours compiles its decode step (with CUDA graphs on
    # the CUDA worker thread) on its first call.
    chat = HFLocalChatModel.from_model_and_tokenizer(model, tok, max_tokens=args.new, temperature=0)

    def ours_invoke_rate(**kw: Any) -> float:
        seconds, msg = timed(lambda: chat.invoke(messages, **kw))
        return (msg.usage_metadata or {}).get("output_tokens", 0) / seconds

    def ours_stream_rate(**kw: Any) -> float:
        seconds, _, n = ours_stream(chat, STREAM_PROMPT, **kw)
        return n / seconds

    # 1. the baseline of the batch-1 goal
    # 1. batch 1: the baseline of the goal and ours, interleaved round by round
    run.step("ours: first call (compile)", lambda: {"seconds": timed(lambda: chat.invoke(messages))[0]})

    def batch_one() -> dict[str, Any]:
        stats = interleave(
            {
                "raw default": lambda: raw_rate(args.new),
                "ours invoke": ours_invoke_rate,
                "ours stream": ours_stream_rate,
            },
            repeats=args.repeats,
            unit="tok/s",
        )
        return {k: summary(v) for k, v in stats.items()}

    core = run.step("batch 1: raw default generate, ours invoke, ours stream (interleaved)", batch_one)
    raw_default = core["raw default"] if ok(core) else core
    ours = core

    # 2. batch of 16 (comparison 6 on the GPU)
    prompts = batch_prompts(16)
    inputs = [[HumanMessage(p)] for p in prompts]
    singles = [encode(tok, [p], dev) for p in prompts]
    padded = encode(tok, prompts, dev)

    def sequential_texts() -> list[str]:
        return raw_sequential_texts(model, tok, singles, BATCH_NEW)

    def padded_texts() -> list[str]:
        return raw_padded_texts(model, tok, padded, BATCH_NEW)

    def batch_case() -> dict[str, Any]:
        first, _ = timed(lambda: chat.batch(inputs, max_tokens=BATCH_NEW))  # compiles for this shape
        stats = interleave(
            {
                "ours batch": lambda: timed(lambda: chat.batch(inputs, max_tokens=BATCH_NEW))[0],
                "raw one left-padded generate": lambda: timed(
                    lambda: (model.generate(**padded, max_new_tokens=BATCH_NEW, do_sample=False), sync())
                )[0],
            },
            repeats=args.repeats,
        )
        seq_n = 2 if cuda else 1
        texts: list[list[str]] = []
        seq = interleave(
            {"raw sequential generate": lambda: timed(lambda: texts.append(sequential_texts()))[0]},
            repeats=seq_n,
            warmup=0,
        )
        ours_texts = [str(m.content) for m in chat.batch(inputs, max_tokens=BATCH_NEW)]
        return {
            "first_call_compile_s": first,
            **{k: summary(v) for k, v in {**stats, **seq}.items()},
            "equal_to_sequential": count_equal(ours_texts, texts[0]),
            "raw padded equal to sequential": count_equal(padded_texts(), texts[0]),
            "ours equal to raw padded": count_equal(ours_texts, padded_texts()),
        }

    batch = run.step("batch of 16 mixed prompts, 64 new tokens", batch_case, estimate_s=180 if cuda else 0, key="batch")

    def raw_equality() -> dict[str, Any]:
        return {"raw padded equal to sequential": count_equal(padded_texts(), sequential_texts())}

    run.step(
        "batch outputs: raw padded generate vs raw sequential",
        raw_equality,
        estimate_s=30 if cuda else 0,
        key="rawequal",
    )

    # 3. the raw static-cache path, on the same worker thread (CUDA graphs are bound to it)
    def raw_static() -> dict[str, Any]:
        def rate() -> float:
            return call_on_device_thread(lambda _: raw_rate(args.new, cache_implementation="static"))

        return summary(interleave({"raw static": rate}, repeats=args.repeats, unit="tok/s")["raw static"])

    raw_stat = run.step(
        "raw generate, static cache (on the CUDA worker thread)", raw_static, estimate_s=45, key="static"
    )

    # 4. streaming against raw generate + TextIteratorStreamer
    def streamer() -> dict[str, Any]:
        def rate() -> float:
            seconds, _, n = raw_stream(model, tok, enc, args.new)
            return n / seconds

        return summary(interleave({"raw streamer": rate}, repeats=3, unit="tok/s")["raw streamer"])

    raw_str = run.step(
        "raw generate + TextIteratorStreamer (thread)", streamer, estimate_s=40 if cuda else 0, key="streamer"
    )

    # 5. per-token time at --long vs --new new tokens (ours; no quadratic decoding)
    def growth() -> dict[str, Any]:
        def per_token(n: int) -> float:
            seconds, _, got = ours_stream(chat, STREAM_PROMPT, max_tokens=n)
            return seconds / got * 1000

        per_token(args.long)  # compile for the longer cache
        stats = interleave(
            {"short": lambda: per_token(args.new), "long": lambda: per_token(args.long)}, repeats=3, unit="ms"
        )
        return {k: summary(v) for k, v in stats.items()} | {"ratio": stats["long"].median / stats["short"].median}

    grow = run.step(
        f"ours per-token ms, {args.long} vs {args.new} new tokens", growth, estimate_s=60 if cuda else 0, key="growth"
    )

    # 6. the peer, when installed
    def peer() -> dict[str, Any]:
        chf = peer_chat(model, tok, args.new)
        stream_stats = interleave(
            {"ChatHuggingFace.stream": lambda: _peer_rate(chf, messages)}, repeats=2, unit="tok/s"
        )
        chf_batch = peer_chat(model, tok, BATCH_NEW)
        batch_stats = interleave(
            {"ChatHuggingFace.batch": lambda: timed(lambda: chf_batch.batch(inputs))[0]}, repeats=1
        )
        return {k: summary(v) for k, v in {**stream_stats, **batch_stats}.items()}

    peer_res = run.step("ChatHuggingFace stream and batch", peer, estimate_s=60 if cuda else 0, key="peer")
    dynamic = HFLocalChatModel.from_model_and_tokenizer(
        model, tok, max_tokens=args.new, temperature=0, static_cache=False
    )

    def dynamic_rate() -> float:
        seconds, msg = timed(lambda: dynamic.invoke(messages))
        return (msg.usage_metadata or {}).get("output_tokens", 0) / seconds

    run.step(
        "ours invoke, static_cache=False",
        lambda: summary(
            interleave({"ours static_cache=False": dynamic_rate}, repeats=3, unit="tok/s")["ours static_cache=False"]
        ),
        estimate_s=25 if cuda else 0,
        key="dynamic",
    )

    comp = summarize(
        run,
        {
            "raw_default": raw_default,
            "ours": ours,
            "batch": batch,
            "raw_stat": raw_stat,
            "raw_str": raw_str,
            "grow": grow,
            "peer_res": peer_res,
            "bw": bw,
        },
    )
    run.data["comparison"] = comp.to_json()
    run.save()
    for goal in comp.goals:
        print(goal.row())
    for note in comp.notes:
        print("-", note)
    return 0


def _peer_rate(chf: Any, messages: list[Any]) -> float:
    """ChatHuggingFace.stream tokens/s (tokens counted by re-tokenizing its text)."""
    start = time.perf_counter()
    text = "".join(str(c.content) for c in chf.stream(messages))
    seconds = time.perf_counter() - start
    return max(1, len(chf.tokenizer(text, add_special_tokens=False)["input_ids"])) / seconds


def summarize(run: Run, results: dict[str, Any]) -> Comparison:
    """The goals of comparison 8 (and 5-6 on the GPU) from the step results."""
    raw_default, ours, batch = results["raw_default"], results["ours"], results["batch"]
    raw_stat, raw_str, grow = results["raw_stat"], results["raw_str"], results["grow"]
    peer_res, bw = results["peer_res"], results["bw"]
    comp = Comparison(
        "8", f"GPU: {run.data['gpu']}, {run.data['model']['dtype']}, {run.data['model']['params']:,} params"
    )
    if ok(raw_default) and ok(ours):
        raw_med = raw_default["median"]
        inv, stream = ours["ours invoke"]["median"], ours["ours stream"]["median"]
        comp.goals.append(Goal("ours stream / raw default generate (batch 1)", stream / raw_med, 5.0))
        comp.goals.append(Goal("ours invoke / raw default generate (batch 1)", inv / raw_med, 5.0))
        comp.goals.append(Goal("ours stream / ours invoke (streaming cost <= 5%)", stream / inv, 0.95))
        if ok(raw_stat):
            comp.notes.append(f"ours stream / raw static-cache generate: {stream / raw_stat['median']:.3f}x (report)")
        if ok(raw_str):
            comp.goals.append(
                Goal("ours stream / raw generate + TextIteratorStreamer", stream / raw_str["median"], 0.95)
            )
        if ok(peer_res):
            comp.notes.append(
                f"ours stream / ChatHuggingFace.stream: {stream / peer_res['ChatHuggingFace.stream']['median']:.2f}x "
                "(report)"
            )
    if ok(grow):
        comp.goals.append(Goal("ours per-token time, long / short", grow["ratio"], 1.05, higher_is_better=False))
    if ok(batch):
        ours_s = batch["ours batch"]["median"]
        comp.goals.append(
            Goal("batch: ours / raw sequential", batch["raw sequential generate"]["median"] / ours_s, 4.0)
        )
        comp.goals.append(
            Goal("batch: ours / one raw padded generate", batch["raw one left-padded generate"]["median"] / ours_s, 0.9)
        )
        if ok(peer_res):
            comp.goals.append(
                Goal("batch: ours / ChatHuggingFace.batch", peer_res["ChatHuggingFace.batch"]["median"] / ours_s, 3.0)
            )
        comp.notes.append(f"batch outputs equal to sequential greedy: {batch['equal_to_sequential']}/16")
    comp.notes.append(f"device-to-device copy: {bw}")
    for name, step in run.data["steps"].items():
        value = step["value"]
        found = [value] if isinstance(value, dict) and "samples" in value else []
        if isinstance(value, dict):
            found += [v for v in value.values() if isinstance(v, dict) and "samples" in v]
        for stats in found:
            label = name if stats is value else f"{name}: {stats['name']}"
            comp.sides.append(Stats(label, stats["samples"], unit=stats["unit"]))
    return comp


def case_gpu(repeats: int, *, quick: bool) -> Comparison:
    """Comparison 8 for run.py: skipped, and says so, where torch sees no CUDA device."""
    import torch

    if not torch.cuda.is_available():
        comp = Comparison("8", "GPU (CUDA, bfloat16)")
        comp.notes.append("skipped: no CUDA device on this machine (run python -m scripts.bench.gpu on a GPU machine)")
        return comp
    return run(repeats, quick=quick)


def run(repeats: int, *, quick: bool) -> Comparison:
    """Entry for run.py on a CUDA machine: reads the comparison that main() wrote."""
    out = Path("bench-results/gpu")
    sys.argv = [sys.argv[0], "--out", str(out), "--repeats", str(repeats), "--new", str(64 if quick else 128)]
    main()
    data = json.loads((out / "gpu.json").read_text())["comparison"]
    comp = Comparison(data["number"], data["title"])
    comp.sides = [Stats(s["name"], [s["median"]], unit=s["unit"]) for s in data["sides"]]
    comp.goals = [
        Goal(g["label"], g["ratio"], g["target"], g["higher_is_better"], g["note"], g["unit"]) for g in data["goals"]
    ]
    comp.notes = data["notes"]
    return comp


if __name__ == "__main__":
    raise SystemExit(main())
