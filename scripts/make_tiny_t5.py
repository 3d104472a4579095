#!/usr/bin/env python
"""Write the tiny, random-initialised T5 fixture used by the seq2seq tests.

``tests/fixtures/models/tiny-t5/`` holds a ``T5ForConditionalGeneration`` (1 encoder
and 1 decoder layer, d_model 32, ~30k parameters) with a byte-level tokenizer that
has no merges (every byte is a token, so any Unicode text round-trips) and no chat
template, so ``HFLocalChatModel`` uses its documented plain-text fallback prompt.

The weights are random (seeded, so the files are reproducible): tests that use this
model check mechanics (only new tokens returned, usage counts, stop/length reasons,
streaming equals invoke, batching equals one-by-one), never the text. The LM-head
rows of all but printable-ASCII bytes are zeroed so greedy output is readable text;
the embeddings are untied so inputs still see every byte.

Usage::

    .venv/bin/python scripts/make_tiny_t5.py [--out-dir tests/fixtures/models]
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

PAD, EOS, UNK = "<pad>", "</s>", "<unk>"
SPECIAL = [PAD, EOS, UNK]  # ids 0, 1, 2 as in T5


def build_tokenizer():
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors

    alphabet = sorted(pre_tokenizers.ByteLevel.alphabet(), key=bytes_of)
    vocab = {tok: i for i, tok in enumerate(SPECIAL)}
    for ch in alphabet:
        vocab[ch] = len(vocab)
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[], unk_token=UNK))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tok.decoder = decoders.ByteLevel()
    tok.add_special_tokens(SPECIAL)
    tok.post_processor = processors.TemplateProcessing(single=f"$A {EOS}", special_tokens=[(EOS, 1)])
    return tok


_BYTE_OF: dict[str, int] = {}


def bytes_of(ch: str) -> int:
    """The byte a ByteLevel alphabet character stands for."""
    if not _BYTE_OF:
        # GPT-2's bytes_to_unicode table.
        bs = (
            list(range(ord("!"), ord("~") + 1))
            + list(range(ord("¡"), ord("¬") + 1))
            + list(range(ord("®"), ord("ÿ") + 1))
        )
        cs = bs[:]
        n = 0
        for b in range(256):
            if b not in bs:
                bs.append(b)
                cs.append(256 + n)
                n += 1
        _BYTE_OF.update({chr(c): b for b, c in zip(bs, cs, strict=True)})
    return _BYTE_OF[ch]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out-dir", type=Path, default=ROOT / "tests/fixtures/models")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)

    import torch
    from transformers import (
        AutoModelForSeq2SeqLM,
        AutoTokenizer,
        GenerationConfig,
        PreTrainedTokenizerFast,
        T5Config,
        T5ForConditionalGeneration,
    )

    torch.manual_seed(args.seed)
    raw = build_tokenizer()
    n_vocab = raw.get_vocab_size(with_added_tokens=True)
    vocab_size = (n_vocab + 31) // 32 * 32
    for text in ["Hello, world!", "Chinese 中文 emoji 🌹 \t\n x"]:
        ids = raw.encode(text).ids
        if ids[-1] != 1 or raw.decode(ids, skip_special_tokens=True) != text:
            print(f"tokenizer does not round-trip {text!r}: {ids}", file=sys.stderr)
            return 1

    config = T5Config(
        vocab_size=vocab_size,
        d_model=32,
        d_kv=16,
        d_ff=64,
        num_layers=1,
        num_decoder_layers=1,
        num_heads=2,
        relative_attention_num_buckets=8,
        relative_attention_max_distance=32,
        feed_forward_proj="relu",
        tie_word_embeddings=False,
        dropout_rate=0.0,
        pad_token_id=0,
        eos_token_id=1,
        decoder_start_token_id=0,
        n_positions=512,
    )
    model = T5ForConditionalGeneration(config).float().eval()
    with torch.no_grad():
        # Greedy output stays printable ASCII: other byte tokens (and unused rows) never win.
        vocab = raw.get_vocab(with_added_tokens=True)
        for tok, idx in vocab.items():
            if tok not in SPECIAL and not 0x20 <= bytes_of(tok) <= 0x7E:
                model.lm_head.weight[idx].zero_()
        model.lm_head.weight[n_vocab:].zero_()
        model.lm_head.weight[0].zero_()  # <pad>
        model.lm_head.weight[2].zero_()  # <unk>
        model.lm_head.weight.mul_(4.0)  # wide logit gaps: greedy choices are robust to float noise
    model.generation_config = GenerationConfig(
        decoder_start_token_id=0, eos_token_id=1, pad_token_id=0, do_sample=False
    )

    hf_tok = PreTrainedTokenizerFast(
        tokenizer_object=raw,
        eos_token=EOS,
        pad_token=PAD,
        unk_token=UNK,
        clean_up_tokenization_spaces=False,
        model_max_length=512,
    )
    out = args.out_dir / "tiny-t5"
    out.mkdir(parents=True, exist_ok=True)
    for old in out.iterdir():
        old.unlink()
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

    # Verify what was saved loads back and generates.
    tok2 = AutoTokenizer.from_pretrained(out)
    model2 = AutoModelForSeq2SeqLM.from_pretrained(out, dtype=torch.float32).eval()
    if getattr(tok2, "chat_template", None) is not None:
        print("the saved tokenizer has a chat template; it must not", file=sys.stderr)
        return 1
    enc = tok2("Hello", return_tensors="pt")
    with torch.no_grad():
        gen = model2.generate(**enc, max_new_tokens=12, do_sample=False)
    text = tok2.decode(gen[0], skip_special_tokens=True)
    size = sum(p.stat().st_size for p in out.iterdir())
    n_params = sum(p.numel() for p in model2.parameters())
    print(f"wrote {out} ({size} bytes, {n_params} parameters); greedy answer to 'Hello': {text!r}")
    if size >= 1_000_000:
        print(f"fixture is {size} bytes; it must stay under 1 MB", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
