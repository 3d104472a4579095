"""Checking and reading GGUF model files before llama.cpp sees them.

llama.cpp aborts or fails obscurely on some bad inputs, so every file is checked
here first: the magic bytes tell GGUF from the legacy GGML family (which llama.cpp
dropped in August 2023) and from files that are not models at all; the header,
metadata and tensor table are then walked by :mod:`.gguf_header` (scalar values are
decoded, the token arrays only stepped over), and every tensor's data must lie inside
the file (a truncated download fails here, with a clear error, instead of inside the
native loader).
"""

from __future__ import annotations

import os
import re
import stat
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from langchain_localllm._backends.llamacpp.gguf_header import (
    INT32,
    MAX_ARRAY_ITEMS,
    GGUFHeader,
    GGUFHeaderError,
    read_array,
    read_header,
)
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
        add_eos_token: ``tokenizer.ggml.add_eos_token`` if present (BERT-like vocabularies close
            every text with ``[SEP]``).
        tensor_count: Number of tensors in the file.
        n_layer: ``<arch>.block_count``, checked against the ``blk.N`` tensors.
        n_embd: ``<arch>.embedding_length``.
        n_head: ``<arch>.attention.head_count``.
        n_head_kv: ``<arch>.attention.head_count_kv``.
        n_vocab: The number of tokens in the vocabulary.
        typed_control_ids: The tokens ``tokenizer.ggml.token_type`` marks CONTROL or UNKNOWN, in
            id order (empty without that array, or past :data:`MAX_TYPED_CONTROL` of them).
            llama.cpp retypes a few tokens by their text, so this is a hint, not the answer.
        causal: False for an encoder (``<arch>.attention.causal`` false, or an encoder
            architecture such as ``bert``): it embeds, it has no language-model head to generate with.
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
    n_layer: int | None = None
    n_embd: int | None = None
    n_head: int | None = None
    n_head_kv: int | None = None
    n_vocab: int | None = None
    typed_control_ids: tuple[int, ...] = ()
    add_eos_token: bool | None = None
    causal: bool = True


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
    """Raise unless ``path`` is an existing regular file (never opens a pipe, device or socket).

    Raises:
        ModelNotFoundError: Missing, a directory, or a symlink loop.
        InvalidModelFileError: Not a regular file (a named pipe, a device...).
    """
    try:
        mode = path.stat().st_mode  # follows symlinks
    except FileNotFoundError as e:
        msg = f"model file not found: {path}"
        raise ModelNotFoundError(msg) from e
    except OSError as e:  # ELOOP (a symlink loop), ENAMETOOLONG, EACCES...
        msg = f"model file {path} cannot be reached ({e.strerror or e}); check the path and its symlinks"
        raise ModelNotFoundError(msg) from e
    if stat.S_ISDIR(mode):
        msg = f"model_path must be a .gguf file, but {path} is a directory; name the file inside it"
        raise ModelNotFoundError(msg)
    if not stat.S_ISREG(mode):
        msg = f"{path} is not a regular file (a named pipe, socket or device); point model_path at a .gguf file"
        raise InvalidModelFileError(msg)


MAX_LAYERS = 4096
"""More ``block_count`` than any published model has; beyond it a file is refused."""
MAX_EXPERTS = 512
"""llama.cpp's own limit on experts per layer (``LLAMA_MAX_EXPERTS``)."""
MAX_CONTEXT = 1 << 24
"""Largest declared ``context_length`` accepted (16M tokens). llama-cpp-python sizes per-call
token buffers by it: 2^28 would make every tokenize call allocate 1 GB."""


def read_gguf_info(path: Path) -> GGUFInfo:
    """Validate a GGUF file's header, metadata, hyperparameters and tensor table; return its info.

    Raises:
        ModelNotFoundError: The path does not exist, is a directory or a symlink loop.
        LegacyGGMLFormatError: The file is GGML/GGMF/GGJT.
        InvalidModelFileError: The file is not GGUF, is truncated or corrupt, or its
            hyperparameters disagree with its tensors (which would crash llama.cpp).
    """
    sniff_format(path)
    try:
        header = read_header(path)
    except (GGUFHeaderError, MemoryError) as e:
        msg = f"{path} is not a valid GGUF file (truncated or corrupt: {e}). Download it again."
        raise InvalidModelFileError(msg) from e
    size = header.size
    values = header.values
    tensors = [(t.name, t.offset, t.n_bytes, list(t.shape)) for t in header.tensors]
    vocab = header.arrays.get("tokenizer.ggml.tokens")
    n_vocab = vocab.count if vocab is not None else None
    overrun = [name for name, offset, n_bytes, _ in tensors if offset + n_bytes > size]  # Python ints: no wrap
    if overrun:
        msg = (
            f"{path} is truncated: tensor data of {overrun[0]!r} and {len(overrun) - 1} more "
            f"lies past the end of the file ({size} bytes). Download it again."
        )
        raise InvalidModelFileError(msg)
    arch = values.get("general.architecture")
    if not isinstance(arch, str) or not arch:
        msg = f"{path} has no general.architecture metadata; it is not a usable GGUF model"
        raise InvalidModelFileError(msg)
    hyper = _check_hyperparameters(path, arch, values, tensors)
    return GGUFInfo(
        path=path,
        architecture=arch,
        name=values.get("general.name"),
        context_length=hyper.get("context_length"),
        chat_template=values.get("tokenizer.chat_template"),
        bos_token_id=_opt_int(values.get("tokenizer.ggml.bos_token_id")),
        eos_token_id=_opt_int(values.get("tokenizer.ggml.eos_token_id")),
        add_bos_token=_opt_bool(values.get("tokenizer.ggml.add_bos_token")),
        tensor_count=len(tensors),
        n_layer=hyper.get("block_count"),
        n_embd=hyper.get("embedding_length"),
        n_head=hyper.get("attention.head_count"),
        n_head_kv=hyper.get("attention.head_count_kv"),
        n_vocab=n_vocab,
        typed_control_ids=_typed_control_ids(path, header, n_vocab),
        add_eos_token=_opt_bool(values.get("tokenizer.ggml.add_eos_token")),
        causal=_opt_bool(values.get(f"{arch}.attention.causal")) is not False and arch not in ENCODER_ARCHITECTURES,
    )


ENCODER_ARCHITECTURES = frozenset(
    {"bert", "nomic-bert", "nomic-bert-moe", "jina-bert-v2", "jina-bert-v3", "neo-bert", "modern-bert", "t5encoder"}
)
"""llama.cpp architectures with bidirectional attention and no LM head (embedding models)."""


_TOKEN_TYPE_UNKNOWN = 2
_TOKEN_TYPE_CONTROL = 3
MAX_TYPED_CONTROL = 1 << 16
"""More CONTROL-typed tokens than this are not listed (the loader then finds them all itself)."""


def _typed_control_ids(path: Path, header: GGUFHeader, n_vocab: int | None) -> tuple[int, ...]:
    """The ids ``tokenizer.ggml.token_type`` marks CONTROL or UNKNOWN: one read, one numpy pass."""
    types = header.arrays.get("tokenizer.ggml.token_type")
    if not n_vocab or types is None or types.item_type != INT32 or types.count < n_vocab or n_vocab > MAX_ARRAY_ITEMS:
        return ()  # llama.cpp refuses a short token_type array; without one every token is NORMAL
    import numpy as np  # noqa: PLC0415 - llama_cpp imports it anyway

    try:
        kinds = read_array(path, types, n_vocab)
    except GGUFHeaderError:
        return ()
    ids = np.flatnonzero((kinds == _TOKEN_TYPE_CONTROL) | (kinds == _TOKEN_TYPE_UNKNOWN))
    return tuple(ids.tolist()) if len(ids) <= MAX_TYPED_CONTROL else ()


_COUNTS = (
    "block_count",
    "context_length",
    "embedding_length",
    "attention.head_count",
    "attention.head_count_kv",
    "expert_count",
    "expert_used_count",
)


def _check_hyperparameters(
    path: Path, arch: str, values: dict[str, Any], tensors: list[tuple[str, int, int, list[int]]]
) -> dict[str, int]:
    """The integer hyperparameters, checked against the tensors and llama.cpp's limits."""
    hyper: dict[str, int] = {}
    for key in _COUNTS:
        value = values.get(f"{arch}.{key}")
        if value is None:
            continue
        if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value < 1 << 32:
            raise _crafted(path, f"{arch}.{key} = {value!r} is not a valid count")
        hyper[key] = value
    split = values.get("split.count")
    if not (isinstance(split, int) and split > 1):  # a shard of a split model holds only some layers
        _check_layers(path, arch, hyper.get("block_count"), tensors)
    context = hyper.get("context_length")
    if context is not None and not 0 < context <= MAX_CONTEXT:
        raise _crafted(path, f"{arch}.context_length = {context} (must be 1 to {MAX_CONTEXT})")
    _check_experts(path, arch, hyper, tensors)
    return hyper


def _crafted(path: Path, detail: str) -> InvalidModelFileError:
    return InvalidModelFileError(
        f"{path} is corrupt or crafted: {detail}. llama.cpp would abort on it; use an unmodified GGUF file."
    )


def _check_layers(path: Path, arch: str, n_layer: int | None, tensors: list[tuple[str, int, int, list[int]]]) -> None:
    if n_layer is None:
        return
    if n_layer > MAX_LAYERS:
        raise _crafted(path, f"{arch}.block_count = {n_layer} (more than {MAX_LAYERS})")
    layers = {int(m.group(1)) for name, *_ in tensors if (m := _BLOCK.search(name))}
    if layers != set(range(n_layer)):
        have = f"blk.0 to blk.{max(layers)}" if layers else "none"
        raise _crafted(path, f"{arch}.block_count = {n_layer} but the file has layer tensors {have}")


def _check_experts(
    path: Path, arch: str, hyper: dict[str, int], tensors: list[tuple[str, int, int, list[int]]]
) -> None:
    experts = hyper.get("expert_count", 0)
    used = hyper.get("expert_used_count", 0)
    shapes = [shape for name, *_, shape in tensors if name.endswith("_exps.weight") and len(shape) == 3]  # noqa: PLR2004
    if experts > MAX_EXPERTS:
        raise _crafted(path, f"{arch}.expert_count = {experts} (llama.cpp supports at most {MAX_EXPERTS})")
    if experts and not shapes:
        raise _crafted(path, f"{arch}.expert_count = {experts} on a model without expert tensors")
    if shapes and any(shape[2] != experts for shape in shapes):  # (in, out, experts)
        raise _crafted(path, f"{arch}.expert_count = {experts} does not match the expert tensors")
    if experts and used > experts:
        raise _crafted(path, f"{arch}.expert_used_count = {used} exceeds expert_count = {experts}")


_BLOCK = re.compile(r"(?:^|\.)blk\.(\d+)\.")
"""Layer tensors: ``blk.N.*``, and ``enc.blk.N.*`` / ``dec.blk.N.*`` in encoder-decoder files."""


def _opt_int(value: Any) -> int | None:
    return None if value is None else int(value)


def _opt_bool(value: Any) -> bool | None:
    return None if value is None else bool(value)


def file_identity(path: Path) -> tuple[str, int, int]:
    """The cache identity of a file: real path, size and modification time (ns)."""
    real = os.path.realpath(path)
    st = Path(real).stat()
    return (real, st.st_size, st.st_mtime_ns)
