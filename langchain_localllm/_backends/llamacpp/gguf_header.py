"""A bounded reader of GGUF headers: the metadata values and the tensor table, not the token arrays.

``gguf.GGUFReader`` parses every element of every array into numpy views, in Python: 8 to 25
seconds for a 49k- or 262k-token vocabulary, where the package needs a few scalar keys and
the tensor table. This reader walks the header in place, in a read-only memory map: scalar
and string values are decoded; numeric arrays are skipped by their byte length, string
arrays by stepping over their length prefixes (about 65 ns a string: 35 ms for the 524k
strings of a 262k-token vocabulary and its merges; a numpy pass that finds the prefixes by
their zero bytes measured no faster).
Every count and length is checked against the bytes left in the file before it is used, so
a truncated or crafted header fails with :class:`GGUFHeaderError` instead of allocating
gigabytes or looping for minutes.

Layout (GGUF v2 and v3, little-endian): ``"GGUF"``, u32 version, u64 tensor count, u64 KV
count; each KV is a string key, a u32 value type and the value (an array is a u32 item
type, a u64 count and the items); each tensor info is a string name, u32 n_dims, n_dims u64
dimensions, u32 ggml type and a u64 offset into the data section, which starts at the next
multiple of ``general.alignment`` (32 by default). A string is a u64 length and UTF-8 bytes.
"""

from __future__ import annotations

import mmap
import os
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any

__all__ = ["ArrayInfo", "GGUFHeader", "GGUFHeaderError", "TensorInfo", "read_array", "read_header"]

GGUF_MAGIC = b"GGUF"
SUPPORTED_VERSIONS = (2, 3)
DEFAULT_ALIGNMENT = 32
MAX_DIMS = 4
"""``GGML_MAX_DIMS``: llama.cpp refuses tensors with more dimensions."""
MAX_ARRAY_ITEMS = 1 << 25
"""Most string or nested-array items walked in one file (32M; the largest vocabularies and merge
lists have about 1M each): a bound on the walk's time, whatever the counts in the file say."""
MAX_NESTING = 8
"""Deepest array of arrays accepted."""

# GGUF value types (gguf.GGUFValueType).
UINT8, INT8, UINT16, INT16, UINT32, INT32, FLOAT32, BOOL, STRING, ARRAY, UINT64, INT64, FLOAT64 = range(13)
_FORMATS = {
    UINT8: "B",
    INT8: "b",
    UINT16: "H",
    INT16: "h",
    UINT32: "I",
    INT32: "i",
    FLOAT32: "f",
    BOOL: "?",
    UINT64: "Q",
    INT64: "q",
    FLOAT64: "d",
}
_SCALARS = {kind: struct.Struct("<" + code) for kind, code in _FORMATS.items()}
_U32 = struct.Struct("<I")
_U64 = struct.Struct("<Q")
_U64_PAIR = struct.Struct("<QQ")
_TENSOR_TAIL = struct.Struct("<IQ")  # ggml type, data offset

# ggml type id -> (elements per block, bytes per block); gguf.GGML_QUANT_SIZES as of gguf 0.19.
# A type missing here is looked up in the installed gguf package (imported only then).
_GGML_SIZES: dict[int, tuple[int, int]] = {
    0: (1, 4),  # F32
    1: (1, 2),  # F16
    2: (32, 18),  # Q4_0
    3: (32, 20),  # Q4_1
    6: (32, 22),  # Q5_0
    7: (32, 24),  # Q5_1
    8: (32, 34),  # Q8_0
    9: (32, 40),  # Q8_1
    10: (256, 84),  # Q2_K
    11: (256, 110),  # Q3_K
    12: (256, 144),  # Q4_K
    13: (256, 176),  # Q5_K
    14: (256, 210),  # Q6_K
    15: (256, 292),  # Q8_K
    16: (256, 66),  # IQ2_XXS
    17: (256, 74),  # IQ2_XS
    18: (256, 98),  # IQ3_XXS
    19: (256, 50),  # IQ1_S
    20: (32, 18),  # IQ4_NL
    21: (256, 110),  # IQ3_S
    22: (256, 82),  # IQ2_S
    23: (256, 136),  # IQ4_XS
    24: (1, 1),  # I8
    25: (1, 2),  # I16
    26: (1, 4),  # I32
    27: (1, 8),  # I64
    28: (1, 8),  # F64
    29: (256, 56),  # IQ1_M
    30: (1, 2),  # BF16
    34: (256, 54),  # TQ1_0
    35: (256, 66),  # TQ2_0
    39: (32, 17),  # MXFP4
    40: (64, 36),  # NVFP4
    41: (128, 18),  # Q1_0
}


class GGUFHeaderError(ValueError):
    """The header is truncated, corrupt or crafted; the message says what and where."""


@dataclass(frozen=True)
class ArrayInfo:
    """Where an array value lies in the file (its items are not read).

    Attributes:
        item_type: The GGUF value type of the items (``ARRAY`` for an array of arrays).
        count: The number of items.
        offset: The file offset of the first item.
        nbytes: The bytes all items take.
    """

    item_type: int
    count: int
    offset: int
    nbytes: int


@dataclass(frozen=True)
class TensorInfo:
    """One entry of the tensor table.

    Attributes:
        name: The tensor's name.
        shape: Its dimensions as stored (innermost first, ggml's ``ne`` order).
        ggml_type: Its ggml type id.
        offset: The file offset of its data (a Python int: a crafted offset cannot wrap).
        n_bytes: The bytes its data takes.
    """

    name: str
    shape: tuple[int, ...]
    ggml_type: int
    offset: int
    n_bytes: int


@dataclass(frozen=True)
class GGUFHeader:
    """A GGUF file's header, as :func:`read_header` found it.

    Attributes:
        version: The GGUF version (2 or 3).
        values: Every scalar and string value, by key (Python ``int``, ``float``, ``bool``, ``str``).
        arrays: Where every array value lies, by key.
        offsets: The file offset of every KV entry, by key (in file order).
        tensors: The tensor table, in file order.
        data_offset: The file offset of the data section.
        size: The file's size in bytes.
    """

    version: int
    values: dict[str, Any]
    arrays: dict[str, ArrayInfo]
    offsets: dict[str, int]
    tensors: tuple[TensorInfo, ...]
    data_offset: int
    size: int


def read_header(path: Path) -> GGUFHeader:
    """Walk the header of the GGUF file at ``path``.

    Raises:
        GGUFHeaderError: The file is not GGUF v2/v3 little-endian, or its header is truncated,
            corrupt or crafted (a length or count past the end of the file, a duplicate key or
            tensor, an unknown type, more than :data:`MAX_ARRAY_ITEMS` items to walk...).
        OSError: The file cannot be read.
    """
    with path.open("rb") as f:
        size = os.fstat(f.fileno()).st_size
        if size < 4 + 4 + 16:  # magic, version, counts
            msg = f"the file is {size} bytes, shorter than a GGUF header"
            raise GGUFHeaderError(msg)
        with mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as mapped:
            view = memoryview(mapped)
            try:
                return _Walker(view, size).header()
            finally:
                view.release()


def read_array(path: Path, info: ArrayInfo, count: int) -> Any:
    """The first ``count`` items of a numeric array as a numpy array (one read, one ``frombuffer``).

    Raises:
        GGUFHeaderError: The array is not numeric or holds fewer than ``count`` items.
    """
    import numpy as np  # noqa: PLC0415 - llama_cpp imports it anyway; not needed to walk a header

    code = _FORMATS.get(info.item_type)
    if code is None or not 0 <= count <= info.count:
        msg = f"cannot read {count} numeric items from an array of {info.count} items of type {info.item_type}"
        raise GGUFHeaderError(msg)
    dtype = np.dtype("<" + code)
    with path.open("rb") as f:
        f.seek(info.offset)
        data = f.read(count * dtype.itemsize)
    if len(data) != count * dtype.itemsize:
        msg = f"the array at byte {info.offset} runs past the end of the file"
        raise GGUFHeaderError(msg)
    return np.frombuffer(data, dtype=dtype)


def ggml_type_size(ggml_type: int) -> tuple[int, int] | None:
    """``(elements per block, bytes per block)`` of a ggml type, or None for an unknown type."""
    known = _GGML_SIZES.get(ggml_type)
    if known is not None:
        return known
    try:
        from gguf import GGML_QUANT_SIZES, GGMLQuantizationType  # noqa: PLC0415 - a newer type only
    except ImportError:
        return None
    try:
        return GGML_QUANT_SIZES.get(GGMLQuantizationType(ggml_type))
    except ValueError:
        return None


class _Walker:
    """One pass over a header held in a buffer; ``pos`` only moves forward."""

    def __init__(self, buf: memoryview, size: int) -> None:
        self.buf = buf
        self.size = size
        self.pos = 0
        self.items_left = MAX_ARRAY_ITEMS

    def fail(self, detail: str) -> GGUFHeaderError:
        return GGUFHeaderError(f"{detail} (at byte {self.pos} of {self.size})")

    def need(self, n: int, what: str) -> None:
        if n > self.size - self.pos:
            raise self.fail(f"{what} needs {n} bytes, past the end of the file")

    def u32(self, what: str) -> int:
        self.need(4, what)
        (value,) = _U32.unpack_from(self.buf, self.pos)
        self.pos += 4
        return int(value)

    def u64(self, what: str) -> int:
        self.need(8, what)
        (value,) = _U64.unpack_from(self.buf, self.pos)
        self.pos += 8
        return int(value)

    def string(self, what: str) -> str:
        n = self.u64(f"the length of {what}")
        self.need(n, what)
        raw = bytes(self.buf[self.pos : self.pos + n])
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError as e:
            raise self.fail(f"{what} is not UTF-8 ({e})") from e
        self.pos += n
        return text

    def header(self) -> GGUFHeader:
        if bytes(self.buf[:4]) != GGUF_MAGIC:
            raise self.fail(f"the magic is {bytes(self.buf[:4])!r}, not {GGUF_MAGIC!r}")
        self.pos = 4
        version = self.u32("the version")
        if version & 0xFFFF == 0 and version:
            raise self.fail("the file is big-endian (its version reads byte-swapped); llama.cpp reads little-endian")
        if version not in SUPPORTED_VERSIONS:
            raise self.fail(f"GGUF version {version} (this reader handles versions 2 and 3)")
        self.need(16, "the tensor and KV counts")
        n_tensors, n_kv = (int(v) for v in _U64_PAIR.unpack_from(self.buf, self.pos))
        self.pos += 16
        values, arrays, offsets = self.metadata(n_kv)
        # A tensor info takes at least 24 bytes: name length, n_dims, type, offset.
        if n_tensors > (self.size - self.pos) // 24:
            raise self.fail(f"{n_tensors} tensor infos cannot fit in the file")
        entries = [self.tensor_info() for _ in range(n_tensors)]
        alignment = values.get("general.alignment", DEFAULT_ALIGNMENT)
        if alignment <= 0 or alignment & (alignment - 1):
            raise self.fail(f"general.alignment = {alignment} is not a power of two")
        data_offset = -(-self.pos // alignment) * alignment
        names: set[str] = set()
        tensors = []
        for name, shape, ggml_type, offset, n_bytes in entries:
            if name in names:
                raise self.fail(f"duplicate tensor {name!r}")
            names.add(name)
            tensors.append(TensorInfo(name, shape, ggml_type, data_offset + offset, n_bytes))
        return GGUFHeader(version, values, arrays, offsets, tuple(tensors), data_offset, self.size)

    def metadata(self, n_kv: int) -> tuple[dict[str, Any], dict[str, ArrayInfo], dict[str, int]]:
        # A KV entry takes at least 13 bytes: key length, value type, a 1-byte value.
        if n_kv > (self.size - self.pos) // 13:
            raise self.fail(f"{n_kv} metadata entries cannot fit in the file")
        values: dict[str, Any] = {}
        arrays: dict[str, ArrayInfo] = {}
        offsets: dict[str, int] = {}
        for _ in range(n_kv):
            start = self.pos
            key = self.string("a metadata key")
            if key in offsets:
                raise self.fail(f"duplicate metadata key {key!r}")
            offsets[key] = start
            kind = self.u32(f"the type of {key!r}")
            if key == "general.alignment" and kind != UINT32:
                raise self.fail(f"general.alignment has type {kind}, not UINT32")
            if kind == ARRAY:
                arrays[key] = self.array(key, 0)
            else:
                values[key] = self.scalar(kind, key)
        return values, arrays, offsets

    def scalar(self, kind: int, key: str) -> Any:
        if kind == STRING:
            return self.string(f"the value of {key!r}")
        fmt = _SCALARS.get(kind)
        if fmt is None:
            raise self.fail(f"{key!r} has unknown value type {kind}")
        self.need(fmt.size, f"the value of {key!r}")
        (value,) = fmt.unpack_from(self.buf, self.pos)
        self.pos += fmt.size
        return value

    def take_items(self, count: int, key: str) -> None:
        if count > self.items_left:
            raise self.fail(f"{key!r} holds {count} items, more than this reader walks in a file ({MAX_ARRAY_ITEMS})")
        self.items_left -= count

    def array(self, key: str, depth: int) -> ArrayInfo:
        kind = self.u32(f"the item type of {key!r}")
        count = self.u64(f"the length of {key!r}")
        start = self.pos
        left = self.size - start
        if kind == STRING:
            if count > left // 8:  # every string has its 8-byte length
                raise self.fail(f"{key!r} claims {count} strings, more than the file can hold")
            self.take_items(count, key)
            self.pos = _skip_strings(self.buf, start, count, self.size, key)
        elif kind == ARRAY:
            if depth >= MAX_NESTING:
                raise self.fail(f"{key!r} nests arrays more than {MAX_NESTING} deep")
            if count > left // 12:  # every array has its item type and length
                raise self.fail(f"{key!r} claims {count} arrays, more than the file can hold")
            self.take_items(count, key)
            for _ in range(count):
                self.array(key, depth + 1)
        else:
            fmt = _SCALARS.get(kind)
            if fmt is None:
                raise self.fail(f"{key!r} is an array of unknown type {kind}")
            self.need(count * fmt.size, f"the {count} items of {key!r}")
            self.pos += count * fmt.size
        return ArrayInfo(kind, count, start, self.pos - start)

    def tensor_info(self) -> tuple[str, tuple[int, ...], int, int, int]:
        name = self.string("a tensor name")
        n_dims = self.u32(f"the dimension count of tensor {name!r}")
        if n_dims > MAX_DIMS:
            raise self.fail(f"tensor {name!r} has {n_dims} dimensions (ggml supports at most {MAX_DIMS})")
        self.need(8 * n_dims + _TENSOR_TAIL.size, f"the shape of tensor {name!r}")
        shape = tuple(int(d) for d in struct.unpack_from(f"<{n_dims}Q", self.buf, self.pos))
        self.pos += 8 * n_dims
        ggml_type, offset = (int(v) for v in _TENSOR_TAIL.unpack_from(self.buf, self.pos))
        self.pos += _TENSOR_TAIL.size
        sizes = ggml_type_size(ggml_type)
        if sizes is None:
            raise self.fail(f"tensor {name!r} has unknown ggml type {ggml_type}")
        block, block_bytes = sizes
        if block > 1 and shape and shape[0] % block:
            raise self.fail(f"tensor {name!r} rows of {shape[0]} elements are not a multiple of its block ({block})")
        n_elements = 1
        for d in shape:
            n_elements *= d
        return name, shape, ggml_type, offset, n_elements * block_bytes // block


def _skip_strings(buf: memoryview, pos: int, count: int, size: int, key: str) -> int:
    """The offset just past ``count`` length-prefixed strings starting at ``pos`` (the hot loop)."""
    unpack = _U64.unpack_from
    try:
        for _ in range(count):
            pos += 8 + unpack(buf, pos)[0]
    except struct.error as e:  # a length prefix past the end of the file
        msg = f"a string of {key!r} runs past the end of the file (at byte {pos} of {size})"
        raise GGUFHeaderError(msg) from e
    if pos > size:
        msg = f"the last string of {key!r} runs past the end of the file ({pos} > {size} bytes)"
        raise GGUFHeaderError(msg)
    return pos
