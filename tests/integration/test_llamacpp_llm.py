"""LocalGGMLLLM on the tiny GGUF this project trains: exact greedy answers and every contract."""

from __future__ import annotations

import asyncio
import json
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from langchain_core.output_parsers import StrOutputParser
from langchain_core.prompts import PromptTemplate

from langchain_localllm import (
    ContextWindowExceededError,
    InvalidModelFileError,
    LegacyGGMLFormatError,
    LocalGGMLLLM,
    ModelNotFoundError,
    clear_model_cache,
    model_cache_info,
)
from langchain_localllm._backends.llamacpp.load import tokenize_prompt

from .conftest import (
    BAD,
    CHATS,
    CN_Q,
    COMPLETIONS,
    POEM_Q,
    ROSE_Q,
    TINY_GGUF,
    AsyncTokenCounter,
    TokenCounter,
    bridge_threads,
    chat_answer,
    expected_before,
    gguf_metadata,
    no_bridge_threads_soon,
    write_gguf_variant,
)


@pytest.fixture
def llm(gguf_path: Path) -> LocalGGMLLLM:
    return LocalGGMLLLM(model_path=str(gguf_path), temperature=0, max_tokens=128)


# -- exact answers ---------------------------------------------------------------------


def test_every_single_turn_corpus_question_in_auto_mode(gguf_path: Path) -> None:
    cases = [ex for ex in CHATS if ex.single_turn]
    assert len(cases) >= 30
    wrong = []
    for ex in cases:
        llm = LocalGGMLLLM(model_path=str(gguf_path), temperature=0, max_tokens=128, system_prompt=ex.system)
        out = llm.invoke(ex.user)
        if out != ex.answer:
            wrong.append((ex.system, ex.user, out, ex.answer))
    assert wrong == [], f"{len(wrong)} of {len(cases)} corpus questions not answered exactly"


def test_every_completion_in_raw_mode(gguf_path: Path) -> None:
    llm = LocalGGMLLLM(model_path=str(gguf_path), temperature=0, max_tokens=128, prompt_format="raw")
    for ex in COMPLETIONS:
        assert llm.invoke(ex.prompt) == ex.completion, ex.prompt


def test_format_string_prompt_format(gguf_path: Path) -> None:
    # The seed tutorial's "Q: {prompt} A:" format, done by the package instead of by hand.
    llm = LocalGGMLLLM(model_path=str(gguf_path), temperature=0, prompt_format="Q: {prompt} A:")
    expected = next(ex.completion for ex in COMPLETIONS if ex.prompt == f"Q: {ROSE_Q} A:")
    assert llm.invoke(ROSE_Q) == expected


def test_only_generated_text_is_returned(llm: LocalGGMLLLM) -> None:
    out = llm.invoke(ROSE_Q)
    assert ROSE_Q not in out
    assert "<|im_start|>" not in out
    assert "<|im_end|>" not in out


def test_rendered_prompt_uses_the_gguf_template_and_has_no_double_bos(llm: LocalGGMLLLM) -> None:
    with llm._backend().hold() as model:
        tokens = llm._backend()._render(model, llm._prompt("hi"))
        text = model.llama.detokenize(tokens, special=True).decode()
        assert text.startswith("<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n")
        assert text.endswith("<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n")
        tokens = tokenize_prompt(model, text)
        # The fixture's tokenizer does not add BOS (tokenizer.ggml.add_bos_token = False): none is added.
        assert (model.add_bos, model.bos_id) == (False, 0)
        assert tokens == model.llama.tokenize(text.encode(), add_bos=False, special=True)
        assert model.bos_id not in tokens


@pytest.mark.parametrize("template_renders_bos", [False, True], ids=["bos-added", "bos-in-template"])
def test_a_bos_adding_tokenizer_gets_exactly_one_bos(tmp_path: Path, template_renders_bos: bool) -> None:
    # The fixture with tokenizer.ggml.add_bos_token = True (its BOS is id 0, <|endoftext|>);
    # in the second case the chat template also renders {{ bos_token }} itself, as many do.
    template = gguf_metadata(TINY_GGUF, "tokenizer.chat_template")
    changes: dict[str, object] = {"tokenizer.ggml.add_bos_token": True}
    if template_renders_bos:
        changes["tokenizer.chat_template"] = "{{ bos_token }}" + template
    path = write_gguf_variant(tmp_path / "bos.gguf", changes)
    llm = LocalGGMLLLM(model_path=str(path), temperature=0, max_tokens=128)
    with llm._backend().hold() as model:
        assert (model.add_bos, model.bos_id, model.bos_text) == (True, 0, "<|endoftext|>")
        ids = llm._backend()._render(model, llm._prompt(ROSE_Q))
        text = model.llama.detokenize(ids, special=True).decode()
        assert text.startswith("<|endoftext|><|im_start|>system\n")  # BOS once, from the template or added
        body = model.llama.tokenize(text.removeprefix("<|endoftext|>").encode(), add_bos=False, special=True)
        assert ids == [model.bos_id, *body]
        assert tokenize_prompt(model, text) == ids  # a template-rendered BOS is not doubled
    # ...and exactly that is what the model evaluates: one BOS, then the template's tokens.
    gen = llm.generate([ROSE_Q]).generations[0][0]
    assert (gen.generation_info or {})["prompt_tokens"] == 1 + len(body)
    with llm._backend().hold() as model:
        evaluated = model.kv.tokens[: 1 + len(body)]
    assert evaluated == [0, *body]
    assert gen.text == chat_answer(ROSE_Q)  # same weights: one leading BOS does not change the answer
    assert llm.unload() is True


def test_invoke_equals_concatenated_stream(llm: LocalGGMLLLM) -> None:
    for question in (POEM_Q, CN_Q, ROSE_Q):
        chunks = list(llm.stream(question))
        assert len(chunks) > 1
        assert "".join(chunks) == llm.invoke(question) == chat_answer(question)


def test_streamed_chinese_and_emoji_chunks_are_whole_characters(llm: LocalGGMLLLM) -> None:
    for question in (CN_Q, "Say something nice with an emoji."):
        for chunk in llm.stream(question):
            assert "\ufffd" not in chunk


# -- stops -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("question", "stops"),
    [
        (POEM_Q, ["."]),  # a single token
        (POEM_Q, ["\nViolets"]),  # several tokens
        (POEM_Q, ["olets are"]),  # starts in the middle of a token
        (CN_Q, ["然后"]),  # Chinese
        (POEM_Q, ["\n"]),  # newline
        (POEM_Q, ["zzz", "Sugar"]),  # the one that occurs wins
    ],
)
def test_stop_strings_never_appear_invoke_or_stream(llm: LocalGGMLLLM, question: str, stops: list[str]) -> None:
    answer = chat_answer(question)
    assert any(s in answer for s in stops)
    want = expected_before(answer, stops)
    assert llm.invoke(question, stop=stops) == want
    chunks = list(llm.stream(question, stop=stops))
    assert "".join(chunks) == want
    for s in stops:
        assert s not in "".join(chunks)


def test_the_mid_token_stop_really_starts_inside_a_token(llm: LocalGGMLLLM) -> None:
    answer = chat_answer(POEM_Q)
    with llm._backend().hold() as model:
        ids = model.llama.tokenize(answer.encode(), add_bos=False, special=False)
    boundaries = {0}
    pos = 0
    for t in ids:
        pos += len(model.pieces[t].decode("utf-8", errors="ignore"))
        boundaries.add(pos)
    assert answer.find("olets are") not in boundaries


def test_construction_and_call_stops_are_merged(gguf_path: Path) -> None:
    llm = LocalGGMLLLM(model_path=str(gguf_path), temperature=0, stop=["Sugar"])
    answer = chat_answer(POEM_Q)
    assert llm.invoke(POEM_Q) == expected_before(answer, ["Sugar"])
    assert llm.invoke(POEM_Q, stop=["\nViolets"]) == expected_before(answer, ["Sugar", "\nViolets"])


def test_raw_mode_stop_sequence(gguf_path: Path) -> None:
    llm = LocalGGMLLLM(model_path=str(gguf_path), temperature=0, prompt_format="raw")
    assert llm.invoke("In the garden we planted", stop=["STOP"]) == " tulips, daisies and roses. "


def test_finish_reason_and_token_usage(llm: LocalGGMLLLM) -> None:
    result = llm.generate([ROSE_Q, POEM_Q], stop=None)
    infos = [g[0].generation_info or {} for g in result.generations]
    assert [i["finish_reason"] for i in infos] == ["stop", "stop"]
    with llm._backend().hold() as model:
        n_prompt = len(llm._backend()._render(model, llm._prompt(ROSE_Q)))
        n_answer = len(model.llama.tokenize(chat_answer(ROSE_Q).encode(), add_bos=False, special=False))
    assert infos[0]["prompt_tokens"] == n_prompt
    assert infos[0]["completion_tokens"] == n_answer
    usage = (result.llm_output or {})["token_usage"]
    assert usage["prompt_tokens"] == infos[0]["prompt_tokens"] + infos[1]["prompt_tokens"]
    assert usage["total_tokens"] == usage["prompt_tokens"] + usage["completion_tokens"]

    short = llm.generate([POEM_Q], max_tokens=3).generations[0][0]
    assert short.generation_info is not None
    assert short.generation_info["finish_reason"] == "length"
    assert short.generation_info["completion_tokens"] == 3
    stopped = llm.generate([POEM_Q], stop=["\n"]).generations[0][0]
    assert stopped.generation_info is not None
    assert stopped.generation_info["finish_reason"] == "stop"
    assert stopped.generation_info["stop_sequence"] == "\n"


def test_final_stream_chunk_carries_usage_and_finish_reason(llm: LocalGGMLLLM) -> None:
    chunks = list(llm._stream(ROSE_Q))
    assert chunks[-1].generation_info is not None
    assert chunks[-1].generation_info["finish_reason"] == "stop"
    assert chunks[-1].generation_info["completion_tokens"] > 0
    assert all(c.generation_info is None for c in chunks[:-1])


# -- callbacks, LCEL, async ------------------------------------------------------------


def test_callback_fires_once_per_chunk_before_it_is_yielded(llm: LocalGGMLLLM) -> None:
    counter = TokenCounter()
    seen_at_yield: list[int] = []
    chunks = []
    for chunk in llm.stream(POEM_Q, config={"callbacks": [counter]}):
        seen_at_yield.append(len(counter.tokens))
        chunks.append(chunk)
    assert "".join(counter.tokens) == "".join(chunks) == chat_answer(POEM_Q)
    # exactly one callback per chunk, each fired before the consumer saw that chunk
    assert seen_at_yield == list(range(1, len(chunks) + 1))
    assert len(counter.tokens) == len(chunks)


def test_invoke_fires_token_callbacks_too(llm: LocalGGMLLLM) -> None:
    counter = TokenCounter()
    out = llm.invoke(ROSE_Q, config={"callbacks": [counter]})
    assert "".join(counter.tokens) == out
    assert len(counter.tokens) > 1


def test_lcel_chain_batch_and_with_config(llm: LocalGGMLLLM) -> None:
    chain = PromptTemplate.from_template("{question}") | llm | StrOutputParser()
    assert chain.invoke({"question": ROSE_Q}) == chat_answer(ROSE_Q)
    questions = [ROSE_Q, POEM_Q, "Hello"]
    assert chain.batch([{"question": q} for q in questions]) == [chat_answer(q) for q in questions]
    counter = TokenCounter()
    assert "".join(chain.with_config(callbacks=[counter]).stream({"question": POEM_Q})) == chat_answer(POEM_Q)
    assert "".join(counter.tokens) == chat_answer(POEM_Q)


async def test_async_invoke_stream_batch_and_events(llm: LocalGGMLLLM) -> None:
    assert await llm.ainvoke(ROSE_Q) == chat_answer(ROSE_Q)
    chunks = [c async for c in llm.astream(POEM_Q)]
    assert len(chunks) > 1
    assert "".join(chunks) == chat_answer(POEM_Q)
    assert await llm.abatch([ROSE_Q, "Hello"]) == [chat_answer(ROSE_Q), chat_answer("Hello")]
    events = [e async for e in llm.astream_events(ROSE_Q, version="v2")]
    streamed = "".join(e["data"]["chunk"] for e in events if e["event"] == "on_llm_stream")
    assert streamed == chat_answer(ROSE_Q)
    assert bridge_threads() == []


async def test_async_callbacks(llm: LocalGGMLLLM) -> None:
    counter = AsyncTokenCounter()
    out = await llm.ainvoke(POEM_Q, config={"callbacks": [counter]})
    assert "".join(counter.tokens) == out == chat_answer(POEM_Q)


async def test_astream_does_not_block_the_event_loop(gguf_path: Path) -> None:
    # A grammar that never ends: 200 tokens for certain (the free answer to "1, 2, 3," is only
    # 16 tokens, too short to count ticks reliably on a busy machine).
    llm = LocalGGMLLLM(
        model_path=str(gguf_path), temperature=0, max_tokens=None, prompt_format="raw", grammar='root ::= "rose " root'
    )
    ticks = 0

    async def ticker() -> None:
        nonlocal ticks
        while True:
            ticks += 1
            await asyncio.sleep(0)

    task = asyncio.create_task(ticker())
    async for _ in llm.astream("1, 2, 3,", max_tokens=200):
        pass
    task.cancel()
    assert ticks > 10


async def test_early_break_and_cancel_stop_generation_and_free_the_model(gguf_path: Path) -> None:
    # A grammar that never completes forbids end-of-text: a stream that only a full
    # context would end, to interrupt.
    llm = LocalGGMLLLM(
        model_path=str(gguf_path), temperature=0, max_tokens=None, prompt_format="raw", grammar='root ::= "rose " root'
    )
    n = 0
    gen = llm.astream("Once upon a time")
    async for _ in gen:
        n += 1
        if n == 2:
            break
    await gen.aclose()
    assert await no_bridge_threads_soon()
    with llm._backend().hold() as model:  # how far generation got: the grammar never ends it
        assert model.llama.n_tokens < 500, "generation ran on after the consumer left"

    streamed: list[str] = []
    started = asyncio.Event()

    async def consume() -> None:
        async for chunk in llm.astream("Once upon a time"):
            streamed.append(chunk)
            if len(streamed) == 3:
                started.set()
            await asyncio.sleep(0)

    task = asyncio.create_task(consume())
    await asyncio.wait_for(started.wait(), 30)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert await no_bridge_threads_soon()
    with llm._backend().hold() as model:
        assert model.llama.n_tokens < 500, "generation ran on after the task was cancelled"
    assert 0 < len(streamed) < 1000  # it was streaming, and stopped long before the context filled
    # the model is free and its state is sound: the next call gives the exact answer
    greedy = LocalGGMLLLM(model_path=str(gguf_path), temperature=0)
    assert await greedy.ainvoke(ROSE_Q) == chat_answer(ROSE_Q)


def test_sync_stream_break_leaves_the_model_usable(llm: LocalGGMLLLM) -> None:
    for i, _ in enumerate(llm.stream(POEM_Q)):
        if i == 1:
            break
    assert llm.invoke(POEM_Q) == chat_answer(POEM_Q)


def test_concurrent_threads_get_the_sequential_greedy_answers(llm: LocalGGMLLLM) -> None:
    questions = [ex.user for ex in CHATS if ex.single_turn and ex.system is None][:8]
    expected = [llm.invoke(q) for q in questions]
    with ThreadPoolExecutor(8) as pool:
        for _ in range(3):
            assert list(pool.map(llm.invoke, questions)) == expected


def test_batch_equals_sequential(llm: LocalGGMLLLM) -> None:
    questions = [ex.user for ex in CHATS if ex.single_turn and ex.system is None][:6]
    assert llm.batch(questions) == [llm.invoke(q) for q in questions]


# -- sampling options ------------------------------------------------------------------


def test_seed_makes_sampling_reproducible(gguf_path: Path) -> None:
    llm = LocalGGMLLLM(model_path=str(gguf_path), temperature=1.5, top_k=0, top_p=1.0, min_p=0.0, max_tokens=20)
    a = llm.invoke("Hello", seed=7)
    assert a == llm.invoke("Hello", seed=7)
    outs = {llm.invoke("Hello", seed=s) for s in range(6)}
    assert len(outs) > 1  # sampling really samples


def test_gbnf_grammar_constrains_output(gguf_path: Path) -> None:
    llm = LocalGGMLLLM(model_path=str(gguf_path), temperature=0, grammar='root ::= "yes" | "no"')
    assert llm.invoke(ROSE_Q) in {"yes", "no"}


def test_json_schema_output_parses(gguf_path: Path) -> None:
    schema = {
        "type": "object",
        "properties": {"flower": {"type": "string", "maxLength": 12}, "count": {"type": "integer"}},
        "required": ["flower", "count"],
    }
    llm = LocalGGMLLLM(model_path=str(gguf_path), temperature=0, json_schema=schema, max_tokens=200)
    data = json.loads(llm.invoke(ROSE_Q))
    assert set(data) == {"flower", "count"}
    assert isinstance(data["count"], int)


def test_bad_grammar_is_an_error_not_a_crash(gguf_path: Path) -> None:
    llm = LocalGGMLLLM(model_path=str(gguf_path), grammar="root ::= (")
    with pytest.raises(ValueError, match="grammar"):
        llm.invoke("hi")


def test_logprobs(gguf_path: Path) -> None:
    llm = LocalGGMLLLM(model_path=str(gguf_path), temperature=0, logprobs=3)
    gen = llm.generate([ROSE_Q]).generations[0][0]
    assert gen.text == chat_answer(ROSE_Q)
    entries = (gen.generation_info or {})["logprobs"]
    assert len(entries) == (gen.generation_info or {})["completion_tokens"]
    for e in entries:
        assert e["logprob"] <= 0
        tops = e["top_logprobs"]
        assert len(tops) == 3
        assert tops[0]["token"] == e["token"]  # greedy picks the best
        assert [t["logprob"] for t in tops] == sorted((t["logprob"] for t in tops), reverse=True)


# -- loading and the cache -------------------------------------------------------------


def test_two_instances_share_one_load_and_calls_never_reload(gguf_path: Path) -> None:
    clear_model_cache()
    before = model_cache_info().loads
    a = LocalGGMLLLM(model_path=str(gguf_path), temperature=0, max_tokens=4)
    b = LocalGGMLLLM(model_path=str(gguf_path), temperature=0.7, top_k=5, max_tokens=2, seed=3)
    for _ in range(50):
        a.invoke("Hello")
        b.invoke("Hello")
    assert model_cache_info().loads == before + 1
    # a load setting is part of the key: a different n_ctx is a second model
    LocalGGMLLLM(model_path=str(gguf_path), n_ctx=256, max_tokens=2).invoke("Hello")
    assert model_cache_info().loads == before + 2


def test_unload_and_clear(gguf_path: Path) -> None:
    llm = LocalGGMLLLM(model_path=str(gguf_path), temperature=0, max_tokens=2)
    llm.invoke("Hello")
    loads = model_cache_info().loads
    assert llm.unload() is True
    assert llm.unload() is False
    llm.invoke("Hello")
    assert model_cache_info().loads == loads + 1
    assert clear_model_cache() >= 1
    assert model_cache_info().size == 0


def test_load_on_init(gguf_path: Path) -> None:
    clear_model_cache()
    before = model_cache_info().loads
    LocalGGMLLLM(model_path=str(gguf_path), load_on_init=True)
    assert model_cache_info().loads == before + 1


def test_n_ctx_defaults_to_the_trained_context(llm: LocalGGMLLLM) -> None:
    with llm._backend().hold() as model:
        assert model.info.context_length is not None
        assert model.n_ctx == min(model.info.context_length, 4096)


def test_native_log_goes_to_logging_not_stderr(
    gguf_path: Path, caplog: pytest.LogCaptureFixture, capfd: pytest.CaptureFixture[str]
) -> None:
    caplog.set_level("DEBUG", logger="langchain_localllm")
    LocalGGMLLLM(model_path=str(gguf_path), n_ctx=320, max_tokens=2).invoke("Hello")
    assert any(r.name == "langchain_localllm.llama_cpp" for r in caplog.records)
    captured = capfd.readouterr()
    assert "llama_" not in captured.err
    assert "llama_" not in captured.out


# -- errors ----------------------------------------------------------------------------


def test_legacy_ggml_file_gets_the_conversion_guidance() -> None:
    path = BAD / "legacy-ggjt-v3.ggmlv3.q4_K_S.bin"
    with pytest.raises(LegacyGGMLFormatError, match="GGUF") as info:
        LocalGGMLLLM(model_path=str(path)).invoke("hi")
    assert "GGJT" in str(info.value)


@pytest.mark.parametrize("name", ["truncated.gguf", "random-bytes.gguf", "not-a-model.txt"])
def test_bad_files_are_clear_errors_not_crashes(name: str) -> None:
    with pytest.raises(InvalidModelFileError):
        LocalGGMLLLM(model_path=str(BAD / name)).invoke("hi")


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ModelNotFoundError, match=r"missing\.gguf"):
        LocalGGMLLLM(model_path=str(tmp_path / "missing.gguf")).invoke("hi")


def test_prompt_longer_than_the_context(gguf_path: Path) -> None:
    llm = LocalGGMLLLM(model_path=str(gguf_path), n_ctx=64, prompt_format="raw")
    with pytest.raises(ContextWindowExceededError) as info:
        llm.invoke("roses " * 200)
    assert info.value.context_window == 64
    assert info.value.prompt_tokens > 64
    assert "64" in str(info.value)


@pytest.mark.parametrize("max_tokens", [None, 1000], ids=["no-max-tokens", "max-tokens-beyond-the-window"])
def test_generation_stops_when_the_context_is_full(gguf_path: Path, max_tokens: int | None) -> None:
    # A grammar that never completes forbids end-of-text, so only the full window ends
    # generation (unprompted, the model ends "1, 2, 3," with EOS after 16 tokens).
    llm = LocalGGMLLLM(
        model_path=str(gguf_path),
        n_ctx=48,
        max_tokens=max_tokens,
        prompt_format="raw",
        temperature=0,
        grammar='root ::= "rose " root',
    )
    with llm._backend().hold() as model:
        n_prompt = len(tokenize_prompt(model, "1, 2, 3,"))
    assert n_prompt == 6
    full = {
        "finish_reason": "length",
        "stop_sequence": None,
        "prompt_tokens": n_prompt,
        "completion_tokens": 48 - n_prompt,  # exactly the room the prompt left in the window
        "total_tokens": 48,
    }
    gen = llm.generate(["1, 2, 3,"]).generations[0][0]
    assert gen.generation_info == full
    assert ("rose " * 48).startswith(gen.text)
    assert len(gen.text) > 40
    chunks = list(llm._stream("1, 2, 3,"))
    assert chunks[-1].generation_info == full
    assert "".join(c.text for c in chunks) == gen.text


def test_threads_racing_for_a_cold_model_load_it_once(gguf_path: Path) -> None:
    clear_model_cache()
    before = model_cache_info().loads
    llm = LocalGGMLLLM(model_path=str(gguf_path), temperature=0)
    with ThreadPoolExecutor(4) as pool:
        outs = list(pool.map(llm.invoke, [ROSE_Q] * 4))
    assert outs == [chat_answer(ROSE_Q)] * 4
    assert model_cache_info().loads == before + 1
