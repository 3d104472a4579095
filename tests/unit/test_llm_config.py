"""LocalGGMLLLM construction: cheap, validated, with LangChain's metadata. No weights load."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
from pydantic import ValidationError

from langchain_localllm import LocalGGMLLLM, ModelNotFoundError
from langchain_localllm._core.cache import model_cache


def test_constructor_loads_nothing(tmp_path: Path) -> None:
    before = model_cache.info().loads
    llm = LocalGGMLLLM(model_path=str(tmp_path / "missing.gguf"))
    assert model_cache.info().loads == before
    assert llm.max_tokens == 256
    assert llm.prompt_format == "auto"


@pytest.mark.parametrize(
    "kwargs",
    [
        {"max_tokens": -1},
        {"max_tokens": 0},
        {"temperature": -0.1},
        {"top_p": 1.5},
        {"top_p": -0.1},
        {"min_p": 2.0},
        {"top_k": -1},
        {"repeat_penalty": 0},
        {"n_ctx": 0},
        {"n_gpu_layers": -2},
        {"not_a_field": 1},
        {"prompt_format": "Q: A:"},
    ],
)
def test_invalid_parameters_fail_at_construction(kwargs: dict[str, object]) -> None:
    with pytest.raises(ValidationError):
        LocalGGMLLLM(model_path="m.gguf", **kwargs)


def test_a_source_is_required_and_unambiguous() -> None:
    with pytest.raises(ValidationError, match="model_path"):
        LocalGGMLLLM()
    with pytest.raises(ValidationError, match="repo_id"):
        LocalGGMLLLM(repo_id="org/model")
    with pytest.raises(ValidationError, match="not both"):
        LocalGGMLLLM(model_path="m.gguf", repo_id="org/model", filename="m.gguf")
    with pytest.raises(ValidationError, match="not both"):
        LocalGGMLLLM(model_path="m.gguf", grammar='root ::= "a"', json_schema={"type": "object"})


def test_format_string_prompt_format_is_accepted() -> None:
    assert LocalGGMLLLM(model_path="m.gguf", prompt_format="Q: {prompt} A: ").prompt_format == "Q: {prompt} A: "


def test_identifying_params_are_json_safe_and_name_the_model() -> None:
    llm = LocalGGMLLLM(model_path="/models/tiny-chat.gguf", temperature=0, stop=["\n"])
    params = dict(llm._identifying_params)
    json.dumps(params)
    assert params["model_path"] == "/models/tiny-chat.gguf"
    assert params["temperature"] == 0
    assert llm._llm_type == "local-gguf-llamacpp"


def test_ls_params() -> None:
    llm = LocalGGMLLLM(model_path="/models/tiny-chat.gguf", temperature=0.3, max_tokens=12, stop=["a"])
    ls = llm._get_ls_params(stop=["b"])
    assert ls["ls_provider"] == "llamacpp"
    assert ls["ls_model_name"] == "tiny-chat"
    assert ls["ls_model_type"] == "llm"
    assert ls["ls_temperature"] == 0.3
    assert ls["ls_max_tokens"] == 12
    assert ls["ls_stop"] == ["a", "b"]
    hub = LocalGGMLLLM(repo_id="org/Model-GGUF", filename="model.Q4_K_M.gguf")
    assert hub._get_ls_params()["ls_model_name"] == "org/Model-GGUF/model.Q4_K_M.gguf"


def test_missing_file_is_reported_on_first_use_with_its_path(tmp_path: Path) -> None:
    missing = tmp_path / "nope.gguf"
    llm = LocalGGMLLLM(model_path=str(missing))
    with pytest.raises(ModelNotFoundError, match=r"nope\.gguf"):
        llm.invoke("hi")
    with pytest.raises(FileNotFoundError):
        LocalGGMLLLM(model_path=str(missing), load_on_init=True)


def test_directory_instead_of_file(tmp_path: Path) -> None:
    with pytest.raises(ModelNotFoundError, match="directory"):
        LocalGGMLLLM(model_path=str(tmp_path)).invoke("hi")


def test_unknown_call_option_is_a_clear_error(tmp_path: Path) -> None:
    llm = LocalGGMLLLM(model_path=str(tmp_path / "m.gguf"))
    with pytest.raises(TypeError, match="unknown call options"):
        llm._sampling({"temprature": 0.1})
    with pytest.raises(ValueError, match="max_tokens"):
        llm._sampling({"max_tokens": -5})
    assert llm._sampling({"temperature": 0}).temperature == 0


def test_hub_file_missing_offline_fails_fast_naming_it(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    llm = LocalGGMLLLM(repo_id="someone/NoSuch-GGUF", filename="x.Q4_K_M.gguf", cache_dir=str(tmp_path))
    with pytest.raises(ModelNotFoundError, match=r"x\.Q4_K_M\.gguf.*someone/NoSuch-GGUF"):
        llm.invoke("hi")


def test_hub_file_resolves_from_local_cache_without_network(tmp_path: Path) -> None:
    # The layout huggingface_hub writes: models--org--name/{refs/main, snapshots/<sha>/file}.
    sha = "0123456789abcdef0123456789abcdef01234567"
    repo = tmp_path / "models--org--tiny-GGUF"
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(sha)
    snap = repo / "snapshots" / sha
    snap.mkdir(parents=True)
    (snap / "tiny.gguf").write_bytes(b"GGUF")
    llm = LocalGGMLLLM(repo_id="org/tiny-GGUF", filename="tiny.gguf", cache_dir=str(tmp_path), local_files_only=True)
    assert llm._backend().model_file() == snap / "tiny.gguf"


def test_llama_cpp_missing_names_the_extra(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from langchain_localllm import MissingDependencyError
    from langchain_localllm._backends.llamacpp.load import llama_cpp_module

    monkeypatch.setitem(sys.modules, "llama_cpp", None)
    with pytest.raises(MissingDependencyError, match=r"langchain-localllm\[llamacpp\]"):
        llama_cpp_module()
