#!/usr/bin/env python
"""Write deliberately unusable model files to ``tests/fixtures/models/bad/``.

* ``legacy-ggjt-v3.ggmlv3.q4_K_S.bin``  old GGJT v3 container (pre-GGUF llama.cpp)
* ``legacy-ggml.bin``                   unversioned GGML container
* ``legacy-ggmf.bin``                   GGMF v1 container
* ``truncated.gguf``                    first 300 bytes of tiny-chat.gguf (cut inside the metadata)
* ``random-bytes.gguf``                 512 deterministic random bytes
* ``not-a-model.txt``                   plain text

Usage::

    .venv/bin/python scripts/make_bad_fixtures.py [--out-dir tests/fixtures/models]

Needs ``<out-dir>/tiny-chat.gguf`` (run ``scripts/train_tiny_model.py`` first).
"""

from __future__ import annotations

import argparse
import random
import struct
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

GGML_MAGIC = 0x67676D6C  # "ggml" (unversioned)
GGMF_MAGIC = 0x67676D66  # "ggmf" (versioned, v1)
GGJT_MAGIC = 0x67676A74  # "ggjt" (versioned, v1-v3, mmap-able)


def _legacy(magic: int, version: int | None, ftype: int) -> bytes:
    # llama.cpp legacy header: magic, [version], n_vocab, n_embd, n_mult, n_head, n_layer, n_rot, ftype
    out = struct.pack("<I", magic)
    if version is not None:
        out += struct.pack("<I", version)
    n_vocab = 8
    out += struct.pack("<7I", n_vocab, 64, 256, 4, 2, 16, ftype)
    for i in range(n_vocab):  # vocab: len-prefixed bytes + score (ggmf/ggjt) or no score (ggml)
        piece = f"tok{i}".encode()
        out += struct.pack("<I", len(piece)) + piece
        if version is not None:
            out += struct.pack("<f", -float(i))
    # start of a tensor record: n_dims, name_len, dtype, dims, name, then zeros
    name = b"tok_embeddings.weight"
    out += struct.pack("<3I", 2, len(name), ftype) + struct.pack("<2I", 64, n_vocab) + name
    return out + bytes(256 - len(out) % 32)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out-dir", type=Path, default=ROOT / "tests/fixtures/models")
    args = ap.parse_args(argv)
    bad = args.out_dir / "bad"
    bad.mkdir(parents=True, exist_ok=True)

    (bad / "legacy-ggjt-v3.ggmlv3.q4_K_S.bin").write_bytes(_legacy(GGJT_MAGIC, 3, 14))  # 14 = MOSTLY_Q4_K_S
    (bad / "legacy-ggml.bin").write_bytes(_legacy(GGML_MAGIC, None, 2))
    (bad / "legacy-ggmf.bin").write_bytes(_legacy(GGMF_MAGIC, 1, 2))

    src = args.out_dir / "tiny-chat.gguf"
    (bad / "truncated.gguf").write_bytes(src.read_bytes()[:300])

    rng = random.Random(1234)
    data = bytes(rng.randrange(256) for _ in range(512))
    (bad / "random-bytes.gguf").write_bytes(data)

    (bad / "not-a-model.txt").write_text("This is not a model file. It is plain text.\n", encoding="utf-8")
    for p in sorted(bad.iterdir()):
        print(f"{p} ({p.stat().st_size} bytes)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
