#!/usr/bin/env python
"""Convert a Hugging Face ``BertModel`` checkpoint with a byte-level BPE tokenizer to a GGUF file.

The companion of ``export_gguf.py`` (Llama) for encoder embedding models: llama.cpp's ``bert``
architecture (bidirectional attention, no KV cache, learned positions, token types), with the
pooling type read from the checkpoint's sentence-transformers ``1_Pooling/config.json`` and
``[CLS] ... [SEP]`` added by llama.cpp's tokenizer (``add_bos``/``add_eos``). It writes
``tests/fixtures/models/tiny-encoder.gguf`` from ``tiny-encoder/`` (``make fixtures``), the GGUF
twin of the HF fixture that the llama.cpp embedding tests compare with sentence-transformers.

Usage::

    python scripts/export_bert_gguf.py HF_DIR OUT.gguf
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import gguf
import numpy as np

try:
    from scripts.export_gguf import _load_state_dict, _load_tokenizer
except ImportError:  # run as a file: python scripts/export_bert_gguf.py
    from export_gguf import _load_state_dict, _load_tokenizer  # type: ignore[no-redef]

POOLING = {"mean": gguf.PoolingType.MEAN, "cls": gguf.PoolingType.CLS, "lasttoken": gguf.PoolingType.LAST}

_LAYER_MAP = {
    "attention.self.query": "attn_q",
    "attention.self.key": "attn_k",
    "attention.self.value": "attn_v",
    "attention.output.dense": "attn_output",
    "attention.output.LayerNorm": "attn_output_norm",
    "intermediate.dense": "ffn_up",
    "output.dense": "ffn_down",
    "output.LayerNorm": "layer_output_norm",
}


def _pooling(hf_dir: Path) -> gguf.PoolingType:
    path = hf_dir / "1_Pooling" / "config.json"
    config = json.loads(path.read_text(encoding="utf-8")) if path.exists() else {}
    mode = config.get("pooling_mode")
    if mode is None:
        legacy = {"pooling_mode_cls_token": "cls", "pooling_mode_lasttoken": "lasttoken"}
        mode = next((name for key, name in legacy.items() if config.get(key)), "mean")
    if mode not in POOLING:
        raise ValueError(f"pooling {mode!r} has no llama.cpp pooling type")
    return POOLING[mode]


def export_bert_to_gguf(hf_dir: Path, out_path: Path) -> None:
    """Write ``hf_dir`` (a ``BertModel``) to ``out_path`` as an F32 GGUF of architecture ``bert``."""
    cfg = json.loads((hf_dir / "config.json").read_text(encoding="utf-8"))
    if cfg.get("model_type") != "bert":
        raise ValueError(f"only BERT checkpoints are supported, got {cfg.get('model_type')!r}")
    tok_cfg = json.loads((hf_dir / "tokenizer_config.json").read_text(encoding="utf-8"))
    tok = _load_tokenizer(hf_dir, cfg["vocab_size"])
    t2i = tok["tok_to_id"]
    w = gguf.GGUFWriter(str(out_path), "bert")
    w.add_name(hf_dir.name)
    w.add_context_length(cfg["max_position_embeddings"])
    w.add_embedding_length(cfg["hidden_size"])
    w.add_block_count(cfg["num_hidden_layers"])
    w.add_feed_forward_length(cfg["intermediate_size"])
    w.add_head_count(cfg["num_attention_heads"])
    w.add_layer_norm_eps(float(cfg.get("layer_norm_eps", 1e-12)))
    w.add_causal_attention(False)
    w.add_pooling_type(_pooling(hf_dir))
    w.add_vocab_size(cfg["vocab_size"])
    w.add_file_type(gguf.LlamaFileType.ALL_F32)
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre("gpt-2")
    w.add_token_list(tok["tokens"])
    w.add_token_types(tok["types"])
    w.add_token_merges(tok["merges"])
    w.add_token_type_count(cfg.get("type_vocab_size", 2))
    w.add_bos_token_id(t2i[tok_cfg["cls_token"]])
    w.add_eos_token_id(t2i[tok_cfg["sep_token"]])
    w.add_sep_token_id(t2i[tok_cfg["sep_token"]])
    w.add_pad_token_id(t2i[tok_cfg["pad_token"]])
    w.add_add_bos_token(True)
    w.add_add_eos_token(True)

    sd = _load_state_dict(hf_dir)
    prefix = "bert." if any(k.startswith("bert.") for k in sd) else ""

    def add(name: str, key: str) -> None:
        w.add_tensor(name, np.ascontiguousarray(sd[prefix + key]).astype(np.float32))

    add("token_embd.weight", "embeddings.word_embeddings.weight")
    add("token_types.weight", "embeddings.token_type_embeddings.weight")
    add("position_embd.weight", "embeddings.position_embeddings.weight")
    add("token_embd_norm.weight", "embeddings.LayerNorm.weight")
    add("token_embd_norm.bias", "embeddings.LayerNorm.bias")
    for i in range(cfg["num_hidden_layers"]):
        for hf_name, gg_name in _LAYER_MAP.items():
            add(f"blk.{i}.{gg_name}.weight", f"encoder.layer.{i}.{hf_name}.weight")
            add(f"blk.{i}.{gg_name}.bias", f"encoder.layer.{i}.{hf_name}.bias")
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


def main(argv: list[str] | None = None) -> int:
    """Command line: ``HF_DIR OUT.gguf``."""
    p = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    p.add_argument("hf_dir", type=Path)
    p.add_argument("out", type=Path)
    a = p.parse_args(argv)
    export_bert_to_gguf(a.hf_dir, a.out)
    print(f"wrote {a.out} ({a.out.stat().st_size} bytes)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
