"""File checks that run before llama.cpp sees a file: legacy GGML, non-GGUF, truncated GGUF."""

from __future__ import annotations

import struct
from pathlib import Path

import numpy as np
import pytest

from langchain_localllm import InvalidModelFileError, LegacyGGMLFormatError, ModelNotFoundError
from langchain_localllm._backends.llamacpp.gguf import read_gguf_info, sniff_format


def write_small_gguf(path: Path, *, template: str | None = "{{ messages }}") -> None:
    import gguf

    writer = gguf.GGUFWriter(str(path), "llama")
    writer.add_context_length(2048)
    writer.add_name("unit-test")
    writer.add_bos_token_id(0)
    writer.add_eos_token_id(2)
    writer.add_add_bos_token(False)
    if template is not None:
        writer.add_chat_template(template)
    writer.add_tensor("token_embd.weight", np.zeros((16, 32), dtype=np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()


@pytest.mark.parametrize(
    ("magic", "name"),
    [(0x67676A74, "GGJT"), (0x67676D66, "GGMF"), (0x67676D6C, "GGML")],
)
def test_legacy_ggml_family_is_named_with_the_fix(tmp_path: Path, magic: int, name: str) -> None:
    path = tmp_path / "llama-2-7b-chat.ggmlv3.q4_K_S.bin"
    path.write_bytes(struct.pack("<II", magic, 3) + bytes(200))
    with pytest.raises(LegacyGGMLFormatError, match=name) as info:
        sniff_format(path)
    message = str(info.value)
    assert "GGUF" in message
    assert "convert_hf_to_gguf.py" in message
    assert str(path) in message


def test_random_bytes_are_not_a_model(tmp_path: Path) -> None:
    path = tmp_path / "random.gguf"
    path.write_bytes(np.random.default_rng(0).bytes(512))
    with pytest.raises(InvalidModelFileError, match="not a GGUF model file"):
        read_gguf_info(path)


def test_empty_file(tmp_path: Path) -> None:
    path = tmp_path / "empty.gguf"
    path.write_bytes(b"")
    with pytest.raises(InvalidModelFileError):
        read_gguf_info(path)


def test_missing_and_directory(tmp_path: Path) -> None:
    with pytest.raises(ModelNotFoundError, match="not found"):
        read_gguf_info(tmp_path / "none.gguf")
    with pytest.raises(ModelNotFoundError, match="directory"):
        read_gguf_info(tmp_path)


def test_valid_gguf_metadata_reads_back(tmp_path: Path) -> None:
    path = tmp_path / "ok.gguf"
    write_small_gguf(path)
    info = read_gguf_info(path)
    assert info.architecture == "llama"
    assert info.context_length == 2048
    assert info.chat_template == "{{ messages }}"
    assert (info.bos_token_id, info.eos_token_id, info.add_bos_token) == (0, 2, False)
    assert info.name == "unit-test"
    assert info.tensor_count == 1


def test_gguf_without_template(tmp_path: Path) -> None:
    path = tmp_path / "nt.gguf"
    write_small_gguf(path, template=None)
    assert read_gguf_info(path).chat_template is None


@pytest.mark.parametrize("keep", [4, 8, 24, 100, 300])
def test_truncated_in_header_or_metadata(tmp_path: Path, keep: int) -> None:
    full = tmp_path / "full.gguf"
    write_small_gguf(full)
    cut = tmp_path / "cut.gguf"
    cut.write_bytes(full.read_bytes()[:keep])
    with pytest.raises(InvalidModelFileError):
        read_gguf_info(cut)


def test_truncated_in_tensor_data(tmp_path: Path) -> None:
    full = tmp_path / "full.gguf"
    write_small_gguf(full)
    data = full.read_bytes()
    cut = tmp_path / "cut.gguf"
    cut.write_bytes(data[: len(data) - 100])
    with pytest.raises(InvalidModelFileError, match="truncated"):
        read_gguf_info(cut)
