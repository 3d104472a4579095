"""The transformers backend: a checkpoint behind the :class:`~langchain_localllm._core.backend.Backend` verbs."""

from __future__ import annotations

import asyncio
import concurrent.futures
import dataclasses
import queue
import threading
from collections.abc import AsyncGenerator, Callable, Generator, Hashable, Iterator, Mapping, Sequence
from contextlib import AbstractContextManager
from typing import Any, ClassVar

from langchain_localllm._backends.transformers.batch import BatchPlan, run_batch
from langchain_localllm._backends.transformers.device import call_on_device_thread, device_executor, on_device_thread
from langchain_localllm._backends.transformers.embed import SentenceConfig, embed_batches, read_sentence_config
from langchain_localllm._backends.transformers.generate import generate_rows
from langchain_localllm._backends.transformers.grammar import json_schema_grammar, tool_call_grammar
from langchain_localllm._backends.transformers.load import (
    HFBundle,
    bundle_from_objects,
    load_bundle,
    require_generative,
)
from langchain_localllm._backends.transformers.prompt import render_prompt, row_budget, template_of
from langchain_localllm._backends.transformers.scheduler import Job, Scheduler, build_job, mergeable
from langchain_localllm._backends.transformers.settings import LoadSpec, Sampling
from langchain_localllm._core.backend import ChatPrompt, EmbedRequest, GenerateRequest, Prompt, PushBackend
from langchain_localllm._core.messages import ChatDict
from langchain_localllm._core.output import Piece
from langchain_localllm.errors import GenerationError, LocalLLMError

__all__ = ["TransformersBackend"]

BATCH_SLOT = "batch_slot"
"""``GenerateRequest.extra`` key: ``(plan, slot)`` when the answer comes from a ``batch()`` group."""


class TransformersBackend(PushBackend[HFBundle, Sampling]):
    """One transformers model and tokenizer, loaded once per process through the shared cache.

    Every CUDA generation runs on the process's one CUDA worker thread (``device.py``),
    where the static-cache decode step is compiled with CUDA graphs.
    """

    provider: ClassVar[str] = "huggingface"

    def __init__(self, settings: LoadSpec, objects: tuple[Any, Any] | None = None) -> None:
        """A backend for ``settings``, or for a model and tokenizer the user already has."""
        self.settings: LoadSpec = settings
        self._objects = objects
        self._key: tuple[Hashable, ...] | None = None
        self._sentence_config: SentenceConfig | None = None

    def model_name(self) -> str:
        """The ``model`` field (a path or hub id)."""
        return self.settings.model

    def cache_key(self) -> tuple[Hashable, ...]:
        """Source, device, dtype and load options; for wrapped objects, their identity. Memoized."""
        if self._key is None:
            if self._objects is not None:
                model, tokenizer = self._objects
                self._key = ("hf-objects", id(model), id(tokenizer))
            else:
                self._key = self.settings.cache_key()
        return self._key

    def _load_model(self) -> HFBundle:
        if self._objects is not None:
            model, tokenizer = self._objects
            return bundle_from_objects(model, tokenizer, name=self.settings.model, owned=False)
        return load_bundle(self.settings)

    def _on_cuda(self) -> bool:
        if self._objects is not None:
            return getattr(getattr(self._objects[0], "device", None), "type", None) == "cuda"
        return str(self.cache_key()[3]).startswith("cuda")

    def _executor(self) -> concurrent.futures.Executor | None:
        """CUDA generation goes to the process's CUDA worker thread (unless already on it)."""
        return device_executor() if self._on_cuda() and not on_device_thread() else None

    # -- prompts ------------------------------------------------------------------------

    def _tokenize(self, model: HFBundle, text: str) -> list[int]:
        return list(model.tokenizer.encode(text, add_special_tokens=False))

    def _template(self, model: HFBundle, override: str | None) -> str | None:
        template = template_of(model.tokenizer, override)
        return template if isinstance(template, str) else None

    def _render(self, model: HFBundle, prompt: Prompt) -> list[int]:
        require_generative(model)
        if not isinstance(prompt, ChatPrompt):
            return list(model.tokenizer(prompt.text)["input_ids"])
        return render_prompt(model, prompt.messages, prompt.chat_template, tools=prompt.tools, literal=prompt.literal)

    def _compile(self, schema: Mapping[str, Any], wrap: Callable[[str], str] | None) -> str:
        return json_schema_grammar(dict(schema)) if wrap is None else tool_call_grammar(dict(schema), wrap)

    # -- generation ---------------------------------------------------------------------

    @property
    def scheduled(self) -> bool:
        """Whether calls go through the model's scheduler (``max_parallel > 1``)."""
        return self.settings.max_parallel > 1

    def stream(self, request: GenerateRequest[Sampling]) -> Generator[Piece, None, None]:
        """Generate; an answer from a ``batch()`` group is computed in the calling thread (see below)."""
        if self.scheduled and request.extra.get(BATCH_SLOT) is None:
            return self._mapped(self._scheduled_pieces(request))
        if request.extra.get(BATCH_SLOT) is None:
            return super().stream(request)
        # The group's one padded generate returns whole answers, so a worker thread would
        # stream nothing; and on CPU, torch's OpenMP pool of the calling thread runs it
        # faster than a fresh thread's (measured: 2.0 s against 3.0 s for the bench's batch).
        return self._mapped(self._slot_stream(request))

    def astream(self, request: GenerateRequest[Sampling]) -> AsyncGenerator[Piece, None]:
        """Generate without blocking the event loop (through the scheduler with ``max_parallel > 1``)."""
        if self.scheduled and request.extra.get(BATCH_SLOT) is None:
            return self._scheduled_apieces(request)
        return super().astream(request)

    # -- continuous batching (max_parallel > 1) ---------------------------------------------

    def _submit(self, request: GenerateRequest[Sampling], sink: Callable[[object], None]) -> Job | None:
        """Prepare ``request`` under the model's lock and hand it to the model's scheduler.

        Returns None, submitting nothing, for a request the step loop does not serve
        (``scheduler.mergeable``): it then runs alone on the ordinary path.
        """
        with self.hold() as bundle:
            ids, constraint = self._prepare(bundle, request)
            sampling = request.sampling
            if constraint is not None:
                sampling = sampling.model_copy(update={"constraint": constraint})
            if not mergeable(bundle, sampling):
                return None
            budget = row_budget(bundle, len(ids), sampling.max_tokens)
            job = build_job(bundle, ids, budget=budget, sampling=sampling, stops=request.stops, sink=sink)
            if bundle.scheduler is None:
                name = repr(self.model_name())
                bundle.scheduler = Scheduler(bundle, self.stepper(), self.settings.max_parallel, name)
            bundle.scheduler.slots = max(bundle.scheduler.slots, self.settings.max_parallel)
            bundle.scheduler.submit(job)
        return job

    def _scheduled_pieces(self, request: GenerateRequest[Sampling]) -> Iterator[Piece]:
        items: queue.SimpleQueue[object] = queue.SimpleQueue()
        job = self._submit(request, items.put)
        if job is None:
            yield from super().stream(request)
            return
        try:
            while True:
                piece = _piece(items.get())
                yield piece
                if piece.finish is not None:
                    return
        finally:
            job.cancel.set()  # a closed or collected stream frees its row at the next step

    async def _asubmit(
        self, loop: asyncio.AbstractEventLoop, request: GenerateRequest[Sampling], sink: Callable[[object], None]
    ) -> Job | None:
        """:meth:`_submit` off the event loop (rendering, and the model's lock a step holds for milliseconds)."""
        try:
            return await loop.run_in_executor(None, self._submit, request, sink)
        except LocalLLMError:
            raise
        except Exception as e:  # mapped at the boundary, the cause chained
            raise self._map_error(e) from e

    async def _scheduled_apieces(self, request: GenerateRequest[Sampling]) -> AsyncGenerator[Piece, None]:
        loop = asyncio.get_running_loop()
        items: asyncio.Queue[object] = asyncio.Queue()
        submitted: list[Job] = []

        def sink(item: object) -> None:
            try:
                loop.call_soon_threadsafe(items.put_nowait, item)
            except RuntimeError:  # the loop is closed: nobody reads this job any more
                for job in submitted:
                    job.cancel.set()

        job = await self._asubmit(loop, request, sink)
        if job is not None:
            submitted.append(job)
        if job is None:
            async for piece in super().astream(request):
                yield piece
            return
        try:
            while True:
                piece = _piece(await items.get())
                yield piece
                if piece.finish is not None:
                    return
        finally:
            job.cancel.set()  # a cancelled task or closed stream frees its row at the next step

    def _slot_stream(self, request: GenerateRequest[Sampling]) -> Iterator[Piece]:
        yield from self._slot_pieces(request)  # inside the generator, so its errors are mapped

    def _slot_pieces(self, request: GenerateRequest[Sampling]) -> list[Piece]:
        plan: BatchPlan
        index: int
        plan, index = request.extra[BATCH_SLOT]
        if self._executor() is None:
            return plan.pieces(index, lambda: self._run_plan(plan, request))
        return plan.pieces(index, lambda: call_on_device_thread(lambda _cancel: self._run_plan(plan, request)))

    def _produce(
        self, request: GenerateRequest[Sampling], emit: Callable[[Piece], None], cancel: threading.Event
    ) -> None:
        if request.extra.get(BATCH_SLOT) is not None:  # abatch(): computed here, in the async bridge's worker
            for piece in self._slot_pieces(request):
                emit(piece)
            return
        with self.hold() as bundle:
            ids, constraint = self._prepare(bundle, request)
            sampling = request.sampling
            if constraint is not None:
                sampling = sampling.model_copy(update={"constraint": constraint})
            budget = row_budget(bundle, len(ids), sampling.max_tokens)
            generate_rows(
                bundle,
                [ids],
                [budget],
                sampling=sampling,
                stops=request.stops,
                emit=lambda _row, piece: emit(piece),
                cancels=(cancel,),
            )

    def _run_plan(self, plan: BatchPlan, request: GenerateRequest[Sampling]) -> list[list[Piece] | BaseException]:
        prompt = request.prompt
        template = prompt.chat_template if isinstance(prompt, ChatPrompt) else None
        literal = prompt.literal if isinstance(prompt, ChatPrompt) else True
        with self.hold() as bundle:
            # Its own cancel flag: one consumer going away must not cut the other inputs' answers.
            cancel = threading.Event()
            conversations = [self._batch_conversation(bundle, prompt, c) for c in plan.conversations]
            return run_batch(
                bundle, conversations, request.sampling, request.stops, template, cancel=cancel, literal=literal
            )

    def _batch_conversation(
        self, bundle: HFBundle, prompt: Prompt, conversation: Sequence[ChatDict] | BaseException
    ) -> Sequence[ChatDict] | BaseException:
        """One batched conversation as the model sees it (tool history through the tool prompt, as alone)."""
        if isinstance(conversation, BaseException) or not isinstance(prompt, ChatPrompt):
            return conversation
        rewritten, _ = self._tool_prompt(bundle, dataclasses.replace(prompt, messages=conversation, tools=None))
        return rewritten.messages if isinstance(rewritten, ChatPrompt) else conversation

    # -- embedding ----------------------------------------------------------------------

    def sentence_config(self) -> SentenceConfig:
        """The checkpoint's sentence-transformers settings (pooling, normalize, window, prompts). Memoized."""
        if self._sentence_config is None:
            objects = self._objects is not None
            self._sentence_config = SentenceConfig() if objects else read_sentence_config(self.settings)
        return self._sentence_config

    def _embed_batches(
        self, step: Callable[[], AbstractContextManager[HFBundle]], request: EmbedRequest
    ) -> Iterator[tuple[Sequence[int], list[list[float]]]]:
        """Padded batches sorted by length through the base model, pooled (``embed.py``)."""
        return embed_batches(step, request, self.sentence_config())

    def _map_error(self, error: Exception, doing: str = "generating") -> LocalLLMError:
        if type(error).__name__ == "OutOfMemoryError":  # torch.OutOfMemoryError, without importing torch here
            lower = "batch_size" if doing == "embedding" else "max_tokens or batch_size"
            return GenerationError(
                f"the device ran out of memory while {doing} ({error}); lower {lower}, "
                "or load the model with a smaller dtype or quantization"
            )
        return GenerationError(f"transformers failed while {doing}: {type(error).__name__}: {error}")


def _piece(item: object) -> Piece:
    """What the scheduler sent a job: a piece, or the error to raise in the consumer."""
    if isinstance(item, BaseException):
        raise item
    if not isinstance(item, Piece):
        msg = f"the scheduler sent {type(item).__name__}, not a piece"
        raise GenerationError(msg)
    return item
