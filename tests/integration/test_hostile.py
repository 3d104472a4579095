"""Hostile input: files, templates and parameters that crashed, hung or escaped the error tree.

Each case runs in a subprocess with a timeout (a crash or a hang fails the case instead of
the run) and asserts the exact error type and a message that names the fix. The hostile
files are made here, from the tiny fixture, with the ``gguf`` writer or byte edits.
"""

from __future__ import annotations

import json
import os
import struct
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from typing import Any

import pytest

from .conftest import TINY_GGUF, TINY_HF, write_gguf_variant

ROOT = Path(__file__).resolve().parents[2]
BOMB = "{% for i in range(100000) %}{% for j in range(100000) %}{% endfor %}{% endfor %}"

HARNESS = """
import json, sys
sys.setrecursionlimit(2000)
try:
{body}
    print("RESULT " + json.dumps({{"type": None, "value": repr(result)[:300]}}))
except BaseException as e:
    mro = [c.__name__ for c in type(e).__mro__]
    print("RESULT " + json.dumps({{"type": type(e).__name__, "mro": mro, "msg": str(e)}}))
"""


def run_case(body: str, timeout: float = 90) -> dict[str, Any]:
    """Run ``body`` (which sets ``result`` or raises) in a fresh interpreter; its outcome."""
    code = HARNESS.format(body=textwrap.indent(textwrap.dedent(body).strip(), "    "))
    env = {**os.environ, "PYTHONPATH": str(ROOT), "TOKENIZERS_PARALLELISM": "false"}
    start = time.monotonic()
    proc = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=timeout, env=env, cwd=ROOT, check=False
    )
    assert proc.returncode == 0, f"the process died (rc {proc.returncode}): {proc.stderr[-2000:]}"
    lines = [line for line in proc.stdout.splitlines() if line.startswith("RESULT ")]
    assert lines, proc.stdout[-2000:] + proc.stderr[-2000:]
    outcome: dict[str, Any] = json.loads(lines[-1].removeprefix("RESULT "))
    outcome["seconds"] = time.monotonic() - start
    return outcome


def assert_error(outcome: dict[str, Any], error: str, *fragments: str) -> None:
    assert outcome["type"] == error, outcome
    if error != "ValidationError":
        assert "LocalLLMError" in outcome["mro"], outcome
    for fragment in fragments:
        assert fragment in outcome["msg"], outcome


def gguf_with(tmp_path: Path, name: str, changes: dict[str, Any], add: dict[str, Any] | None = None) -> Path:
    return write_gguf_variant(tmp_path / f"{name}.gguf", changes, add=add)


def llm_invoke(path: Path | str, prompt_format: str = "auto", **fields: Any) -> str:
    return f"""
    from langchain_localllm import LocalGGMLLLM
    result = LocalGGMLLLM(model_path={str(path)!r}, prompt_format={prompt_format!r}, max_tokens=8, temperature=0,
                          **{fields!r}).invoke("Rose is which type of flower?")
    """


def chat_invoke(cls: str, path: Path | str, **fields: Any) -> str:
    source = f"model_path={str(path)!r}" if cls == "LocalGGMLChatModel" else f"model={str(path)!r}, device='cpu'"
    return f"""
    from langchain_localllm import {cls}
    result = {cls}({source}, max_tokens=8, **{fields!r}).invoke("Rose is which type of flower?").content
    """


# -- GGUF files whose metadata disagrees with their tensors (llama.cpp aborted) -----------------


@pytest.mark.parametrize("block_count", [0, 513, 1000])
def test_block_count_that_disagrees_with_the_layers(tmp_path: Path, block_count: int) -> None:
    path = gguf_with(tmp_path, f"blocks-{block_count}", {"llama.block_count": block_count})
    assert_error(run_case(llm_invoke(path)), "InvalidModelFileError", "block_count", "unmodified GGUF")


def test_expert_count_on_a_dense_model(tmp_path: Path) -> None:
    gguf = pytest.importorskip("gguf")
    path = gguf_with(tmp_path, "experts", {}, add={"llama.expert_count": (100000, gguf.GGUFValueType.UINT32)})
    assert_error(run_case(llm_invoke(path)), "InvalidModelFileError", "expert_count")


@pytest.mark.parametrize("context_length", [2**32 - 1, 2**28])
def test_context_length_beyond_what_llama_cpp_can_hold(tmp_path: Path, context_length: int) -> None:
    path = gguf_with(tmp_path, "ctx", {"llama.context_length": context_length})
    assert_error(run_case(llm_invoke(path)), "InvalidModelFileError", "context_length")


def test_a_tensor_offset_that_wraps_uint64(tmp_path: Path) -> None:
    data = bytearray(TINY_GGUF.read_bytes())
    name = b"token_embd.weight"
    at = data.index(struct.pack("<Q", len(name)) + name) + 8 + len(name)
    (n_dims,) = struct.unpack_from("<I", data, at)
    offset_at = at + 4 + 8 * n_dims + 4  # n_dims, dims, type, then the offset
    struct.pack_into("<Q", data, offset_at, 2**64 - 32)
    path = tmp_path / "offset.gguf"
    path.write_bytes(bytes(data))
    assert_error(run_case(llm_invoke(path)), "InvalidModelFileError", "Download it again")


def test_n_ctx_and_n_batch_that_wrap_uint32() -> None:
    for field in ("n_ctx", "n_batch"):
        outcome = run_case(llm_invoke(TINY_GGUF, **{field: 2**32 + 16}))
        assert_error(outcome, "ValidationError", field, "less than or equal to 2147483647")


def test_n_ctx_larger_than_memory_is_refused_before_loading() -> None:
    outcome = run_case(llm_invoke(TINY_GGUF, n_ctx=2**31 - 1))
    assert_error(outcome, "InvalidParameterError", "lower n_ctx")


# -- files that are not files -------------------------------------------------------------


def test_a_named_pipe_is_refused_without_opening_it(tmp_path: Path) -> None:
    pipe = tmp_path / "model.gguf"
    os.mkfifo(pipe)
    outcome = run_case(llm_invoke(pipe), timeout=30)
    assert_error(outcome, "InvalidModelFileError", "not a regular file")
    assert outcome["seconds"] < 25


def test_a_symlink_loop_is_model_not_found(tmp_path: Path) -> None:
    a, b = tmp_path / "a.gguf", tmp_path / "b.gguf"
    a.symlink_to(b)
    b.symlink_to(a)
    assert_error(run_case(llm_invoke(a)), "ModelNotFoundError", "symlinks")


# -- chat templates ------------------------------------------------------------------------


@pytest.mark.parametrize("cls", ["LocalGGMLLLM", "LocalGGMLChatModel", "HFLocalChatModel"])
def test_a_template_cpu_bomb_stops_with_a_template_error(tmp_path: Path, cls: str) -> None:
    if cls == "HFLocalChatModel":
        body = chat_invoke(cls, TINY_HF, chat_template=BOMB)
    else:
        path = gguf_with(tmp_path, "bomb", {"tokenizer.chat_template": BOMB})
        body = llm_invoke(path) if cls == "LocalGGMLLLM" else chat_invoke(cls, path)
    outcome = run_case(body, timeout=60)
    assert_error(outcome, "ChatTemplateError", "runaway loop")
    assert outcome["seconds"] < 45


@pytest.mark.parametrize(
    ("template", "fragment"),
    [
        ("{% for %}", "does not compile"),
        ("{{ 1 / 0 }}", "ZeroDivisionError"),
        ("{% macro f(n) %}{{ f(n + 1) }}{% endmacro %}{{ f(0) }}", "recurses"),
        ("{{ 'a' * 10**9 }}", "as a size or count"),
        ("{{ '' }}", "empty prompt"),
        ("{% for m in messages %}<|im_start|>{{ m.role }}\n<|im_end|>{% endfor %}", "last user message"),
    ],
)
@pytest.mark.parametrize("backend", ["llamacpp", "hf"])
def test_a_broken_template_is_a_template_error(tmp_path: Path, template: str, fragment: str, backend: str) -> None:
    if backend == "hf":
        body = chat_invoke("HFLocalChatModel", TINY_HF, chat_template=template)
    else:
        body = llm_invoke(gguf_with(tmp_path, "tpl", {"tokenizer.chat_template": template}))
    assert_error(run_case(body), "ChatTemplateError", fragment)


def test_a_template_that_does_not_compile_does_not_block_raw_prompts(tmp_path: Path) -> None:
    # llama-cpp-python compiles every embedded template at load; raw prompts never use it.
    path = gguf_with(tmp_path, "broken", {"tokenizer.chat_template": "{% for %}"})
    outcome = run_case(llm_invoke(path, prompt_format="raw"))
    assert outcome["type"] is None, outcome
    assert_error(run_case(llm_invoke(path)), "ChatTemplateError", "does not compile")


# -- Hugging Face checkpoints ----------------------------------------------------------------


def copy_checkpoint(tmp_path: Path, skip: frozenset[str] = frozenset()) -> Path:
    out = tmp_path / "ckpt"
    out.mkdir()
    for file in TINY_HF.iterdir():
        if file.name not in skip:
            (out / file.name).write_bytes(file.read_bytes())
    return out


def test_hf_directory_with_only_a_config(tmp_path: Path) -> None:
    (tmp_path / "config.json").write_bytes((TINY_HF / "config.json").read_bytes())
    body = chat_invoke("HFLocalChatModel", tmp_path)
    assert_error(run_case(body), "ModelLoadError", "no tokenizer files", "tokenizer.save_pretrained")


def test_hf_directory_without_a_config(tmp_path: Path) -> None:
    ckpt = copy_checkpoint(tmp_path, skip=frozenset({"config.json"}))
    assert_error(run_case(chat_invoke("HFLocalChatModel", ckpt)), "ModelLoadError", "no config.json")


@pytest.mark.parametrize("damage", ["random", "truncated"])
def test_hf_corrupt_weights(tmp_path: Path, damage: str) -> None:
    ckpt = copy_checkpoint(tmp_path)
    weights = ckpt / "model.safetensors"
    data = weights.read_bytes()
    weights.write_bytes(os.urandom(4096) if damage == "random" else data[: len(data) // 2])
    assert_error(run_case(chat_invoke("HFLocalChatModel", ckpt)), "ModelLoadError", "model.safetensors", "again")


def test_hf_corrupt_tokenizer(tmp_path: Path) -> None:
    ckpt = copy_checkpoint(tmp_path)
    (ckpt / "tokenizer.json").write_text('{"version": "1.0", "model": ')
    assert_error(run_case(chat_invoke("HFLocalChatModel", ckpt)), "ModelLoadError", "tokenizer.json", "not valid JSON")


def test_hf_unknown_architecture(tmp_path: Path) -> None:
    ckpt = copy_checkpoint(tmp_path)
    config = json.loads((ckpt / "config.json").read_text())
    config["model_type"] = "no-such-architecture"
    (ckpt / "config.json").write_text(json.dumps(config))
    assert_error(run_case(chat_invoke("HFLocalChatModel", ckpt)), "ModelLoadError", "upgrade")


# -- no network unless asked ----------------------------------------------------------------

NETWORK_GUARD = """
import sys
attempts = []
sys.addaudithook(lambda event, args: attempts.append(args) if event in ("socket.connect", "socket.getaddrinfo") else None)
"""


@pytest.mark.parametrize("backend", ["llamacpp", "hf"])
def test_local_files_only_makes_no_connection_attempt(tmp_path: Path, backend: str) -> None:
    if backend == "hf":
        model = f"HFLocalChatModel(model='no-such-org/no-such-model', device='cpu', cache_dir={str(tmp_path)!r}, "
    else:
        model = f"LocalGGMLLLM(repo_id='no-such-org/x-GGUF', filename='x.gguf', cache_dir={str(tmp_path)!r}, "
    body = f"""
    {NETWORK_GUARD.strip()}
    import os
    os.environ.pop("HF_HUB_OFFLINE", None)
    from langchain_localllm import HFLocalChatModel, LocalGGMLLLM, ModelNotFoundError
    try:
        {model}local_files_only=True).invoke("hi")
    except ModelNotFoundError as e:
        result = ("ModelNotFoundError", str(e)[:80], len(attempts))
    """
    outcome = run_case(body.replace("\n    ", "\n"))
    assert outcome["type"] is None, outcome
    assert outcome["value"].endswith(", 0)"), outcome  # not one connection attempt


# -- parameters -------------------------------------------------------------------------------


@pytest.mark.parametrize("field", ["frequency_penalty", "presence_penalty"])
@pytest.mark.parametrize("value", ["float('nan')", "float('inf')"])
def test_non_finite_fields_are_refused(field: str, value: str) -> None:
    body = f"""
    from langchain_localllm import LocalGGMLLLM
    result = LocalGGMLLLM(model_path="x.gguf", {field}={value})
    """
    assert_error(run_case(body), "ValidationError", field, "finite number")


@pytest.mark.parametrize("cls", ["LocalGGMLLLM", "LocalGGMLChatModel", "HFLocalChatModel"])
def test_non_finite_call_options_and_bytes_prompts(cls: str) -> None:
    path = TINY_HF if cls == "HFLocalChatModel" else TINY_GGUF
    source = f"model={str(path)!r}, device='cpu'" if cls == "HFLocalChatModel" else f"model_path={str(path)!r}"
    body = f"""
    from langchain_localllm import {cls}
    model = {cls}({source}, max_tokens=4)
    model.invoke("hi", temperature=float("nan"))
    """
    assert_error(run_case(body), "InvalidParameterError", "temperature", "finite")
    body = f"""
    from langchain_localllm import {cls}
    {cls}({source}, max_tokens=4).invoke(b"hi")
    """
    outcome = run_case(body)
    assert_error(outcome, "InvalidParameterError", "decode")
    assert "TypeError" in outcome["mro"]


def test_hf_checkpoint_that_needs_remote_code(tmp_path: Path) -> None:
    ckpt = copy_checkpoint(tmp_path)
    config = json.loads((ckpt / "config.json").read_text())
    config["model_type"] = "custom-flower"
    config["auto_map"] = {"AutoConfig": "configuration_flower.FlowerConfig"}
    (ckpt / "config.json").write_text(json.dumps(config))
    (ckpt / "configuration_flower.py").write_text("raise SystemExit('remote code ran')\n")
    outcome = run_case(chat_invoke("HFLocalChatModel", ckpt))
    assert_error(outcome, "ModelLoadError", "trust_remote_code=True", "trust the checkpoint")


def test_hf_template_that_is_not_a_string(tmp_path: Path) -> None:
    ckpt = copy_checkpoint(tmp_path)
    config = json.loads((ckpt / "tokenizer_config.json").read_text())
    config["chat_template"] = 123
    (ckpt / "tokenizer_config.json").write_text(json.dumps(config))
    outcome = run_case(chat_invoke("HFLocalChatModel", ckpt))
    assert outcome["type"] in {"ChatTemplateError", "ModelLoadError"}, outcome
    assert "LocalLLMError" in outcome["mro"]
    assert "string" in outcome["msg"] or "chat_template" in outcome["msg"], outcome


def test_a_metadata_string_longer_than_the_file(tmp_path: Path) -> None:
    data = bytearray(TINY_GGUF.read_bytes())
    key = b"general.architecture"
    at = data.index(struct.pack("<Q", len(key)) + key) + 8 + len(key) + 4  # key, then the value's type
    assert struct.unpack_from("<Q", data, at)[0] == len(b"llama")
    struct.pack_into("<Q", data, at, 2**62)
    path = tmp_path / "string.gguf"
    path.write_bytes(bytes(data))
    assert_error(run_case(llm_invoke(path)), "InvalidModelFileError", "Download it again")


def test_a_quantized_gguf_runs_on_this_cpu(tmp_path: Path) -> None:
    """Q8_0 crashed llama.cpp's AMX kernels (SIGSEGV in llama_decode) on AMX-INT8 CPUs."""
    from scripts.export_gguf import export_llama_to_gguf

    path = tmp_path / "tiny.q8_0.gguf"
    export_llama_to_gguf(TINY_HF, path, "q8_0")
    outcome = run_case(llm_invoke(path))
    assert outcome["type"] is None, outcome
    assert len(outcome["value"]) > 3, outcome
