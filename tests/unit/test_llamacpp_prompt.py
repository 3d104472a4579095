"""Prompt tokenization and formatting rules of the llama.cpp backend, on a fake tokenizer."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from langchain_localllm import LocalGGMLLLM
from langchain_localllm._backends.llamacpp.gguf import GGUFInfo
from langchain_localllm._backends.llamacpp.load import LlamaModel, tokenize_prompt
from langchain_localllm._backends.llamacpp.settings import LoadSettings
from langchain_localllm._core.backend import ChatPrompt

BOS = 1


class FakeLlama:
    """Tokenizes one token per character; '<s>' is the BOS token."""

    def tokenize(self, data: bytes, *, add_bos: bool, special: bool) -> list[int]:
        assert add_bos is False  # the package adds BOS itself, once
        text = data.decode()
        ids: list[int] = []
        if special and text.startswith("<s>"):
            ids.append(BOS)
            text = text[3:]
        ids.extend(100 + ord(c) for c in text)
        return ids


def fake_model(*, add_bos: bool, template: str | None = None) -> LlamaModel:
    info = GGUFInfo(
        path=Path("fake.gguf"),
        architecture="llama",
        name=None,
        context_length=64,
        chat_template=template,
        bos_token_id=BOS,
        eos_token_id=2,
        add_bos_token=add_bos,
        tensor_count=0,
    )
    return LlamaModel(
        llama=FakeLlama(),
        info=info,
        n_ctx=64,
        pieces=[],
        eog_ids=frozenset({2}),
        bos_id=BOS,
        add_bos=add_bos,
        bos_text="<s>",
        eos_text="</s>",
    )


def text_of(ids: list[int]) -> str:
    return "".join("<s>" if i == BOS else chr(i - 100) for i in ids)


def rendered(llm: LocalGGMLLLM, model: LlamaModel, prompt: str) -> str:
    """The model input ``llm`` builds for ``prompt``, through the backend's render verb."""
    return text_of(llm._backend()._render(model, llm._prompt(prompt)))


def test_bos_added_when_the_model_wants_it() -> None:
    assert tokenize_prompt(fake_model(add_bos=True), "hi") == [BOS, 100 + ord("h"), 100 + ord("i")]


def test_no_double_bos_when_the_template_rendered_it() -> None:
    assert tokenize_prompt(fake_model(add_bos=True), "<s>hi").count(BOS) == 1


def test_no_bos_when_the_model_does_not_want_it() -> None:
    assert BOS not in tokenize_prompt(fake_model(add_bos=False), "hi")


LLAMA2_LIKE = (
    "{{ bos_token }}{% for m in messages %}{% if m['role'] == 'system' %}<<SYS>>{{ m['content'] }}<</SYS>>"
    "{% elif m['role'] == 'user' %}[INST] {{ m['content'] }} [/INST]{% endif %}{% endfor %}"
)


@pytest.mark.parametrize(
    ("kwargs", "expected"),
    [
        ({}, "<s>[INST] 玫瑰? [/INST]"),
        ({"system_prompt": "Be brief."}, "<s><<SYS>>Be brief.<</SYS>>[INST] 玫瑰? [/INST]"),
        ({"prompt_format": "raw"}, "<s>玫瑰?"),  # the model adds BOS: raw input gets it once
        ({"prompt_format": "Q: {prompt} A: "}, "<s>Q: 玫瑰? A: "),
    ],
)
def test_prompt_formats(kwargs: dict[str, Any], expected: str) -> None:
    llm = LocalGGMLLLM(model_path="fake.gguf", **kwargs)
    assert rendered(llm, fake_model(add_bos=True, template=LLAMA2_LIKE), "玫瑰?") == expected


def test_braces_in_the_prompt_survive_a_format_string() -> None:
    llm = LocalGGMLLLM(model_path="fake.gguf", prompt_format="Q: {prompt} A:")
    assert rendered(llm, fake_model(add_bos=False), '{"a": 1}') == 'Q: {"a": 1} A:'


def test_auto_without_template_falls_back_to_raw_and_logs_once(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level("INFO", logger="langchain_localllm")
    llm = LocalGGMLLLM(model_path="fake.gguf")
    model = fake_model(add_bos=False, template=None)
    assert rendered(llm, model, "hi") == "hi"
    assert rendered(llm, model, "hi") == "hi"
    assert sum("no chat template" in r.getMessage() for r in caplog.records) == 1


def test_load_settings_pass_only_what_was_set() -> None:
    kwargs = LoadSettings(model_path="x.gguf").llama_kwargs(n_ctx=2048)
    assert kwargs["n_ctx"] == 2048
    assert kwargs["n_batch"] == 512
    for unset in ("rope_freq_base", "rope_freq_scale", "rope_scaling_type", "flash_attn", "n_threads", "type_k"):
        assert unset not in kwargs
    assert (
        LoadSettings(model_path="x.gguf", rope_freq_base=1e6, flash_attn=True).llama_kwargs(8)["rope_freq_base"] == 1e6
    )


def test_sampling_options_are_not_part_of_the_cache_key() -> None:
    a = LocalGGMLLLM(model_path="x.gguf", temperature=0.1, top_k=3, seed=1)._load_settings()
    b = LocalGGMLLLM(model_path="x.gguf", temperature=0.9, max_tokens=7)._load_settings()
    assert a == b
    assert a.load_key() == b.load_key()
    assert a != LocalGGMLLLM(model_path="x.gguf", n_ctx=128)._load_settings()


def test_chat_model_without_a_template_names_the_field() -> None:
    from langchain_localllm import ChatTemplateError
    from langchain_localllm.chat_models import LocalGGMLChatModel

    chat = LocalGGMLChatModel(model_path="fake.gguf")
    with pytest.raises(ChatTemplateError, match="chat_template="):
        chat._backend()._render(
            fake_model(add_bos=False, template=None), ChatPrompt([{"role": "user", "content": "hi"}])
        )


def test_chat_model_folds_system_text_for_a_template_without_a_system_role() -> None:
    from langchain_localllm.chat_models import LocalGGMLChatModel

    strict = (
        "{% for m in messages %}{% if m['role'] == 'system' %}{{ raise_exception('no system role') }}{% endif %}"
        "[{{ m['role'] }}]{{ m['content'] }}{% endfor %}"
    )
    chat = LocalGGMLChatModel(model_path="fake.gguf")
    model = fake_model(add_bos=False, template=strict)
    messages = [{"role": "system", "content": "Be kind."}, {"role": "user", "content": "hi"}]
    ids = chat._backend()._render(model, ChatPrompt(messages))
    assert "".join(chr(i - 100) for i in ids) == "[user]Be kind.\n\nhi"


def test_logprobs_loads_with_logits_all_for_both_classes() -> None:
    from langchain_localllm.chat_models import LocalGGMLChatModel

    for cls in (LocalGGMLLLM, LocalGGMLChatModel):
        assert cls(model_path="x.gguf", logprobs=2)._load_settings().logits_all is True
        assert cls(model_path="x.gguf")._load_settings().logits_all is False
