"""Continuous batching on transformers: one worker per loaded model decodes every request in shared steps.

With ``max_parallel > 1`` a loaded model gets a :class:`Scheduler`: one thread
(``langchain-localllm-hf-scheduler``), started on the first request, that alone runs the
model's forward for scheduled requests. Callers (``invoke``, ``stream``, ``batch``, async,
any thread) render their prompt and build their logits processors under the model's lock,
then :meth:`Scheduler.submit` a :class:`Job` with a ``sink``; the worker pushes the job's
pieces into it and never waits for a consumer.

Each step, holding the model's lock for that step only, the worker

1. drops cancelled jobs (a closed or collected stream, a cancelled task);
2. admits waiting jobs into free slots: each prompt is prefilled alone (no padding), its first
   token sampled, and its KV cache merged into the batch's ``DynamicCache``, left-padded to
   the batch's width (the positions stay the row's own; the padding is masked out);
3. runs one forward over the last token of every running row (a 2-D attention mask and
   explicit ``position_ids``), samples each row with its own processors (repetition
   penalty, grammar, temperature, top-k/p, its own seeded ``torch.Generator``) and applies
   EOS, stops and ``max_tokens`` per row (:class:`~langchain_localllm._backends.transformers.generate.Observer`);
4. removes finished rows from the cache at once and trims the padding no row needs.

A request that arrives while others decode is admitted at the next step. An error in one
job's sampling fails that job; an error in the forward fails the jobs of that step. The
worker ends after :data:`IDLE_SECONDS` without work, when the model is unloaded (its jobs
fail with :class:`~langchain_localllm.errors.GenerationError`) or at process exit.

Requests this loop does not implement run alone on today's ``generate`` path (see
:func:`mergeable`), serialized with the steps by the model's lock.
"""

from __future__ import annotations

import collections
import inspect
import logging
import threading
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from typing import Any

from langchain_localllm._backends.transformers.generate import Observer, Row, generation_config, use_static_cache
from langchain_localllm._backends.transformers.grammar import GrammarProcessor
from langchain_localllm._backends.transformers.load import HFBundle
from langchain_localllm._backends.transformers.prefill import cache_argument
from langchain_localllm._backends.transformers.settings import Sampling
from langchain_localllm._core.imports import import_optional
from langchain_localllm.errors import GenerationError, LocalLLMError

__all__ = ["IDLE_SECONDS", "THREAD_NAME", "Job", "Scheduler", "merge_rows", "mergeable", "select_rows"]

logger = logging.getLogger("langchain_localllm")

IDLE_SECONDS = 30.0
"""The worker ends after this long without work (the next request starts a new one)."""
THREAD_NAME = "langchain-localllm-hf-scheduler"

_UNSUPPORTED_CONFIG = (
    "no_repeat_ngram_size",
    "encoder_no_repeat_ngram_size",
    "encoder_repetition_penalty",
    "bad_words_ids",
    "min_new_tokens",
    "forced_bos_token_id",
    "forced_eos_token_id",
    "suppress_tokens",
    "begin_suppress_tokens",
    "sequence_bias",
    "typical_p",
    "epsilon_cutoff",
    "eta_cutoff",
    "min_p",
    "exponential_decay_length_penalty",
    "renormalize_logits",
    "guidance_scale",
    "watermarking_config",
    "prompt_lookup_num_tokens",
    "dola_layers",
)
"""Generation-config settings the step loop does not implement: a request with any of them not at
transformers' default runs alone through ``generate``, so no setting is silently dropped."""


def mergeable(bundle: HFBundle, sampling: Sampling) -> bool:
    """Whether the step loop serves this request exactly as ``generate`` would (else it runs alone).

    Not for seq2seq models, caches that are not plain full-attention ``DynamicLayer`` s (sliding
    window, hybrid, quantized), a static (CUDA-graph) cache, ``generate_kwargs``, or generation-config
    settings outside :data:`_UNSUPPORTED_CONFIG`'s complement.
    """
    if bundle.is_seq2seq or sampling.generate_kwargs or use_static_cache(sampling, bundle):
        return False
    if not _plain_cache(bundle):
        return False
    config, _ = generation_config(sampling, bundle, 1)
    defaults = import_optional("transformers").GenerationConfig()
    return all(getattr(config, name, None) == getattr(defaults, name, None) for name in _UNSUPPORTED_CONFIG)


def _plain_cache(bundle: HFBundle) -> bool:
    cache_utils = import_optional("transformers").cache_utils
    model = bundle.model
    layer_type = getattr(cache_utils, "DynamicLayer", None)
    parameters = inspect.signature(model.forward).parameters
    return (
        layer_type is not None
        and cache_argument(model) is not None
        and {"attention_mask", "position_ids", "use_cache"} <= set(parameters)
        and all(type(layer) is layer_type for layer in cache_utils.DynamicCache(config=model.config).layers)
        and getattr(model.config, "use_cache", True) is not False
    )


@dataclass(eq=False)
class Job:
    """One scheduled generation: its prompt, budget, sampling, stops and where its pieces go."""

    prompt: list[int]
    budget: int
    sampling: Sampling
    stops: Sequence[str]
    sink: Callable[[object], None]
    """Receives each :class:`Piece`, then nothing more after the one with ``finish``; or an exception."""
    processors: list[Any] = field(default_factory=list)
    """Logits processors in ``generate``'s order (repetition penalty, grammar, then the warpers)."""
    sample: bool = False
    generator: Any = None
    cancel: threading.Event = field(default_factory=threading.Event)
    tokens: list[int] = field(default_factory=list)
    row: Row | None = None
    observer: Observer | None = None

    def fail(self, error: BaseException) -> None:
        """Send ``error`` (once the job is over nothing more is sent)."""
        if self.row is None or not self.row.done:
            if self.row is not None:
                self.row.done = True
            self.sink(error)


def build_job(
    bundle: HFBundle,
    prompt: list[int],
    *,
    budget: int,
    sampling: Sampling,
    stops: Sequence[str],
    sink: Callable[[object], None],
) -> Job:
    """A job with the processors ``generate`` would use for ``sampling`` (compiled here, in the caller).

    Raises:
        ConstraintError: The grammar does not compile (this request fails, nothing else).
    """
    torch = import_optional("torch")
    processing = import_optional("transformers").generation.logits_process
    config, _ = generation_config(sampling, bundle, budget, len(prompt))
    processors: list[Any] = []
    if config.repetition_penalty not in (None, 1.0):
        processors.append(processing.RepetitionPenaltyLogitsProcessor(penalty=float(config.repetition_penalty)))
    if sampling.constraint is not None:
        n_vocab = int(bundle.model.config.get_text_config(decoder=True).vocab_size)
        processors.append(GrammarProcessor(bundle.tokenizer, n_vocab, sampling.constraint, 1))
    sample = bool(config.do_sample)
    if sample:
        if config.temperature not in (None, 1.0):
            processors.append(processing.TemperatureLogitsWarper(float(config.temperature)))
        if config.top_k not in (None, 0):
            processors.append(processing.TopKLogitsWarper(top_k=int(config.top_k), min_tokens_to_keep=1))
        if config.top_p not in (None, 1.0):
            processors.append(processing.TopPLogitsWarper(top_p=float(config.top_p), min_tokens_to_keep=1))
    generator = None
    if sample and sampling.seed is not None:  # as torch.manual_seed(seed) before generate: the same stream
        generator = torch.Generator(device=bundle.device).manual_seed(sampling.seed)
    return Job(
        prompt=list(prompt),
        budget=budget,
        sampling=sampling,
        stops=stops,
        sink=sink,
        processors=processors,
        sample=sample,
        generator=generator,
    )


def merge_rows(
    old: tuple[list[Any], list[Any], Any] | None, new: tuple[list[Any], list[Any], Any]
) -> tuple[list[Any], list[Any], Any]:
    """Concatenate two batches of per-layer keys, values and 2-D masks, left-padding to one width."""
    torch = import_optional("torch")
    if old is None:
        return new
    width = max(old[2].shape[1], new[2].shape[1])

    def pad(t: Any, n: int, dim: int) -> Any:
        if n == 0:
            return t
        shape = list(t.shape)
        shape[dim] = n
        return torch.cat([t.new_zeros(shape), t], dim=dim)

    keys, values = [], []
    for (ok, ov), (nk, nv) in zip(zip(old[0], old[1], strict=True), zip(new[0], new[1], strict=True), strict=True):
        keys.append(torch.cat([pad(ok, width - ok.shape[2], 2), pad(nk, width - nk.shape[2], 2)], dim=0))
        values.append(torch.cat([pad(ov, width - ov.shape[2], 2), pad(nv, width - nv.shape[2], 2)], dim=0))
    mask = torch.cat([pad(old[2], width - old[2].shape[1], 1), pad(new[2], width - new[2].shape[1], 1)], dim=0)
    return keys, values, mask


def select_rows(
    batch: tuple[list[Any], list[Any], Any], keep: Sequence[int]
) -> tuple[list[Any], list[Any], Any] | None:
    """The rows ``keep`` of a batch, without the leading columns that no kept row attends to."""
    if not keep:
        return None
    torch = import_optional("torch")
    keys, values, mask = batch
    index = torch.tensor(list(keep), device=mask.device)
    mask = mask.index_select(0, index)
    used = (mask.sum(dim=0) > 0).nonzero()
    start = int(used[0]) if len(used) else 0
    keys = [k.index_select(0, index)[:, :, start:] for k in keys]
    values = [v.index_select(0, index)[:, :, start:] for v in values]
    return keys, values, mask[:, start:]


class Scheduler:
    """The worker that batches every scheduled generation on one loaded model (see the module docstring)."""

    def __init__(
        self, bundle: HFBundle, step: Callable[[], AbstractContextManager[HFBundle]], slots: int, name: str
    ) -> None:
        """Schedule on ``bundle``; ``step`` holds the model's lock (and fails once it is unloaded)."""
        self.slots = slots
        self.name = name
        self._bundle = bundle
        self._step = step
        self._cond = threading.Condition()
        self._waiting: collections.deque[Job] = collections.deque()
        self._running: list[Job] = []
        self._batch: tuple[list[Any], list[Any], Any] | None = None
        """Per-layer keys, values and the 2-D mask of the running rows, when rows changed."""
        self._cache: Any = None
        """The ``DynamicCache`` the decode steps grow (made from ``_batch`` when rows changed)."""
        self._mask: Any = None
        self._thread: threading.Thread | None = None
        self._stopping = False
        self.steps = 0
        """Decode steps run (a test hook: shared steps mean fewer of them than rows x tokens)."""
        self.max_rows = 0
        """The most rows one decode step held."""

    def submit(self, job: Job) -> None:
        """Queue ``job`` (starting the worker if needed).

        Raises:
            GenerationError: The scheduler was stopped (the model unloaded).
        """
        with self._cond:
            if self._stopping:
                msg = f"{self.name} was unloaded; load it again to generate"
                raise GenerationError(msg)
            self._waiting.append(job)
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(target=self._run, name=THREAD_NAME, daemon=True)
                self._thread.start()
            self._cond.notify()

    def stop(self) -> None:
        """Fail the waiting jobs and end the worker (it fails its running jobs when it wakes)."""
        with self._cond:
            self._stopping = True
            waiting = list(self._waiting)
            self._waiting.clear()
            self._cond.notify_all()
        for job in waiting:
            job.fail(GenerationError(f"{self.name} was unloaded while this request waited"))

    def join(self, timeout: float | None = None) -> None:
        """Wait for the worker to end (never from the worker itself)."""
        thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout)

    # -- the worker -------------------------------------------------------------------

    def _run(self) -> None:
        try:
            while self._wait_for_work():
                self._one_step()
        except BaseException as e:
            logger.exception("the transformers scheduler of %s ended unexpectedly", self.name)
            self._fail_all(e if isinstance(e, LocalLLMError) else GenerationError(f"the scheduler failed: {e}"))
        finally:
            with self._cond:
                if self._thread is threading.current_thread():
                    self._thread = None

    def _wait_for_work(self) -> bool:
        with self._cond:
            while not self._stopping and not self._waiting and not self._running:
                if not self._cond.wait(IDLE_SECONDS) and not self._waiting:
                    return False  # idle: the next request starts a new worker
            if self._stopping:
                running, self._running, self._batch, self._cache, self._mask = self._running, [], None, None, None
                for job in running:
                    job.fail(GenerationError(f"{self.name} was unloaded while generating"))
                return False
            return True

    def _fail_all(self, error: BaseException) -> None:
        with self._cond:
            jobs = [*self._running, *self._waiting]
            self._running, self._batch, self._cache, self._mask = [], None, None, None
            self._waiting.clear()
        for job in jobs:
            job.fail(error)

    def _one_step(self) -> None:
        torch = import_optional("torch")
        try:
            with self._step() as bundle, torch.inference_mode():
                self._drop_cancelled()
                self._admit(bundle)
                if self._running:
                    self._decode(bundle)
        except LocalLLMError as e:  # the model was unloaded: fail everything, end
            self._fail_all(e)
            with self._cond:
                self._stopping = True
        except Exception as e:  # noqa: BLE001 - a failed forward fails the jobs of this step
            logger.warning("a decode step of %s failed: %s", self.name, e)
            error = GenerationError(f"transformers failed while generating: {type(e).__name__}: {e}")
            with self._cond:
                running, self._running, self._batch, self._cache, self._mask = self._running, [], None, None, None
            for job in running:
                job.fail(error)

    def _drop_cancelled(self) -> None:
        keep = [i for i, job in enumerate(self._running) if not job.cancel.is_set()]
        if len(keep) < len(self._running):
            self._batch = select_rows(self._tensors(), keep)
            self._cache = self._mask = None
            self._running = [self._running[i] for i in keep]

    def _admit(self, bundle: HFBundle) -> None:
        while len(self._running) < self.slots:
            with self._cond:
                if not self._waiting:
                    return
                job = self._waiting.popleft()
            if job.cancel.is_set():
                continue
            try:
                state = self._prefill(bundle, job)
            except LocalLLMError:
                raise
            except Exception as e:  # noqa: BLE001 - this job's prefill or sampling failed: only it
                job.fail(GenerationError(f"transformers failed while generating: {type(e).__name__}: {e}"))
                continue
            if state is not None:
                self._batch = merge_rows(self._tensors() if self._running else None, state)
                self._cache = self._mask = None
                self._running.append(job)

    def _prefill(self, bundle: HFBundle, job: Job) -> tuple[list[Any], list[Any], Any] | None:
        """Run ``job``'s prompt alone, sample its first token; its cache rows (None if it already ended)."""
        torch = import_optional("torch")
        cache_utils = import_optional("transformers").cache_utils
        model = bundle.model
        device = bundle.device
        cache = cache_utils.DynamicCache(config=model.config)
        ids = torch.tensor([job.prompt], dtype=torch.long, device=device)
        kwargs = {"logits_to_keep": 1} if "logits_to_keep" in inspect.signature(model.forward).parameters else {}
        out = model(
            input_ids=ids,
            attention_mask=torch.ones_like(ids),
            position_ids=torch.arange(len(job.prompt), device=device).unsqueeze(0),
            use_cache=True,
            **{str(cache_argument(model)): cache},
            **kwargs,
        )
        job.tokens = list(job.prompt)
        job.row = Row(0, len(job.prompt), job.budget, bundle.tokenizer, job.stops)
        job.observer = Observer([job.row], bundle.eos_ids, None, lambda _row, piece: job.sink(piece), ())
        token = self._sample(job, out.logits[:, -1, :].float())
        self._push(job, token)
        if job.row.done:
            return None
        keys = [layer.keys for layer in cache.layers]
        values = [layer.values for layer in cache.layers]
        return keys, values, torch.ones((1, len(job.prompt)), dtype=torch.long, device=device)

    def _sample(self, job: Job, scores: Any) -> int:
        torch = import_optional("torch")
        if job.processors:
            ids = torch.tensor([job.tokens], dtype=torch.long, device=scores.device)
            for processor in job.processors:
                scores = processor(ids, scores)
        if job.sample:
            probs = torch.nn.functional.softmax(scores, dim=-1)
            return int(torch.multinomial(probs, num_samples=1, generator=job.generator)[0, 0])
        return int(scores.argmax(dim=-1)[0])

    def _push(self, job: Job, token: int) -> None:
        assert job.observer is not None  # noqa: S101 - set by _prefill
        assert job.row is not None  # noqa: S101
        job.tokens.append(token)
        job.observer.advance(job.row, [token])

    def _live(self) -> tuple[Any, Any]:
        """The cache and mask of the running rows; rebuilt (one copy) only after rows joined or left."""
        if self._batch is not None:
            keys, values, mask = self._batch
            cache_utils = import_optional("transformers").cache_utils
            self._cache = cache_utils.DynamicCache(ddp_cache_data=zip(keys, values, strict=True))
            self._mask = mask
            self._batch = None
        return self._cache, self._mask

    def _tensors(self) -> tuple[list[Any], list[Any], Any]:
        """The running rows as tensors (from the live cache unless rows changed since)."""
        if self._batch is not None:
            return self._batch
        return [layer.keys for layer in self._cache.layers], [layer.values for layer in self._cache.layers], self._mask

    def _decode(self, bundle: HFBundle) -> None:
        torch = import_optional("torch")
        model = bundle.model
        device = bundle.device
        cache, mask = self._live()
        rows = len(self._running)
        ids = torch.tensor([[job.tokens[-1]] for job in self._running], dtype=torch.long, device=device)
        positions = torch.tensor([[len(job.tokens) - 1] for job in self._running], dtype=torch.long, device=device)
        mask = torch.cat([mask, mask.new_ones((rows, 1))], dim=1)
        kwargs = {"logits_to_keep": 1} if "logits_to_keep" in inspect.signature(model.forward).parameters else {}
        out = model(
            input_ids=ids,
            attention_mask=mask,
            position_ids=positions,
            use_cache=True,
            **{str(cache_argument(model)): cache},
            **kwargs,
        )
        self.steps += 1
        self.max_rows = max(self.max_rows, rows)
        scores = out.logits[:, -1, :].float()
        greedy = scores.argmax(dim=-1).tolist()
        keep: list[int] = []
        for i, job in enumerate(self._running):
            try:
                plain = not job.processors and not job.sample
                token = greedy[i] if plain else self._sample(job, scores[i : i + 1])
                self._push(job, token)
            except Exception as e:  # noqa: BLE001 - this job's sampling failed: only it
                job.fail(GenerationError(f"transformers failed while sampling: {type(e).__name__}: {e}"))
            assert job.row is not None  # noqa: S101
            if not job.row.done and not job.cancel.is_set():
                keep.append(i)
        self._mask = mask
        if len(keep) < rows:
            self._batch = select_rows(self._tensors(), keep)
            self._cache = self._mask = None
        self._running = [self._running[i] for i in keep]
