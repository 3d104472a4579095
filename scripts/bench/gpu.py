#!/usr/bin/env python
"""Comparison 8: HF streaming and batching on a CUDA GPU in bfloat16.

Builds a random-initialised ~0.43B-parameter Llama on the device (hidden 1024, 24 layers,
16 heads, 4 KV heads, intermediate 4096, vocab 32000) with a 32k byte-level tokenizer
(``models.build_tokenizer_32k``), then measures, at batch 1, raw ``generate`` (dynamic
cache as found; without the cuDNN attention backend; static cache; with a
``TextIteratorStreamer``) against ``HFLocalChatModel`` invoke and stream, and a batch of
16 mixed-length prompts. Results are written to ``--out``/gpu.json after every step.

    python scripts/bench/gpu.py --tokenizer .bench-models/tok32k --out /tmp/gpu
    python scripts/bench/gpu.py --device cpu --small      # smoke test of the script itself
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parents[1]))

from harness import Comparison, Goal, Stats  # noqa: E402

PROMPT = "Tell me a long story about a rose garden."


class Run:
    def __init__(self, out: Path, device: str) -> None:
        self.out = out
        self.device = device
        self.data: dict[str, Any] = {"steps": {}}
        out.mkdir(parents=True, exist_ok=True)

    def save(self) -> None:
        (self.out / "gpu.json").write_text(json.dumps(self.data, indent=1, default=str))

    def step(self, name: str, fn: Callable[[], Any]) -> Any:
        start = time.perf_counter()
        print(f"-- {name}", flush=True)
        try:
            value = fn()
        except Exception as e:
            value = {"error": f"{type(e).__name__}: {e}"}
            print(f"   FAILED {value['error'][:300]}", flush=True)
        self.data["steps"][name] = {"value": value, "wall_s": round(time.perf_counter() - start, 2)}
        print(f"   {json.dumps(value, default=str)[:300]} ({time.perf_counter() - start:.1f} s)", flush=True)
        self.save()
        return value


def sync(torch: Any) -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=Path("bench-results/gpu"))
    parser.add_argument("--tokenizer", type=Path, default=HERE.parents[1] / ".bench-models" / "tok32k")
    parser.add_argument("--device", default="cuda")
    parser.add_argument(
        "--model-dir", type=Path, default=None, help="where to save the bench model (default: under --out)"
    )
    parser.add_argument("--small", action="store_true", help="a tiny model (smoke test)")
    parser.add_argument("--new", type=int, default=128, help="new tokens per batch-1 run")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--skip", default="", help="comma-separated steps to skip: streamer,raw-static,dynamic")
    args = parser.parse_args()

    import torch
    import transformers
    from langchain_core.messages import HumanMessage
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM, TextIteratorStreamer

    from langchain_localllm import HFLocalChatModel

    run = Run(args.out, args.device)
    skip = set(args.skip.split(","))
    dev = args.device
    run.data["versions"] = {"torch": torch.__version__, "transformers": transformers.__version__}
    run.data["gpu"] = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "none"

    def bandwidth() -> dict[str, float]:
        n = (1 << 30) if dev == "cuda" else (1 << 26)
        x = torch.empty(n, dtype=torch.uint8, device=dev).random_()
        y = torch.empty_like(x)
        y.copy_(x)
        sync(torch)
        start = time.perf_counter()
        for _ in range(10):
            y.copy_(x)
        sync(torch)
        seconds = time.perf_counter() - start
        return {"copy_GBps_read_plus_write": 2 * n * 10 / seconds / 1e9}

    bw = run.step("bandwidth", bandwidth)
    tok = AutoTokenizer.from_pretrained(args.tokenizer)
    model_dir = args.model_dir or args.out / "model"

    def build() -> dict[str, Any]:
        size = (
            {
                "hidden_size": 128,
                "num_hidden_layers": 2,
                "num_attention_heads": 4,
                "num_key_value_heads": 2,
                "intermediate_size": 256,
            }
            if args.small
            else {
                "hidden_size": 1024,
                "num_hidden_layers": 24,
                "num_attention_heads": 16,
                "num_key_value_heads": 4,
                "intermediate_size": 4096,
            }
        )
        config = LlamaConfig(
            vocab_size=len(tok),
            max_position_embeddings=4096,
            rms_norm_eps=1e-5,
            tie_word_embeddings=False,
            bos_token_id=None,
            eos_token_id=[tok.convert_tokens_to_ids("<|im_end|>"), tok.convert_tokens_to_ids("<|endoftext|>")],
            pad_token_id=tok.convert_tokens_to_ids("<|endoftext|>"),
            **size,
        )
        torch.manual_seed(0)
        with torch.device(dev):
            model = LlamaForCausalLM(config).to(torch.bfloat16 if dev == "cuda" else torch.float32)
        model.save_pretrained(model_dir)
        tok.save_pretrained(model_dir)
        return {"params": sum(p.numel() for p in model.parameters()), "dtype": str(model.dtype)}

    built = run.step("build model", build)
    params = built["params"]
    dtype = "bfloat16" if dev == "cuda" else "float32"
    raw = transformers.AutoModelForCausalLM.from_pretrained(model_dir, dtype=getattr(torch, dtype)).to(dev).eval()
    enc = tok.apply_chat_template(
        [{"role": "user", "content": PROMPT}],
        add_generation_prompt=True,
        tokenize=True,
        return_dict=True,
        return_tensors="pt",
    )
    enc = {k: v.to(dev) for k, v in enc.items()}
    n_new = args.new
    bytes_per_token = params * (2 if dtype == "bfloat16" else 4)

    def rate(seconds: float, n: int) -> dict[str, float]:
        tps = n / seconds
        out = {"tokens": n, "seconds": seconds, "tok_s": tps}
        if isinstance(bw, dict) and "copy_GBps_read_plus_write" in bw:
            out["bandwidth_fraction"] = bytes_per_token * tps / (bw["copy_GBps_read_plus_write"] * 1e9)
        return out

    def raw_generate(**kw: Any) -> dict[str, float]:
        sync(torch)
        start = time.perf_counter()
        ids = raw.generate(**enc, max_new_tokens=n_new, do_sample=False, **kw)
        sync(torch)
        return rate(time.perf_counter() - start, int(ids.shape[1] - enc["input_ids"].shape[1]))

    def repeat(fn: Callable[[], dict[str, float]], n: int | None = None) -> dict[str, Any]:
        fn()  # warm-up
        samples = [fn() for _ in range(n or args.repeats)]
        med = statistics.median(s["tok_s"] for s in samples)
        out: dict[str, Any] = {
            "tok_s_median": med,
            "tok_s": [s["tok_s"] for s in samples],
            "tokens": samples[0]["tokens"],
        }
        if "bandwidth_fraction" in samples[0]:
            out["bandwidth_fraction_median"] = statistics.median(s["bandwidth_fraction"] for s in samples)
        return out

    def no_cudnn(fn: Callable[[], dict[str, float]]) -> Callable[[], dict[str, float]]:
        def wrapped() -> dict[str, float]:
            from torch.nn.attention import SDPBackend, sdpa_kernel

            with sdpa_kernel([SDPBackend.FLASH_ATTENTION, SDPBackend.EFFICIENT_ATTENTION, SDPBackend.MATH]):
                return fn()

        return wrapped

    raw_default = run.step("raw generate, default (dynamic cache)", lambda: repeat(raw_generate))
    if "cudnn" not in skip:
        run.step("raw generate, dynamic cache, cuDNN attention excluded", lambda: repeat(no_cudnn(raw_generate)))

    def raw_streamer() -> dict[str, float]:
        streamer = TextIteratorStreamer(tok, skip_prompt=True, skip_special_tokens=True)
        holder: dict[str, Any] = {}
        worker = threading.Thread(
            target=lambda: holder.setdefault(
                "ids", raw.generate(**enc, max_new_tokens=n_new, do_sample=False, streamer=streamer)
            )
        )
        start = time.perf_counter()
        worker.start()
        for _ in streamer:
            pass
        worker.join()
        return rate(time.perf_counter() - start, int(holder["ids"].shape[1] - enc["input_ids"].shape[1]))

    if "streamer" not in skip:
        run.step("raw generate + TextIteratorStreamer (thread)", lambda: repeat(raw_streamer, 2))

    chat = HFLocalChatModel(model=str(model_dir), device=dev, dtype=dtype, max_tokens=n_new)
    messages = [HumanMessage(PROMPT)]

    def ours_invoke(**kw: Any) -> dict[str, float]:
        start = time.perf_counter()
        msg = chat.invoke(messages, **kw)
        return rate(time.perf_counter() - start, (msg.usage_metadata or {}).get("output_tokens", 0))

    def ours_stream() -> dict[str, float]:
        start = time.perf_counter()
        n = 0
        for chunk in chat.stream(messages):
            if chunk.usage_metadata:
                n = chunk.usage_metadata["output_tokens"]
        return rate(time.perf_counter() - start, n)

    run.step("ours: load + first call (compile)", lambda: rate(*_first(ours_invoke)))
    ours_inv = run.step("ours invoke (default path)", lambda: repeat(ours_invoke))
    ours_str = run.step("ours stream (default path)", lambda: repeat(ours_stream))
    dynamic = HFLocalChatModel(model=str(model_dir), device=dev, dtype=dtype, max_tokens=n_new, static_cache=False)
    if "dynamic" not in skip:
        run.step(
            "ours invoke, static_cache=False",
            lambda: repeat(lambda: rate(*_timed_tokens(lambda: dynamic.invoke(messages)))),
        )
    if "raw-static" not in skip:
        run.step(
            "raw generate, static cache: first call (compile)", lambda: raw_generate(cache_implementation="static")
        )
        run.step("raw generate, static cache", lambda: repeat(lambda: raw_generate(cache_implementation="static")))

    prompts = [" ".join(["rose garden story"] * (1 + 3 * i)) for i in range(16)]
    batch_new = 64

    def batch_case() -> dict[str, Any]:
        bchat = HFLocalChatModel(model=str(model_dir), device=dev, dtype=dtype, max_tokens=batch_new, batch_size=16)
        inputs = [[HumanMessage(p)] for p in prompts]
        bchat.batch(inputs)  # warm-up (compiles for this batch shape)
        sync(torch)
        t_ours, outs = _timed(lambda: bchat.batch(inputs))
        singles = [
            {
                k: v.to(dev)
                for k, v in tok.apply_chat_template(
                    [{"role": "user", "content": p}],
                    add_generation_prompt=True,
                    tokenize=True,
                    return_dict=True,
                    return_tensors="pt",
                ).items()
            }
            for p in prompts
        ]

        def sequential() -> list[str]:
            texts = []
            for e in singles:
                ids = raw.generate(**e, max_new_tokens=batch_new, do_sample=False)
                texts.append(tok.decode(ids[0, e["input_ids"].shape[1] :], skip_special_tokens=True))
            return texts

        t_seq, seq = _timed(sequential)
        tok.padding_side = "left"
        padded = tok.apply_chat_template(
            [[{"role": "user", "content": p}] for p in prompts],
            add_generation_prompt=True,
            tokenize=True,
            return_dict=True,
            return_tensors="pt",
            padding=True,
        )
        padded = {k: v.to(dev) for k, v in padded.items()}
        raw.generate(**padded, max_new_tokens=batch_new, do_sample=False)
        t_pad, _ = _timed(lambda: raw.generate(**padded, max_new_tokens=batch_new, do_sample=False))
        same = sum(str(o.content).strip() == s.strip() for o, s in zip(outs, seq, strict=True))
        return {
            "ours_batch_s": t_ours,
            "raw_sequential_s": t_seq,
            "raw_padded_s": t_pad,
            "speed_vs_sequential": t_seq / t_ours,
            "speed_vs_padded": t_pad / t_ours,
            "equal_to_sequential": f"{same}/16",
        }

    batch = run.step("batch of 16 mixed prompts, 64 new tokens", batch_case)

    comp = Comparison("8", f"GPU: {run.data['gpu']}, bfloat16, random ~{params / 1e9:.2f}B Llama")
    for name, value in run.data["steps"].items():
        v = value["value"]
        if isinstance(v, dict) and "tok_s" in v and isinstance(v["tok_s"], list):
            extra = {"bw_frac": v.get("bandwidth_fraction_median", 0.0)}
            comp.sides.append(Stats(name, v["tok_s"], unit="tok/s", extra=extra))
    if (
        isinstance(raw_default, dict)
        and isinstance(ours_str, dict)
        and "tok_s_median" in ours_str
        and "tok_s_median" in raw_default
    ):
        comp.goals.append(
            Goal(
                "ours stream / raw default generate (batch 1)",
                ours_str["tok_s_median"] / raw_default["tok_s_median"],
                5.0,
            )
        )
    if (
        isinstance(ours_str, dict)
        and isinstance(ours_inv, dict)
        and "tok_s_median" in ours_inv
        and "tok_s_median" in ours_str
    ):
        comp.goals.append(Goal("ours stream / ours invoke", ours_str["tok_s_median"] / ours_inv["tok_s_median"], 0.95))
    if isinstance(batch, dict) and "speed_vs_sequential" in batch:
        comp.goals.append(Goal("batch: ours / raw sequential", batch["speed_vs_sequential"], 4.0))
        comp.goals.append(Goal("batch: ours / one raw padded generate", batch["speed_vs_padded"], 0.9))
        comp.notes.append(f"batch outputs equal to sequential greedy: {batch['equal_to_sequential']} (bfloat16)")
    comp.notes.append(f"device-to-device copy: {bw}")
    run.data["comparison"] = comp.to_json()
    run.save()
    for goal in comp.goals:
        print(goal.row())
    return 0


def _timed(fn: Callable[[], Any]) -> tuple[float, Any]:
    start = time.perf_counter()
    out = fn()
    return time.perf_counter() - start, out


def _timed_tokens(fn: Callable[[], Any]) -> tuple[float, int]:
    seconds, msg = _timed(fn)
    return seconds, (msg.usage_metadata or {}).get("output_tokens", 0)


def _first(fn: Callable[[], dict[str, float]]) -> tuple[float, int]:
    out = fn()
    return out["seconds"], int(out["tokens"])


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
