"""Bench models: random-initialised Llamas with the project's tokenizer, built at bench time.

Random weights rarely emit an end token, so decode runs the full length; callers still
count the tokens they divide by.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
TOKENIZER_DIR = ROOT / "tests" / "fixtures" / "models" / "tiny-chat"


@dataclass(frozen=True)
class ModelSpec:
    name: str
    hidden: int
    layers: int
    heads: int
    kv_heads: int
    intermediate: int
    context: int = 4096


SMALL = ModelSpec("bench-30m", hidden=512, layers=10, heads=8, kv_heads=4, intermediate=1408)
LARGE = ModelSpec("bench-110m", hidden=768, layers=14, heads=12, kv_heads=4, intermediate=2304)


def build(spec: ModelSpec, out_root: Path, *, seed: int = 0) -> tuple[Path, dict[str, Path]]:
    """Create (or reuse) the HF checkpoint and its F16 / Q8_0 GGUF exports."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from scripts.export_gguf import export_llama_to_gguf

    hf_dir = out_root / spec.name
    ggufs = {t: out_root / f"{spec.name}.{t}.gguf" for t in ("f16", "q8_0")}
    stamp = out_root / f"{spec.name}.json"
    if stamp.exists() and json.loads(stamp.read_text()) == spec.__dict__ and all(p.exists() for p in ggufs.values()):
        return hf_dir, ggufs
    torch.manual_seed(seed)
    tok_cfg = json.loads((TOKENIZER_DIR / "config.json").read_text())
    config = LlamaConfig(
        vocab_size=tok_cfg["vocab_size"],
        hidden_size=spec.hidden,
        intermediate_size=spec.intermediate,
        num_hidden_layers=spec.layers,
        num_attention_heads=spec.heads,
        num_key_value_heads=spec.kv_heads,
        max_position_embeddings=spec.context,
        rms_norm_eps=1e-5,
        tie_word_embeddings=False,
        bos_token_id=None,
        eos_token_id=tok_cfg["eos_token_id"],
        pad_token_id=tok_cfg["pad_token_id"],
    )
    model = LlamaForCausalLM(config).eval()
    if hf_dir.exists():
        shutil.rmtree(hf_dir)
    model.save_pretrained(hf_dir)
    for name in ("tokenizer.json", "tokenizer_config.json", "generation_config.json"):
        shutil.copy(TOKENIZER_DIR / name, hf_dir / name)
    for ftype, path in ggufs.items():
        export_llama_to_gguf(hf_dir, path, ftype)
    stamp.write_text(json.dumps(spec.__dict__))
    return hf_dir, ggufs


def n_params(hf_dir: Path) -> int:
    from math import prod

    from safetensors import safe_open

    with safe_open(str(hf_dir / "model.safetensors"), "np") as f:
        return sum(prod(f.get_slice(key).get_shape()) for key in f.keys())  # noqa: SIM118


def build_tokenizer_32k(out_dir: Path, *, seed: int = 0) -> Path:
    """A byte-level BPE tokenizer with a 32,000-token vocabulary and the project's ChatML tokens.

    Trained in seconds on synthetic text (pseudo-words, English-like and CJK), only so that
    a 32k-vocabulary bench model decodes to real text. Reused if already built.
    """
    import random

    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    if (out_dir / "tokenizer.json").exists():
        return out_dir
    rng = random.Random(seed)
    syllables = [c + v for c in "bcdfghjklmnprstvwz" for v in "aeiou"] + list("花玫瑰草叶风雨山水天心")
    lines = [
        " ".join("".join(rng.choice(syllables) for _ in range(rng.randint(1, 4))) for _ in range(30))
        for _ in range(40_000)
    ]
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    special = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
    trainer = trainers.BpeTrainer(
        vocab_size=32_000, special_tokens=special, initial_alphabet=pre_tokenizers.ByteLevel.alphabet()
    )
    tok.train_from_iterator(lines, trainer)
    chat_template = json.loads((TOKENIZER_DIR / "tokenizer_config.json").read_text())["chat_template"]
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|im_end|>", pad_token="<|endoftext|>")
    fast.chat_template = chat_template
    out_dir.mkdir(parents=True, exist_ok=True)
    fast.save_pretrained(out_dir)
    return out_dir
