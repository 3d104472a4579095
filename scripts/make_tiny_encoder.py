#!/usr/bin/env python
"""Write the tiny, random-initialised BERT encoder fixture used by the embedding tests.

``tests/fixtures/models/tiny-encoder/`` is laid out as a sentence-transformers checkpoint, the
kind most embedding models on the Hugging Face hub are (all-MiniLM, bge, e5, gte): a
``BertModel`` (2 layers, hidden 32, ~40k parameters; architectures ``["BertModel"]``, no LM
head) with a byte-level tokenizer wrapped in ``[CLS] ... [SEP]``, and the sentence-transformers
files that say how its token vectors become one vector:

* ``modules.json``: Transformer → ``1_Pooling`` (CLS pooling) → ``2_Normalize`` (a module without
  files, so no folder: git, like the hub, keeps no empty folders);
* ``sentence_bert_config.json``: ``max_seq_length`` 64 (shorter than the model's 128
  positions, so truncation to the sentence-transformers window is tested);
* ``config_sentence_transformers.json``: e5-style prompts (``query: `` / ``passage: ``).

The weights are random (seeded, so the files are reproducible): the tests compare our vectors
with sentence-transformers' on this checkpoint, never with fixed numbers.

Usage::

    .venv/bin/python scripts/make_tiny_encoder.py [--out-dir tests/fixtures/models]
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]

PAD, UNK, CLS, SEP, MASK = "[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"
SPECIAL = [PAD, UNK, CLS, SEP, MASK]  # ids 0-4
MAX_SEQ_LENGTH = 64
PROMPTS = {"query": "query: ", "document": "passage: "}
MERGES = [("Ġ", "t"), ("h", "e"), ("r", "o")]
"""A few merges, so the tokenizer is a real BPE (llama.cpp refuses a BPE vocabulary without merges)."""


def build_tokenizer() -> Any:
    """A byte-level tokenizer with three merges (any Unicode text round-trips), ``[CLS] $A [SEP]``."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors

    vocab = {tok: i for i, tok in enumerate(SPECIAL)}
    for ch in sorted(pre_tokenizers.ByteLevel.alphabet()):
        vocab[ch] = len(vocab)
    for a, b in MERGES:
        vocab[a + b] = len(vocab)
    tok = Tokenizer(models.BPE(vocab=vocab, merges=MERGES, unk_token=UNK))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tok.decoder = decoders.ByteLevel()
    tok.add_special_tokens(SPECIAL)
    tok.post_processor = processors.TemplateProcessing(
        single=f"{CLS} $A {SEP}", pair=f"{CLS} $A {SEP} $B {SEP}", special_tokens=[(CLS, 2), (SEP, 3)]
    )
    return tok


def _write_json(path: Path, value: object) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(value, indent=2) + "\n", encoding="utf-8")


def sentence_transformers_files(out: Path, dim: int) -> None:
    """The sentence-transformers module files: CLS pooling, then normalize."""
    _write_json(
        out / "modules.json",
        [
            {"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
            {"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"},
            {"idx": 2, "name": "2", "path": "2_Normalize", "type": "sentence_transformers.models.Normalize"},
        ],
    )
    modes = ("cls_token", "mean_tokens", "max_tokens", "mean_sqrt_len_tokens", "weightedmean_tokens", "lasttoken")
    pooling: dict[str, object] = {"word_embedding_dimension": dim}
    pooling.update({f"pooling_mode_{mode}": mode == "cls_token" for mode in modes})
    pooling["include_prompt"] = True
    _write_json(out / "1_Pooling" / "config.json", pooling)
    _write_json(out / "sentence_bert_config.json", {"max_seq_length": MAX_SEQ_LENGTH, "do_lower_case": False})
    _write_json(
        out / "config_sentence_transformers.json",
        {"prompts": PROMPTS, "default_prompt_name": None, "similarity_fn_name": "cosine"},
    )


def main(argv: list[str] | None = None) -> int:
    """Write the fixture and check that transformers loads it back as an encoder."""
    ap = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    ap.add_argument("--out-dir", type=Path, default=ROOT / "tests/fixtures/models")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)

    import shutil

    import torch
    from transformers import AutoModel, AutoTokenizer, BertConfig, BertModel, PreTrainedTokenizerFast

    torch.manual_seed(args.seed)
    raw = build_tokenizer()
    n_vocab = raw.get_vocab_size(with_added_tokens=True)
    for text in ["Hello, world!", "玫瑰 🌹 \t\n x"]:
        ids = raw.encode(text).ids
        if ids[0] != 2 or ids[-1] != 3 or raw.decode(ids, skip_special_tokens=True) != text:
            print(f"tokenizer does not round-trip {text!r}: {ids}", file=sys.stderr)
            return 1
    config = BertConfig(
        vocab_size=(n_vocab + 31) // 32 * 32,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=128,
        pad_token_id=0,
        hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0,
        initializer_range=0.3,  # wider than BERT's 0.02: random CLS vectors of different texts differ
    )
    model = BertModel(config).float().eval()  # with its pooler, as published BERT checkpoints
    hf_tok = PreTrainedTokenizerFast(
        tokenizer_object=raw,
        pad_token=PAD,
        unk_token=UNK,
        cls_token=CLS,
        sep_token=SEP,
        mask_token=MASK,
        clean_up_tokenization_spaces=False,
        model_max_length=128,
    )
    out = args.out_dir / "tiny-encoder"
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    model.save_pretrained(out, safe_serialization=True)
    try:
        hf_tok.save_pretrained(out, save_jinja_files=False)
    except TypeError:  # older transformers
        hf_tok.save_pretrained(out)
    tc_path = out / "tokenizer_config.json"
    tc = json.loads(tc_path.read_text(encoding="utf-8"))
    tc.pop("chat_template", None)
    tc["tokenizer_class"] = "PreTrainedTokenizerFast"
    tc_path.write_text(json.dumps(tc, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    sentence_transformers_files(out, config.hidden_size)

    # What was saved loads back as the encoder it is.
    loaded = AutoModel.from_pretrained(out, dtype=torch.float32).eval()
    tok2 = AutoTokenizer.from_pretrained(out)
    with torch.no_grad():
        hidden = loaded(**tok2(["a rose"], return_tensors="pt")).last_hidden_state
    size = sum(p.stat().st_size for p in out.rglob("*") if p.is_file())
    n_params = sum(p.numel() for p in loaded.parameters())
    print(f"wrote {out} ({size} bytes, {n_params} parameters, {type(loaded).__name__}, hidden {tuple(hidden.shape)})")
    if size >= 1_000_000:
        print(f"fixture is {size} bytes; it must stay under 1 MB", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
