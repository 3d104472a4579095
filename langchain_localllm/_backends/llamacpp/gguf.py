"""Checking and reading GGUF model files before llama.cpp sees them.

llama.cpp aborts or fails obscurely on some bad inputs, so every file is checked
here first: the magic bytes tell GGUF from the legacy GGML family (which llama.cpp
dropped in August 2023) and from files that are not models at all; the header,
metadata and tensor table are then parsed with the ``gguf`` package, and every
tensor's data must lie inside the file (a truncated download fails here, with a
clear error, instead of inside the native loader).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from langchain_localllm.errors import (
    InvalidModelFileError,
    LegacyGGMLFormatError,
    ModelNotFoundError,
)

__all__ = ["GGUFInfo", "check_model_file", "read_gguf_info", "sniff_format"]

GGUF_MAGIC = b"GGUF"
_LEGACY_MAGICS = {
    # Stored as little-endian uint32, so the bytes on disk read backwards.
    b"lmgg": "GGML (unversioned)",
    b"fmgg": "GGMF",
    b"tjgg": "GGJT",
}

LEGACY_GGML_HELP = (
    "llama.cpp no longer loads GGML-family files (GGML/GGMF/GGJT, e.g. "
    "'*.ggmlv3.q4_K_S.bin'); it has read only GGUF since August 2023. "
    "Download a GGUF build of the same model instead (on the Hugging Face Hub, "
    "search for the model name plus 'GGUF', e.g. TheBloke/Llama-2-7B-Chat-GGUF, "
    "file llama-2-7b-chat.Q4_K_S.gguf), or convert the original weights with "
    "llama.cpp's convert_hf_to_gguf.py."
)


@dataclass(frozen=True)
class GGUFInfo:
    """What the package needs from a GGUF file's metadata.

    Attributes:
        path: The resolved path of the file.
        architecture: ``general.architecture`` (e.g. ``"llama"``).
        name: ``general.name`` if present.
        context_length: The trained context length, if the file states it.
        chat_template: ``tokenizer.chat_template`` if present.
        bos_token_id: ``tokenizer.ggml.bos_token_id`` if present.
        eos_token_id: ``tokenizer.ggml.eos_token_id`` if present.
        add_bos_token: ``tokenizer.ggml.add_bos_token`` if present.
        tensor_count: Number of tensors in the file.
    """

    path: Path
    architecture: str
    name: str | None
    context_length: int | None
    chat_template: str | None
    bos_token_id: int | None
    eos_token_id: int | None
    add_bos_token: bool | None
    tensor_count: int


def sniff_format(path: Path) -> str:
    """Return ``"gguf"`` for a GGUF file, or raise a clear error for anything else.

    Raises:
        ModelNotFoundError: The path does not exist or is not a regular file.
        LegacyGGMLFormatError: The file is GGML/GGMF/GGJT.
        InvalidModelFileError: The file is not a model llama.cpp can read.
    """
    check_model_file(path)
    with path.open("rb") as f:
        magic = f.read(4)
    if magic == GGUF_MAGIC:
        return "gguf"
    if magic in _LEGACY_MAGICS:
        msg = f"{path} is a legacy {_LEGACY_MAGICS[magic]} model file. {LEGACY_GGML_HELP}"
        raise LegacyGGMLFormatError(msg)
    msg = (
        f"{path} is not a GGUF model file (it starts with {magic!r}, GGUF files "
        f"start with {GGUF_MAGIC!r}). Point model_path at a .gguf file."
    )
    raise InvalidModelFileError(msg)


def check_model_file(path: Path) -> None:
    """Raise :class:`ModelNotFoundError` unless ``path`` is an existing regular file."""
    if not path.exists():
        msg = f"model file not found: {path}"
        raise ModelNotFoundError(msg)
    if path.is_dir():
        msg = f"model_path must be a .gguf file, but {path} is a directory; name the file inside it"
        raise ModelNotFoundError(msg)


def read_gguf_info(path: Path) -> GGUFInfo:
    """Validate a GGUF file's header, metadata and tensor table, and return its info.

    Raises:
        ModelNotFoundError: The path does not exist or is a directory.
        LegacyGGMLFormatError: The file is GGML/GGMF/GGJT.
        InvalidModelFileError: The file is not GGUF, or is truncated or corrupt.
    """
    sniff_format(path)
    from gguf import GGUFReader  # noqa: PLC0415 - numpy-heavy, only needed here

    size = path.stat().st_size
    try:
        reader = GGUFReader(path)  # a read-only memory map, released with `reader`
        fields = {
            name: reader.get_field(name)
            for name in (
                "general.architecture",
                "general.name",
                "tokenizer.chat_template",
                "tokenizer.ggml.bos_token_id",
                "tokenizer.ggml.eos_token_id",
                "tokenizer.ggml.add_bos_token",
            )
        }
        values: dict[str, Any] = {
            name: (field.contents() if field is not None else None) for name, field in fields.items()
        }
        arch = values["general.architecture"]
        ctx_field = reader.get_field(f"{arch}.context_length") if arch else None
        context_length = int(ctx_field.contents()) if ctx_field is not None else None
        overrun = [t.name for t in reader.tensors if t.data_offset + t.n_bytes > size]
        tensor_count = len(reader.tensors)
    except (ValueError, IndexError, KeyError, TypeError, OverflowError, UnicodeDecodeError) as e:
        msg = f"{path} is not a valid GGUF file (truncated or corrupt: {e}). Download it again."
        raise InvalidModelFileError(msg) from e
    if overrun:
        msg = (
            f"{path} is truncated: tensor data of {overrun[0]!r} and {len(overrun) - 1} more "
            f"lies past the end of the file ({size} bytes). Download it again."
        )
        raise InvalidModelFileError(msg)
    if not isinstance(arch, str) or not arch:
        msg = f"{path} has no general.architecture metadata; it is not a usable GGUF model"
        raise InvalidModelFileError(msg)
    return GGUFInfo(
        path=path,
        architecture=arch,
        name=values["general.name"],
        context_length=context_length,
        chat_template=values["tokenizer.chat_template"],
        bos_token_id=_opt_int(values["tokenizer.ggml.bos_token_id"]),
        eos_token_id=_opt_int(values["tokenizer.ggml.eos_token_id"]),
        add_bos_token=_opt_bool(values["tokenizer.ggml.add_bos_token"]),
        tensor_count=tensor_count,
    )


def _opt_int(value: Any) -> int | None:
    return None if value is None else int(value)


def _opt_bool(value: Any) -> bool | None:
    return None if value is None else bool(value)


def file_identity(path: Path) -> tuple[str, int, int]:
    """The cache identity of a file: real path, size and modification time (ns)."""
    real = os.path.realpath(path)
    st = Path(real).stat()
    return (real, st.st_size, st.st_mtime_ns)
