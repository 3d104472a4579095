"""transformers' own continuous batching (``generate_batch``) against ``HFLocalChatModel(max_parallel=16)``.

The issue asked to measure transformers' ``ContinuousBatchingManager`` against the package's step
loop and choose by numbers. This prints both on the same 16 chat prompts x ``--new`` greedy tokens,
second run of each (the first warms up), for each attention implementation the manager accepts.

    python -m scripts.bench.hf_cb_compare [--hf .bench-models/bench-30m] [--new 16]
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from langchain_localllm import HFLocalChatModel
from scripts.bench.batching import prompts


def main() -> int:
    """Print tokens/s of ``generate_batch`` per attention implementation, then ours, and the ratios."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, GenerationConfig

    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--hf", type=Path, default=Path(".bench-models/bench-30m"))
    parser.add_argument("--new", type=int, default=16)
    args = parser.parse_args()
    tok = AutoTokenizer.from_pretrained(args.hf)
    questions = prompts(16)
    inputs = [
        list(
            tok.apply_chat_template([{"role": "user", "content": q}], add_generation_prompt=True, tokenize=True)[
                "input_ids"
            ]
        )
        for q in questions
    ]
    rates: dict[str, float] = {}
    for impl in ("sdpa", "paged|eager"):
        try:
            model = AutoModelForCausalLM.from_pretrained(args.hf, dtype=torch.float32, attn_implementation=impl).eval()
            config = GenerationConfig(
                max_new_tokens=args.new,
                do_sample=False,
                eos_token_id=model.generation_config.eos_token_id,
                pad_token_id=tok.pad_token_id or 0,
            )
            for _ in range(2):
                start = time.perf_counter()
                out = model.generate_batch(inputs=inputs, generation_config=config)
                seconds = time.perf_counter() - start
            n = sum(len(r.generated_tokens) for r in out.values())
            rates[f"transformers generate_batch ({impl})"] = n / seconds
        except Exception as e:
            print(f"transformers generate_batch ({impl}) failed: {type(e).__name__}: {e}")
    chat = HFLocalChatModel(model=str(args.hf), device="cpu", temperature=0, max_tokens=args.new, max_parallel=16)
    for _ in range(2):
        start = time.perf_counter()
        answers = chat.batch(questions)
        seconds = time.perf_counter() - start
    ours = sum(int((a.usage_metadata or {}).get("output_tokens", 0)) for a in answers) / seconds
    for name, rate in rates.items():
        print(f"{name}: {rate:.1f} tok/s; ours / it = {ours / rate:.2f}x")
    print(f"HFLocalChatModel max_parallel=16: {ours:.1f} tok/s (torch threads {torch.get_num_threads()})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
