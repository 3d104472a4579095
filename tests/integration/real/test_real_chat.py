"""Our chat models against the raw libraries on a published model, both backends, greedy.

Nothing here is hard-coded: every expected answer is what the raw library gives for the
template rendered by hand (see ``conftest.py``).
"""

from __future__ import annotations

from typing import Any

import pytest
from langchain_core.callbacks import BaseCallbackHandler
from langchain_core.messages import BaseMessage, convert_to_messages
from langchain_core.output_parsers import StrOutputParser
from langchain_core.prompts import ChatPromptTemplate

from langchain_localllm import LocalGGMLLLM
from tests.integration.real.conftest import N_CTX, REAL_GGUF, Side

ROSE = "Rose is which type of flower?"
CN = "请用一句话介绍一下玫瑰花。"
CONVERSATIONS: dict[str, list[dict[str, Any]]] = {
    "user": [{"role": "user", "content": ROSE}],
    "system": [
        {"role": "system", "content": "You are a florist. Answer in one sentence."},
        {"role": "user", "content": "What flower means love?"},
    ],
    "multi_turn": [
        {"role": "system", "content": "You are a florist."},
        {"role": "user", "content": "Hi! I need flowers for my mother."},
        {"role": "assistant", "content": "Lovely! Carnations and roses are popular choices for mothers."},
        {"role": "user", "content": "Which one lasts longer in a vase?"},
    ],
    "chinese": [{"role": "user", "content": CN}],
}


def msgs(conversation: list[dict[str, Any]]) -> list[BaseMessage]:
    return convert_to_messages(conversation)


def our_ids(chat: Any, conversation: list[dict[str, Any]]) -> list[int]:
    backend, request, _ = chat._request(msgs(conversation), None, {})
    return list(backend.render(request.prompt))


@pytest.mark.parametrize("name", CONVERSATIONS)
def test_prompt_ids_equal_the_template_rendered_by_hand(side: Side, name: str) -> None:
    conversation = CONVERSATIONS[name]
    assert our_ids(side.make(), conversation) == side.hand_ids(conversation)


@pytest.mark.parametrize("name", CONVERSATIONS)
async def test_invoke_stream_astream_and_batch_give_the_raw_answer(side: Side, name: str) -> None:
    conversation = CONVERSATIONS[name]
    raw = side.raw_chat(conversation)
    assert raw.text.strip(), "the raw model answered nothing: pick another prompt"
    chat = side.make()
    assert chat.invoke(msgs(conversation)).content == raw.text
    assert "".join(str(c.content) for c in chat.stream(msgs(conversation))) == raw.text
    assert "".join([str(c.content) async for c in chat.astream(msgs(conversation))]) == raw.text
    other = CONVERSATIONS["user" if name != "user" else "system"]
    batched = chat.batch([msgs(conversation), msgs(other)])
    assert [m.content for m in batched] == [raw.text, side.raw_chat(other).text]
    assert "\ufffd" not in raw.text


def _stops_from(side: Side, ids: list[int]) -> dict[str, str]:
    """Three stops taken from a raw answer: one whole token, several tokens, and one starting mid-token."""
    pieces = [side.piece(t) for t in ids]
    words = [i for i, p in enumerate(pieces) if i >= 2 and len(p.strip()) >= 4 and p.strip().isalpha()]
    assert len(words) >= 2, f"the answer has too few word tokens to cut: {pieces}"
    one = pieces[words[0]]
    multi = "".join(pieces[words[1] : words[1] + 3])
    mid = pieces[words[-1]].strip()[1:3]
    return {"one_token": one, "multi_token": multi, "mid_token": mid}


@pytest.mark.parametrize("kind", ["one_token", "multi_token", "mid_token"])
async def test_stop_sequences_cut_where_the_raw_answer_has_them(side: Side, kind: str) -> None:
    conversation = CONVERSATIONS["system"]
    raw = side.raw_chat(conversation)
    stop = _stops_from(side, raw.ids)[kind]
    expected = raw.text[: raw.text.find(stop)]
    chat = side.make()
    out = chat.invoke(msgs(conversation), stop=[stop])
    assert out.content == expected
    assert out.response_metadata["finish_reason"] == "stop"
    assert out.response_metadata["stop_sequence"] == stop
    assert "".join(str(c.content) for c in chat.stream(msgs(conversation), stop=[stop])) == expected
    assert "".join([str(c.content) async for c in chat.astream(msgs(conversation), stop=[stop])]) == expected


@pytest.mark.parametrize("name", ["system", "chinese"])
def test_usage_equals_the_raw_token_counts(side: Side, name: str) -> None:
    conversation = CONVERSATIONS[name]
    raw = side.raw_chat(conversation, max_tokens=200)
    out = side.make(max_tokens=200).invoke(msgs(conversation))
    n_out = len(raw.ids) + (1 if raw.ended and side.counts_end_token else 0)
    assert out.usage_metadata == {
        "input_tokens": len(raw.prompt_ids),
        "output_tokens": n_out,
        "total_tokens": len(raw.prompt_ids) + n_out,
    }


def test_the_end_of_turn_token_stops_generation(side: Side) -> None:
    conversation = CONVERSATIONS["system"]
    raw = side.raw_chat(conversation, max_tokens=200)
    assert raw.ended, "the raw model did not end its turn within 200 tokens: pick another prompt"
    out = side.make(max_tokens=200).invoke(msgs(conversation))
    assert out.content == raw.text
    assert out.response_metadata["finish_reason"] == "stop"
    assert out.response_metadata.get("stop_sequence") is None
    assert "<|im_end|>" not in str(out.content)
    assert "<|im_start|>" not in str(out.content)


def test_max_tokens_ends_with_length(side: Side) -> None:
    conversation = CONVERSATIONS["multi_turn"]
    raw = side.raw_chat(conversation, max_tokens=5)
    out = side.make(max_tokens=5).invoke(msgs(conversation))
    assert out.content == raw.text
    assert out.response_metadata["finish_reason"] == ("stop" if raw.ended else "length")


def test_chinese_streams_without_replacement_characters(side: Side) -> None:
    conversation = CONVERSATIONS["chinese"]
    raw = side.raw_chat(conversation, max_tokens=80)
    assert any("\u4e00" <= ch <= "\u9fff" for ch in raw.text), "the model did not answer in Chinese"
    chunks = [str(c.content) for c in side.make(max_tokens=80).stream(msgs(conversation))]
    assert all("\ufffd" not in c for c in chunks)
    assert "".join(chunks) == raw.text


class Tokens(BaseCallbackHandler):
    def __init__(self) -> None:
        self.tokens: list[str] = []

    def on_llm_new_token(self, token: str, **kwargs: Any) -> None:
        self.tokens.append(token)


def test_an_lcel_chain_with_callbacks_gives_the_raw_answer(side: Side) -> None:
    prompt = ChatPromptTemplate.from_messages([("system", "You are a florist."), ("human", "{question}")])
    raw = side.raw_chat([{"role": "system", "content": "You are a florist."}, {"role": "user", "content": ROSE}])
    handler = Tokens()
    chain = prompt | side.make() | StrOutputParser()
    assert chain.invoke({"question": ROSE}, config={"callbacks": [handler]}) == raw.text
    assert "".join(handler.tokens) == raw.text
    assert "".join(chain.stream({"question": ROSE})) == raw.text


def test_the_llm_class_gives_the_raw_answer(gguf_side: Side) -> None:
    raw = gguf_side.raw_chat(CONVERSATIONS["user"])
    llm = LocalGGMLLLM(model_path=str(REAL_GGUF), n_ctx=N_CTX, temperature=0.0, max_tokens=40)
    assert llm.invoke(ROSE) == raw.text
    assert "".join(llm.stream(ROSE)) == raw.text
    result = llm.generate([ROSE])
    info = result.generations[0][0].generation_info or {}
    assert info["prompt_tokens"] == len(raw.prompt_ids)
    assert info["completion_tokens"] == len(raw.ids)


def test_the_history_changes_the_answer_as_it_changes_the_raw_one(side: Side) -> None:
    history = CONVERSATIONS["multi_turn"]
    alone = [history[0], history[-1]]
    with_history, without = side.raw_chat(history), side.raw_chat(alone)
    chat = side.make()
    assert chat.invoke(msgs(history)).content == with_history.text
    assert chat.invoke(msgs(alone)).content == without.text
