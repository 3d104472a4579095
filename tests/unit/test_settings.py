"""Settings come from the pydantic fields: call options, bounds and backend settings (no weights load)."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import pytest
from annotated_types import Ge, Gt, Le
from pydantic import BaseModel

from langchain_localllm import (
    HFLocalChatModel,
    InvalidParameterError,
    LocalGGMLChatModel,
    LocalGGMLLLM,
    ModelNotFoundError,
)
from langchain_localllm._backends.llamacpp.settings import LlamaCppSamplingFields, LoadSettings
from langchain_localllm._backends.transformers.settings import HFSamplingFields, LoadSpec

CLASSES: list[tuple[type[Any], type[BaseModel], dict[str, Any]]] = [
    (LocalGGMLLLM, LlamaCppSamplingFields, {"model_path": "x.gguf"}),
    (LocalGGMLChatModel, LlamaCppSamplingFields, {"model_path": "x.gguf"}),
    (HFLocalChatModel, HFSamplingFields, {"model": "org/name"}),
]


def out_of_bounds(field: Any) -> list[Any]:
    """Values just outside each bound the field declares, plus the non-finite ones for floats."""
    values: list[Any] = []
    for bound in field.metadata:
        if isinstance(bound, Ge):
            values.append(bound.ge - 1)
        elif isinstance(bound, Gt):
            values.append(bound.gt)
        elif isinstance(bound, Le):
            values.append(bound.le + 1)
    if float in (field.annotation, getattr(field.annotation, "__args__", ())):
        values += [math.nan, math.inf]
    return values


@pytest.mark.parametrize(("cls", "fields", "required"), CLASSES)
def test_every_sampling_field_is_a_call_option_with_the_fields_bounds(
    cls: type[Any], fields: type[BaseModel], required: dict[str, Any]
) -> None:
    model = cls(**required)
    assert set(fields.model_fields) <= set(model._call_options())
    checked = 0
    for name, field in fields.model_fields.items():
        for value in out_of_bounds(field):
            with pytest.raises(InvalidParameterError, match=name):
                model._sampling({name: value})
            checked += 1
    assert checked >= 8  # the groups really declare bounds (temperature, top_p, top_k, max_tokens, seed...)


@pytest.mark.parametrize(("cls", "fields", "required"), CLASSES)
def test_the_backend_settings_are_the_fields_values(
    cls: type[Any], fields: type[BaseModel], required: dict[str, Any]
) -> None:
    model = cls(**required, temperature=0.25, max_tokens=7)
    sampling = model._sampling({})
    for name in fields.model_fields:
        assert getattr(sampling, name) == getattr(model, name), name
    assert model._sampling({"temperature": 0.5}).temperature == 0.5
    assert model.temperature == 0.25  # a call option never changes the field


def test_defaults_are_declared_once_per_backend() -> None:
    # The frozen views add no defaults of their own: every shared name has the field's default.
    llama = LocalGGMLLLM(model_path="x.gguf")
    hf = HFLocalChatModel(model="org/name")
    for name, field in LlamaCppSamplingFields.model_fields.items():
        assert getattr(llama._sampling({}), name) == field.default == getattr(llama, name)
    for name, field in HFSamplingFields.model_fields.items():
        if field.default_factory is None:
            assert getattr(hf._sampling({}), name) == field.default == getattr(hf, name)


def test_load_settings_follow_the_load_fields() -> None:
    llm = LocalGGMLLLM(model_path="x.gguf", n_ctx=128, n_batch=64, flash_attn=True)
    settings = llm._load_settings()
    assert isinstance(settings, LoadSettings)
    kwargs = settings.llama_kwargs(n_ctx=128)
    assert (kwargs["n_ctx"], kwargs["n_batch"], kwargs["flash_attn"]) == (128, 64, True)
    assert "model_path" not in kwargs
    spec = HFLocalChatModel(model="org/name", dtype="bfloat16", revision="v2")._load_settings()
    assert isinstance(spec, LoadSpec)
    assert (spec.dtype, spec.revision) == ("bfloat16", "v2")


def test_a_changed_load_field_makes_a_new_backend_and_a_sampling_field_does_not() -> None:
    llm = LocalGGMLLLM(model_path="x.gguf")
    first = llm._backend()
    llm.temperature = 0.1
    assert llm._backend() is first
    llm.n_ctx = 64
    assert llm._backend() is not first


@pytest.mark.parametrize("variable", ["HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"])
def test_both_offline_variables_stop_gguf_downloads(
    variable: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setenv(variable, "1")
    llm = LocalGGMLLLM(repo_id="someone/NoSuch-GGUF", filename="x.gguf", cache_dir=str(tmp_path))
    with pytest.raises(ModelNotFoundError, match="downloads are disabled"):
        llm.invoke("hi")


def test_unload_of_a_model_that_cannot_exist_is_false_on_both_backends(tmp_path: Path) -> None:
    assert LocalGGMLLLM(model_path=str(tmp_path / "missing.gguf")).unload() is False
    assert HFLocalChatModel(model=str(tmp_path / "missing" / "dir")).unload() is False


def test_extra_buffer_types_are_off_by_default_only_on_amx_cpus(monkeypatch: pytest.MonkeyPatch) -> None:
    from langchain_localllm._backends.llamacpp import load

    assert load._extra_bufts(True) is True
    assert load._extra_bufts(False) is False
    monkeypatch.setattr(load, "_cpu_has_amx_int8", lambda: True)
    assert load._extra_bufts(None) is False
    monkeypatch.setattr(load, "_cpu_has_amx_int8", lambda: False)
    assert load._extra_bufts(None) is True
    assert "use_extra_bufts" not in LocalGGMLLLM(
        model_path="x.gguf", use_extra_bufts=False
    )._load_settings().llama_kwargs(8)
