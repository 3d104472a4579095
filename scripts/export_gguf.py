#!/usr/bin/env python
"""Convert a Hugging Face Llama checkpoint directory to a GGUF file.

A deliberately small, dependency-light exporter (``gguf`` + ``safetensors`` +
``torch``) for the tiny test models in ``tests/fixtures/models`` and for random
benchmark models. It handles any ``LlamaForCausalLM`` config (head counts, head
dim, GQA, tied or untied embeddings) with a byte-level BPE ``tokenizer.json``.

Usage::

    python scripts/export_gguf.py HF_DIR OUT.gguf --type f16|q8_0|f32

or from Python::

    from export_gguf import export_llama_to_gguf
    export_llama_to_gguf(Path("hf_dir"), Path("model.gguf"), "f16")
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import gguf
import numpy as np

FTYPES = {
    "f32": gguf.LlamaFileType.ALL_F32,
    "f16": gguf.LlamaFileType.MOSTLY_F16,
    "q8_0": gguf.LlamaFileType.MOSTLY_Q8_0,
}

# HF tensor name suffix (inside model.layers.N.) -> GGUF tensor name suffix (inside blk.N.)
_LAYER_MAP = {
    "input_layernorm.weight": "attn_norm.weight",
    "self_attn.q_proj.weight": "attn_q.weight",
    "self_attn.k_proj.weight": "attn_k.weight",
    "self_attn.v_proj.weight": "attn_v.weight",
    "self_attn.o_proj.weight": "attn_output.weight",
    "self_attn.q_proj.bias": "attn_q.bias",
    "self_attn.k_proj.bias": "attn_k.bias",
    "self_attn.v_proj.bias": "attn_v.bias",
    "self_attn.o_proj.bias": "attn_output.bias",
    "post_attention_layernorm.weight": "ffn_norm.weight",
    "mlp.gate_proj.weight": "ffn_gate.weight",
    "mlp.up_proj.weight": "ffn_up.weight",
    "mlp.down_proj.weight": "ffn_down.weight",
}


def permute_rope(w: np.ndarray, n_head: int) -> np.ndarray:
    """Reorder Q/K projection rows from HF's rotate-half layout (pairs i, i+d/2)
    to llama.cpp's interleaved layout (pairs 2i, 2i+1)."""
    return w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def _load_state_dict(hf_dir: Path) -> dict[str, np.ndarray]:
    import torch  # noqa: F401  (needed by safetensors' "pt" framework; handles bf16)
    from safetensors import safe_open

    files = sorted(hf_dir.glob("*.safetensors"))
    if not files:
        raise FileNotFoundError(f"no *.safetensors in {hf_dir}")
    out: dict[str, np.ndarray] = {}
    for f in files:
        with safe_open(str(f), framework="pt") as sf:
            for k in sf.keys():  # noqa: SIM118 (safe_open has no __iter__)
                out[k] = sf.get_tensor(k).float().numpy()
    return out


def _token_content(tok: Any) -> str | None:
    if tok is None:
        return None
    if isinstance(tok, dict):
        return tok.get("content")
    return str(tok)


def _read_chat_template(hf_dir: Path, tok_cfg: dict[str, Any]) -> str | None:
    tmpl = tok_cfg.get("chat_template")
    if isinstance(tmpl, list):  # named templates
        named = {t["name"]: t["template"] for t in tmpl}
        tmpl = named.get("default") or next(iter(named.values()), None)
    if not tmpl and (hf_dir / "chat_template.jinja").exists():
        tmpl = (hf_dir / "chat_template.jinja").read_text(encoding="utf-8")
    return tmpl or None


def _load_tokenizer(hf_dir: Path, n_vocab: int) -> dict[str, Any]:
    tj = json.loads((hf_dir / "tokenizer.json").read_text(encoding="utf-8"))
    model = tj["model"]
    if model.get("type") != "BPE":
        raise ValueError(f"only BPE tokenizers are supported, got {model.get('type')!r}")
    id_to_tok: dict[int, str] = {i: t for t, i in model["vocab"].items()}
    special: set[int] = set()
    user_defined: set[int] = set()
    for at in tj.get("added_tokens", []):
        id_to_tok[at["id"]] = at["content"]
        (special if at.get("special") else user_defined).add(at["id"])
    n_tok = max(id_to_tok) + 1
    if n_tok > n_vocab:
        raise ValueError(f"tokenizer has {n_tok} tokens but the model's vocab_size is {n_vocab}")
    tokens: list[str] = []
    types: list[int] = []
    for i in range(n_vocab):
        if i in id_to_tok:
            tokens.append(id_to_tok[i])
            if i in special:
                types.append(gguf.TokenType.CONTROL)
            elif i in user_defined:
                types.append(gguf.TokenType.USER_DEFINED)
            else:
                types.append(gguf.TokenType.NORMAL)
        else:
            tokens.append(f"[PAD{i}]")
            types.append(gguf.TokenType.UNUSED)
    # tokenizers >= 0.20 stores merges as [a, b] pairs, older versions as "a b" strings
    merges = [m if isinstance(m, str) else " ".join(m) for m in model.get("merges", [])]
    return {"tokens": tokens, "types": types, "merges": merges, "tok_to_id": {t: i for i, t in id_to_tok.items()}}


def export_llama_to_gguf(hf_dir: Path, out_path: Path, ftype: str = "f16") -> None:
    hf_dir = Path(hf_dir)
    out_path = Path(out_path)
    if ftype not in FTYPES:
        raise ValueError(f"ftype must be one of {sorted(FTYPES)}, got {ftype!r}")
    cfg = json.loads((hf_dir / "config.json").read_text(encoding="utf-8"))
    tok_cfg_path = hf_dir / "tokenizer_config.json"
    tok_cfg = json.loads(tok_cfg_path.read_text(encoding="utf-8")) if tok_cfg_path.exists() else {}

    n_embd = cfg["hidden_size"]
    n_head = cfg["num_attention_heads"]
    n_head_kv = cfg.get("num_key_value_heads") or n_head
    head_dim = cfg.get("head_dim") or n_embd // n_head
    n_layer = cfg["num_hidden_layers"]
    n_vocab = cfg["vocab_size"]
    rope = cfg.get("rope_parameters") or cfg.get("rope_scaling") or {}
    rope_type = rope.get("rope_type", rope.get("type", "default"))
    if rope_type not in (None, "default"):
        raise NotImplementedError(f"rope type {rope_type!r} is not supported by this exporter")
    rope_theta = cfg.get("rope_theta") or rope.get("rope_theta") or 10000.0

    tok = _load_tokenizer(hf_dir, n_vocab)
    t2i = tok["tok_to_id"]

    def tid(name: Any) -> int | None:
        c = _token_content(name)
        return t2i.get(c) if c is not None else None

    eos_id = tid(tok_cfg.get("eos_token"))
    if eos_id is None:
        e = cfg.get("eos_token_id")
        eos_id = e[0] if isinstance(e, list) else e
    pad_id = tid(tok_cfg.get("pad_token"))
    if pad_id is None:
        pad_id = cfg.get("pad_token_id")
    bos_id = tid(tok_cfg.get("bos_token"))
    if bos_id is None:
        bos_id = t2i.get("<|endoftext|>", pad_id)

    w = gguf.GGUFWriter(str(out_path), "llama")
    w.add_name(cfg.get("_name_or_path") or hf_dir.name)
    w.add_context_length(cfg.get("max_position_embeddings", 2048))
    w.add_embedding_length(n_embd)
    w.add_block_count(n_layer)
    w.add_feed_forward_length(cfg["intermediate_size"])
    w.add_head_count(n_head)
    w.add_head_count_kv(n_head_kv)
    if head_dim * n_head != n_embd:
        w.add_key_length(head_dim)
        w.add_value_length(head_dim)
    w.add_rope_dimension_count(head_dim)
    w.add_rope_freq_base(float(rope_theta))
    w.add_layer_norm_rms_eps(float(cfg.get("rms_norm_eps", 1e-5)))
    w.add_vocab_size(n_vocab)
    w.add_file_type(FTYPES[ftype])

    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre("gpt-2")
    w.add_token_list(tok["tokens"])
    w.add_token_types(tok["types"])
    w.add_token_merges(tok["merges"])
    if bos_id is not None:
        w.add_bos_token_id(bos_id)
    if eos_id is not None:
        w.add_eos_token_id(eos_id)
        w.add_eot_token_id(eos_id)
    if pad_id is not None:
        w.add_pad_token_id(pad_id)
    w.add_add_bos_token(False)
    w.add_add_eos_token(False)
    tmpl = _read_chat_template(hf_dir, tok_cfg)
    if tmpl:
        w.add_chat_template(tmpl)

    sd = _load_state_dict(hf_dir)

    def add(name: str, arr: np.ndarray) -> None:
        arr = np.ascontiguousarray(arr)
        if arr.ndim == 1 or ftype == "f32":
            w.add_tensor(name, arr.astype(np.float32))
        elif ftype == "q8_0" and arr.shape[-1] % 32 == 0:
            q = gguf.quants.quantize(arr.astype(np.float32), gguf.GGMLQuantizationType.Q8_0)
            w.add_tensor(name, q, raw_dtype=gguf.GGMLQuantizationType.Q8_0)
        else:
            w.add_tensor(name, arr.astype(np.float16))

    add("token_embd.weight", sd["model.embed_tokens.weight"])
    add("output_norm.weight", sd["model.norm.weight"])
    add("output.weight", sd.get("lm_head.weight", sd["model.embed_tokens.weight"]))
    for i in range(n_layer):
        pre = f"model.layers.{i}."
        for hf_suffix, gg_suffix in _LAYER_MAP.items():
            key = pre + hf_suffix
            if key not in sd:
                continue
            arr = sd[key]
            if hf_suffix.startswith("self_attn.q_proj."):
                arr = permute_rope(arr, n_head)
            elif hf_suffix.startswith("self_attn.k_proj."):
                arr = permute_rope(arr, n_head_kv)
            add(f"blk.{i}.{gg_suffix}", arr)

    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("hf_dir", type=Path)
    p.add_argument("out", type=Path)
    p.add_argument("--type", dest="ftype", choices=sorted(FTYPES), default="f16")
    a = p.parse_args(argv)
    export_llama_to_gguf(a.hf_dir, a.out, a.ftype)
    print(f"wrote {a.out} ({a.out.stat().st_size} bytes, {a.ftype})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
