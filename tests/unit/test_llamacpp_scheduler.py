"""The scheduler's pure pieces (prefix reuse, slot choice, batch building) and its step loop over a fake context.

No model loads: :class:`FakeContext` stands in for the native multi-sequence context and
records every batch, so slot bookkeeping, admission, cancellation, KV-full retries and
per-request errors are checked exactly.
"""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any

import pytest

from langchain_localllm._backends.llamacpp import scheduler as scheduler_module
from langchain_localllm._backends.llamacpp.batchctx import (
    Decode,
    Prefill,
    Segment,
    SlotCache,
    choose_slot,
    plan_batch,
    reuse_point,
)
from langchain_localllm._backends.llamacpp.scheduler import THREAD_NAME, Job, Scheduler
from langchain_localllm._core.output import Piece
from langchain_localllm.errors import GenerationError

EOS = 0
PIECES = {t: f"<{t}>".encode() for t in range(1, 100)}

# -- reuse_point / choose_slot ------------------------------------------------------------------


def test_exact_reuse_is_the_prefilled_prefix_rounded_down_to_the_alignment() -> None:
    cached = list(range(1, 200))
    prompt = [*range(1, 150), 999]
    assert reuse_point(cached, exact=199, prompt=prompt, align=64, mode="exact") == 128
    assert reuse_point(cached, exact=100, prompt=prompt, align=64, mode="exact") == 64
    assert reuse_point(cached, exact=199, prompt=prompt, align=64, mode="longest") == 149


def test_reuse_always_leaves_one_prompt_token_to_evaluate() -> None:
    prompt = list(range(1, 65))
    assert reuse_point(prompt, exact=64, prompt=prompt, align=1, mode="exact") == 63
    assert reuse_point(prompt, exact=64, prompt=prompt, align=64, mode="exact") == 0
    assert reuse_point([], exact=0, prompt=[5], align=64, mode="longest") == 0


def test_choose_slot_prefers_the_longest_reuse_then_the_least_recently_used() -> None:
    prompt = list(range(1, 100))
    slots = [
        SlotCache(0, tokens=[7, 7], exact=2, last_used=1),
        SlotCache(1, tokens=list(range(1, 80)), exact=79, last_used=9),
        SlotCache(2, tokens=[], last_used=0),
    ]
    assert choose_slot(slots, prompt, align=64, mode="exact") == (1, 64)
    assert choose_slot(slots, [42, 43], align=64, mode="exact") == (2, 0)  # no reuse anywhere: the oldest


# -- plan_batch ------------------------------------------------------------------------------------


def test_plan_puts_decodes_first_then_prefills_within_the_budget() -> None:
    decodes = [Decode(0, 11, 5), Decode(1, 12, 9)]
    prefills = [Prefill(2, list(range(10)), 0), Prefill(3, list(range(4)), 3)]
    plan = plan_batch(decodes, prefills, budget=8, prefill_cap=100)
    assert plan == [
        Segment(0, (11,), 5, output=True),
        Segment(1, (12,), 9, output=True),
        Segment(2, list(range(6)), 0, output=False),  # the rest of this prompt waits for the next step
    ]
    plan = plan_batch(decodes, prefills, budget=32, prefill_cap=100)
    assert plan[2:] == [Segment(2, list(range(10)), 0, output=True), Segment(3, list(range(4)), 3, output=True)]
    assert plan_batch(decodes, prefills, budget=32, prefill_cap=3)[2:] == [Segment(2, [0, 1, 2], 0, output=False)]


# -- the step loop over a fake context ------------------------------------------------------------


class FakeSampler:
    """Emits a script of tokens, one per call; ``fail_at`` raises there."""

    def __init__(self, script: Sequence[int], fail_at: int | None = None) -> None:
        self.script = list(script)
        self.fail_at = fail_at
        self.calls = 0
        self.closed = False

    def next(self) -> int:
        self.calls += 1
        if self.fail_at is not None and self.calls == self.fail_at:
            msg = "sampler broke"
            raise RuntimeError(msg)
        return self.script.pop(0) if self.script else 5

    def close(self) -> None:
        self.closed = True


class FakeContext:
    """The BatchContext surface the scheduler uses, recording every batch."""

    def __init__(self, slots: int, n_batch: int = 32, full_above: int | None = None) -> None:
        self.slots = slots
        self.n_batch = n_batch
        self.capacity = 1000
        self.ctx: object | None = object()
        self.full_above = full_above
        self.batches: list[list[Segment]] = []
        self.kv: dict[int, int] = {}
        self.gate = threading.Event()
        self.gate.set()
        self._outputs: list[int] = []
        self.closed = 0
        self.fail_next: BaseException | int | None = None
        """Raise this (an exception) or return this (a status) from the next decode of ``fail_width`` segments or more."""
        self.fail_width = 0
        self.cell_limit: int | None = None
        """Report a full KV cache (status 1) when a decode would hold more cells than this."""

    def close(self) -> None:
        self.closed += 1
        self.ctx = None

    def decode(self, segments: Sequence[Segment]) -> int:
        self.gate.wait(10)
        failure = None
        if len(segments) >= self.fail_width:
            failure, self.fail_next = self.fail_next, None
        if isinstance(failure, BaseException):
            raise failure
        if failure is not None:
            return failure
        n = sum(len(s.tokens) for s in segments)
        if self.full_above is not None and n > self.full_above:
            return 1
        if self.cell_limit is not None:
            after = dict(self.kv) | {s.seq: s.pos + len(s.tokens) for s in segments}
            if sum(after.values()) > self.cell_limit:
                return 1
        self.batches.append(list(segments))
        rows, i = [], 0
        for s in segments:
            i += len(s.tokens)
            rows.append(i - 1 if s.output else -1)
            self.kv[s.seq] = s.pos + len(s.tokens)
        self._outputs = rows
        return 0

    def output_index(self, n: int) -> int:
        return self._outputs[n]

    def sample(self, sampler: FakeSampler, row: int) -> int:
        assert row >= 0
        return sampler.next()

    def logits(self, row: int) -> Any:
        raise AssertionError

    def keep(self, seq: int, n: int) -> bool:
        self.kv[seq] = min(self.kv.get(seq, 0), n)
        return True

    def drop(self, seq: int) -> None:
        self.kv.pop(seq, None)

    def used_cells(self) -> int:
        return sum(self.kv.values())


def _job(prompt: Sequence[int], script: Sequence[int], **kwargs: Any) -> tuple[Job, queue.SimpleQueue[object]]:
    items: queue.SimpleQueue[object] = queue.SimpleQueue()
    sampler = kwargs.pop("sampler", None) or FakeSampler(script)
    job = Job(
        prompt=list(prompt),
        sampler=sampler,
        budget=kwargs.pop("budget", 50),
        stops=kwargs.pop("stops", ()),
        sink=items.put,
        pieces=PIECES,
        eog={EOS},
        **kwargs,
    )
    return job, items


def _collect(items: queue.SimpleQueue[object]) -> tuple[str, Any]:
    text = ""
    while True:
        item = items.get(timeout=10)
        if isinstance(item, BaseException):
            return text, item
        assert isinstance(item, Piece)
        text += item.text
        if item.finish is not None:
            return text, item.finish


def test_jobs_share_steps_and_each_gets_its_own_tokens() -> None:
    ctx = FakeContext(slots=2)
    scheduler = Scheduler(ctx, align=4)  # type: ignore[arg-type]
    ctx.gate.clear()
    a, qa = _job([1, 2, 3], [10, 11, EOS])
    b, qb = _job([4, 5], [20, 21, 22, EOS])
    c, qc = _job([6], [30, EOS])  # waits for a free slot
    for job in (a, b, c):
        scheduler.submit(job)
    ctx.gate.set()
    assert _collect(qa)[0] == "<10><11>"
    assert _collect(qb)[0] == "<20><21><22>"
    text, finish = _collect(qc)
    assert (text, finish.finish_reason, finish.completion_tokens) == ("<30>", "stop", 1)
    assert max(len(b) for b in ctx.batches) == 2  # never more sequences than slots
    assert any({s.seq for s in batch} == {0, 1} and len(batch) == 2 for batch in ctx.batches)
    assert all(job.sampler is None for job in (a, b, c))  # samplers released at the end
    scheduler.stop()
    assert not [t for t in threading.enumerate() if t.name == THREAD_NAME]


def test_max_tokens_and_stops_end_a_job_and_free_its_slot() -> None:
    ctx = FakeContext(slots=1)
    scheduler = Scheduler(ctx, align=4)  # type: ignore[arg-type]
    a, qa = _job([1], [10, 11, 12, 13], budget=2)
    b, qb = _job([2], [10, 11, 12, 13], stops=["<12>"])
    scheduler.submit(a)
    scheduler.submit(b)
    text, finish = _collect(qa)
    assert (text, finish.finish_reason) == ("<10><11>", "length")
    text, finish = _collect(qb)
    assert (text, finish.finish_reason, finish.stop_sequence) == ("<10><11>", "stop", "<12>")
    scheduler.stop()


def test_a_cancelled_job_is_dropped_at_once_and_the_other_goes_on() -> None:
    ctx = FakeContext(slots=2)
    scheduler = Scheduler(ctx, align=4)  # type: ignore[arg-type]
    ctx.gate.clear()
    sampler = FakeSampler([])
    endless, q_endless = _job([1], [], sampler=sampler, budget=10**6)
    other, q_other = _job([2], [20, 21, EOS])
    original = sampler.next

    def cancel_on_second_token() -> int:
        if sampler.calls == 1:
            endless.cancel.set()  # the consumer goes away while the second token is sampled
        return original()

    sampler.next = cancel_on_second_token  # type: ignore[method-assign]
    scheduler.submit(endless)
    scheduler.submit(other)
    ctx.gate.set()
    text, finish = _collect(q_endless)
    assert (text, finish.finish_reason, finish.completion_tokens) == ("<5><5>", "cancelled", 2)
    assert _collect(q_other)[0] == "<20><21>"
    assert sampler.closed
    assert all(len(batch) <= 2 for batch in ctx.batches)
    scheduler.stop()


def test_a_full_kv_cache_halves_the_prefill_and_retries() -> None:
    ctx = FakeContext(slots=1, n_batch=32, full_above=5)
    scheduler = Scheduler(ctx, align=4)  # type: ignore[arg-type]
    job, items = _job(list(range(1, 21)), [10, EOS])
    scheduler.submit(job)
    assert _collect(items)[0] == "<10>"
    prefill = [len(s.tokens) for batch in ctx.batches for s in batch if not s.output or s.pos == 0]
    assert max(prefill) <= 5
    assert sum(len(s.tokens) for batch in ctx.batches for s in batch) == 20 + 1
    scheduler.stop()


def test_one_jobs_sampler_error_fails_that_job_only() -> None:
    ctx = FakeContext(slots=2)
    scheduler = Scheduler(ctx, align=4)  # type: ignore[arg-type]
    ctx.gate.clear()
    bad, q_bad = _job([1], [], sampler=FakeSampler([10, 11], fail_at=2))
    good, q_good = _job([2], [20, 21, EOS])
    scheduler.submit(bad)
    scheduler.submit(good)
    ctx.gate.set()
    text, error = _collect(q_bad)
    assert text == "<10>"
    assert isinstance(error, GenerationError)
    assert "sampler broke" in str(error)
    assert _collect(q_good)[0] == "<20><21>"
    scheduler.stop()


def test_stop_fails_every_queued_job_and_refuses_new_ones() -> None:
    ctx = FakeContext(slots=1)
    scheduler = Scheduler(ctx, align=4)  # type: ignore[arg-type]
    ctx.gate.clear()
    running, q_running = _job([1], [])
    queued, q_queued = _job([2], [])
    scheduler.submit(running)
    scheduler.submit(queued)
    threading.Timer(0.05, ctx.gate.set).start()
    scheduler.stop()
    assert isinstance(_collect(q_queued)[1], GenerationError)
    assert isinstance(_collect(q_running)[1], GenerationError)
    with pytest.raises(GenerationError, match="unloaded"):
        scheduler.submit(_job([3], [])[0])
    assert scheduler.thread() is None or not scheduler.thread().is_alive()


def _wait(condition: Callable[[], bool], seconds: float = 10.0) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.002)
    return condition()


# -- the worker's lifetime --------------------------------------------------------------------------


def test_an_idle_worker_ends_and_the_next_request_starts_a_new_one(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(scheduler_module, "IDLE_SECONDS", 0.05)
    ctx = FakeContext(slots=2)
    scheduler = Scheduler(ctx, align=4)  # type: ignore[arg-type]
    a, qa = _job([1, 2, 3, 4, 5], [10, EOS])
    scheduler.submit(a)
    first = scheduler.thread()
    assert first is not None
    assert _collect(qa)[0] == "<10>"
    assert _wait(lambda: not first.is_alive())  # nothing to do for IDLE_SECONDS: it ended
    assert scheduler.thread() is None
    assert ctx.closed == 0  # an idle exit keeps the context (and the slots' cached prefixes)
    assert ctx.kv == {0: 4}  # the prompt's aligned prefix is still cached for the next request
    b, qb = _job([1, 2, 3, 4, 6], [11, 12, EOS])
    scheduler.submit(b)
    second = scheduler.thread()
    assert second is not None
    assert second is not first
    assert _collect(qb)[0] == "<11><12>"
    assert b.reused == 4  # the new worker reused the old one's cached prefix
    scheduler.stop(free=True)
    assert not second.is_alive()
    assert ctx.closed == 1


def test_requests_racing_idle_exits_are_all_answered(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(scheduler_module, "IDLE_SECONDS", 0.001)
    ctx = FakeContext(slots=2)
    scheduler = Scheduler(ctx, align=4)  # type: ignore[arg-type]
    workers: set[threading.Thread] = set()
    for i in range(200):
        job, items = _job([1 + i % 7], [10 + i % 50, EOS])
        if i % 3 == 0:
            time.sleep(0.002)  # let the worker reach its idle exit now and then
        scheduler.submit(job)
        thread = scheduler.thread()
        if thread is not None:
            workers.add(thread)
        text, finish = _collect(items)
        assert (text, finish.finish_reason) == (f"<{10 + i % 50}>", "stop")
    assert len(workers) > 1  # the race was exercised: workers ended and were restarted
    scheduler.stop(free=True)
    assert ctx.closed == 1
    assert _wait(lambda: not any(t.is_alive() for t in workers))


def test_stop_with_free_after_an_idle_exit_closes_the_context_once(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(scheduler_module, "IDLE_SECONDS", 0.01)
    ctx = FakeContext(slots=1)
    scheduler = Scheduler(ctx, align=4)  # type: ignore[arg-type]
    job, items = _job([1], [10, EOS])
    scheduler.submit(job)
    _collect(items)
    worker = scheduler.thread()
    assert worker is not None
    assert _wait(lambda: not worker.is_alive())
    scheduler.stop(free=True)
    scheduler.stop(free=True)
    assert ctx.closed == 1
    with pytest.raises(GenerationError, match="unloaded"):
        scheduler.submit(_job([2], [])[0])


def test_a_stop_on_the_worker_itself_ends_it_after_the_step_and_frees_the_context() -> None:
    """What a garbage collection of the model on the worker thread does (``LlamaModel.__del__``)."""
    ctx = FakeContext(slots=2)
    scheduler = Scheduler(ctx, align=4)  # type: ignore[arg-type]
    ctx.gate.clear()
    endless, q_endless = _job([1], [], budget=10**6)
    stopper, q_stopper = _job([2], [20, 21, EOS])
    inner = stopper.sink

    def stop_from_the_worker(item: object) -> None:
        inner(item)
        if threading.current_thread() is scheduler.thread():
            scheduler.stop("collected", free=True)

    stopper.sink = stop_from_the_worker
    scheduler.submit(endless)
    scheduler.submit(stopper)
    worker = scheduler.thread()
    assert worker is not None
    ctx.gate.set()
    _text, error = _collect(q_endless)
    assert isinstance(error, GenerationError)
    assert "collected" in str(error)
    assert _collect(q_stopper)[0] in {"<20>", "<20><21>"}  # its first piece stopped the worker
    assert _wait(lambda: not worker.is_alive())
    assert ctx.closed == 1
    assert endless.sampler is None  # released with its slot


class WorkerKilled(BaseException):
    """Not an Exception: escapes the step's handler as an interpreter-level failure would."""


@pytest.mark.filterwarnings("ignore::pytest.PytestUnhandledThreadExceptionWarning")
def test_a_worker_that_dies_fails_every_job_it_held_and_the_next_request_starts_a_new_one() -> None:
    ctx = FakeContext(slots=1)
    scheduler = Scheduler(ctx, align=4)  # type: ignore[arg-type]
    ctx.gate.clear()
    running, q_running = _job([1], [])
    queued, q_queued = _job([2], [])
    scheduler.submit(running)
    scheduler.submit(queued)
    worker = scheduler.thread()
    assert worker is not None
    ctx.fail_next = WorkerKilled("boom")
    ctx.gate.set()
    for items in (q_running, q_queued):
        error = _collect(items)[1]
        assert isinstance(error, GenerationError)
    assert _wait(lambda: not worker.is_alive())
    after, q_after = _job([3], [30, EOS])
    scheduler.submit(after)
    assert _collect(q_after)[0] == "<30>"
    scheduler.stop()


def test_atexit_stops_every_live_worker_and_fails_its_jobs() -> None:
    ctx = FakeContext(slots=1)
    scheduler = Scheduler(ctx, align=4)  # type: ignore[arg-type]
    endless, items = _job([1], [], budget=10**6)
    scheduler.submit(endless)
    worker = scheduler.thread()
    assert worker is not None
    _wait(lambda: len(ctx.batches) > 3)
    scheduler_module._stop_all()
    assert not worker.is_alive()
    _text, error = _collect(items)
    assert isinstance(error, GenerationError)
    assert "exiting" in str(error)


# -- step failures ----------------------------------------------------------------------------------


def test_an_exception_in_a_step_fails_that_steps_jobs_and_the_worker_goes_on() -> None:
    ctx = FakeContext(slots=2)
    scheduler = Scheduler(ctx, align=4)  # type: ignore[arg-type]
    ctx.gate.clear()
    a, qa = _job([1], [10, EOS])
    b, qb = _job([2], [20, EOS])
    scheduler.submit(a)
    scheduler.submit(b)
    worker = scheduler.thread()
    ctx.fail_width = 2  # the first step that holds both jobs
    ctx.fail_next = RuntimeError("native trouble")
    ctx.gate.set()
    for items in (qa, qb):
        error = _collect(items)[1]
        assert isinstance(error, GenerationError)
        assert "native trouble" in str(error)
    assert a.sampler is None
    assert b.sampler is None
    assert not ctx.kv  # the failed jobs' cells are unknown: dropped
    c, qc = _job([3], [30, EOS])
    scheduler.submit(c)
    assert _collect(qc)[0] == "<30>"
    assert scheduler.thread() is worker  # the same worker went on
    scheduler.stop()


def test_a_decode_error_status_fails_that_steps_jobs_with_the_status() -> None:
    ctx = FakeContext(slots=1)
    scheduler = Scheduler(ctx, align=4)  # type: ignore[arg-type]
    ctx.fail_next = -3
    a, qa = _job([1], [10, EOS])
    scheduler.submit(a)
    error = _collect(qa)[1]
    assert isinstance(error, GenerationError)
    assert "status -3" in str(error)
    b, qb = _job([1], [11, EOS])
    scheduler.submit(b)
    assert _collect(qb)[0] == "<11>"
    scheduler.stop()


def test_a_full_kv_cache_drops_idle_slots_prefixes_before_failing_anyone() -> None:
    ctx = FakeContext(slots=2)
    scheduler = Scheduler(ctx, align=4)  # type: ignore[arg-type]
    first, q_first = _job(list(range(1, 9)), [10, EOS])
    scheduler.submit(first)
    _collect(q_first)
    assert ctx.kv == {0: 8}  # its aligned prompt stays cached in slot 0
    ctx.cell_limit = 10  # room for one 8-token prompt and its answer, not two
    second, q_second = _job(list(range(50, 58)), [20, 21, EOS])
    scheduler.submit(second)
    assert _collect(q_second)[0] == "<20><21>"
    assert 0 not in ctx.kv  # the idle slot's prefix was dropped to make room
    scheduler.stop()


def test_a_kv_cache_too_small_for_one_request_fails_it_clearly_and_serves_the_next() -> None:
    ctx = FakeContext(slots=1)
    scheduler = Scheduler(ctx, align=4)  # type: ignore[arg-type]
    ctx.cell_limit = 4
    big, q_big = _job(list(range(1, 9)), [10, EOS])
    scheduler.submit(big)
    error = _collect(q_big)[1]
    assert isinstance(error, GenerationError)
    assert "lower max_parallel or raise n_ctx" in str(error)
    small, q_small = _job([1, 2], [11, EOS])
    scheduler.submit(small)
    assert _collect(q_small)[0] == "<11>"
    scheduler.stop()
