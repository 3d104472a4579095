"""HFLocalChatModel construction, validation, metadata and the token loop's pieces. No weights load.

The tokenizer of the tiny fixture is used where real tokenization matters (it is a
JSON file, not weights); the generation loop's stopping criterion is driven with
hand-made token tensors.
"""

from __future__ import annotations

import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError

from langchain_localllm import ChatTemplateError, ContextWindowExceededError, MissingDependencyError, ModelNotFoundError
from langchain_localllm._backends.transformers.batch import BatchPlan
from langchain_localllm._backends.transformers.detokenize import IncrementalDetokenizer
from langchain_localllm._backends.transformers.generate import Observer, Row, generation_config
from langchain_localllm._backends.transformers.load import HFBundle
from langchain_localllm._backends.transformers.prompt import render_prompt, row_budget
from langchain_localllm._backends.transformers.settings import LoadSpec, Sampling
from langchain_localllm._core.output import FinishInfo, Piece
from langchain_localllm.chat_models import HFLocalChatModel

from .conftest import TINY_HF, TINY_T5

pytestmark = pytest.mark.usefixtures("no_weights_load")

IM_END, ENDOFTEXT = 2, 0


@pytest.fixture(scope="module")
def tokenizer() -> Any:
    transformers = pytest.importorskip("transformers")
    return transformers.AutoTokenizer.from_pretrained(TINY_HF)


def fake_bundle(tokenizer: Any, *, seq2seq: bool = False, window: int | None = 2048) -> HFBundle:
    return HFBundle(
        model=None,
        tokenizer=tokenizer,
        name="tiny",
        is_seq2seq=seq2seq,
        eos_ids=frozenset({IM_END, ENDOFTEXT}),
        pad_id=ENDOFTEXT,
        context_window=window,
    )


# -- construction -------------------------------------------------------------------


def test_constructor_is_cheap_and_has_documented_defaults() -> None:
    chat = HFLocalChatModel(model=str(TINY_HF))
    assert chat.temperature == 0.0
    assert chat.max_tokens == 256
    assert chat.batch_size == 8
    assert (chat.device, chat.dtype, chat.quantization) == ("auto", "auto", None)
    assert chat.trust_remote_code is False
    assert chat.load_on_init is False
    assert chat._llm_type == "huggingface-local-chat"


def test_constructing_imports_no_heavy_backend() -> None:
    code = (
        "import sys\n"
        "from langchain_localllm.chat_models import HFLocalChatModel\n"
        "HFLocalChatModel(model='does/not-exist', device='cuda:1', dtype='bfloat16', quantization='4bit')\n"
        "print(','.join(m for m in ('torch', 'transformers', 'llama_cpp') if m in sys.modules))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == ""


@pytest.mark.parametrize(
    "kwargs",
    [
        {"max_tokens": -1},
        {"max_tokens": 0},
        {"temperature": -0.1},
        {"top_p": 1.5},
        {"top_p": -0.1},
        {"top_k": -1},
        {"repetition_penalty": 0},
        {"seed": -1},
        {"batch_size": 0},
        {"device": "gpu"},
        {"device": "cuda:x"},
        {"dtype": "float64"},
        {"quantization": "3bit"},
        {"not_a_field": 1},
        {"timeout": 30},
        {"stop": "###"},
        {"generate_kwargs": {"max_new_tokens": 5}},
        {"generate_kwargs": {"num_beams": 4}},
    ],
)
def test_invalid_parameters_fail_at_construction(kwargs: dict[str, Any]) -> None:
    with pytest.raises(ValidationError):
        HFLocalChatModel(model=str(TINY_HF), **kwargs)


def test_model_is_required() -> None:
    with pytest.raises(ValidationError, match="model"):
        HFLocalChatModel()  # type: ignore[call-arg]


@pytest.mark.parametrize("device", ["auto", "cpu", "cuda", "cuda:1", "mps"])
def test_devices_are_accepted(device: str) -> None:
    assert HFLocalChatModel(model="m", device=device).device == device


def test_stop_strings_are_deduplicated() -> None:
    assert HFLocalChatModel(model="m", stop=["a", "", "a", "b"]).stop == ["a", "b"]


# -- LangSmith / identifying params ----------------------------------------------------


def test_ls_params() -> None:
    chat = HFLocalChatModel(model="org/name", temperature=0.5, max_tokens=32, stop=["x"])
    params = chat._get_ls_params(stop=["y"])
    assert params == {
        "ls_provider": "huggingface",
        "ls_model_name": "org/name",
        "ls_model_type": "chat",
        "ls_temperature": 0.5,
        "ls_max_tokens": 32,
        "ls_stop": ["x", "y"],
    }
    assert chat._get_ls_params(model="other/model", temperature=0.1)["ls_model_name"] == "other/model"
    assert chat._get_ls_params(temperature=0.1)["ls_temperature"] == 0.1
    assert "ls_stop" not in HFLocalChatModel(model="m")._get_ls_params()


def test_identifying_params_name_the_model_and_sampling() -> None:
    params = HFLocalChatModel(model="org/name", top_p=0.9)._identifying_params
    assert params["model"] == "org/name"
    assert params["top_p"] == 0.9
    assert params["temperature"] == 0.0


# -- call-time options -----------------------------------------------------------------


def test_call_options_are_validated() -> None:
    chat = HFLocalChatModel(model="m")
    with pytest.raises(TypeError, match="unknown call options"):
        chat._sampling({"n_ctx": 5})
    with pytest.raises(ValueError, match="temperature"):
        chat._sampling({"temperature": -1})
    with pytest.raises(ValueError, match="top_p"):
        chat._sampling({"top_p": 2})
    with pytest.raises(ValueError, match="max_tokens"):
        chat._sampling({"max_tokens": 0})
    with pytest.raises(ValueError, match="max_new_tokens"):
        chat._sampling({"generate_kwargs": {"max_new_tokens": 3}})
    with pytest.raises(ValueError, match="temperature"):
        chat._sampling({"temperature": float("nan")})
    sampling = chat._sampling({"temperature": 0.7, "max_tokens": 9, "model": "other"})
    assert (sampling.temperature, sampling.max_tokens) == (0.7, 9)
    assert chat._backend_for({"model": "other"}).model_name() == "other"
    assert chat._backend_for({"model": "m"}) is chat._backend()


def _config_bundle() -> tuple[HFBundle, Any]:
    transformers = pytest.importorskip("transformers")

    class Model:
        generation_config = transformers.GenerationConfig(do_sample=True, temperature=0.6, top_p=0.9, max_length=20)

    bundle = HFBundle(
        model=Model(),
        tokenizer=None,
        name="m",
        is_seq2seq=False,
        eos_ids=frozenset({7, 3}),
        pad_id=3,
        context_window=None,
    )
    return bundle, Model


def test_generation_config_greedy_and_sampling() -> None:
    bundle, model_class = _config_bundle()
    greedy, rest = generation_config(Sampling(), bundle, 12)
    assert rest == {}
    assert greedy.do_sample is False
    assert (greedy.temperature, greedy.top_p, greedy.top_k) == (None, None, None)
    assert greedy.max_new_tokens == 12
    assert greedy.eos_token_id == [3, 7]
    assert greedy.pad_token_id == 3
    sampled, _ = generation_config(Sampling(temperature=0.8, top_k=5, repetition_penalty=1.1), bundle, 4)
    assert (sampled.do_sample, sampled.temperature, sampled.top_k, sampled.top_p) == (True, 0.8, 5, 0.9)
    assert sampled.repetition_penalty == 1.1
    assert model_class.generation_config.temperature == 0.6  # the model's own config is untouched


def test_generate_kwargs_that_are_generation_settings_go_on_the_config() -> None:
    # Passed next to generation_config, transformers logs "Passing `generation_config` together with
    # generation-related arguments ... is deprecated": they belong on the (copied) config.
    bundle, model_class = _config_bundle()
    processor = object()
    extra = {"no_repeat_ngram_size": 3, "eos_token_id": [5, 6], "use_cache": False, "logits_processor": processor}
    config, rest = generation_config(Sampling(generate_kwargs=extra), bundle, 12)
    assert (config.no_repeat_ngram_size, config.eos_token_id, config.use_cache) == (3, [5, 6], False)
    assert rest == {"logits_processor": processor}  # not a generation setting: still a generate() argument
    assert config.max_new_tokens == 12  # the sampling fields still apply
    assert model_class.generation_config.no_repeat_ngram_size is None  # the model's own config is untouched


# -- loading errors (no weights: these fail before any load) ------------------------------


def test_missing_local_directory_fails_on_first_use_naming_it(tmp_path: Path) -> None:
    missing = tmp_path / "no" / "such" / "model"
    chat = HFLocalChatModel(model=str(missing))
    with pytest.raises(ModelNotFoundError, match="no/such/model"):
        chat.invoke("hi")
    with pytest.raises(FileNotFoundError):  # the error is also what callers naturally catch
        chat.invoke("hi")


def test_a_file_is_not_a_checkpoint(tmp_path: Path) -> None:
    path = tmp_path / "model.gguf"
    path.write_bytes(b"GGUF")
    with pytest.raises(ModelNotFoundError, match="LocalGGMLLLM"):
        HFLocalChatModel(model=str(path)).invoke("hi")


# huggingface_hub (2.x) fetches an "agent harnesses" registry once per process, with a 3 s
# timeout, unless HF_HUB_OFFLINE was set when it was imported; sockets are disabled here.
@pytest.mark.filterwarnings("ignore:A test tried to use socket")
@pytest.mark.parametrize("how", ["local_files_only", "HF_HUB_OFFLINE"])
def test_unknown_hub_id_offline_fails_fast_naming_it(how: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    pytest.importorskip("transformers")
    kwargs: dict[str, Any] = {"cache_dir": str(tmp_path)}
    if how == "local_files_only":
        kwargs["local_files_only"] = True
    else:
        monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    chat = HFLocalChatModel(model="no-such-org/no-such-model-xyz", device="cpu", **kwargs)
    start = time.perf_counter()
    with pytest.raises(ModelNotFoundError, match="no-such-org/no-such-model-xyz"):
        chat.invoke("hi")
    assert time.perf_counter() - start < 30


def test_cuda_device_without_cuda_is_a_clear_error() -> None:
    torch = pytest.importorskip("torch")
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    with pytest.raises(ValueError, match="no CUDA GPU"):
        HFLocalChatModel(model=str(TINY_HF), device="cuda").invoke("hi")


def test_quantization_needs_cuda() -> None:
    torch = pytest.importorskip("torch")
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    with pytest.raises(ValueError, match="CUDA"):
        HFLocalChatModel(model=str(TINY_HF), quantization="4bit").invoke("hi")


def test_quantization_names_bitsandbytes_when_missing(monkeypatch: pytest.MonkeyPatch) -> None:
    torch = pytest.importorskip("torch")
    import importlib.util

    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == "bitsandbytes" else real_find_spec(name, *a)
    )
    with pytest.raises(MissingDependencyError, match="pip install bitsandbytes"):
        HFLocalChatModel(model=str(TINY_HF), quantization="8bit", device="cuda").invoke("hi")


def test_cache_key_covers_load_settings_only() -> None:
    pytest.importorskip("torch")
    base = LoadSpec(model=str(TINY_HF), device="cpu")
    assert base.cache_key() == LoadSpec(model=str(TINY_HF) + "/", device="cpu").cache_key()
    assert base.cache_key() == LoadSpec(model=str(TINY_HF), device="cpu", dtype="float32").cache_key()
    for changed in (
        LoadSpec(model=str(TINY_HF), device="cpu", revision="v2"),
        LoadSpec(model=str(TINY_HF), device="cpu", dtype="bfloat16"),
        LoadSpec(model=str(TINY_HF), device="cpu", attn_implementation="eager"),
        LoadSpec(model=str(TINY_HF), device="cpu", trust_remote_code=True),
        LoadSpec(model=str(TINY_HF), device="cpu", model_kwargs={"low_cpu_mem_usage": True}),
    ):
        assert changed.cache_key() != base.cache_key()
    a = HFLocalChatModel(model=str(TINY_HF), device="cpu", temperature=0.3)
    b = HFLocalChatModel(model=str(TINY_HF), device="cpu", max_tokens=3, stop=["x"])
    assert a._backend().cache_key() == b._backend().cache_key()


def test_from_model_and_tokenizer_rejects_other_objects() -> None:
    with pytest.raises(TypeError, match="transformers model"):
        HFLocalChatModel.from_model_and_tokenizer(object(), object())


def test_batch_of_nothing() -> None:
    assert HFLocalChatModel(model="m").batch([]) == []


# -- prompts ---------------------------------------------------------------------------


def test_prompt_ids_come_from_the_template_without_added_special_tokens() -> None:
    transformers = pytest.importorskip("transformers")
    t5_tokenizer = transformers.AutoTokenizer.from_pretrained(TINY_T5)  # appends </s> when add_special_tokens
    bundle = fake_bundle(t5_tokenizer)
    ids = render_prompt(bundle, [{"role": "user", "content": "hi"}], chat_template="{{ messages[0].content }}")
    assert ids == t5_tokenizer.encode("hi", add_special_tokens=False)
    assert t5_tokenizer.encode("hi")[-1] == t5_tokenizer.eos_token_id != ids[-1]


def test_template_that_rejects_system_gets_it_folded(tokenizer: Any) -> None:
    template = (
        "{% for m in messages %}{% if m.role == 'system' %}{{ raise_exception('System role not supported') }}"
        "{% endif %}<|im_start|>{{ m.role }}\n{{ m.content }}<|im_end|>\n{% endfor %}"
        "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
    )
    bundle = fake_bundle(tokenizer)
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hello"}]
    ids = render_prompt(bundle, messages, chat_template=template)
    assert tokenizer.decode(ids) == "<|im_start|>user\nBe brief.\n\nHello<|im_end|>\n<|im_start|>assistant\n"


def test_broken_template_is_a_chat_template_error(tokenizer: Any) -> None:
    bundle = fake_bundle(tokenizer)
    with pytest.raises(ChatTemplateError, match="'tiny': the chat template raised an error: nope"):
        render_prompt(bundle, [{"role": "user", "content": "x"}], chat_template="{{ raise_exception('nope') }}")


def test_causal_model_without_template_names_the_field(tokenizer: Any) -> None:
    class NoTemplate:
        chat_template = None

    bundle = fake_bundle(NoTemplate())
    with pytest.raises(ChatTemplateError, match="chat_template"):
        render_prompt(bundle, [{"role": "user", "content": "x"}])


def test_seq2seq_without_template_uses_plain_text() -> None:
    transformers = pytest.importorskip("transformers")
    t5_tokenizer = transformers.AutoTokenizer.from_pretrained(TINY_T5)
    bundle = fake_bundle(t5_tokenizer, seq2seq=True)
    ids = render_prompt(bundle, [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}])
    assert ids == t5_tokenizer("Be brief.\n\nHi")["input_ids"]


def test_row_budget_and_context_overflow(tokenizer: Any) -> None:
    bundle = fake_bundle(tokenizer, window=100)
    assert row_budget(bundle, 10, 256) == 90
    assert row_budget(bundle, 10, 5) == 5
    with pytest.raises(ContextWindowExceededError) as err:
        row_budget(bundle, 100, 5)
    assert (err.value.prompt_tokens, err.value.context_window) == (100, 100)
    assert row_budget(fake_bundle(tokenizer, window=None), 10**6, 7) == 7
    seq2seq = fake_bundle(tokenizer, seq2seq=True, window=100)
    assert row_budget(seq2seq, 100, 256) == 100
    with pytest.raises(ContextWindowExceededError):
        row_budget(seq2seq, 101, 5)


# -- incremental detokenizing ----------------------------------------------------------


@pytest.mark.parametrize("text", ["Hello! How can I help you today?", "玫瑰有红色、白色。🌹👋 ok", "a\n\nb  c", "🎂"])
def test_incremental_detokenizer_matches_full_decode_and_never_splits_characters(tokenizer: Any, text: str) -> None:
    ids = tokenizer.encode(text, add_special_tokens=False)
    # Byte-level BPE splits rare characters (emoji) into several byte tokens.
    detok = IncrementalDetokenizer(tokenizer)
    pieces = [detok.push(i) for i in ids] + [detok.flush()]
    assert "".join(pieces) == text
    assert all("\ufffd" not in p for p in pieces)


def test_detokenizer_drops_a_character_cut_off_at_the_end(tokenizer: Any) -> None:
    ids = tokenizer.encode("ok🌹", add_special_tokens=False)
    cut = ids[:-1]
    assert tokenizer.decode(cut).endswith("\ufffd")
    detok = IncrementalDetokenizer(tokenizer)
    assert "".join(detok.push(i) for i in cut) + detok.flush() == "ok"


def test_detokenizer_work_per_token_does_not_grow(tokenizer: Any) -> None:
    calls: list[int] = []

    class Counting:
        def decode(self, ids: list[int], **kwargs: Any) -> str:
            calls.append(len(ids))
            return str(tokenizer.decode(ids, **kwargs))

    ids = tokenizer.encode("Sunflowers follow the sun. " * 40, add_special_tokens=False)
    detok = IncrementalDetokenizer(Counting())
    for i in ids:
        detok.push(i)
    assert len(ids) > 200
    assert max(calls) <= 8  # decodes a short window, never the whole answer


# -- the stopping criterion / event source ----------------------------------------------


def drive(
    tokenizer: Any,
    answers: list[list[int]],
    stops: list[str],
    *,
    budgets: list[int] | None = None,
    cancel: threading.Event | None = None,
    cancel_at_step: int | None = None,
) -> tuple[list[Any], list[list[bool]]]:
    """Feed ``answers`` (one token list per row) to the criterion a step at a time.

    ``cancel`` is set just before step ``cancel_at_step`` (0-based) when that is given.
    As in ``generate_rows``, rows still open at the end are finished unless cancelled.
    """
    torch = pytest.importorskip("torch")
    n = len(answers)
    budgets = budgets or [100] * n
    rows = [Row(i, 3, budgets[i], tokenizer, stops) for i in range(n)]
    events: list[Any] = []
    observer = Observer(
        rows,
        frozenset({IM_END, ENDOFTEXT}),
        3,
        lambda row, piece: events.append((row, piece)),
        [cancel] if cancel else [],
    )
    seqs = [[5, 6, 7] for _ in range(n)]
    verdicts = []
    for step in range(max(len(a) for a in answers)):
        for row, answer in enumerate(answers):
            seqs[row].append(answer[step] if step < len(answer) else ENDOFTEXT)
        if cancel is not None and step == cancel_at_step:
            cancel.set()
        done = observer(torch.tensor(seqs), None)
        verdicts.append(done.tolist())
        if all(verdicts[-1]):
            break
    if cancel is None or not cancel.is_set():
        observer.finish_all()
    return events, verdicts


def texts(events: list[Any], row: int = 0) -> str:
    return "".join(piece.text for r, piece in events if r == row)


def finish(events: list[Any], row: int = 0) -> FinishInfo:
    (done,) = [piece.finish for r, piece in events if r == row and piece.finish is not None]
    return done


def test_eos_ends_a_row_with_stop(tokenizer: Any) -> None:
    ids = tokenizer.encode("Paris", add_special_tokens=False)
    events, verdicts = drive(tokenizer, [[*ids, IM_END, 99, 98]], [])
    assert texts(events) == "Paris"
    done = finish(events)
    assert (done.finish_reason, done.completion_tokens, done.prompt_tokens) == ("stop", len(ids) + 1, 3)
    assert verdicts[-1] == [True]
    assert len(verdicts) == len(ids) + 1  # stopped at the EOS step


@pytest.mark.parametrize(
    ("answer", "stop", "expected"),
    [
        ("Sunflowers follow the sun. ### They can grow three meters tall.", "###", "Sunflowers follow the sun. "),
        (
            "White roses are a classic choice for a wedding. END",
            " END",
            "White roses are a classic choice for a wedding.",
        ),
        ("玫瑰有红色、白色、粉色和黄色。", "白色", "玫瑰有红色、"),
        ("Here is a rose for you 🌹 and more", "🌹", "Here is a rose for you "),
    ],
)
def test_stop_strings_are_cut_inside_generation(tokenizer: Any, answer: str, stop: str, expected: str) -> None:
    ids = tokenizer.encode(answer, add_special_tokens=False)
    events, verdicts = drive(tokenizer, [[*ids, IM_END]], [stop])
    assert texts(events) == expected
    assert finish(events).finish_reason == "stop"
    assert verdicts[-1] == [True]
    assert len(verdicts) <= len(ids)  # told to stop at the stop string, before the EOS step
    assert all(stop not in piece.text for _, piece in events)


def test_budget_ends_a_row_with_length(tokenizer: Any) -> None:
    ids = tokenizer.encode("one, two, three, four, five", add_special_tokens=False)
    events, _ = drive(tokenizer, [[*ids, IM_END]], [], budgets=[3])
    done = finish(events)
    assert (done.finish_reason, done.completion_tokens) == ("length", 3)
    assert texts(events) == tokenizer.decode(ids[:3])


def test_rows_finish_independently(tokenizer: Any) -> None:
    a = tokenizer.encode("4", add_special_tokens=False)
    b = tokenizer.encode("Yes, we deliver flowers in the city within 3 hours.", add_special_tokens=False)
    events, verdicts = drive(tokenizer, [[*a, IM_END], [*b, IM_END]], [])
    assert (texts(events, 0), texts(events, 1)) == ("4", "Yes, we deliver flowers in the city within 3 hours.")
    assert verdicts[len(a)] == [True, False]
    assert finish(events, 0).completion_tokens == len(a) + 1
    assert finish(events, 1).completion_tokens == len(b) + 1


def test_cancel_stops_every_row(tokenizer: Any) -> None:
    short = tokenizer.encode("4", add_special_tokens=False)  # ends with its EOS at step 1
    a = tokenizer.encode("To keep cut flowers fresh, trim the stems.", add_special_tokens=False)
    b = tokenizer.encode("Sunflowers follow the sun.", add_special_tokens=False)
    assert len(short) == 1
    assert min(len(a), len(b)) > 5
    cancel = threading.Event()
    answers = [[*short, IM_END], [*a, IM_END], [*b, IM_END]]
    events, verdicts = drive(tokenizer, answers, [], cancel=cancel, cancel_at_step=3)
    # The open rows end at the step that sees the cancel, long before their EOS.
    assert verdicts == [[False, False, False], [True, False, False], [True, False, False], [True, True, True]]
    # Nothing after that step was read (whether that step's own tokens are is not the
    # point). The row that had finished keeps its FinishEvent; the cancelled rows get
    # none (their consumer has gone).
    assert texts(events, 0) == "4"
    for row, ids in ((1, a), (2, b)):
        assert texts(events, row) in (tokenizer.decode(ids[:3]), tokenizer.decode(ids[:4]))
    finished = [(row, p.finish.finish_reason, p.finish.completion_tokens) for row, p in events if p.finish is not None]
    assert finished == [(0, "stop", 2)]


def test_cancel_set_before_the_first_step_stops_at_once(tokenizer: Any) -> None:
    ids = tokenizer.encode("To keep cut flowers fresh", add_special_tokens=False)
    events, verdicts = drive(tokenizer, [[*ids, IM_END]], [], cancel=threading.Event(), cancel_at_step=0)
    assert verdicts == [[True]]
    assert [(row, piece.text, piece.finish) for row, piece in events] in ([], [(0, tokenizer.decode(ids[:1]), None)])


# -- batch plans -----------------------------------------------------------------------


def test_batch_plan_matches_conversations_not_positions() -> None:
    owner = object()
    a = [{"role": "user", "content": "a"}]
    b = [{"role": "user", "content": "b"}]
    plan = BatchPlan(owner, [a, b, a], None, {})
    computed: list[int] = []

    def compute() -> list[Any]:
        computed.append(1)
        return [[Piece("A")], [Piece("B")], [Piece("A2")]]

    assert plan.claim(object(), a, None, {}) is None  # another model instance
    assert plan.claim(owner, a, ["x"], {}) is None  # other stop strings
    assert plan.claim(owner, a, None, {"temperature": 1}) is None  # other options
    slot_b = plan.claim(owner, b, None, {})
    assert slot_b == 1
    assert plan.pieces(slot_b, compute)[0].text == "B"
    assert plan.claim(owner, a, None, {}) == 0
    assert plan.claim(owner, a, None, {}) == 2
    assert plan.claim(owner, a, None, {}) is None  # all used: runs on its own
    assert plan.pieces(2, compute)[0].text == "A2"
    assert computed == [1]  # one generate for the whole group


def test_batch_plan_reports_per_input_errors() -> None:
    owner = object()
    bad = ValueError("bad input")
    plan = BatchPlan(owner, [[{"role": "user", "content": "a"}], bad], None, {})
    results: list[Any] = [[Piece("ok")], bad]
    assert plan.pieces(0, lambda: results)[0].text == "ok"
    with pytest.raises(ValueError, match="bad input"):
        plan.pieces(1, lambda: results)


def test_static_cache_lengths_are_bucketed_to_powers_of_two() -> None:
    from langchain_localllm._backends.transformers.generate import _bucket

    assert _bucket(10, 2048) == 256
    assert _bucket(257, 2048) == 512
    assert _bucket(1500, 2048) == 2048
    assert _bucket(1500, 1600) == 1600  # capped by the context window
    assert _bucket(5000, None) == 8192
