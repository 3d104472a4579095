"""Continuous batching: one worker per loaded model runs every generation in shared decode steps.

With ``max_parallel > 1`` a loaded model gets a :class:`Scheduler`: one thread
(``langchain-localllm-scheduler``), started on the first request, that alone drives the
model's :class:`~langchain_localllm._backends.llamacpp.batchctx.BatchContext`. Callers
(``invoke``, ``stream``, ``batch``, async, any thread) prepare their prompt and sampler
chain under the model's lock, then :meth:`Scheduler.submit` a :class:`Job` carrying a
``sink``: the worker pushes the job's pieces into it (a queue the caller reads, or an
event loop's queue through ``call_soon_threadsafe``) and never waits for a consumer, so no
stream holds the model hostage.

Each step the worker

1. drops cancelled jobs (a closed or collected stream, a cancelled task) and frees their slots;
2. admits waiting jobs into free slots, each into the slot whose cached prefix it reuses most;
3. builds one batch: the decode token of every running job, then prefill chunks of new ones,
   within ``n_batch`` tokens;
4. runs one ``llama_decode`` (a full KV cache halves the prefill part and retries, then drops
   idle slots' cached prefixes, then fails the jobs of that step);
5. samples each job with its own chain, and applies end of generation, stops and
   ``max_tokens`` per job; a finished job's slot is free for the next step.

A request that arrives while others run starts in the next step. One job's error fails that
job only; an error in the step itself fails the jobs of that step and the worker goes on; if
the worker ever ends unexpectedly, every job it held is failed with a clear error. The worker
ends when the model is unloaded (its jobs fail with :class:`GenerationError`), at process
exit, or after :data:`IDLE_SECONDS` without work (the next request starts a new one), so an
evicted model that nobody unloads is not kept alive by its thread.
"""

from __future__ import annotations

import atexit
import collections
import logging
import threading
import weakref
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from langchain_localllm._backends.llamacpp.batchctx import (
    BatchContext,
    Decode,
    Prefill,
    PrefixCache,
    Segment,
    SlotCache,
    choose_slot,
    plan_batch,
)
from langchain_localllm._backends.llamacpp.generate import logprob_entry
from langchain_localllm._core.output import FinishInfo, FinishReason, Piece
from langchain_localllm._core.stop import ByteStream
from langchain_localllm.errors import GenerationError, LocalLLMError

__all__ = ["IDLE_SECONDS", "THREAD_NAME", "Job", "Scheduler"]

logger = logging.getLogger("langchain_localllm")

THREAD_NAME = "langchain-localllm-scheduler"
"""The name of every scheduler thread (one per loaded model with ``max_parallel > 1``)."""

IDLE_SECONDS = 30.0
"""A worker with nothing to do for this long ends; the next request starts a new one."""

KV_FULL = 1
"""``llama_decode``'s status when the KV cache has no room for the batch."""

Sink = Callable[[object], None]
"""Where a job's output goes: each :class:`Piece` (the last has ``finish``), or an exception."""


@dataclass(eq=False)
class Job:
    """One generation request and the worker's state for it."""

    prompt: list[int]
    sampler: Any
    """This request's own ``LlamaSampler`` chain (penalties, grammar, seed, top-k/p...)."""
    budget: int
    """Most tokens to generate (``max_tokens`` within the context window)."""
    stops: Sequence[str]
    sink: Sink
    pieces: Any
    """The model's token -> bytes table."""
    eog: Any
    """The model's end-of-generation token set."""
    prefix_cache: PrefixCache = "exact"
    logprobs: int | None = None
    abandoned: Callable[[], bool] | None = None
    """True once nobody can read the output any more (e.g. the consuming task is done)."""
    owner: Any = None
    """The loaded model, kept alive while the job exists (its token tables ask it)."""
    cancel: threading.Event = field(default_factory=threading.Event)
    # -- the worker's state ----------------------------------------------------------------
    slot: SlotCache | None = None
    fed: int = 0
    """Prompt tokens in the slot's KV cells."""
    reused: int = 0
    """Prompt tokens taken from the slot's cache instead of evaluated."""
    pending: int | None = None
    n_generated: int = 0
    out: ByteStream | None = None
    done: bool = False

    def cancelled(self) -> bool:
        """Whether the consumer went away."""
        if self.cancel.is_set():
            return True
        if self.abandoned is not None and self.abandoned():
            self.cancel.set()
            return True
        return False


_live: weakref.WeakSet[Scheduler] = weakref.WeakSet()
_live_lock = threading.Lock()


@atexit.register
def _stop_all() -> None:
    """Join every worker before the interpreter tears down (a native call must not be cut off)."""
    with _live_lock:
        schedulers = list(_live)
    for scheduler in schedulers:
        scheduler.stop("the process is exiting")


class Scheduler:
    """The one worker of one loaded model (see the module docstring)."""

    def __init__(self, ctx: BatchContext, *, align: int, name: str = "") -> None:
        """A scheduler over ``ctx`` (prefix reuse aligned to ``align`` tokens, as on one sequence)."""
        self._ctx = ctx
        self._align = align
        self._name = name
        self._cond = threading.Condition()
        self._incoming: list[Job] = []
        self._waiting: collections.deque[Job] = collections.deque()
        self._running: list[Job] = []
        self._slots = [SlotCache(seq) for seq in range(ctx.slots)]
        self._free = list(self._slots)
        self._thread: threading.Thread | None = None
        self._closed: str | None = None
        self._free_on_exit = False
        self._freed = False
        self._out: list[tuple[Sink, object]] = []
        self._clock = 0
        self.steps = 0
        """Forward passes run (for tests and metrics)."""
        with _live_lock:
            _live.add(self)

    # -- the callers' side ---------------------------------------------------------------------

    def submit(self, job: Job) -> None:
        """Queue ``job``; it starts in the worker's next step (the worker starts if needed)."""
        job.out = ByteStream(job.stops)
        with self._cond:
            if self._closed is not None:
                msg = f"the model was unloaded ({self._closed}); call it again (it reloads)"
                raise GenerationError(msg)
            self._incoming.append(job)
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name=THREAD_NAME, daemon=True)
                self._thread.start()
            self._cond.notify()

    def stop(self, why: str = "unloaded", *, free: bool = False) -> None:
        """Stop the worker (joined) and fail the jobs it still had; further submits fail.

        With ``free``, the native context is freed too: here, or, when called on the worker
        itself (a garbage collection there), by the worker once its step is over.
        """
        with self._cond:
            if self._closed is None:
                self._closed = why
            thread = self._thread
            self._free_on_exit = self._free_on_exit or free
            self._cond.notify()
        if thread is not None and thread is threading.current_thread():
            return  # the worker ends after this step and frees what it was asked to
        if thread is not None:
            thread.join()
        with self._cond:
            jobs = self._incoming + list(self._waiting) + self._running
            self._incoming, self._running = [], []
            self._waiting.clear()
        self._fail(jobs, self._stopped_error())
        self._flush()
        if self._free_on_exit:
            self._free_ctx()

    def idle(self) -> bool:
        """Whether no job is queued or running."""
        with self._cond:
            return not (self._incoming or self._waiting or self._running)

    def thread(self) -> threading.Thread | None:
        """The worker thread, if one is running."""
        return self._thread

    def used_cells(self) -> int:
        """KV cells held now (running jobs and cached prefixes of idle slots)."""
        return self._ctx.used_cells()

    # -- the worker ------------------------------------------------------------------------------

    def _run(self) -> None:
        try:
            while self._next():
                self._guarded_step()
        except BaseException as e:
            self._reset(GenerationError(f"the llama.cpp scheduler stopped: {type(e).__name__}: {e}"))
            self._flush()
            raise
        finally:
            # After an idle exit another worker may own the scheduler already (a submit right
            # after it), so this one touches nothing on the way out: it holds no job, has
            # nothing to flush, and a stop that frees the context joins the new worker.
            leftover: list[Job] = []
            mine = False
            with self._cond:
                if self._thread is threading.current_thread():  # not an idle exit (that cleared it)
                    mine = True
                    self._thread = None
                    leftover = self._incoming + list(self._waiting) + self._running
                    self._incoming, self._running = [], []
                    self._waiting.clear()
            if mine:
                self._fail(leftover, self._stopped_error())
                self._flush()
                if self._free_on_exit and self._closed is not None:
                    self._free_ctx()

    def _free_ctx(self) -> None:
        """Free the native context once (the worker at its exit and :meth:`stop` both may ask)."""
        with self._cond:
            if self._freed:
                return
            self._freed = True
        self._ctx.close()

    def _stopped_error(self) -> GenerationError:
        if self._closed is not None:
            return GenerationError(f"{self._name or 'the model'} was unloaded while generating ({self._closed})")
        return GenerationError("the llama.cpp scheduler stopped before this request finished")

    def _next(self) -> bool:
        """Wait for work; move new jobs into the queue. False: the worker should end."""
        with self._cond:
            while True:
                if self._closed is not None:
                    return False
                self._waiting.extend(self._incoming)
                self._incoming.clear()
                if self._waiting or self._running:
                    return True
                if not self._cond.wait(IDLE_SECONDS) and not self._incoming and self._closed is None:
                    self._thread = None  # under the lock: the next submit starts a new worker
                    return False

    def _guarded_step(self) -> None:
        try:
            self._step()
        except Exception as e:  # one step failed: its jobs fail, the worker goes on
            logger.exception("the llama.cpp scheduler step failed")
            self._reset(GenerationError(f"llama.cpp failed while generating: {type(e).__name__}: {e}"))
        finally:
            self._flush()

    def _emit(self, job: Job, item: object) -> None:
        """Queue ``item`` for ``job``'s consumer; :meth:`_flush` hands the step's items over at once.

        Handing them over after the step's last native call, not between its sampling calls,
        keeps the consumers (each waking to take its piece) from contending with the worker for
        the GIL at every one of those calls; they run while the next ``llama_decode`` runs.
        """
        self._out.append((job.sink, item))

    def _flush(self) -> None:
        out, self._out = self._out, []
        for sink, item in out:
            sink(item)

    def _step(self) -> None:
        self._reap()
        self._admit()
        if not self._running:
            return
        segments, owners = self._build()
        if segments:
            self.steps += 1
        for i, (segment, job) in enumerate(zip(segments, owners, strict=True)):
            if job.done:
                continue
            prefilling = job.pending is None
            self._extend(job, segment)
            if prefilling:
                job.fed += len(segment.tokens)
            if segment.output:
                self._sample(job, self._ctx.output_index(i))
        self._reap()

    def _extend(self, job: Job, segment: Segment) -> None:
        slot = job.slot
        assert slot is not None  # noqa: S101 - a running job has a slot
        slot.tokens.extend(segment.tokens)
        if job.pending is None:
            slot.exact = len(slot.tokens)

    # -- admission and release ---------------------------------------------------------------------

    def _admit(self) -> None:
        while self._free:
            with self._cond:
                if not self._waiting:
                    return
                job = self._waiting.popleft()
            if job.cancelled():
                self._finish(job, "cancelled", emit=False)
                continue
            index, reuse = choose_slot(self._free, job.prompt, self._align, job.prefix_cache)
            slot = self._free.pop(index)
            self._clock += 1
            slot.last_used = self._clock
            if reuse < len(slot.tokens) and not self._ctx.keep(slot.seq, reuse):
                self._ctx.drop(slot.seq)  # a recurrent model cannot drop a suffix: start over
                reuse = 0
            del slot.tokens[reuse:]
            slot.exact = min(slot.exact, reuse)
            job.slot, job.fed, job.reused = slot, reuse, reuse
            self._running.append(job)

    def _reap(self) -> None:
        for job in list(self._running):
            if not job.done and job.cancelled():
                self._finish(job, "cancelled", emit=False)
        self._running = [job for job in self._running if not job.done]
        with self._cond:
            gone = [job for job in self._waiting if job.cancelled()]
            if gone:
                self._waiting = collections.deque(job for job in self._waiting if not job.done and job not in gone)
        for job in gone:
            self._finish(job, "cancelled", emit=False)

    def _release(self, job: Job) -> None:
        slot, job.slot = job.slot, None
        if slot is not None:
            self._trim(slot, job.prefix_cache)
            self._free.append(slot)
        sampler, job.sampler = job.sampler, None
        if sampler is not None:
            sampler.close()

    def _trim(self, slot: SlotCache, mode: PrefixCache) -> None:
        """Keep only the cells a later prompt could reuse (``"exact"``: whole aligned prefill chunks).

        Cells nobody can reuse would only hold memory (and, in a unified KV cache, widen the
        span every step's attention covers).
        """
        keep = len(slot.tokens) if mode == "longest" else slot.exact - slot.exact % self._align
        if keep >= len(slot.tokens) or self._ctx.ctx is None:
            return
        if keep == 0 or not self._ctx.keep(slot.seq, keep):
            self._ctx.drop(slot.seq)
            keep = 0
        del slot.tokens[keep:]
        slot.exact = min(slot.exact, keep)

    def _finish(self, job: Job, reason: FinishReason, *, emit: bool = True) -> None:
        if job.done:
            return
        job.done = True
        self._release(job)
        if emit:
            out = job.out
            assert out is not None  # noqa: S101 - set by submit
            info = FinishInfo(reason, len(job.prompt), job.n_generated, out.stops.matched)
            self._emit(job, Piece(out.finish(), finish=info))

    def _fail(self, jobs: Sequence[Job], error: LocalLLMError) -> None:
        for job in jobs:
            if job.done:
                continue
            job.done = True
            slot = job.slot
            if slot is not None and self._ctx.ctx is not None:
                self._ctx.drop(slot.seq)  # its cells are unknown now
                slot.tokens.clear()
                slot.exact = 0
            self._release(job)
            self._emit(job, error)

    def _reset(self, error: LocalLLMError) -> None:
        with self._cond:
            jobs = list(self._running)
            self._running = []
        self._fail(jobs, error)

    # -- one forward ---------------------------------------------------------------------------

    def _build(self) -> tuple[list[Segment], list[Job]]:
        """Plan and run one decode (retrying smaller on a full KV cache); the segments run and their jobs."""
        cap = self._ctx.n_batch
        evicted = False
        while True:
            decodes, prefills, by_seq = [], [], {}
            for job in self._running:
                slot = job.slot
                assert slot is not None  # noqa: S101
                by_seq[slot.seq] = job
                if job.pending is not None:
                    decodes.append(Decode(slot.seq, job.pending, len(slot.tokens)))
                else:
                    prefills.append(Prefill(slot.seq, job.prompt[job.fed :], job.fed))
            segments = plan_batch(decodes, prefills, self._ctx.n_batch, cap)
            if not segments:
                return [], []
            status = self._ctx.decode(segments)
            if status == 0:
                return segments, [by_seq[s.seq] for s in segments]
            prefilled = sum(len(s.tokens) for s in segments) - len(decodes)
            if status == KV_FULL and prefilled > 1:
                cap = max(1, prefilled // 2)
                logger.debug("llama.cpp KV cache full: prefill chunk halved to %d tokens", cap)
                continue
            if status == KV_FULL and not evicted:
                evicted = True
                if self._drop_idle_caches():
                    cap = self._ctx.n_batch
                    continue
            self._decode_failed(status, [by_seq[s.seq] for s in segments])
            if not self._running:
                return [], []
            cap = self._ctx.n_batch

    def _decode_failed(self, status: int, jobs: list[Job]) -> None:
        """Fail the jobs of a step whose decode failed (the others go on in the next try)."""
        if status == KV_FULL:
            msg = (
                f"the KV cache ({self._ctx.capacity} cells for {self._ctx.slots} slots) has no room for this "
                "step; lower max_parallel or raise n_ctx"
            )
        else:
            msg = f"llama_decode failed with status {status}"
        self._fail(jobs, GenerationError(msg))
        self._running = [job for job in self._running if not job.done]

    def _drop_idle_caches(self) -> bool:
        dropped = False
        for slot in self._free:
            if slot.tokens:
                self._ctx.drop(slot.seq)
                slot.tokens.clear()
                slot.exact = 0
                dropped = True
        return dropped

    def _sample(self, job: Job, row: int) -> None:
        try:
            token = self._ctx.sample(job.sampler, row)
            entry = logprob_entry(self._ctx.logits(row), token, job.logprobs) if job.logprobs is not None else None
            ended = token in job.eog
            piece = b"" if ended else job.pieces[token]
        except Exception as e:  # noqa: BLE001 - this job's sampler or tables failed: this job only
            self._fail([job], GenerationError(f"llama.cpp failed while sampling: {type(e).__name__}: {e}"))
            return
        if ended:
            self._finish(job, "stop")
            return
        job.pending = token
        job.n_generated += 1
        out = job.out
        assert out is not None  # noqa: S101
        text = out.push(piece)
        if entry is not None:
            self._emit(job, Piece(text, logprobs=[entry]))
        elif text:
            self._emit(job, Piece(text))
        if out.stops.stopped:
            self._finish(job, "stop")
        elif job.n_generated >= job.budget:
            self._finish(job, "length")
        elif job.cancelled():
            self._finish(job, "cancelled")
