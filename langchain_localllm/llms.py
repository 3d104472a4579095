"""``LocalGGMLLLM``: a LangChain LLM over a local GGUF model, run by llama.cpp."""

from __future__ import annotations

import logging
import threading
from collections.abc import AsyncIterator, Iterator, Mapping
from typing import Any

from langchain_core.callbacks import AsyncCallbackManagerForLLMRun, CallbackManagerForLLMRun
from langchain_core.language_models import LangSmithParams
from langchain_core.language_models.llms import LLM
from langchain_core.outputs import Generation, GenerationChunk, LLMResult
from pydantic import ConfigDict, PrivateAttr, field_validator

from langchain_localllm._bridge import aiterate_in_thread
from langchain_localllm._llamacpp import LlamaModel, Piece, generate_pieces, tokenize_prompt
from langchain_localllm._llamacpp_base import LlamaCppLoadMixin
from langchain_localllm._llamacpp_sampling import LlamaCppSamplingMixin
from langchain_localllm._stop import merge_stops
from langchain_localllm._template import render_chat_template

__all__ = ["LocalGGMLLLM"]

logger = logging.getLogger("langchain_localllm")


class LocalGGMLLLM(LlamaCppSamplingMixin, LlamaCppLoadMixin, LLM):
    """A LangChain LLM over a local GGUF model run by llama.cpp (llama-cpp-python).

    The weights load on first use (or with ``load_on_init=True``) into a
    process-wide cache shared by every instance with the same file and load
    settings; calls never reload. By default the prompt is wrapped in the model's
    own chat template (``prompt_format="auto"``) and only generated text is returned.

    Setup:
        .. code-block:: bash

            pip install "langchain-localllm[llamacpp]"

    Example:
        .. code-block:: python

            from langchain_localllm import LocalGGMLLLM

            llm = LocalGGMLLLM(model_path="models/qwen2.5-0.5b-instruct-q8_0.gguf", temperature=0)
            print(llm.invoke("Rose is which type of flower?"))
            for chunk in llm.stream("Tell me a short story about a rose."):
                print(chunk, end="", flush=True)
    """

    model_config = ConfigDict(extra="forbid", protected_namespaces=())

    prompt_format: str = "auto"
    """How the prompt becomes model input. ``"auto"``: rendered as one user message with
    the GGUF's own chat template (raw if the file has none); ``"raw"``: as given; or a
    format string containing ``{prompt}``, e.g. ``"Q: {prompt} A: "``. Default: "auto"."""

    system_prompt: str | None = None
    """System message placed before the prompt in ``"auto"`` format. Default: None
    (the template's own default, if it has one)."""

    _warned_no_template: bool = PrivateAttr(default=False)

    @field_validator("prompt_format")
    @classmethod
    def _check_prompt_format(cls, value: str) -> str:
        if value not in {"auto", "raw"} and "{prompt}" not in value:
            msg = f"prompt_format must be 'auto', 'raw' or a format string containing '{{prompt}}', got {value!r}"
            raise ValueError(msg)
        return value

    @property
    def _llm_type(self) -> str:
        return "local-gguf-llamacpp"

    @property
    def _identifying_params(self) -> Mapping[str, Any]:
        return {
            "model_path": self.model_path,
            "repo_id": self.repo_id,
            "filename": self.filename,
            "revision": self.revision,
            "n_ctx": self.n_ctx,
            "n_gpu_layers": self.n_gpu_layers,
            "prompt_format": self.prompt_format,
            "system_prompt": self.system_prompt,
            "temperature": self.temperature,
            "top_p": self.top_p,
            "top_k": self.top_k,
            "min_p": self.min_p,
            "repeat_penalty": self.repeat_penalty,
            "max_tokens": self.max_tokens,
            "seed": self.seed,
            "stop": self.stop,
            "grammar": self.grammar,
            "json_schema": self.json_schema,
        }

    def _get_ls_params(self, stop: list[str] | None = None, **kwargs: Any) -> LangSmithParams:
        return self._ls_params("llm", str(kwargs.get("model") or self._model_name()), stop, kwargs)

    # -- prompt -------------------------------------------------------------------

    def _format_prompt(self, model: LlamaModel, prompt: str) -> str:
        if self.prompt_format == "raw":
            return prompt
        if self.prompt_format != "auto":
            return self.prompt_format.replace("{prompt}", prompt)
        template = model.info.chat_template
        if not template:
            if not self._warned_no_template:
                self._warned_no_template = True
                logger.info(
                    "%s has no chat template (tokenizer.chat_template); prompt_format='auto' "
                    "sends prompts raw. Set prompt_format to silence this.",
                    model.info.path,
                )
            return prompt
        messages = [{"role": "user", "content": prompt}]
        if self.system_prompt is not None:
            messages.insert(0, {"role": "system", "content": self.system_prompt})
        return render_chat_template(
            template, messages, add_generation_prompt=True, bos_token=model.bos_text, eos_token=model.eos_text
        )

    def get_num_tokens(self, text: str) -> int:
        """Count the tokens of ``text`` with the model's own tokenizer (loads the model)."""
        with self._use_model() as entry:
            return len(entry.model.llama.tokenize(text.encode("utf-8"), add_bos=False, special=True))

    # -- generation ---------------------------------------------------------------

    def _pieces(
        self, prompt: str, stop: list[str] | None, cancel: threading.Event | None, kwargs: dict[str, Any]
    ) -> Iterator[Piece]:
        sampling = self._sampling(kwargs)
        stops = merge_stops(self.stop, stop)
        with self._use_model() as entry:
            model = entry.model
            tokens = tokenize_prompt(model, self._format_prompt(model, prompt))
            yield from generate_pieces(model, tokens, sampling, stops, cancel)

    @staticmethod
    def _chunk(piece: Piece) -> GenerationChunk:
        info: dict[str, Any] | None = None
        if piece.info is not None or piece.logprobs is not None:
            info = dict(piece.info or {})
            if piece.logprobs is not None:
                info["logprobs"] = piece.logprobs
        return GenerationChunk(text=piece.text, generation_info=info)

    def _stream(
        self,
        prompt: str,
        stop: list[str] | None = None,
        run_manager: CallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> Iterator[GenerationChunk]:
        for piece in self._pieces(prompt, stop, None, kwargs):
            chunk = self._chunk(piece)
            if run_manager is not None:
                run_manager.on_llm_new_token(chunk.text, chunk=chunk)
            yield chunk

    async def _astream(
        self,
        prompt: str,
        stop: list[str] | None = None,
        run_manager: AsyncCallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> AsyncIterator[GenerationChunk]:
        pieces = aiterate_in_thread(lambda cancel: self._pieces(prompt, stop, cancel, kwargs))
        try:
            async for piece in pieces:
                chunk = self._chunk(piece)
                if run_manager is not None:
                    await run_manager.on_llm_new_token(chunk.text, chunk=chunk)
                yield chunk
        finally:
            await pieces.aclose()

    def _generate(
        self,
        prompts: list[str],
        stop: list[str] | None = None,
        run_manager: CallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> LLMResult:
        generations = []
        for prompt in prompts:
            acc = _Aggregate()
            for chunk in self._stream(prompt, stop, run_manager, **kwargs):
                acc.add(chunk)
            generations.append([acc.generation()])
        return self._result(generations)

    async def _agenerate(
        self,
        prompts: list[str],
        stop: list[str] | None = None,
        run_manager: AsyncCallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> LLMResult:
        generations = []
        for prompt in prompts:
            acc = _Aggregate()
            async for chunk in self._astream(prompt, stop, run_manager, **kwargs):
                acc.add(chunk)
            generations.append([acc.generation()])
        return self._result(generations)

    def _call(
        self,
        prompt: str,
        stop: list[str] | None = None,
        run_manager: CallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> str:
        return self._generate([prompt], stop, run_manager, **kwargs).generations[0][0].text

    async def _acall(
        self,
        prompt: str,
        stop: list[str] | None = None,
        run_manager: AsyncCallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> str:
        result = await self._agenerate([prompt], stop, run_manager, **kwargs)
        return result.generations[0][0].text

    def _result(self, generations: list[list[Generation]]) -> LLMResult:
        usage = {"prompt_tokens": 0, "completion_tokens": 0, "total_tokens": 0}
        for (generation,) in generations:
            info = generation.generation_info or {}
            for key in usage:
                usage[key] += int(info.get(key, 0))
        return LLMResult(generations=generations, llm_output={"token_usage": usage, "model_name": self._model_name()})


class _Aggregate:
    """Joins streamed chunks into one generation (linear, unlike repeated ``+``)."""

    __slots__ = ("info", "logprobs", "texts")

    def __init__(self) -> None:
        self.texts: list[str] = []
        self.info: dict[str, Any] = {}
        self.logprobs: list[Any] = []

    def add(self, chunk: GenerationChunk) -> None:
        self.texts.append(chunk.text)
        if chunk.generation_info:
            for key, value in chunk.generation_info.items():
                if key == "logprobs":
                    self.logprobs.extend(value)
                else:
                    self.info[key] = value

    def generation(self) -> Generation:
        info = dict(self.info)
        if self.logprobs:
            info["logprobs"] = self.logprobs
        return Generation(text="".join(self.texts), generation_info=info or None)
