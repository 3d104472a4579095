"""A local checkpoint directory, checked before transformers reads it; load failures, named.

transformers reports a directory with only ``config.json``, a corrupt ``tokenizer.json``
or a truncated ``model.safetensors`` as assorted ``OSError``/``ValueError``/
``JSONDecodeError``/``SafetensorError`` messages, sometimes deep in a traceback. Each is
a :class:`~langchain_localllm.errors.ModelLoadError` here that names the file and the fix.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

from langchain_localllm.errors import LocalLLMError, ModelLoadError, ModelNotFoundError

__all__ = ["check_checkpoint", "from_pretrained"]

T = TypeVar("T")

TOKENIZER_FILES = (
    "tokenizer.json",
    "tokenizer.model",
    "vocab.json",
    "vocab.txt",
    "spiece.model",
    "sentencepiece.bpe.model",
)
WEIGHT_PATTERNS = ("*.safetensors", "pytorch_model*.bin", "model*.bin", "tf_model.h5", "flax_model.msgpack")
MAX_HEADER = 100 * 2**20
"""A safetensors header larger than this is corrupt (real ones are kilobytes to a few MB)."""


def _json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        msg = f"{path} is not valid JSON ({e}); download or save the checkpoint again"
        raise ModelLoadError(msg) from e


def check_checkpoint(directory: Path) -> None:
    """Check a local checkpoint directory: config, tokenizer and weights files.

    Raises:
        ModelLoadError: A file is missing, not valid JSON, or truncated, naming it and the fix.
    """
    config = directory / "config.json"
    if not config.is_file():
        msg = (
            f"{directory} has no config.json, so it is not a Hugging Face checkpoint directory; save the model "
            "there with model.save_pretrained(...) (it writes config.json and the weights)"
        )
        raise ModelLoadError(msg)
    data = _json(config)
    if not isinstance(data, dict) or not data.get("model_type"):
        msg = f"{config} has no model_type; it is not a transformers model config (save the model again)"
        raise ModelLoadError(msg)
    present = [name for name in TOKENIZER_FILES if (directory / name).is_file()]
    if not present:
        msg = (
            f"{directory} has no tokenizer files ({', '.join(TOKENIZER_FILES[:3])}...); save the tokenizer "
            "into it with tokenizer.save_pretrained(...)"
        )
        raise ModelLoadError(msg)
    if "tokenizer.json" in present:
        _json(directory / "tokenizer.json")
    weights = [p for pattern in WEIGHT_PATTERNS for p in directory.glob(pattern)]
    if not weights:
        msg = f"{directory} has no weights file (model.safetensors, pytorch_model.bin...); save the model again"
        raise ModelLoadError(msg)
    for path in weights:
        if path.suffix == ".safetensors":
            _check_safetensors(path)


def _check_safetensors(path: Path) -> None:
    """The header parses and every tensor's bytes lie inside the file."""

    def corrupt(detail: str) -> ModelLoadError:
        return ModelLoadError(f"{path} is truncated or corrupt ({detail}); download or save the weights again")

    size = path.stat().st_size
    with path.open("rb") as f:
        head = f.read(8)
        if len(head) < 8:  # noqa: PLR2004 - the 8-byte header length
            raise corrupt(f"{size} bytes, shorter than a safetensors header")
        n = int.from_bytes(head, "little")
        if n > min(size - 8, MAX_HEADER):
            raise corrupt(f"the header claims {n} bytes")
        raw = f.read(n)
    try:
        header = json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise corrupt(f"the header is not JSON: {e}") from e
    data = size - 8 - n
    if not isinstance(header, dict):
        raise corrupt("the header is not a JSON object")
    for name, meta in header.items():
        if name == "__metadata__":
            continue
        offsets = meta.get("data_offsets") if isinstance(meta, dict) else None
        if not (isinstance(offsets, list) and len(offsets) == 2 and all(isinstance(o, int) for o in offsets)):  # noqa: PLR2004
            raise corrupt(f"tensor {name!r} has no valid data_offsets")
        begin, end = offsets
        if not 0 <= begin <= end <= data:
            raise corrupt(f"tensor {name!r} ends at byte {end} but the file holds {data} bytes of tensor data")


def from_pretrained(load: Callable[..., T], source: str, what: str, *, local: bool, **kwargs: Any) -> T:
    """``load(source, **kwargs)`` with transformers' failures mapped into the error tree.

    Raises:
        ModelNotFoundError: Not found (a hub id absent from the cache while offline, ...).
        ModelLoadError: Everything else, with the fix (``trust_remote_code``, an upgrade...).
    """
    try:
        return load(source, **kwargs)
    except LocalLLMError:
        raise
    except OSError as e:
        if local:
            msg = f"transformers could not read the {what} of {source} ({e})"
            raise ModelLoadError(msg) from e
        no_downloads = kwargs.get("local_files_only")
        where = "in the local Hugging Face cache (downloads are off)" if no_downloads else "locally or on the Hub"
        msg = f"model {source!r} was not found {where}: {e}"
        raise ModelNotFoundError(msg) from e
    except Exception as e:  # transformers raises ValueError, KeyError, RuntimeError... for the same kind of failure
        raise _load_error(e, source, what) from e


def _load_error(error: Exception, source: str, what: str) -> ModelLoadError:
    text = str(error)
    if "trust_remote_code" in text:
        return ModelLoadError(
            f"{source!r} ships its own modelling code, which runs only with trust_remote_code=True; set it only "
            f"if you trust the checkpoint's author (the code runs with your permissions). ({text[:200]})"
        )
    if "Unrecognized" in text or "does not recognize this architecture" in text or "model_type" in text:
        return ModelLoadError(
            f"the installed transformers does not know the architecture of {source!r} ({text[:200]}); upgrade it "
            "(pip install -U transformers) or check config.json's model_type"
        )
    return ModelLoadError(f"transformers could not load the {what} of {source!r}: {type(error).__name__}: {text}")
