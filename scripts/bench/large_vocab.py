"""A large-vocabulary GGUF built from the tiny fixture model: for load-time benchmarks and tests.

The tiny model's 864 tokens are padded with dummy byte-level BPE tokens (and as many dummy
merges) up to ``n_vocab``, and ``token_embd`` / ``output`` grow to match (dummy rows are
zero), so llama.cpp loads it and generates exactly what the tiny model does as long as no
dummy token wins. Real large-vocabulary models (Gemma 3: 262,144 tokens) spend their load
time in the same places: the token, type and merge arrays.
"""

from __future__ import annotations

import string
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
TINY_GGUF = ROOT / "tests" / "fixtures" / "models" / "tiny-chat.gguf"
LARGE_VOCAB = 262_144
"""Gemma 3's vocabulary size."""


def _dummy_words(n: int, taken: set[str]) -> list[str]:
    """``n`` distinct ASCII words (byte-level BPE maps ASCII letters to themselves), none in ``taken``."""
    letters = string.ascii_lowercase
    out: list[str] = []
    i = 0
    while len(out) < n:
        word, k = "", i
        while True:
            word = letters[k % 26] + word
            k //= 26
            if not k:
                break
        i += 1
        token = f"\u0120qz{word}"  # "Ġqz...": a space-prefixed piece no real text in the benches uses
        if token not in taken:
            out.append(token)
    return out


def write_large_vocab_gguf(dst: Path, n_vocab: int = LARGE_VOCAB, src: Path = TINY_GGUF) -> Path:
    """Write ``src`` with its vocabulary padded to ``n_vocab`` tokens to ``dst``; returns ``dst``.

    Reused when ``dst`` already exists with the same size stamp (``dst`` + ``.stamp``).
    """
    import gguf
    import numpy as np

    stamp = dst.with_suffix(dst.suffix + ".stamp")
    key = f"{n_vocab} {src.stat().st_size}"
    if dst.exists() and stamp.exists() and stamp.read_text() == key:
        return dst
    reader = gguf.GGUFReader(str(src))
    tokens = [str(t) for t in reader.fields["tokenizer.ggml.tokens"].contents()]
    extra = n_vocab - len(tokens)
    if extra < 0:
        msg = f"{src.name} already has {len(tokens)} tokens (more than {n_vocab})"
        raise ValueError(msg)
    words = _dummy_words(extra, set(tokens))
    padded: dict[str, Any] = {
        "tokenizer.ggml.tokens": tokens + words,
        "tokenizer.ggml.token_type": [int(t) for t in reader.fields["tokenizer.ggml.token_type"].contents()]
        + [int(gguf.TokenType.NORMAL)] * extra,
        # One merge per dummy token ("Ġqzab c"), so the merge array grows like a real BPE vocabulary's.
        "tokenizer.ggml.merges": [str(m) for m in reader.fields["tokenizer.ggml.merges"].contents()]
        + [f"{w[:-1]} {w[-1]}" for w in words],
    }
    arch = str(reader.fields["general.architecture"].contents())
    dst.parent.mkdir(parents=True, exist_ok=True)
    writer = gguf.GGUFWriter(str(dst), arch)
    for field in reader.fields.values():
        if field.name.startswith("GGUF.") or field.name == "general.architecture":
            continue
        kind = field.types[0]
        sub_type = field.types[-1] if kind == gguf.GGUFValueType.ARRAY else None
        value = padded.get(field.name, field.contents())
        if field.name == f"{arch}.vocab_size":
            value = n_vocab
        writer.add_key_value(field.name, value, kind, sub_type=sub_type)
    datas = []
    for tensor in reader.tensors:
        data = np.asarray(tensor.data)
        if tensor.name in {"token_embd.weight", "output.weight"}:  # (n_vocab, n_embd) in numpy order
            data = np.concatenate([data, np.zeros((extra, data.shape[1]), dtype=data.dtype)])
        writer.add_tensor_info(tensor.name, data.shape, data.dtype, data.nbytes, tensor.tensor_type)
        datas.append(data)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_ti_data_to_file()
    for data in datas:
        writer.write_tensor_data(data)
    writer.close()
    stamp.write_text(key)
    return dst
