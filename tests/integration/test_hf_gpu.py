"""HFLocalChatModel on a CUDA GPU in bfloat16: the tiny models, streaming and batching.

Marked ``gpu``; every test skips, with the reason, where torch sees no CUDA device.
"""

from __future__ import annotations

import concurrent.futures
import threading
from pathlib import Path

import pytest

from langchain_localllm.chat_models import HFLocalChatModel

from .conftest import CN_Q, EMOJI_Q, POEM_Q, SINGLE, TINY_T5, chat_answer

torch = pytest.importorskip("torch")

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (torch.cuda.is_available() is False)"),
]


@pytest.fixture
def chat(hf_path: Path) -> HFLocalChatModel:
    return HFLocalChatModel(model=str(hf_path), device="cuda", dtype="bfloat16", max_tokens=128)


def test_loads_on_cuda_in_bfloat16(chat: HFLocalChatModel) -> None:
    with chat._backend().hold() as bundle:
        assert bundle.device.type == "cuda"
        assert bundle.model.dtype == torch.bfloat16


def test_greedy_answers_on_gpu(chat: HFLocalChatModel) -> None:
    wrong = {q: out for q in SINGLE if (out := chat.invoke(q).content) != chat_answer(q)}
    print(f"HFLocalChatModel cuda bfloat16: {len(SINGLE) - len(wrong)}/{len(SINGLE)} corpus questions answered exactly")
    # bfloat16 rounds the float32-trained weights; the training margin keeps nearly all exact
    # (not all: which ones flip depends on the GPU's kernels, so no single case is required).
    assert len(wrong) <= 0.1 * len(SINGLE), wrong


def test_stream_equals_invoke_on_gpu(chat: HFLocalChatModel) -> None:
    for question in (CN_Q, POEM_Q, EMOJI_Q):
        chunks = list(chat.stream(question))
        assert len(chunks) > 2
        assert "".join(str(c.content) for c in chunks) == chat.invoke(question).content
        assert [i for i, c in enumerate(chunks) if c.usage_metadata] == [len(chunks) - 1]
        assert all("\ufffd" not in str(c.content) for c in chunks)


def test_batch_equals_sequential_on_gpu(chat: HFLocalChatModel) -> None:
    questions = SINGLE[:12]
    sequential = [chat.invoke(q).content for q in questions]
    assert [m.content for m in chat.batch(questions)] == sequential


async def test_async_stream_and_batch_on_gpu(chat: HFLocalChatModel) -> None:
    text = "".join([str(c.content) async for c in chat.astream(CN_Q)])
    assert text == (await chat.ainvoke(CN_Q)).content
    questions = SINGLE[:5]
    assert [m.content for m in await chat.abatch(questions)] == [chat.invoke(q).content for q in questions]


def test_seq2seq_on_gpu() -> None:
    t5 = HFLocalChatModel(model=str(TINY_T5), device="cuda", dtype="bfloat16", max_tokens=8)
    prompts = ["Hello", "Hey", "What is 2+2?"]
    sequential = [t5.invoke(p) for p in prompts]
    assert all(m.usage_metadata and m.usage_metadata["output_tokens"] == 8 for m in sequential)
    assert [m.content for m in t5.batch(prompts)] == [m.content for m in sequential]
    assert "".join(str(c.content) for c in t5.stream("Hello")) == sequential[0].content


def test_decoding_is_compiled_with_cuda_graphs_on_the_worker_thread(chat: HFLocalChatModel) -> None:
    from langchain_localllm._backends.transformers.device import THREAD_NAME

    seen: list[str] = []
    with chat._backend().hold() as bundle:
        model = bundle.model
        original = model.generate

        def spy(*args: object, **kwargs: object) -> object:
            seen.append(threading.current_thread().name)
            return original(*args, **kwargs)

        model.generate = spy
    try:
        chat.invoke(SINGLE[0])
        list(chat.stream(SINGLE[1]))
    finally:
        del model.generate
    assert seen == [THREAD_NAME, THREAD_NAME]
    # transformers keeps the compile settings of the decode step it compiled last.
    assert getattr(model, "_last_compile_config", None) is not None
    assert model._last_compile_config.mode == "reduce-overhead"


def test_calls_from_many_threads_and_shapes_share_the_cuda_graphs(chat: HFLocalChatModel) -> None:
    """What failed with per-call threads: CUDA graphs replayed from a thread that did not record them."""
    questions = SINGLE[:8]
    expected = [chat.invoke(q).content for q in questions]
    with concurrent.futures.ThreadPoolExecutor(max_workers=4) as pool:
        streamed = list(pool.map(lambda q: "".join(str(c.content) for c in chat.stream(q)), questions))
        batched = pool.submit(lambda: [m.content for m in chat.batch(questions[:3])]).result()
    assert streamed == expected
    assert batched == expected[:3]
