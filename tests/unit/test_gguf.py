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


def _hyper(values: dict[str, object], tensors: list[tuple[str, list[int]]]) -> dict[str, int]:
    from langchain_localllm._backends.llamacpp.gguf import _check_hyperparameters

    rows = [(name, 0, 0, shape) for name, shape in tensors]
    return _check_hyperparameters(Path("m.gguf"), "arch", values, rows)


def test_real_world_layouts_pass_the_hyperparameter_checks() -> None:
    # MoE with 2-D expert biases (gpt-oss), encoder-decoder names (T5), a shard of a split model.
    moe = [("blk.0.ffn_gate_exps.weight", [64, 128, 4]), ("blk.0.ffn_gate_exps.bias", [128, 4])]
    assert _hyper({"arch.block_count": 1, "arch.expert_count": 4, "arch.expert_used_count": 2}, moe)["block_count"] == 1
    t5 = [("enc.blk.0.attn_q.weight", [8, 8]), ("dec.blk.0.attn_q.weight", [8, 8]), ("dec.blk.1.attn_q.weight", [8, 8])]
    assert _hyper({"arch.block_count": 2}, t5)["block_count"] == 2
    shard = [("blk.0.attn_q.weight", [8, 8])]
    assert _hyper({"arch.block_count": 24, "split.count": 3}, shard)["block_count"] == 24


@pytest.mark.parametrize(
    ("values", "tensors", "fragment"),
    [
        ({"arch.block_count": 513}, [("blk.0.attn_q.weight", [8, 8])], "block_count = 513"),
        ({"arch.expert_count": 8}, [("blk.0.ffn_up.weight", [8, 8])], "without expert tensors"),
        ({"arch.expert_count": 8}, [("blk.0.ffn_up_exps.weight", [8, 8, 4])], "does not match"),
        ({"arch.context_length": 2**30}, [], "context_length"),
    ],
)
def test_crafted_hyperparameters_are_refused(values: dict[str, object], tensors: list, fragment: str) -> None:
    with pytest.raises(InvalidModelFileError, match=fragment):
        _hyper(values, tensors)


def test_per_call_logprobs_needs_the_field() -> None:
    from langchain_localllm import InvalidParameterError, LocalGGMLLLM

    with pytest.raises(InvalidParameterError, match="set the logprobs field"):
        LocalGGMLLLM(model_path="x.gguf")._sampling({"logprobs": 2})
    assert LocalGGMLLLM(model_path="x.gguf", logprobs=0)._sampling({"logprobs": 2}).logprobs == 2
