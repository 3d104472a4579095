"""Sandboxed rendering of model-supplied chat templates."""

from __future__ import annotations

import pytest

from langchain_localllm import ChatTemplateError
from langchain_localllm._core.template import render_chat_template

CHATML = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


def test_renders_chatml_with_generation_prompt() -> None:
    out = render_chat_template(CHATML, [{"role": "user", "content": "玫瑰?"}])
    assert out == "<|im_start|>user\n玫瑰?<|im_end|>\n<|im_start|>assistant\n"


def test_bos_token_and_tojson_keep_unicode() -> None:
    tpl = "{{ bos_token }}{{ messages[0]['content'] | tojson }}"
    assert render_chat_template(tpl, [{"role": "user", "content": "花"}], bos_token="<s>") == '<s>"花"'


def test_raise_exception_becomes_a_typed_error() -> None:
    tpl = "{% if messages[0]['role'] == 'system' %}{{ raise_exception('System role not supported') }}{% endif %}"
    with pytest.raises(ChatTemplateError, match="System role not supported"):
        render_chat_template(tpl, [{"role": "system", "content": "x"}])


def test_sandbox_blocks_attribute_escapes() -> None:
    tpl = "{{ ''.__class__.__mro__[1].__subclasses__() }}"
    with pytest.raises(ChatTemplateError):
        render_chat_template(tpl, [])


def test_broken_template_is_a_typed_error() -> None:
    with pytest.raises(ChatTemplateError, match="does not compile"):
        render_chat_template("{% for %}", [])
