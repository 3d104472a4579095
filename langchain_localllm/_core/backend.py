"""The one interface between the LangChain classes and the backends.

The classes (``LocalGGMLLLM``, ``LocalGGMLChatModel``, ``HFLocalChatModel``) keep their
pydantic fields and turn a LangChain call into a :class:`GenerateRequest`; a backend
turns the request into :class:`~langchain_localllm._core.output.Piece` objects. The
embedding classes turn a call into an :class:`EmbedRequest`; ``embed`` turns it into one
vector per text. The
classes never see how a model is loaded, locked, rendered or run — like httpx's
clients over ``BaseTransport.handle_request``.

Every backend implements :class:`Backend`. :class:`BaseBackend` gives the shared part
(the process-wide cache, the lock per model, tool-plan resolution, error mapping at
the boundary) and two shapes of token loop:

* :class:`PullBackend`: generation is a Python iterator (llama.cpp). ``stream`` runs it
  in the caller's thread; ``astream`` in one worker thread.
* :class:`PushBackend`: generation calls back with each token from inside a blocking
  native call (transformers' ``generate``). ``stream`` and ``astream`` both run it in
  one worker (or the CUDA worker thread) behind one queue.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import threading
from abc import ABC, abstractmethod
from collections.abc import AsyncGenerator, Callable, Generator, Hashable, Iterator, Mapping, Sequence
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass, field
from typing import Any, ClassVar, Generic, Literal, Protocol, TypeVar

from langchain_localllm._core.bridge import Cancelled, aiterate_in_thread, iterate_in_thread, pull
from langchain_localllm._core.cache import LoadedModel, model_cache
from langchain_localllm._core.messages import ChatDict
from langchain_localllm._core.output import Piece
from langchain_localllm._core.settings import Settings
from langchain_localllm._core.toolprompt import (
    PROBE_MESSAGES,
    ToolPromptMode,
    fallback_messages,
    has_tool_history,
    template_ignores_tools,
    warn_ignored_tools,
)
from langchain_localllm._core.tools import ToolPlan
from langchain_localllm.errors import GenerationError, LocalLLMError, MissingDependencyError, ModelLoadError

__all__ = [
    "Backend",
    "BaseBackend",
    "ChatPrompt",
    "EmbedRequest",
    "GenerateRequest",
    "Prompt",
    "PullBackend",
    "PushBackend",
    "TextPrompt",
]

M = TypeVar("M")
"""The backend's loaded-model type."""
S = TypeVar("S", bound=Settings)
"""The backend's sampling settings."""
T = TypeVar("T")


@dataclass(frozen=True)
class ChatPrompt:
    """Messages to render with the model's chat template."""

    messages: Sequence[ChatDict]
    tools: Sequence[Mapping[str, Any]] | None = None
    """Tool schemas the template renders (None: no tools in the prompt)."""
    chat_template: str | None = None
    """A template used instead of the model's own."""
    raw_fallback: str | None = None
    """Text sent as-is when the model has no template (``LocalGGMLLLM``'s ``"auto"``); None: an error."""
    literal: bool = True
    """Contents are literal text: control-token strings in them never become control tokens."""
    tool_prompt: ToolPromptMode = "auto"
    """How tools and tool history reach the prompt (see :mod:`~langchain_localllm._core.toolprompt`)."""


@dataclass(frozen=True)
class TextPrompt:
    """Model input given as text (special tokens in it are parsed; BOS added once)."""

    text: str


Prompt = ChatPrompt | TextPrompt


@dataclass
class GenerateRequest(Generic[S]):
    """Everything one generation needs, built by a LangChain class from its fields and call options."""

    prompt: Prompt
    sampling: S
    stops: Sequence[str] = ()
    tools: ToolPlan | None = None
    """Bound tools: the backend picks the parser from the template and compiles a forced call."""
    json_schema: Mapping[str, Any] | None = None
    """A schema the answer must match (constrained decoding)."""
    extra: dict[str, Any] = field(default_factory=dict)
    """Backend-specific request data (e.g. a transformers batch slot)."""


Pooling = Literal["auto", "mean", "cls", "last"]
"""How token vectors become one text vector; ``"auto"``: what the model's own files say."""


@dataclass(frozen=True)
class EmbedRequest:
    """Texts to embed, with how (built by an embedding class from its fields)."""

    texts: Sequence[str]
    """The texts, without the instruction prefix."""
    prefix: str = ""
    """Instruction put before every text (``"query: "``...); a checkpoint may exclude its tokens
    from pooling (sentence-transformers ``include_prompt: false``)."""
    pooling: Pooling = "auto"
    normalize: bool = True
    """L2-normalize each vector."""
    truncate: bool = True
    """Cut a text longer than the model's window to the window (False: ContextWindowExceededError)."""
    batch_size: int = 32
    """Most texts per forward pass."""
    progress: bool = False
    """Show a tqdm progress bar over the texts."""


class Backend(Protocol[S]):
    """What every backend does, with the same verbs."""

    provider: ClassVar[str]

    def model_name(self) -> str:
        """The name reported in metadata."""
        ...

    def cache_key(self) -> Hashable:
        """The key of the loaded model in the process-wide cache (same key, same weights)."""
        ...

    def load(self) -> None:
        """Load the model now (it otherwise loads on first use)."""
        ...

    def unload(self) -> bool:
        """Evict the model from the cache; whether it was loaded."""
        ...

    def count_tokens(self, text: str) -> int:
        """Tokens of ``text`` with the model's own tokenizer."""
        ...

    def token_ids(self, text: str) -> list[int]:
        """The ids of ``text`` with the model's own tokenizer."""
        ...

    def render(self, prompt: Prompt) -> list[int]:
        """The prompt token ids the model would see."""
        ...

    def stream(self, request: GenerateRequest[S]) -> Generator[Piece, None, None]:
        """Generate, blocking the caller between pieces."""
        ...

    def astream(self, request: GenerateRequest[S]) -> AsyncGenerator[Piece, None]:
        """Generate without blocking the event loop."""
        ...

    def embed(self, request: EmbedRequest) -> list[list[float]]:
        """One vector per text, in order (batched; the model lock is held per batch)."""
        ...


class BaseBackend(ABC, Generic[M, S]):
    """The shared part of every backend (see the module docstring)."""

    provider: ClassVar[str]
    settings: Settings
    """The load settings this backend was made for (a change makes a new backend)."""

    # -- what each backend provides -------------------------------------------------

    @abstractmethod
    def model_name(self) -> str:
        """The name reported in metadata."""

    @abstractmethod
    def cache_key(self) -> Hashable:
        """The key of the loaded model in the process-wide cache."""

    @abstractmethod
    def _load_model(self) -> M:
        """Load the weights (called at most once per key by the cache)."""

    @abstractmethod
    def _tokenize(self, model: M, text: str) -> list[int]:
        """Token ids of ``text`` (for counting)."""

    @abstractmethod
    def _template(self, model: M, override: str | None) -> str | None:
        """The chat template in use (``override`` or the model's own)."""

    @abstractmethod
    def _render(self, model: M, prompt: Prompt) -> list[int]:
        """Prompt token ids for ``prompt``."""

    @abstractmethod
    def _compile(self, schema: Mapping[str, Any], wrap: Callable[[str], str] | None) -> str:
        """The backend's constraint for ``schema``; with ``wrap``, for one tool call in that syntax."""

    @abstractmethod
    def _map_error(self, error: Exception, doing: str = "generating") -> LocalLLMError:
        """The package error for a backend exception raised while ``doing`` (generating, embedding)."""

    @abstractmethod
    def _embed_batches(
        self, step: Callable[[], AbstractContextManager[M]], request: EmbedRequest
    ) -> Iterator[tuple[Sequence[int], list[list[float]]]]:
        """Embed ``request.texts`` batch by batch: (indices into the texts, their vectors) per batch.

        Vectors come pooled and, with ``request.normalize``, L2-normalized.

        Each batch runs inside one ``step()`` (the model and its lock held for that batch only).
        """

    # -- shared ---------------------------------------------------------------------

    @contextmanager
    def hold(self) -> Iterator[M]:
        """Hold the loaded model (loading it once per process) and its lock."""
        with model_cache.use(self.cache_key(), self._checked_load) as entry:
            yield entry.model

    def stepper(self) -> Callable[[], AbstractContextManager[M]]:
        """A context manager factory holding the model and its lock for one step of one generation.

        The first step loads the model if needed; the later ones reuse that entry and
        raise :class:`~langchain_localllm.errors.GenerationError` if the model was
        unloaded in between. A generation that takes the lock per step instead of for
        its whole length never blocks other calls while its consumer is away.
        """
        held: list[LoadedModel[M]] = []

        @contextmanager
        def step() -> Iterator[M]:
            if held:
                entry = held[0]
                entry.lock.acquire()
                if entry.closed:
                    entry.lock.release()
                    msg = (
                        f"{self.model_name()!r} was unloaded while this generation was paused; "
                        "call the model again (it reloads)"
                    )
                    raise GenerationError(msg)
            else:
                entry = model_cache.acquire(self.cache_key(), self._checked_load)
                held.append(entry)
            try:
                yield entry.model
            finally:
                entry.lock.release()

        return step

    def _checked_load(self) -> M:
        try:
            return self._load_model()
        except LocalLLMError:
            raise
        except Exception as e:  # mapped at the boundary: every load failure is in the error tree
            msg = f"{self.provider} could not load {self.model_name()!r}: {type(e).__name__}: {e}"
            raise ModelLoadError(msg) from e

    def load(self) -> None:
        """Load the model now."""
        with self.hold():
            pass

    def unload(self) -> bool:
        """Evict the model from the cache (affects every instance sharing it); whether it was loaded."""
        try:
            key = self.cache_key()
        except LocalLLMError:  # e.g. the file is gone: then nothing of it can be loaded
            return False
        return model_cache.evict(key)

    def count_tokens(self, text: str) -> int:
        """Tokens of ``text`` with the model's own tokenizer (loads the model)."""
        return len(self.token_ids(text))

    def token_ids(self, text: str) -> list[int]:
        """The ids of ``text`` with the model's own tokenizer (loads the model)."""
        with self.hold() as model:
            return self._tokenize(model, text)

    def render(self, prompt: Prompt) -> list[int]:
        """The prompt token ids the model would see (loads the model)."""
        with self.hold() as model:
            return self._render(model, self._tool_prompt(model, prompt)[0])

    def embed(self, request: EmbedRequest) -> list[list[float]]:
        """One vector per text, in order; the model's lock is held per batch, not for the whole call."""
        if not request.texts:
            return []
        vectors: list[list[float]] = [[] for _ in request.texts]
        bar = _progress_bar(len(request.texts)) if request.progress else None
        try:
            for indices, batch in self._mapped(self._embed_batches(self.stepper(), request), "embedding"):
                for i, vector in zip(indices, batch, strict=True):
                    vectors[i] = vector
                if bar is not None:
                    bar.update(len(indices))
        finally:
            if bar is not None:
                bar.close()
        return vectors

    def _tool_prompt(self, model: M, prompt: Prompt) -> tuple[Prompt, bool]:
        """``prompt`` with the package's tool prompt when it is used, and whether it is (model held).

        Used with ``tool_prompt="fallback"``, or with ``"auto"`` when the template renders the
        same prompt with and without tools; only for prompts with tools or tool history.
        """
        if not isinstance(prompt, ChatPrompt) or not (prompt.tools or has_tool_history(prompt.messages)):
            return prompt, False
        if prompt.tool_prompt == "template" and not prompt.tools:
            return prompt, False
        use = prompt.tool_prompt == "fallback"
        if not use:
            template = self._template(model, prompt.chat_template)
            key = (type(self).__name__, template)
            probe = dataclasses.replace(prompt, messages=PROBE_MESSAGES, tool_prompt="template")

            def render(tools: Sequence[Mapping[str, Any]] | None) -> list[int]:
                return self._render(model, dataclasses.replace(probe, tools=tools))

            if template_ignores_tools(key, render):
                if prompt.tools:
                    warn_ignored_tools(key, prompt.tool_prompt, repr(self.model_name()))
                use = prompt.tool_prompt == "auto"
        if not use:
            return prompt, False
        messages = fallback_messages(prompt.messages, prompt.tools)
        return dataclasses.replace(prompt, messages=messages, tools=None), True

    def _prepare(self, model: M, request: GenerateRequest[S]) -> tuple[list[int], str | None]:
        """Resolve tools and schema into a constraint, and render the prompt (model held)."""
        constraint = None
        tools = request.tools
        prompt, fallback = self._tool_prompt(model, request.prompt)
        if tools is not None and tools.active:
            override = prompt.chat_template if isinstance(prompt, ChatPrompt) else None
            tools.resolve(
                self._template(model, override),
                lambda schema, parser: self._compile(schema, parser.wrap),
                fallback=fallback,
            )
            constraint = tools.grammar
        if constraint is None and request.json_schema is not None:
            constraint = self._compile(request.json_schema, None)
        return self._render(model, prompt), constraint

    def _mapped(self, items: Iterator[T], doing: str = "generating") -> Generator[T, None, None]:
        """``items`` with backend exceptions mapped into the error tree."""
        try:
            yield from items
        except (LocalLLMError, Cancelled):
            raise
        except Exception as e:  # mapped at the boundary, the cause chained
            raise self._map_error(e, doing) from e

    @abstractmethod
    def stream(self, request: GenerateRequest[S]) -> Generator[Piece, None, None]:
        """Generate, blocking the caller between pieces."""

    @abstractmethod
    def astream(self, request: GenerateRequest[S]) -> AsyncGenerator[Piece, None]:
        """Generate without blocking the event loop."""


class PullBackend(BaseBackend[M, S]):
    """A backend whose token loop is a Python iterator."""

    @abstractmethod
    def _pieces(self, request: GenerateRequest[S], cancel: threading.Event | None) -> Iterator[Piece]:
        """The token loop (holds the model while it runs; stops soon after ``cancel`` is set)."""

    def stream(self, request: GenerateRequest[S]) -> Generator[Piece, None, None]:
        """Generate in the caller's thread."""
        return self._mapped(self._pieces(request, None))

    def astream(self, request: GenerateRequest[S]) -> AsyncGenerator[Piece, None]:
        """Generate in one worker thread, handed to the event loop piece by piece."""
        return aiterate_in_thread(pull(lambda cancel: self._mapped(self._pieces(request, cancel))))


class PushBackend(BaseBackend[M, S]):
    """A backend whose generation calls back with each piece from inside a blocking call."""

    @abstractmethod
    def _produce(self, request: GenerateRequest[S], emit: Callable[[Piece], None], cancel: threading.Event) -> None:
        """Run one generation, calling ``emit`` per piece (holds the model while it runs)."""

    def _executor(self) -> concurrent.futures.Executor | None:
        """Where generation runs: None for a new thread per call, or a long-lived executor."""
        return None

    def _producer(self, request: GenerateRequest[S]) -> Callable[[Callable[[Piece], None], threading.Event], None]:
        def produce(emit: Callable[[Piece], None], cancel: threading.Event) -> None:
            try:
                self._produce(request, emit, cancel)
            except (LocalLLMError, Cancelled):
                raise
            except Exception as e:  # mapped at the boundary, the cause chained
                raise self._map_error(e) from e

        return produce

    def stream(self, request: GenerateRequest[S]) -> Generator[Piece, None, None]:
        """Generate in one worker; the caller reads pieces from one queue."""
        return iterate_in_thread(self._producer(request), name="langchain-localllm-generate", executor=self._executor())

    def astream(self, request: GenerateRequest[S]) -> AsyncGenerator[Piece, None]:
        """Generate in one worker; the event loop reads pieces from one queue."""
        return aiterate_in_thread(
            self._producer(request), name="langchain-localllm-generate", executor=self._executor()
        )


def _progress_bar(total: int) -> Any:
    """A tqdm bar over ``total`` texts (``show_progress=True``)."""
    try:
        from tqdm.auto import tqdm  # noqa: PLC0415 - optional, only for the progress bar
    except ImportError as e:
        msg = "show_progress=True needs tqdm, which is not installed. Install it with: pip install tqdm"
        raise MissingDependencyError(msg, name="tqdm") from e
    return tqdm(total=total, desc="Embedding", unit="text")
