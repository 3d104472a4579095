"""Benchmark langchain-localllm against the raw backends and the peer packages.

Every comparison runs its sides interleaved, in this one process, on the same loaded
model where the comparison allows it; warms up first; repeats; and reports
min / median / max and the ratio of medians against the goal. Exits non-zero if a
goal is missed, naming it.

    make bench                      # the standard run (~30M-parameter bench model)
    make bench ARGS=--quick         # about 3 minutes on 2 cores (fewer repeats and tokens)
    python -m scripts.bench.run --only 1,2 --gguf ~/models/model.gguf --hf ~/models/model-dir   # from the repo root
    python -m scripts.bench.run --only 10 --real-gguf ~/models/SmolLM2-135M-Instruct.Q4_1.gguf   # first call
    python -m scripts.bench.run --only 14a,14b      # embeddings (GGUF, HF; issue 14)
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from collections.abc import Callable
from importlib import metadata
from pathlib import Path
from typing import Any

from scripts.bench.harness import Comparison

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]


def versions() -> dict[str, str]:
    out = {"python": platform.python_version()}
    for dist in (
        "langchain-localllm",
        "langchain-core",
        "llama-cpp-python",
        "transformers",
        "torch",
        "langchain-community",
        "langchain-huggingface",
    ):
        try:
            out[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            out[dist] = "not installed"
    return out


def machine() -> dict[str, Any]:
    info: dict[str, Any] = {
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "cpus": os.cpu_count(),
    }
    try:
        import torch

        info["torch_threads"] = torch.get_num_threads()
        if torch.cuda.is_available():
            info["gpu"] = torch.cuda.get_device_name(0)
    except ImportError:
        pass
    info["llama_cpp_threads"] = (
        f"n_threads={max(1, (os.cpu_count() or 2) // 2)} (llama-cpp-python default), n_threads_batch={os.cpu_count()}"
    )
    return info


def markdown(results: list[Comparison], meta: dict[str, Any]) -> str:
    lines = [
        f"Command: `{meta['command']}`  ",
        f"Date: {meta['date']}  ",
        f"Machine: {meta['machine']}  ",
        f"Versions: {', '.join(f'{k} {v}' for k, v in meta['versions'].items())}  ",
        f"Models: {meta['models']}",
        "",
    ]
    for comp in results:
        lines.append(f"### {comp.number}. {comp.title}")
        lines.append("")
        lines.append("| side | unit | min | median | max | n |")
        lines.append("|---|---|---|---|---|---|")
        for side in comp.sides:
            s = side.summary()
            extra = "".join(f" ({k} {v:.2f})" if isinstance(v, float) else f" ({k} {v})" for k, v in side.extra.items())
            lines.append(
                f"| {s['name']}{extra} | {s['unit']} | {s['min']:.4g} | {s['median']:.4g} | {s['max']:.4g} | {s['n']} |"
            )
        if comp.goals:
            lines.append("")
            lines.append("| goal | result | target | status | note |")
            lines.append("|---|---|---|---|---|")
            lines.extend(goal.row() for goal in comp.goals)
        for note in comp.notes:
            lines.append(f"- {note}")
        lines.append("")
    return "\n".join(lines)


def invocation() -> list[str]:
    """How this script was started: ``-m scripts.bench.run`` (or its path, run as a file)."""
    return ["-m", __spec__.name] if __spec__ is not None else [sys.argv[0]]


def update_docs(table: str) -> None:
    doc = ROOT / "docs" / "performance.md"
    text = doc.read_text(encoding="utf-8")
    start, end = "<!-- bench:start -->", "<!-- bench:end -->"
    head, rest = text.split(start, 1)
    _, tail = rest.split(end, 1)
    doc.write_text(f"{head}{start}\n{table}\n{end}{tail}", encoding="utf-8")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="fewer repeats and tokens (about 3 minutes on 2 cores)")
    parser.add_argument("--full", action="store_true", help="also the larger bench model")
    parser.add_argument("--gguf", type=Path, help="use this GGUF file instead of the generated bench model")
    parser.add_argument("--hf", type=Path, help="use this HF model dir instead of the generated bench model")
    parser.add_argument(
        "--real-gguf",
        type=Path,
        default=os.environ.get("LOCALLLM_REAL_GGUF") or None,
        help="a real GGUF file for comparison 10, the first call (default: $LOCALLLM_REAL_GGUF; skipped if unset)",
    )
    parser.add_argument("--only", default="", help="comma-separated comparison numbers, e.g. 1,2,5")
    parser.add_argument("--repeats", type=int, default=0, help="repeats per side (default 7, --quick 5)")
    parser.add_argument("--out", type=Path, default=ROOT / "bench-results")
    parser.add_argument("--models-dir", type=Path, default=ROOT / ".bench-models")
    parser.add_argument("--update-docs", action="store_true", help="write the table into docs/performance.md")
    args = parser.parse_args()
    repeats = args.repeats or (5 if args.quick else 7)
    only = {x.strip() for x in args.only.split(",") if x.strip()}

    from scripts.bench import models

    specs = [models.SMALL] + ([models.LARGE] if args.full else [])
    per_model = not only or bool(only - {"10"})  # 10 brings its own files
    built = {
        spec.name: models.build(spec, args.models_dir) for spec in specs if per_model and not (args.gguf and args.hf)
    }
    results: list[Comparison] = []
    user = {"user": (args.hf, {"q8_0": args.gguf})} if per_model else {}
    for name, (hf_dir, ggufs) in built.items() or user.items():
        gguf = args.gguf or ggufs["q8_0"]
        hf = args.hf or hf_dir
        print(f"== model {name}: gguf={gguf} hf={hf}", flush=True)
        results.extend(run_cases(gguf, hf, repeats, quick=args.quick, only=only, label=name))
    results.extend(run_first_call_cases(args.real_gguf, args.models_dir, repeats, only=only))

    meta = {
        "command": " ".join([Path(sys.executable).name, *invocation(), *sys.argv[1:]]),
        "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
        "machine": machine(),
        "versions": versions(),
        "models": {
            n: {"params": models.n_params(h), "gguf": [p.name for p in g.values()]} for n, (h, g) in built.items()
        },
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "latest.json").write_text(
        json.dumps({"meta": meta, "results": [c.to_json() for c in results]}, indent=2, default=str)
    )
    table = markdown(results, meta)
    (args.out / "latest.md").write_text(table)
    print(table)
    if args.update_docs:
        update_docs(table)
    missed = [f"{c.number}: {g.label} = {g.ratio:.3f} (goal {g.target})" for c in results for g in c.goals if not g.met]
    if missed:
        print("\nMISSED GOALS:\n  " + "\n  ".join(missed))
        return 1
    print("\nall goals met")
    return 0


def run_cases(gguf: Path, hf: Path, repeats: int, *, quick: bool, only: set[str], label: str) -> list[Comparison]:
    from scripts.bench import batching, embed_cases, gguf_cases

    n_new = 128 if quick else 256
    cases: list[tuple[str, Callable[[], Comparison]]] = [
        ("1", lambda: gguf_cases.case_decode(gguf, repeats, n_new)),
        ("2", lambda: gguf_cases.case_prefill(gguf, repeats)),
        ("3", lambda: gguf_cases.case_loading(gguf, repeats)),
        ("4", lambda: gguf_cases.case_multiturn(gguf, repeats)),
        ("7", lambda: gguf_cases.case_callbacks_async(gguf, repeats, n_new)),
        ("9", lambda: gguf_cases.case_grammar_cost(gguf, repeats, n_new)),
        ("11", lambda: batching.case_batching(gguf, repeats, quick=quick)),
        ("11b", lambda: batching.case_concurrency(gguf, hf, repeats, quick=quick)),
        ("11c", lambda: batching.case_contention(gguf, hf, repeats, quick=quick)),
        ("11d", lambda: batching.case_late_arrival(gguf, repeats, quick=quick)),
        ("11e", lambda: batching.case_greedy_match(gguf)),
        ("14a", lambda: embed_cases.case_embed_gguf(gguf, 3 if quick else repeats)),
    ]
    try:
        from scripts.bench import gpu, hf_batching, hf_cases
    except ImportError as e:
        print(f"(HF comparisons unavailable: {e})")
    else:
        cases[4:4] = [
            ("5", lambda: hf_cases.case_stream(hf, repeats, quick=quick)),
            ("6", lambda: hf_cases.case_batch(hf, repeats, quick=quick)),
        ]
        cases.append(("9b", lambda: hf_cases.case_grammar_cost(hf, repeats, quick=quick)))
        cases.append(("11f", lambda: hf_batching.case_hf_batching(hf, repeats, quick=quick)))
        cases.append(("14b", lambda: embed_cases.case_embed_hf(hf, 3 if quick else repeats)))
        cases.append(("8", lambda: gpu.case_gpu(repeats, quick=quick)))
    out = []
    for number, fn in cases:
        if only and number not in only:
            continue
        print(f"-- [{label}] comparison {number}", flush=True)
        start = time.perf_counter()
        comp = fn()
        comp.title += f" [{label}]"
        comp.notes.append(f"case wall time {time.perf_counter() - start:.1f} s")
        out.append(comp)
    return out


def run_first_call_cases(real_gguf: Path | None, models_dir: Path, repeats: int, *, only: set[str]) -> list[Comparison]:
    """Comparisons 10a/10b (the first call on a file, fresh load): once per file, not per bench model."""
    if only and "10" not in only:
        return []
    from scripts.bench import first_call

    out = []
    for label, fn in first_call.cases(real_gguf, models_dir, repeats):
        print(f"-- [{label}] comparison 10", flush=True)
        start = time.perf_counter()
        comp = fn()
        comp.notes.append(f"case wall time {time.perf_counter() - start:.1f} s")
        out.append(comp)
    return out


if __name__ == "__main__":
    raise SystemExit(main())
