"""The llama.cpp backend: a GGUF file behind the :class:`~langchain_localllm._core.backend.Backend` verbs."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import queue
import threading
from collections.abc import AsyncGenerator, Callable, Generator, Hashable, Iterator, Mapping, Sequence
from contextlib import AbstractContextManager
from pathlib import Path
from typing import Any, ClassVar

from langchain_localllm._backends.llamacpp.embed import embed_batches
from langchain_localllm._backends.llamacpp.generate import check_grammar, check_prompt, generate_pieces
from langchain_localllm._backends.llamacpp.gguf import check_model_file, file_identity
from langchain_localllm._backends.llamacpp.grammar import SchemaGrammars, wrap_call_grammar
from langchain_localllm._backends.llamacpp.load import (
    LlamaModel,
    llama_cpp_module,
    load_llama,
    native_logger,
    require_generative,
    tokenize,
    tokenize_prompt,
    with_bos,
)
from langchain_localllm._backends.llamacpp.scheduler import Job, Scheduler
from langchain_localllm._backends.llamacpp.sequence import make_sampler
from langchain_localllm._backends.llamacpp.settings import LoadSettings, Sampling, gguf_model_name
from langchain_localllm._core.backend import ChatPrompt, EmbedRequest, GenerateRequest, Prompt, PullBackend
from langchain_localllm._core.hub import forbid_hub_network, offline
from langchain_localllm._core.literal import prompt_ids
from langchain_localllm._core.messages import ChatDict, fold_system
from langchain_localllm._core.output import Piece
from langchain_localllm._core.template import render_chat_template
from langchain_localllm.errors import (
    ChatTemplateError,
    GenerationError,
    InvalidParameterError,
    LocalLLMError,
    ModelNotFoundError,
)

__all__ = ["LlamaCppBackend"]

logger = logging.getLogger("langchain_localllm")


class LlamaCppBackend(PullBackend[LlamaModel, Sampling]):
    """One GGUF model, loaded once per process through the shared cache, run by llama.cpp."""

    provider: ClassVar[str] = "llamacpp"

    def __init__(self, settings: LoadSettings, *, verbose: bool = False) -> None:
        """Make a backend for ``settings`` (nothing is loaded yet)."""
        self.settings: LoadSettings = settings
        self.verbose = verbose
        self._path: Path | None = None
        self._load_key = settings.load_key()
        self._grammars = SchemaGrammars()
        self._warned_no_template = False
        self._lock = threading.Lock()

    # -- identity and loading -----------------------------------------------------------

    def model_name(self) -> str:
        """``repo_id/filename``, or the file's name without ``.gguf``."""
        return gguf_model_name(self.settings)

    def model_file(self) -> Path:
        """The GGUF file (downloaded from the Hub only if allowed). Memoized."""
        with self._lock:
            if self._path is None:
                s = self.settings
                self._path = Path(s.model_path).expanduser() if s.model_path is not None else self._download()
            return self._path

    def _download(self) -> Path:
        from huggingface_hub import hf_hub_download  # noqa: PLC0415
        from huggingface_hub.errors import (  # noqa: PLC0415
            EntryNotFoundError,
            LocalEntryNotFoundError,
            RepositoryNotFoundError,
            RevisionNotFoundError,
        )

        s = self.settings
        assert s.repo_id is not None  # noqa: S101 - guaranteed by the field validator
        assert s.filename is not None  # noqa: S101
        no_downloads = offline(s.local_files_only)
        if no_downloads:
            forbid_hub_network()
        try:
            return Path(
                hf_hub_download(
                    repo_id=s.repo_id,
                    filename=s.filename,
                    revision=s.revision,
                    cache_dir=s.cache_dir,
                    local_files_only=no_downloads,
                )
            )
        except (LocalEntryNotFoundError, EntryNotFoundError, RepositoryNotFoundError, RevisionNotFoundError) as e:
            where = "in the local Hugging Face cache (downloads are disabled)" if no_downloads else "on the Hub"
            msg = (
                f"{s.filename!r} from {s.repo_id!r} was not found {where}: {e}. "
                "Check repo_id/filename, or download it first (huggingface-cli download "
                f"{s.repo_id} {s.filename}) and set model_path."
            )
            raise ModelNotFoundError(msg) from e

    def cache_key(self) -> Hashable:
        """File identity (real path, size, mtime) plus how it is loaded."""
        path = self.model_file()
        check_model_file(path)  # missing, a directory, a symlink loop, a pipe: a clear error, nothing opened
        return ("llama_cpp", file_identity(path), self._load_key)

    def _load_model(self) -> LlamaModel:
        if self.verbose:
            native_logger.setLevel(logging.DEBUG)
        return load_llama(self.model_file(), self.settings)

    # -- prompts ------------------------------------------------------------------------

    def _tokenize(self, model: LlamaModel, text: str) -> list[int]:
        tokens: list[int] = model.llama.tokenize(text.encode("utf-8"), add_bos=False, special=True)
        return tokens

    def _template(self, model: LlamaModel, override: str | None) -> str | None:
        return override or model.info.chat_template

    def _render(self, model: LlamaModel, prompt: Prompt) -> list[int]:
        require_generative(model)
        if not isinstance(prompt, ChatPrompt):
            return tokenize_prompt(model, prompt.text)
        template = self._template(model, prompt.chat_template)
        if not template:
            if prompt.raw_fallback is None:
                msg = (
                    f"{model.info.path} has no chat template (tokenizer.chat_template). Pass chat_template='...' "
                    "(a Jinja template), or use LocalGGMLLLM with prompt_format for raw prompts."
                )
                raise ChatTemplateError(msg)
            if not self._warned_no_template:
                self._warned_no_template = True
                logger.info(
                    "%s has no chat template (tokenizer.chat_template); prompt_format='auto' "
                    "sends prompts raw. Set prompt_format to silence this.",
                    model.info.path,
                )
            literal = prompt.literal  # the prompt is content: control text in it stays text
            return with_bos(model, tokenize(model, prompt.raw_fallback, special=not literal))
        variables: dict[str, Any] = {"bos_token": model.bos_text, "eos_token": model.eos_text}

        def render(messages: Sequence[ChatDict], tools: Sequence[Mapping[str, Any]] | None) -> str:
            return render_chat_template(template, messages, add_generation_prompt=True, tools=tools, **variables)

        def ids(messages: Sequence[ChatDict]) -> list[int]:
            return prompt_ids(
                render,
                messages,
                tools=prompt.tools,
                controls=model.controls,
                tokenize=lambda text, special: tokenize(model, text, special=special),
                literal=prompt.literal,
                name=str(model.info.path),
            )

        try:
            tokens = ids(prompt.messages)
        except ChatTemplateError:
            if not any(m.get("role") == "system" for m in prompt.messages):
                raise
            # A template that rejects a system role: fold the system text into the first user turn.
            tokens = ids(fold_system(prompt.messages))
        return with_bos(model, tokens)

    # -- generation ---------------------------------------------------------------------

    def _compile(self, schema: Mapping[str, Any], wrap: Callable[[str], str] | None) -> str:
        gbnf = self._grammars.gbnf(schema)
        return wrap_call_grammar(gbnf, wrap) if wrap is not None else gbnf

    def _constraint(self, model: LlamaModel, request: GenerateRequest[Sampling]) -> tuple[list[int], str | None]:
        """The prompt ids and the GBNF grammar of ``request`` (model held)."""
        sampling = request.sampling
        ids, grammar = self._prepare(model, request)
        if grammar is None:
            if request.json_schema is None and sampling.json_schema is not None:
                grammar = self._compile(sampling.json_schema, None)
            else:
                grammar = sampling.grammar
        elif sampling.grammar is not None and not (request.tools and request.tools.grammar):
            msg = "give grammar or json_schema, not both"
            raise InvalidParameterError(msg)
        return ids, grammar

    def _pieces(self, request: GenerateRequest[Sampling], cancel: threading.Event | None) -> Iterator[Piece]:
        step = self.stepper()  # the model's lock is held per step, never across a yield
        with step() as model:
            ids, grammar = self._constraint(model, request)
        yield from generate_pieces(
            step, ids, request.sampling, grammar_text=grammar, stops=request.stops, cancel=cancel
        )

    # -- continuous batching (max_parallel > 1) -------------------------------------------------

    @property
    def scheduled(self) -> bool:
        """Whether calls go through the model's scheduler (``max_parallel > 1``)."""
        return self.settings.max_parallel > 1

    def stream(self, request: GenerateRequest[Sampling]) -> Generator[Piece, None, None]:
        """Generate, blocking the caller between pieces (through the scheduler with ``max_parallel > 1``)."""
        if not self.scheduled:
            return super().stream(request)
        return self._mapped(self._scheduled_pieces(request))

    def astream(self, request: GenerateRequest[Sampling]) -> AsyncGenerator[Piece, None]:
        """Generate without blocking the event loop (the scheduler's pieces are awaited, no thread per call)."""
        if not self.scheduled:
            return super().astream(request)
        return self._scheduled_apieces(request)

    def stream_all(self, requests: Sequence[GenerateRequest[Sampling]]) -> Generator[tuple[int, Piece], None, None]:
        """Submit every request to the scheduler at once; yield ``(index, piece)`` as they come.

        The first error ends the stream (the other requests are cancelled). Needs ``max_parallel > 1``.
        """
        return self._mapped_pairs(self._scheduled_all(requests))

    def _submit(
        self, request: GenerateRequest[Sampling], sink: Callable[[object], None], abandoned: Callable[[], bool] | None
    ) -> Job:
        """Prepare ``request`` under the model's lock and hand it to the model's scheduler."""
        sampling = request.sampling
        step = self.stepper()
        with step() as model:
            ids, grammar_text = self._constraint(model, request)
            room = check_prompt(model, len(ids))
            llama_cpp = llama_cpp_module()
            grammar = check_grammar(llama_cpp, model, grammar_text) if grammar_text else None
            if model.scheduler is None:
                model.scheduler = Scheduler(model.batch, align=model.reuse_align, name=repr(self.model_name()))
            job = Job(
                prompt=list(ids),
                sampler=make_sampler(model, sampling, grammar),
                budget=room if sampling.max_tokens is None else min(sampling.max_tokens, room),
                stops=request.stops,
                sink=sink,
                pieces=model.pieces,
                eog=model.eog_ids,
                prefix_cache=sampling.prefix_cache,
                logprobs=sampling.logprobs,
                abandoned=abandoned,
                owner=model,
            )
            try:
                model.scheduler.submit(job)
            except BaseException:
                job.sampler.close()
                raise
        return job

    def _scheduled_pieces(self, request: GenerateRequest[Sampling]) -> Iterator[Piece]:
        items: queue.SimpleQueue[object] = queue.SimpleQueue()
        job = self._submit(request, items.put, None)
        try:
            while True:
                item = items.get()
                if isinstance(item, BaseException):
                    raise item
                assert isinstance(item, Piece)  # noqa: S101 - the scheduler sends pieces or errors
                yield item
                if item.finish is not None:
                    return
        finally:
            job.cancel.set()  # a closed or collected stream frees its slot at the next step

    def _scheduled_all(self, requests: Sequence[GenerateRequest[Sampling]]) -> Iterator[tuple[int, Piece]]:
        items: queue.SimpleQueue[tuple[int, object]] = queue.SimpleQueue()
        jobs: list[Job] = []
        try:
            for i, request in enumerate(requests):
                jobs.append(self._submit(request, functools.partial(_tagged, items.put, i), None))
            left = len(jobs)
            while left:
                i, item = items.get()
                if isinstance(item, BaseException):
                    raise item
                assert isinstance(item, Piece)  # noqa: S101
                yield i, item
                if item.finish is not None:
                    left -= 1
        finally:
            for job in jobs:
                job.cancel.set()

    def _mapped_pairs(self, pairs: Iterator[tuple[int, Piece]]) -> Generator[tuple[int, Piece], None, None]:
        try:
            yield from pairs
        except LocalLLMError:
            raise
        except Exception as e:  # mapped at the boundary, the cause chained
            raise self._map_error(e) from e

    async def _scheduled_apieces(self, request: GenerateRequest[Sampling]) -> AsyncGenerator[Piece, None]:
        loop = asyncio.get_running_loop()
        items: asyncio.Queue[object] = asyncio.Queue()
        consumer: list[asyncio.Task[Any] | None] = [asyncio.current_task()]

        def put(item: object) -> None:
            with contextlib.suppress(RuntimeError):  # the loop closed: the job is abandoned below
                loop.call_soon_threadsafe(items.put_nowait, item)

        def abandoned() -> bool:
            task = consumer[0]
            return loop.is_closed() or (task is not None and task.done())

        try:
            # Rendering and, on first use, loading run off the event loop (one hop per call, not per token).
            job = await loop.run_in_executor(None, self._submit, request, put, abandoned)
        except LocalLLMError:
            raise
        except Exception as e:  # mapped at the boundary, the cause chained
            raise self._map_error(e) from e
        try:
            while True:
                consumer[0] = asyncio.current_task()
                item = await items.get()
                if isinstance(item, BaseException):
                    raise item
                assert isinstance(item, Piece)  # noqa: S101
                yield item
                if item.finish is not None:
                    return
        finally:
            job.cancel.set()

    def _embed_batches(
        self, step: Callable[[], AbstractContextManager[LlamaModel]], request: EmbedRequest
    ) -> Iterator[tuple[Sequence[int], list[list[float]]]]:
        """Many texts per ``llama_decode`` on an embedding context over the same weights (``embed.py``)."""
        return embed_batches(step, request, self.settings.n_batch)

    def _map_error(self, error: Exception, doing: str = "generating") -> LocalLLMError:
        return GenerationError(f"llama.cpp failed while {doing}: {type(error).__name__}: {error}")


def _tagged(put: Callable[[tuple[int, object]], None], index: int, item: object) -> None:
    put((index, item))
