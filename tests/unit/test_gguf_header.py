"""The bounded GGUF header reader: the same answers as ``gguf.GGUFReader``, without parsing arrays.

Every file here is written by the ``gguf`` package's writer or by hand with ``struct``; the
hostile ones must fail with ``InvalidModelFileError`` (never hang, allocate or crash).
"""

from __future__ import annotations

import struct
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from langchain_localllm import InvalidModelFileError
from langchain_localllm._backends.llamacpp import gguf_header
from langchain_localllm._backends.llamacpp.gguf import read_gguf_info
from langchain_localllm._backends.llamacpp.gguf_header import ARRAY, STRING, read_array, read_header
from tests.helpers import TINY_GGUF

gguf = pytest.importorskip("gguf")


def assert_matches_gguf_reader(path: Path) -> None:
    """Every key, value, array extent, tensor and the data offset, as ``gguf.GGUFReader`` reads them."""
    header = read_header(path)
    reader = gguf.GGUFReader(str(path))
    fields = [f for f in reader.fields.values() if not f.name.startswith("GGUF.")]
    assert header.version == int(reader.fields["GGUF.version"].contents())
    assert list(header.offsets) == [f.name for f in fields]
    for field in fields:
        assert header.offsets[field.name] == field.offset, field.name
        if field.types[0] == gguf.GGUFValueType.ARRAY:
            info = header.arrays[field.name]
            assert info.item_type == int(field.types[1]), field.name
            if info.item_type != ARRAY:  # GGUFReader flattens arrays of arrays
                assert info.count == len(field.data), field.name
            if info.item_type not in (STRING, ARRAY):
                assert np.array_equal(read_array(path, info, info.count), np.asarray(field.contents())), field.name
        else:
            value = field.contents()
            assert header.values[field.name] == value, field.name
            assert type(header.values[field.name]) is type(value), field.name
    # Each KV ends where the next begins; the last one where the tensor table does.
    ends = [*(f.offset for f in fields[1:]), reader.tensors[0].field.offset if reader.tensors else None]
    for field, end in zip(fields, ends, strict=True):
        if field.name in header.arrays and end is not None:
            info = header.arrays[field.name]
            assert info.offset + info.nbytes == end, field.name
    assert header.data_offset == reader.data_offset
    assert [(t.name, t.shape, t.ggml_type, t.offset, t.n_bytes) for t in header.tensors] == [
        (
            t.name,
            tuple(int(d) for d in t.shape),
            int(t.tensor_type),
            reader.data_offset + int(t.field.parts[-1][0]),
            int(t.n_bytes),
        )
        for t in reader.tensors
    ]
    types = reader.fields.get("tokenizer.ggml.token_type")
    if types is not None:
        kinds = np.asarray(types.contents())
        assert read_gguf_info(path).typed_control_ids == tuple(np.flatnonzero((kinds == 2) | (kinds == 3)).tolist())


def write_rich_gguf(path: Path) -> Path:
    """Every value type, arrays of each, nested arrays, empty and long strings, a custom alignment."""
    t = gguf.GGUFValueType
    writer = gguf.GGUFWriter(str(path), "llama")
    writer.add_uint32("general.alignment", 64)
    scalars = [
        ("u8", 200, t.UINT8),
        ("i8", -5, t.INT8),
        ("u16", 60000, t.UINT16),
        ("i16", -300, t.INT16),
        ("u32", 4_000_000_000, t.UINT32),
        ("i32", -70000, t.INT32),
        ("f32", 0.1, t.FLOAT32),
        ("bool", True, t.BOOL),
        ("u64", 2**63 + 5, t.UINT64),
        ("i64", -(2**40), t.INT64),
        ("f64", 0.1, t.FLOAT64),
        ("str", "héllo ✓", t.STRING),
        ("empty", "", t.STRING),
    ]
    for name, value, kind in scalars:
        writer.add_key_value(f"test.{name}", value, kind)
        if kind != t.STRING:
            writer.add_key_value(f"test.{name}s", [value, value], t.ARRAY, sub_type=kind)
    strings = ["", "a", "x" * 255, "y" * 256, "z" * 70000, "日本語", ""]
    writer.add_key_value("test.strings", strings, t.ARRAY, sub_type=t.STRING)
    writer.add_key_value("test.nested", [[1, 2], [3], [4, 5, 6]], t.ARRAY, sub_type=t.ARRAY)
    writer.add_key_value("tokenizer.ggml.tokens", ["<s>", "a", "b", "<ctl>", "c"], t.ARRAY, sub_type=t.STRING)
    writer.add_key_value("tokenizer.ggml.token_type", [3, 1, 1, 3, 2], t.ARRAY, sub_type=t.INT32)
    writer.add_key_value("tokenizer.chat_template", "{{ messages }}", t.STRING)
    writer.add_tensor("token_embd.weight", np.ones((5, 32), dtype=np.float16))
    writer.add_tensor("blk.0.attn_q.weight", np.ones((4, 32, 8), dtype=np.float32))
    writer.add_tensor("output.weight", np.zeros((5, 34), dtype=np.uint8), raw_dtype=gguf.GGMLQuantizationType.Q8_0)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


def test_the_committed_fixture_reads_as_gguf_reads_it() -> None:
    assert_matches_gguf_reader(TINY_GGUF)
    info = read_gguf_info(TINY_GGUF)
    assert (info.n_vocab, info.tensor_count, info.n_layer, info.architecture) == (864, 21, 2, "llama")


def test_every_value_type_reads_as_gguf_reads_it(tmp_path: Path) -> None:
    path = write_rich_gguf(tmp_path / "rich.gguf")
    assert_matches_gguf_reader(path)
    header = read_header(path)
    assert header.arrays["test.strings"].count == 7
    assert header.arrays["test.nested"].item_type == ARRAY
    assert read_gguf_info(path).typed_control_ids == (0, 3, 4)


@pytest.mark.slow
def test_a_262k_token_vocabulary_reads_as_gguf_reads_it(tmp_path: Path) -> None:
    """The bench's large-vocabulary file (GGUFReader alone takes 15-30 s on it)."""
    from scripts.bench.large_vocab import LARGE_VOCAB, write_large_vocab_gguf

    path = write_large_vocab_gguf(tmp_path / "large.gguf", LARGE_VOCAB)
    assert_matches_gguf_reader(path)
    assert read_gguf_info(path).n_vocab == LARGE_VOCAB


def test_read_gguf_info_does_not_use_the_gguf_package(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """``gguf.GGUFReader`` parses every token, merge and type in Python: 8-25 s for real vocabularies."""
    path = write_rich_gguf(tmp_path / "rich.gguf")
    monkeypatch.setitem(sys.modules, "gguf", None)  # `import gguf` now raises ImportError
    assert read_gguf_info(TINY_GGUF).n_vocab == 864
    assert read_gguf_info(path).chat_template == "{{ messages }}"


# -- hostile headers, written by hand --------------------------------------------------------


def _s(text: str | bytes) -> bytes:
    raw = text.encode() if isinstance(text, str) else text
    return struct.pack("<Q", len(raw)) + raw


def _kv(key: str, kind: int, payload: bytes) -> bytes:
    return _s(key) + struct.pack("<I", kind) + payload


def _tensor(name: str, dims: list[int], ggml_type: int = 0, offset: int = 0) -> bytes:
    return _s(name) + struct.pack(f"<I{len(dims)}QIQ", len(dims), *dims, ggml_type, offset)


_ARCH = _kv("general.architecture", STRING, _s("llama"))


def _file(
    kvs: list[bytes],
    tensors: list[bytes] = (),  # type: ignore[assignment]
    *,
    version: int = 3,
    n_kv: int | None = None,
    n_tensors: int | None = None,
    tail: bytes = bytes(64),
) -> bytes:
    head = b"GGUF" + struct.pack(
        "<IQQ", version, len(tensors) if n_tensors is None else n_tensors, len(kvs) if n_kv is None else n_kv
    )
    return head + b"".join(kvs) + b"".join(tensors) + tail


def _array(kind: int, count: int, items: bytes = b"") -> bytes:
    return struct.pack("<IQ", kind, count) + items


def _nested(depth: int) -> bytes:
    return _array(ARRAY, 1, _nested(depth - 1)) if depth else _array(5, 1, struct.pack("<i", 7))


HOSTILE: dict[str, tuple[bytes, str]] = {
    "version 1": (_file([_ARCH], version=1), "version 1"),
    "version 4": (_file([_ARCH], version=4), "version 4"),
    "big-endian": (b"GGUF" + struct.pack(">IQQ", 3, 0, 1) + _ARCH + bytes(64), "big-endian"),
    "a KV count the file cannot hold": (_file([_ARCH], n_kv=2**63), "cannot fit"),
    "a tensor count the file cannot hold": (_file([_ARCH], n_tensors=2**40), "cannot fit"),
    "a key longer than the file": (_file([struct.pack("<Q", 2**62) + b"general"]), "past the end"),
    "a key that is not UTF-8": (_file([_kv("general.\xff", 4, bytes(4)).replace(b"\xc3\xbf", b"\xff\xfe")]), "UTF-8"),
    "a duplicate key": (_file([_ARCH, _ARCH]), "duplicate metadata key"),
    "an unknown value type": (_file([_ARCH, _kv("x.y", 13, bytes(8))]), "unknown value type"),
    "an array of an unknown type": (_file([_ARCH, _kv("x.y", ARRAY, _array(42, 1, bytes(8)))]), "unknown type"),
    "a string array the file cannot hold": (
        _file([_ARCH, _kv("tokenizer.ggml.tokens", ARRAY, _array(STRING, 2**60))]),
        "more than the file",
    ),
    "a string in an array longer than the file": (
        _file([_ARCH, _kv("tokenizer.ggml.tokens", ARRAY, _array(STRING, 2, _s("a") + struct.pack("<Q", 2**50)))]),
        "runs past the end",
    ),
    "a numeric array longer than the file": (_file([_ARCH, _kv("x.y", ARRAY, _array(5, 2**40))]), "past the end"),
    "arrays nested too deep": (_file([_ARCH, _kv("x.y", ARRAY, _nested(12))]), "nests arrays"),
    "alignment 0": (_file([_ARCH, _kv("general.alignment", 4, struct.pack("<I", 0))]), "power of two"),
    "alignment 48": (_file([_ARCH, _kv("general.alignment", 4, struct.pack("<I", 48))]), "power of two"),
    "alignment as a u64": (_file([_ARCH, _kv("general.alignment", 10, struct.pack("<Q", 32))]), "not UINT32"),
    "five dimensions": (_file([_ARCH], [_tensor("t", [1, 1, 1, 1, 1])]), "5 dimensions"),
    "an unknown ggml type": (_file([_ARCH], [_tensor("t", [4], ggml_type=99)]), "unknown ggml type"),
    "a row that splits a quant block": (_file([_ARCH], [_tensor("t", [16, 2], ggml_type=2)]), "multiple of its block"),
    "a duplicate tensor": (_file([_ARCH], [_tensor("t", [4]), _tensor("t", [4], offset=32)]), "duplicate tensor"),
}


@pytest.mark.parametrize("case", list(HOSTILE))
def test_hostile_headers_are_refused_with_the_reason(tmp_path: Path, case: str) -> None:
    data, fragment = HOSTILE[case]
    path = tmp_path / "hostile.gguf"
    path.write_bytes(data)
    with pytest.raises(InvalidModelFileError, match="Download it again") as info:
        read_gguf_info(path)
    assert fragment in str(info.value)


def test_walking_strings_is_bounded_whatever_the_counts_say(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # 1,000 empty strings fit in the file; with the bound at 500 the walk refuses them.
    path = tmp_path / "many.gguf"
    path.write_bytes(_file([_ARCH, _kv("tokenizer.ggml.merges", ARRAY, _array(STRING, 1000, bytes(8 * 1000)))]))
    assert read_header(path).arrays["tokenizer.ggml.merges"].count == 1000
    monkeypatch.setattr(gguf_header, "MAX_ARRAY_ITEMS", 500)
    with pytest.raises(InvalidModelFileError, match="more than this reader walks"):
        read_gguf_info(path)


def test_tensor_data_past_the_end_is_truncation(tmp_path: Path) -> None:
    path = tmp_path / "cut.gguf"
    path.write_bytes(_file([_ARCH], [_tensor("token_embd.weight", [32, 4])], tail=bytes(40)))
    with pytest.raises(InvalidModelFileError, match=r"is truncated: tensor data of 'token_embd\.weight'"):
        read_gguf_info(path)


def test_a_token_type_array_shorter_than_the_vocabulary_gives_no_hint(tmp_path: Path) -> None:
    tokens = _kv("tokenizer.ggml.tokens", ARRAY, _array(STRING, 3, _s("a") + _s("b") + _s("c")))
    types = _kv("tokenizer.ggml.token_type", ARRAY, _array(5, 2, struct.pack("<2i", 3, 3)))
    path = tmp_path / "short.gguf"
    path.write_bytes(_file([_ARCH, tokens, types]))
    info: Any = read_gguf_info(path)
    assert (info.n_vocab, info.typed_control_ids) == (3, ())
