"""HFLocalChatModel on the tiny HF models this project makes: exact greedy answers and every contract.

``tiny-chat`` (trained, Llama architecture) reproduces the corpus answers exactly, so
most checks compare with text. ``tiny-t5`` (random weights, seq2seq) checks mechanics.
"""

from __future__ import annotations

import asyncio
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
from langchain_core.messages import AIMessage, AIMessageChunk, BaseMessage, HumanMessage, SystemMessage, ToolMessage
from langchain_core.output_parsers import StrOutputParser
from langchain_core.prompts import ChatPromptTemplate

from langchain_localllm import ContextWindowExceededError, clear_model_cache, model_cache_info
from langchain_localllm.chat_models import HFLocalChatModel

from .conftest import (
    CHATS,
    CN_Q,
    EMOJI_Q,
    FRESH_Q,
    POEM_Q,
    PRICE_TOOL,
    ROSE_Q,
    SINGLE,
    TINY_T5,
    TOOL_EXAMPLES,
    AsyncTokenCounter,
    ChatExample,
    TokenCounter,
    as_messages,
    bridge_threads,
    chat_answer,
    expected_before,
    no_bridge_threads_soon,
    raw_greedy,
)

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture
def chat(hf_path: Path) -> HFLocalChatModel:
    return HFLocalChatModel(model=str(hf_path), device="cpu", max_tokens=128)


@pytest.fixture
def t5() -> HFLocalChatModel:
    return HFLocalChatModel(model=str(TINY_T5), device="cpu", max_tokens=12)


def messages_of(ex: ChatExample) -> list[BaseMessage]:
    return as_messages(ex.messages)


class GenerateSpy:
    """Wraps one model's ``generate``: counts calls and records the batch shape and output length."""

    def __init__(self, chat: HFLocalChatModel, monkeypatch: pytest.MonkeyPatch, fail: BaseException | None = None):
        with chat._backend().hold() as bundle:
            self.model = bundle.model
        self.calls: list[dict[str, Any]] = []
        real = self.model.generate

        def generate(*args: Any, **kwargs: Any) -> Any:
            call: dict[str, Any] = {"rows": int(kwargs["input_ids"].shape[0]), "kwargs": kwargs}
            self.calls.append(call)
            if fail is not None:
                raise fail
            out = real(*args, **kwargs)
            call["new_tokens"] = int(out.shape[1]) - (
                0 if self.model.config.is_encoder_decoder else int(kwargs["input_ids"].shape[1])
            )
            return out

        monkeypatch.setattr(self.model, "generate", generate)


# -- exact answers ---------------------------------------------------------------------


def test_every_corpus_conversation_gets_its_exact_greedy_answer(chat: HFLocalChatModel) -> None:
    # The two tool conversations need their tool bound: test_tools_structured.py and
    # test_tool_message_histories_render_and_run below.
    cases = [ex for ex in CHATS if not ex.tools]
    assert len(cases) >= 40
    wrong = [
        (ex.messages, out, ex.answer) for ex in cases if (out := chat.invoke(messages_of(ex)).content) != ex.answer
    ]
    assert wrong == [], f"{len(wrong)} of {len(cases)} corpus conversations not answered exactly"


def test_only_generated_text_is_returned(chat: HFLocalChatModel) -> None:
    out = chat.invoke(ROSE_Q).content
    assert isinstance(out, str)
    assert ROSE_Q not in out
    assert "<|im_start|>" not in out
    assert "<|im_end|>" not in out


def test_prompt_ids_are_the_templates_tokens_with_no_extra_special_tokens(chat: HFLocalChatModel) -> None:
    from langchain_localllm._backends.transformers.prompt import render_prompt
    from langchain_localllm._core.messages import to_chat_dicts

    with chat._backend().hold() as bundle:
        tok = bundle.tokenizer
        ids = render_prompt(bundle, to_chat_dicts([HumanMessage("hi")]))
        text = tok.apply_chat_template([{"role": "user", "content": "hi"}], tokenize=False, add_generation_prompt=True)
    assert (
        text
        == "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n"
    )
    assert ids == tok.encode(text, add_special_tokens=False)
    assert chat.get_num_tokens_from_messages([HumanMessage("hi")]) == len(ids)
    assert chat.get_num_tokens("hi there") == len(tok.encode("hi there", add_special_tokens=False))


def test_chat_template_override(hf_path: Path) -> None:
    with HFLocalChatModel(model=str(hf_path))._backend().hold() as bundle:
        template = bundle.tokenizer.chat_template.replace("You are a helpful assistant.", "You are a pirate.")
    pirate = HFLocalChatModel(model=str(hf_path), device="cpu", chat_template=template)
    expected = next(ex.answer for ex in CHATS if ex.system == "You are a pirate.")
    assert pirate.invoke("Hello").content == expected


# -- streaming -------------------------------------------------------------------------


def test_invoke_equals_concatenated_stream(chat: HFLocalChatModel) -> None:
    for question in (POEM_Q, CN_Q, EMOJI_Q, ROSE_Q):
        chunks = list(chat.stream(question))
        assert len(chunks) > 2
        streamed = "".join(str(c.content) for c in chunks)
        assert streamed == chat.invoke(question).content == chat_answer(question)
        for c in chunks:
            assert "\ufffd" not in str(c.content)  # whole characters only (Chinese, emoji)


def test_exactly_one_stream_chunk_has_usage_and_it_is_the_last(chat: HFLocalChatModel) -> None:
    chunks = list(chat.stream(POEM_Q))
    with_usage = [i for i, c in enumerate(chunks) if c.usage_metadata]
    assert with_usage == [len(chunks) - 1]
    last = chunks[-1]
    assert last.chunk_position == "last"
    assert last.response_metadata["finish_reason"] == "stop"
    assert last.response_metadata["model_provider"] == "huggingface"
    assert all(not c.response_metadata.get("model_name") for c in chunks[:-1])
    full = chunks[0]
    for c in chunks[1:]:
        full += c
    assert isinstance(full, AIMessageChunk)
    assert full.usage_metadata == chat.invoke(POEM_Q).usage_metadata
    assert full.response_metadata["model_name"] == chat.model


def test_usage_and_response_metadata_on_invoke(chat: HFLocalChatModel) -> None:
    out = chat.invoke(ROSE_Q)
    with chat._backend().hold() as bundle:
        n_answer = len(bundle.tokenizer.encode(chat_answer(ROSE_Q), add_special_tokens=False))
    n_prompt = chat.get_num_tokens_from_messages([HumanMessage(ROSE_Q)])
    assert out.usage_metadata == {
        "input_tokens": n_prompt,
        "output_tokens": n_answer + 1,  # the answer and its <|im_end|>
        "total_tokens": n_prompt + n_answer + 1,
    }
    assert out.response_metadata["model_name"] == chat.model
    assert out.response_metadata["model_provider"] == "huggingface"
    assert out.response_metadata["finish_reason"] == "stop"


def test_length_finish(chat: HFLocalChatModel) -> None:
    out = chat.invoke(POEM_Q, max_tokens=3)
    assert out.response_metadata["finish_reason"] == "length"
    assert out.usage_metadata is not None
    assert out.usage_metadata["output_tokens"] == 3
    assert chat_answer(POEM_Q).startswith(str(out.content))


def test_callback_fires_once_per_chunk_before_it_is_yielded(chat: HFLocalChatModel) -> None:
    counter = TokenCounter()

    class Manager:
        def on_llm_new_token(self, token: str, **kwargs: Any) -> None:
            counter.tokens.append(token)

    seen_at_yield = []
    chunks = []
    for chunk in chat._stream([HumanMessage(POEM_Q)], run_manager=Manager()):  # type: ignore[arg-type]
        seen_at_yield.append(len(counter.tokens))
        chunks.append(chunk.text)
    assert seen_at_yield == list(range(1, len(chunks) + 1))
    assert counter.tokens == chunks
    assert "".join(chunks) == chat_answer(POEM_Q)

    on_invoke = TokenCounter()
    out = chat.invoke(POEM_Q, config={"callbacks": [on_invoke]})
    assert "".join(on_invoke.tokens) == out.content
    assert len(on_invoke.tokens) > 2


def test_lcel_chain(chat: HFLocalChatModel) -> None:
    chain = ChatPromptTemplate.from_messages([("human", "{question}")]) | chat | StrOutputParser()
    assert chain.invoke({"question": ROSE_Q}) == chat_answer(ROSE_Q)
    assert "".join(chain.stream({"question": POEM_Q})) == chat_answer(POEM_Q)
    questions = [ROSE_Q, POEM_Q, "Hello"]
    assert chain.batch([{"question": q} for q in questions]) == [chat_answer(q) for q in questions]


async def test_async_invoke_stream_and_events(chat: HFLocalChatModel) -> None:
    assert (await chat.ainvoke(ROSE_Q)).content == chat_answer(ROSE_Q)
    chunks = [c async for c in chat.astream(CN_Q)]
    assert len(chunks) > 2
    assert "".join(str(c.content) for c in chunks) == chat_answer(CN_Q)
    assert [i for i, c in enumerate(chunks) if c.usage_metadata] == [len(chunks) - 1]
    counter = AsyncTokenCounter()
    out = await chat.ainvoke(POEM_Q, config={"callbacks": [counter]})
    assert "".join(counter.tokens) == out.content == chat_answer(POEM_Q)
    events = [e async for e in chat.astream_events(ROSE_Q, version="v2")]
    streamed = "".join(str(e["data"]["chunk"].content) for e in events if e["event"] == "on_chat_model_stream")
    assert streamed == chat_answer(ROSE_Q)
    assert await no_bridge_threads_soon()


async def test_astream_does_not_block_the_event_loop(chat: HFLocalChatModel) -> None:
    ticks = 0

    async def ticker() -> None:
        nonlocal ticks
        while True:
            ticks += 1
            await asyncio.sleep(0)

    task = asyncio.create_task(ticker())
    async for _ in chat.astream(CN_Q):
        pass
    task.cancel()
    assert ticks > 10


# -- stops -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("question", "stops"),
    [
        (POEM_Q, ["."]),  # a single token
        (POEM_Q, ["\nViolets"]),  # several tokens
        (POEM_Q, ["olets are"]),  # starts in the middle of a token
        (CN_Q, ["然后"]),  # Chinese
        (CN_Q, ["每天换水"]),  # Chinese, several tokens
        (EMOJI_Q, ["🌹"]),  # an emoji made of several byte tokens
        (POEM_Q, ["\n"]),  # newline
        (POEM_Q, ["zzz", "Sugar"]),  # the one that occurs wins
    ],
)
def test_stop_strings_never_appear_invoke_or_stream(chat: HFLocalChatModel, question: str, stops: list[str]) -> None:
    answer = chat_answer(question)
    assert any(s in answer for s in stops)
    want = expected_before(answer, stops)
    out = chat.invoke(question, stop=stops)
    assert out.content == want
    assert out.response_metadata["finish_reason"] == "stop"
    assert out.response_metadata["stop_sequence"] in stops
    chunks = [str(c.content) for c in chat.stream(question, stop=stops)]
    assert "".join(chunks) == want
    for s in stops:
        assert all(s not in c for c in chunks)


def test_stop_strings_end_generation_early(chat: HFLocalChatModel) -> None:
    full = chat.invoke(FRESH_Q)
    stopped = chat.invoke(FRESH_Q, stop=["water"])
    assert full.usage_metadata is not None
    assert stopped.usage_metadata is not None
    assert stopped.usage_metadata["output_tokens"] < full.usage_metadata["output_tokens"] / 2


def test_construction_and_call_stops_are_merged(hf_path: Path) -> None:
    chat = HFLocalChatModel(model=str(hf_path), device="cpu", stop=["Sugar"])
    answer = chat_answer(POEM_Q)
    assert chat.invoke(POEM_Q).content == expected_before(answer, ["Sugar"])
    assert chat.invoke(POEM_Q, stop=["\nViolets"]).content == expected_before(answer, ["Sugar", "\nViolets"])


# -- batching --------------------------------------------------------------------------


def test_batch_runs_padded_groups_and_equals_sequential(hf_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    chat = HFLocalChatModel(model=str(hf_path), device="cpu", batch_size=8, max_tokens=128)
    questions = SINGLE[:20]
    sequential = [chat.invoke(q) for q in questions]
    spy = GenerateSpy(chat, monkeypatch)
    batched = chat.batch(questions)
    assert [c["rows"] for c in spy.calls] == [8, 8, 4]  # three padded generate calls, not twenty
    assert [b.content for b in batched] == [s.content for s in sequential] == [chat_answer(q) for q in questions]
    assert [b.usage_metadata for b in batched] == [s.usage_metadata for s in sequential]
    assert [b.response_metadata for b in batched] == [s.response_metadata for s in sequential]
    # prompts of different lengths really were padded together
    lengths = {chat.get_num_tokens_from_messages([HumanMessage(q)]) for q in questions[:8]}
    assert len(lengths) > 1


def test_mixed_length_batch_prefills_sorted_groups_into_one_cache(
    chat: HFLocalChatModel, monkeypatch: pytest.MonkeyPatch
) -> None:
    from langchain_localllm._backends.transformers import generate as _hf
    from langchain_localllm._backends.transformers.prefill import cache_argument, plan_groups

    plain = [ex for ex in CHATS if all(m["role"] in {"system", "user", "assistant"} for m in ex.messages)]
    by_length = sorted(plain, key=lambda ex: chat.get_num_tokens_from_messages(messages_of(ex)))
    cases = by_length[:4] + by_length[-4:]  # the shortest and the longest conversations
    inputs = [messages_of(ex) for ex in cases]
    lengths = [chat.get_num_tokens_from_messages(m) for m in inputs]
    assert plan_groups(lengths) is not None, f"lengths {lengths} are too even to exercise the grouped prefill"
    spy = GenerateSpy(chat, monkeypatch)
    grouped = chat.batch(inputs)
    argument = cache_argument(spy.model)
    assert len(spy.calls) == 1
    assert spy.calls[0]["rows"] == len(inputs)  # still one decode for all rows
    assert argument is not None
    assert type(spy.calls[0]["kwargs"][argument]).__name__ == "DynamicCache"
    monkeypatch.setattr(_hf, "plan_groups", lambda lengths: None)  # the ordinary padded prefill
    padded = chat.batch(inputs)
    assert argument not in spy.calls[1]["kwargs"]
    assert [m.content for m in grouped] == [m.content for m in padded] == [ex.answer for ex in cases]
    assert [m.usage_metadata for m in grouped] == [m.usage_metadata for m in padded]


@pytest.mark.parametrize("setting", ["use_cache off", "cache named by the generation config"])
def test_mixed_length_batch_without_a_mergeable_cache_is_padded_and_right(
    hf_path: Path, monkeypatch: pytest.MonkeyPatch, setting: str
) -> None:
    from langchain_localllm._backends.transformers.prefill import cache_argument

    kwargs: dict[str, Any] = {"generate_kwargs": {"use_cache": False}} if setting == "use_cache off" else {}
    chat = HFLocalChatModel(model=str(hf_path), device="cpu", **kwargs)
    plain = [ex for ex in CHATS if all(m["role"] in {"system", "user", "assistant"} for m in ex.messages)]
    by_length = sorted(plain, key=lambda ex: chat.get_num_tokens_from_messages(messages_of(ex)))
    cases = by_length[:3] + by_length[-3:]
    spy = GenerateSpy(chat, monkeypatch)
    if setting != "use_cache off":
        monkeypatch.setattr(spy.model.generation_config, "cache_implementation", "dynamic")
    assert [m.content for m in chat.batch([messages_of(ex) for ex in cases])] == [ex.answer for ex in cases]
    assert cache_argument(spy.model) not in spy.calls[0]["kwargs"]  # one padded prefill


def test_batch_of_conversations_with_systems_and_stops(chat: HFLocalChatModel, monkeypatch: pytest.MonkeyPatch) -> None:
    cases = [ex for ex in CHATS if ex.system is not None or not ex.single_turn][:8]
    inputs = [messages_of(ex) for ex in cases]
    spy = GenerateSpy(chat, monkeypatch)
    assert [m.content for m in chat.batch(inputs)] == [ex.answer for ex in cases]
    assert len(spy.calls) == 1
    stops = ["e"]
    assert [m.content for m in chat.batch(inputs, stop=stops)] == [expected_before(ex.answer, stops) for ex in cases]
    assert len(spy.calls) == 2


async def test_abatch_equals_sequential(chat: HFLocalChatModel, monkeypatch: pytest.MonkeyPatch) -> None:
    questions = SINGLE[:6]
    spy = GenerateSpy(chat, monkeypatch)
    out = await chat.abatch(questions)
    assert [m.content for m in out] == [chat_answer(q) for q in questions]
    assert len(spy.calls) == 1
    assert await no_bridge_threads_soon()


def test_batch_reports_a_bad_input_without_failing_the_others(chat: HFLocalChatModel) -> None:
    image = HumanMessage([{"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA"}}])
    too_long = "rose " * 3000
    out = chat.batch([ROSE_Q, [image], too_long, "Hello"], return_exceptions=True)
    assert isinstance(out[0], AIMessage)
    assert out[0].content == chat_answer(ROSE_Q)
    assert isinstance(out[1], ValueError)
    assert isinstance(out[2], ContextWindowExceededError)
    assert isinstance(out[3], AIMessage)
    assert out[3].content == chat_answer("Hello")
    with pytest.raises(ContextWindowExceededError):
        chat.batch([ROSE_Q, too_long])


def test_batch_on_the_seq2seq_model_equals_sequential(t5: HFLocalChatModel, monkeypatch: pytest.MonkeyPatch) -> None:
    prompts = ["Hello", "Hey", "What is 2+2?", "Rose is which type of flower?", "hi"]
    sequential = [t5.invoke(p) for p in prompts]
    spy = GenerateSpy(t5, monkeypatch)
    batched = t5.batch(prompts)
    assert len(spy.calls) == 1
    assert [b.content for b in batched] == [s.content for s in sequential]
    assert [b.usage_metadata for b in batched] == [s.usage_metadata for s in sequential]


def test_concurrent_threads_get_the_sequential_answers(chat: HFLocalChatModel) -> None:
    questions = SINGLE[:6]
    with ThreadPoolExecutor(6) as pool:
        assert [m.content for m in pool.map(chat.invoke, questions)] == [chat_answer(q) for q in questions]


# -- cancellation and errors -----------------------------------------------------------


def test_breaking_out_of_a_stream_stops_generate(chat: HFLocalChatModel, monkeypatch: pytest.MonkeyPatch) -> None:
    spy = GenerateSpy(chat, monkeypatch)
    full = chat.invoke(FRESH_Q)
    assert full.usage_metadata is not None
    n_full = full.usage_metadata["output_tokens"]
    for i, _ in enumerate(chat.stream(FRESH_Q)):
        if i == 1:
            break
    assert bridge_threads() == []  # the worker was joined
    assert len(spy.calls) == 2
    assert "new_tokens" not in spy.calls[1] or spy.calls[1]["new_tokens"] < n_full / 2
    assert chat.invoke(FRESH_Q).content == chat_answer(FRESH_Q)  # the model is free and sound


async def test_async_break_and_task_cancel_stop_generation(chat: HFLocalChatModel) -> None:
    gen = chat.astream(FRESH_Q)
    async for _ in gen:
        break
    await gen.aclose()
    assert await no_bridge_threads_soon()

    started = asyncio.Event()
    streamed: list[str] = []

    async def consume() -> None:
        async for chunk in chat.astream(CN_Q):
            streamed.append(str(chunk.content))
            started.set()
            await asyncio.sleep(0)

    task = asyncio.create_task(consume())
    await asyncio.wait_for(started.wait(), 30)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert await no_bridge_threads_soon()
    assert "".join(streamed) != chat_answer(CN_Q)
    assert (await chat.ainvoke(ROSE_Q)).content == chat_answer(ROSE_Q)


async def test_an_exception_in_generate_reaches_the_caller(
    chat: HFLocalChatModel, monkeypatch: pytest.MonkeyPatch
) -> None:
    GenerateSpy(chat, monkeypatch, fail=RuntimeError("generate exploded"))
    with pytest.raises(RuntimeError, match="generate exploded"):
        chat.invoke(ROSE_Q)
    with pytest.raises(RuntimeError, match="generate exploded"):
        list(chat.stream(ROSE_Q))
    with pytest.raises(RuntimeError, match="generate exploded"):
        await chat.ainvoke(ROSE_Q)
    with pytest.raises(RuntimeError, match="generate exploded"):
        chat.batch([ROSE_Q, POEM_Q])
    assert await no_bridge_threads_soon()
    monkeypatch.undo()
    assert chat.invoke(ROSE_Q).content == chat_answer(ROSE_Q)  # lock released, model fine


def test_context_overflow(chat: HFLocalChatModel) -> None:
    with chat._backend().hold() as bundle:
        window = bundle.context_window
    assert window == 2048
    with pytest.raises(ContextWindowExceededError) as err:
        chat.invoke("rose " * 3000)
    assert err.value.context_window == 2048
    assert err.value.prompt_tokens > 2048
    assert "2048" in str(err.value)
    with pytest.raises(ContextWindowExceededError):
        list(chat.stream("rose " * 3000))


def test_answer_is_capped_by_the_context_window(chat: HFLocalChatModel) -> None:
    base = chat.get_num_tokens_from_messages([HumanMessage("")])
    per_word = chat.get_num_tokens(" rose") or 1
    text = " rose" * ((2048 - base - 6) // per_word)
    n_prompt = chat.get_num_tokens_from_messages([HumanMessage(text)])
    assert 2048 - 20 < n_prompt < 2048
    out = chat.invoke(text, max_tokens=100)
    assert out.usage_metadata is not None
    assert out.usage_metadata["input_tokens"] == n_prompt
    assert out.usage_metadata["total_tokens"] <= 2048


# -- seq2seq ---------------------------------------------------------------------------


def test_seq2seq_mechanics(t5: HFLocalChatModel) -> None:
    prompts = ["Hello", "Hey", "What is 2+2?", "hi"]
    with t5._backend().hold() as bundle:
        assert bundle.is_seq2seq
        tok = bundle.tokenizer
        # No chat template: a single user message is sent as its text (the tokenizer appends </s>).
        prompt_ids = {p: tok(p)["input_ids"] for p in prompts}
        raw = {p: raw_greedy(bundle, ids, 12) for p, ids in prompt_ids.items()}
    assert all(not ended and len(new) == 12 for new, ended in raw.values())  # random weights: no EOS in 12
    assert len({tuple(new) for new, _ in raw.values()}) > 1  # the encoder input reaches the decoder
    for p in prompts:
        out = t5.invoke(p)
        # exactly the decoder's new tokens, as raw greedy generate gives them: no prompt, no start token
        assert out.content == tok.decode(raw[p][0]), p
        n_prompt = len(prompt_ids[p])
        assert out.usage_metadata == {"input_tokens": n_prompt, "output_tokens": 12, "total_tokens": n_prompt + 12}
        assert out.response_metadata["finish_reason"] == "length"
    text = str(t5.invoke("Hello").content)
    assert len(text) == 12  # one character per byte-level token
    assert "".join(str(c.content) for c in t5.stream("Hello")) == text
    # A stop string cuts seq2seq output too, and ends generation where it completes.
    stop = text[3:5]
    stopped = t5.invoke("Hello", stop=[stop])
    assert stopped.content == text[: text.find(stop)]
    assert stopped.response_metadata["finish_reason"] == "stop"
    assert stopped.usage_metadata is not None
    assert stopped.usage_metadata["output_tokens"] == text.find(stop) + len(stop)
    # A conversation uses the documented plain-text fallback: one "Role: text" line per message.
    history = [SystemMessage("Be brief."), HumanMessage("hello"), AIMessage("hi"), HumanMessage("how are you")]
    with t5._backend().hold() as bundle:
        ids = tok("System: Be brief.\nUser: hello\nAssistant: hi\nUser: how are you")["input_ids"]
        new, _ = raw_greedy(bundle, ids, 12)
    out = t5.invoke(history)
    assert out.usage_metadata is not None
    assert out.usage_metadata["input_tokens"] == len(ids)
    assert out.content == tok.decode(new)


async def test_seq2seq_async(t5: HFLocalChatModel) -> None:
    text = (await t5.ainvoke("Hey")).content
    assert "".join([str(c.content) async for c in t5.astream("Hey")]) == text


# -- messages ----------------------------------------------------------------------------


TOOL_HISTORY_PROMPT = (
    "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n"
    "<|im_start|>user\nHow much is a rose?<|im_end|>\n"
    '<|im_start|>assistant\n<tool_call>\n{"name": "get_flower_price", "arguments": {"flower": "rose"}}\n'
    "</tool_call><|im_end|>\n"
    '<|im_start|>user\n<tool_response>\n{"price": 12}\n</tool_response><|im_end|>\n'
    "<|im_start|>assistant\n"
)


def test_tool_message_histories_render_and_run(chat: HFLocalChatModel) -> None:
    from langchain_localllm._backends.transformers.prompt import render_prompt
    from langchain_localllm._core.messages import to_chat_dicts

    call = {"name": "get_flower_price", "args": {"flower": "rose"}, "id": "c1", "type": "tool_call"}
    history: list[BaseMessage] = [
        HumanMessage("How much is a rose?"),
        AIMessage("", tool_calls=[call]),
        ToolMessage('{"price": 12}', tool_call_id="c1", name="get_flower_price"),
    ]
    with chat._backend().hold() as bundle:
        tok = bundle.tokenizer
        assert tok.decode(render_prompt(bundle, to_chat_dicts(history))) == TOOL_HISTORY_PROMPT
        ids = tok.encode(TOOL_HISTORY_PROMPT, add_special_tokens=False)
        new, ended = raw_greedy(bundle, ids, 128)
    # Without tools bound, the model gets exactly that prompt: the answer of raw greedy generate.
    out = chat.invoke(history)
    assert out.content == tok.decode(new)
    assert out.usage_metadata is not None
    assert out.usage_metadata["input_tokens"] == len(ids)
    assert out.usage_metadata["output_tokens"] == len(new) + ended
    # With the tool bound it is the corpus's tool conversation, answered exactly.
    (trained,) = [ex for ex in TOOL_EXAMPLES if any(m["role"] == "tool" for m in ex.messages)]
    bound = chat.bind_tools([PRICE_TOOL]).invoke(history)
    assert bound.content == trained.answer == "A rose costs 12 yuan."
    assert bound.tool_calls == []
    # Content blocks: text blocks are joined and tool_use blocks dropped (tool_calls carries
    # the call), so the turn renders, and is answered, like its plain-string form.
    no_args = {"name": "get_flower_price", "args": {}, "id": "c1", "type": "tool_call"}
    blocks = AIMessage(
        [
            {"type": "text", "text": "some "},
            {"type": "tool_use", "id": "c1", "name": "get_flower_price", "input": {}},
            {"type": "text", "text": "text"},
        ],
        tool_calls=[no_args],
    )
    plain = AIMessage("some text", tool_calls=[no_args])
    with chat._backend().hold() as bundle:
        with_blocks = render_prompt(bundle, to_chat_dicts([history[0], blocks, history[2]]))
        assert with_blocks == render_prompt(bundle, to_chat_dicts([history[0], plain, history[2]]))
        assert '<|im_start|>assistant\nsome text\n<tool_call>\n{"name": "get_flower_price", "arguments": {}}\n' in (
            tok.decode(with_blocks)
        )
    answer = chat.invoke([history[0], blocks, history[2]])
    assert answer.content == chat.invoke([history[0], plain, history[2]]).content
    assert answer.usage_metadata is not None
    assert answer.usage_metadata["input_tokens"] == len(with_blocks)


def test_names_and_repeated_roles(chat: HFLocalChatModel) -> None:
    # A name reaches the template, which ignores it: the same prompt and answer as without.
    named = chat.invoke([HumanMessage("Hello", name="example_user")])
    assert named.content == chat_answer("Hello")
    assert named.usage_metadata == chat.invoke("Hello").usage_metadata
    # Consecutive messages of one role are merged into one turn, joined by a blank line.
    doubled = [SystemMessage("hello"), SystemMessage("hello"), HumanMessage("hello"), HumanMessage("hello")]
    merged = "<|im_start|>system\nhello\n\nhello<|im_end|>\n<|im_start|>user\nhello\n\nhello<|im_end|>\n<|im_start|>assistant\n"
    with chat._backend().hold() as bundle:
        tok = bundle.tokenizer
        ids = tok.encode(merged, add_special_tokens=False)
        new, ended = raw_greedy(bundle, ids, 128)
    assert chat.get_num_tokens_from_messages(doubled) == len(ids)
    out = chat.invoke(doubled)
    assert out.content == tok.decode(new)  # what the model answers to the merged prompt
    assert out.usage_metadata == {
        "input_tokens": len(ids),
        "output_tokens": len(new) + ended,
        "total_tokens": len(ids) + len(new) + ended,
    }
    assert chat.invoke([SystemMessage("hello\n\nhello"), HumanMessage("hello\n\nhello")]).content == out.content


# -- sampling --------------------------------------------------------------------------


def test_seed_makes_sampling_reproducible(hf_path: Path) -> None:
    chat = HFLocalChatModel(model=str(hf_path), device="cpu", temperature=1.5, top_k=0, top_p=1.0, max_tokens=12)
    a = chat.invoke("Hello", seed=7).content
    assert a == chat.invoke("Hello", seed=7).content
    assert len({chat.invoke("Hello", seed=s).content for s in range(6)}) > 1  # it really samples


def test_generate_kwargs_reach_generate(chat: HFLocalChatModel, monkeypatch: pytest.MonkeyPatch) -> None:
    spy = GenerateSpy(chat, monkeypatch)
    chat.invoke("Hello", generate_kwargs={"no_repeat_ngram_size": 50})
    config = spy.calls[-1]["kwargs"]["generation_config"]
    assert config.no_repeat_ngram_size == 50  # a generation setting: on the config, not beside it
    assert "no_repeat_ngram_size" not in spy.calls[-1]["kwargs"]
    assert config.do_sample is False
    assert sorted(config.eos_token_id) == [0, 2]  # every EOS id of the model


# -- loading and the cache -------------------------------------------------------------


def test_two_instances_share_one_load_and_calls_never_reload(hf_path: Path) -> None:
    clear_model_cache()
    before = model_cache_info().loads
    torch = pytest.importorskip("torch")
    auto_is_cpu = not torch.cuda.is_available() and not torch.backends.mps.is_available()
    a = HFLocalChatModel(model=str(hf_path), device="cpu", max_tokens=4)
    b = HFLocalChatModel(
        model=str(hf_path) + "/",
        device="auto" if auto_is_cpu else "cpu",  # "auto" resolves before the key is made
        temperature=0.7,
        top_k=5,
        max_tokens=2,
        seed=3,
    )
    for _ in range(10):
        a.invoke("Hello")
        b.invoke("Hello")
    a.batch(["Hello", "Hey"])
    assert model_cache_info().loads == before + 1
    HFLocalChatModel(model=str(hf_path), device="cpu", attn_implementation="eager", max_tokens=2).invoke("Hello")
    assert model_cache_info().loads == before + 2  # a load setting is part of the key


def test_unload_load_on_init_and_load_time(hf_path: Path) -> None:
    chat = HFLocalChatModel(model=str(hf_path), device="cpu", max_tokens=2)
    chat.invoke("Hello")
    loads = model_cache_info().loads
    assert chat.unload() is True
    assert chat.unload() is False
    start = time.perf_counter()
    HFLocalChatModel(model=str(hf_path), device="cpu", load_on_init=True)
    assert model_cache_info().loads == loads + 1
    assert time.perf_counter() - start < 30
    chat.invoke("Hello")
    assert model_cache_info().loads == loads + 1


def test_from_model_and_tokenizer_and_from_pipeline(hf_path: Path) -> None:
    transformers = pytest.importorskip("transformers")
    tok = transformers.AutoTokenizer.from_pretrained(hf_path)
    lm = transformers.AutoModelForCausalLM.from_pretrained(hf_path)
    before = model_cache_info().loads
    a = HFLocalChatModel.from_model_and_tokenizer(lm, tok, max_tokens=64)
    b = HFLocalChatModel.from_model_and_tokenizer(lm, tok, stop=["."])
    assert model_cache_info().loads == before + 1  # registered once, shared
    assert a.model == str(hf_path)
    assert a.invoke(ROSE_Q).content == chat_answer(ROSE_Q)
    assert b.invoke(ROSE_Q).content == expected_before(chat_answer(ROSE_Q), ["."])
    assert [m.content for m in a.batch([ROSE_Q, "Hello"])] == [chat_answer(ROSE_Q), chat_answer("Hello")]
    pipe = transformers.pipeline("text-generation", model=lm, tokenizer=tok)
    c = HFLocalChatModel.from_pipeline(pipe, model="my-tiny-model")
    assert c.invoke("Hello").content == chat_answer("Hello")
    assert c.invoke("Hello").response_metadata["model_name"] == "my-tiny-model"
    assert model_cache_info().loads == before + 1  # the pipeline holds the same objects: shared
    assert a.unload() is True
    assert a.invoke("Hello").content == chat_answer("Hello")  # re-registered from the same objects
    with a._backend().hold() as bundle:
        assert bundle.model is lm
    with pytest.raises(ValueError, match="text-generation"):
        HFLocalChatModel.from_pipeline(type("P", (), {"task": "image-classification", "tokenizer": tok, "model": lm})())


def test_per_call_model_override_loads_that_model(chat: HFLocalChatModel) -> None:
    out = chat.invoke("Hello", model=str(TINY_T5), max_tokens=4)
    assert out.response_metadata["model_name"] == str(TINY_T5)
    assert out.usage_metadata is not None
    assert out.usage_metadata["output_tokens"] == 4
    assert chat.invoke("Hello").content == chat_answer("Hello")


def test_static_cache_path_gives_the_same_answers(hf_path: Path) -> None:
    # The CUDA default (a static KV cache) runs on CPU too when asked for explicitly.
    static = HFLocalChatModel(model=str(hf_path), static_cache=True)
    for question in (ROSE_Q, POEM_Q, CN_Q):
        assert static.invoke([HumanMessage(question)]).content == chat_answer(question)
        assert "".join(str(c.content) for c in static.stream([HumanMessage(question)])) == chat_answer(question)
    assert [m.content for m in static.batch([[HumanMessage(q)] for q in SINGLE[:4]])] == [
        chat_answer(q) for q in SINGLE[:4]
    ]
