"""Does splitting a mixed-length batch by prompt length pay off? (raw transformers, CPU)

Times one left-padded ``generate`` of the 16 mixed-length bench prompts against
length-sorted groups of 8 and of 4 (64 new tokens each), and the prefill alone. The
answer is quoted under comparison 6 in docs/performance.md.

    python -m scripts.bench.batch_split [--hf .bench-models/bench-30m]   # from the repo root
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

from scripts.bench.hf_cases import batch_prompts, encode, load_raw

HERE = Path(__file__).resolve().parent


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--hf", type=Path, default=HERE.parents[1] / ".bench-models" / "bench-30m")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()

    import torch

    model, tok = load_raw(args.hf)
    prompts = batch_prompts(16)
    lengths = [len(encode(tok, [p])["input_ids"][0]) for p in prompts]
    print(f"prompt tokens {lengths}: {sum(lengths)} real, {16 * max(lengths)} padded")
    order = sorted(range(16), key=lambda i: lengths[i])
    splits = {
        "one padded batch of 16": [list(range(16))],
        "2 length-sorted batches of 8": [order[:8], order[8:]],
        "4 length-sorted batches of 4": [order[i : i + 4] for i in range(0, 16, 4)],
    }

    def total(groups: list[list[int]]) -> float:
        start = time.perf_counter()
        for group in groups:
            enc = encode(tok, [prompts[i] for i in group])
            model.generate(**enc, max_new_tokens=64, min_new_tokens=64, do_sample=False)
        return time.perf_counter() - start

    def prefill(groups: list[list[int]]) -> float:
        start = time.perf_counter()
        for group in groups:
            enc = encode(tok, [prompts[i] for i in group])
            with torch.inference_mode():
                model(**enc, logits_to_keep=1)
        return time.perf_counter() - start

    for groups in splits.values():
        total(groups)  # warm-up
    times: dict[str, tuple[list[float], list[float]]] = {name: ([], []) for name in splits}
    for _ in range(args.repeats):
        for name, groups in splits.items():
            times[name][0].append(prefill(groups))
            times[name][1].append(total(groups))
    print("| split | prefill | total |\n|---|---|---|")
    for name, (pre, tot) in times.items():
        print(f"| {name} | {statistics.median(pre):.2f} s | {statistics.median(tot):.2f} s |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
