"""``model_kwargs``: keys the package owns are refused with the field to use; the rest pass through. No weights load."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import pytest

from langchain_localllm import HFLocalChatModel, InvalidParameterError, LocalGGMLChatModel, LocalGGMLLLM
from langchain_localllm._backends.llamacpp.settings import LoadSettings

from .conftest import TINY_GGUF, TINY_HF

pytestmark = pytest.mark.usefixtures("no_weights_load")

GGUF_CLASSES = [LocalGGMLLLM, LocalGGMLChatModel]


@pytest.mark.parametrize("cls", GGUF_CLASSES)
@pytest.mark.parametrize(
    ("key", "names"),
    [
        ("n_ctx", "n_ctx field"),  # skipped the context-window check (numpy broadcast error at the first call)
        ("verbose", "verbose field"),  # "got multiple values for keyword argument 'verbose'" at load
        ("model_path", "model_path field"),  # the same, for model_path
        ("logits_all", "logprobs field"),
        ("chat_format", "chat_template"),
        ("n_gpu_layers", "n_gpu_layers=..."),  # a load field: its bounds and the cache key
        ("seed", "seed=..."),  # a sampling field (Llama() takes a seed too)
        ("temperature", "temperature=..."),  # Llama() would silently ignore it
        ("use_extra_bufts", "use_extra_bufts=..."),
    ],
)
def test_llamacpp_refuses_keys_the_package_owns(cls: Any, key: str, names: str) -> None:
    with pytest.raises(InvalidParameterError, match=rf"model_kwargs\['{key}'\] is refused.*{names}"):
        cls(model_path=str(TINY_GGUF), model_kwargs={key: 64})


@pytest.mark.parametrize("cls", GGUF_CLASSES)
def test_llamacpp_passes_other_keys_through(cls: Any) -> None:
    model = cls(model_path=str(TINY_GGUF), n_ctx=128, model_kwargs={"offload_kqv": False, "last_n_tokens_size": 32})
    kwargs = LoadSettings.of(model).llama_kwargs(128)
    assert (kwargs["offload_kqv"], kwargs["last_n_tokens_size"], kwargs["n_ctx"]) == (False, 32, 128)
    assert "verbose" not in kwargs
    assert "model_path" not in kwargs


def test_llamacpp_model_kwargs_assigned_later_are_checked_before_loading() -> None:
    chat = LocalGGMLChatModel(model_path=str(TINY_GGUF))
    chat.model_kwargs = {"n_ctx": 64}
    with pytest.raises(InvalidParameterError, match="n_ctx field"):
        chat.invoke("hello")


def test_keys_that_llama_does_not_take_are_refused_at_load() -> None:
    from langchain_localllm._backends.llamacpp.settings import check_llama_parameters

    llama_cpp = pytest.importorskip("llama_cpp")
    check_llama_parameters({"offload_kqv": False, "n_threads": 2}, llama_cpp.Llama)
    # Llama() takes **kwargs and would drop a misspelt name without a word.
    with pytest.raises(InvalidParameterError, match=r"\['n_ctxx'\] are not parameters of llama_cpp.Llama"):
        check_llama_parameters({"n_ctxx": 64}, llama_cpp.Llama)


def test_usable_context_is_what_the_loaded_llama_has() -> None:
    from langchain_localllm._backends.llamacpp.load import usable_context

    def fake(n_ctx: int, buffer: int) -> Any:
        return SimpleNamespace(n_ctx=lambda: n_ctx, input_ids=[0] * buffer)

    assert usable_context(fake(256, 64)) == 64  # llama.cpp rounded up; the token buffer kept the request
    assert usable_context(fake(256, 256)) == 256
    assert usable_context(fake(32, 64)) == 32
    assert usable_context(SimpleNamespace(n_ctx=lambda: 100)) == 100


@pytest.mark.parametrize(
    ("key", "names"),
    [
        ("torch_dtype", "dtype field"),
        ("dtype", "dtype field"),
        ("device_map", "device_map field"),
        ("quantization_config", "quantization field"),
        ("load_in_4bit", "quantization field"),
        ("trust_remote_code", "trust_remote_code field"),
        ("local_files_only", "local_files_only field"),
        ("revision", "revision field"),
        ("cache_dir", "cache_dir field"),
        ("attn_implementation", "attn_implementation field"),
        ("pretrained_model_name_or_path", "model field"),
        ("temperature", "temperature=..."),
        ("device", "device=..."),
    ],
)
def test_hf_refuses_keys_the_package_owns(key: str, names: str) -> None:
    with pytest.raises(InvalidParameterError, match=rf"model_kwargs\['{key}'\] is refused.*{names}"):
        HFLocalChatModel(model=str(TINY_HF), model_kwargs={key: "x"})


def test_hf_passes_other_keys_through() -> None:
    chat = HFLocalChatModel(model=str(TINY_HF), model_kwargs={"low_cpu_mem_usage": True})
    assert chat.model_kwargs == {"low_cpu_mem_usage": True}
    chat.model_kwargs = {"torch_dtype": "float16"}
    with pytest.raises(InvalidParameterError, match="dtype field"):
        chat.invoke("hello")
