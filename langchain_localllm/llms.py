"""``LocalGGMLLLM``: a LangChain LLM over a local GGUF model, run by llama.cpp."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Coroutine, Iterator, Mapping
from contextlib import aclosing, closing
from typing import Any, ClassVar

from langchain_core.callbacks import AsyncCallbackManagerForLLMRun, CallbackManagerForLLMRun
from langchain_core.language_models import LanguageModelInput
from langchain_core.language_models.llms import LLM
from langchain_core.outputs import Generation, GenerationChunk, LLMResult
from langchain_core.prompt_values import PromptValue
from pydantic import ConfigDict, field_validator

from langchain_localllm._backends.llamacpp.backend import LlamaCppBackend
from langchain_localllm._backends.llamacpp.model import LlamaCppModel
from langchain_localllm._core.backend import ChatPrompt, GenerateRequest, Prompt, TextPrompt
from langchain_localllm._core.messages import refuse_bytes
from langchain_localllm._core.output import ChunkAggregate, llm_chunk
from langchain_localllm._core.stop import merge_stops

__all__ = ["LocalGGMLLLM"]

logger = logging.getLogger("langchain_localllm")


class LocalGGMLLLM(LlamaCppModel, LLM):  # type: ignore[misc] # pydantic plugin: synthesized model_construct
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

    model_config = ConfigDict(extra="forbid", protected_namespaces=(), allow_inf_nan=False)
    _ls_model_type: ClassVar[str] = "llm"

    prompt_format: str = "auto"
    """How the prompt becomes model input. ``"auto"``: rendered as one user message with
    the GGUF's own chat template (raw if the file has none); ``"raw"``: as given; or a
    format string containing ``{prompt}``, e.g. ``"Q: {prompt} A: "``. Default: "auto"."""

    system_prompt: str | None = None
    """System message placed before the prompt in ``"auto"`` format. Default: None
    (the template's own default, if it has one)."""

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

    def _convert_input(self, model_input: LanguageModelInput) -> PromptValue:
        refuse_bytes(model_input)
        return super()._convert_input(model_input)

    # -- generation ---------------------------------------------------------------

    def _prompt(self, prompt: str) -> Prompt:
        if self.prompt_format == "raw":
            return TextPrompt(prompt)
        if self.prompt_format != "auto":
            return TextPrompt(self.prompt_format.replace("{prompt}", prompt))
        messages = [{"role": "user", "content": prompt}]
        if self.system_prompt is not None:
            messages.insert(0, {"role": "system", "content": self.system_prompt})
        return ChatPrompt(messages, raw_fallback=prompt, literal=not self.allow_control_tokens_in_content)

    def _request(self, prompt: str, stop: list[str] | None, kwargs: dict[str, Any]) -> GenerateRequest[Any]:
        return GenerateRequest(self._prompt(prompt), self._sampling(kwargs), merge_stops(self.stop, stop))

    def _stream(
        self,
        prompt: str,
        stop: list[str] | None = None,
        run_manager: CallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> Iterator[GenerationChunk]:
        request = self._request(prompt, stop, kwargs)
        with closing(self._backend().stream(request)) as pieces:
            for piece in pieces:
                chunk = llm_chunk(piece)
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
        request = self._request(prompt, stop, kwargs)
        async with aclosing(self._backend().astream(request)) as pieces:
            async for piece in pieces:
                chunk = llm_chunk(piece)
                if run_manager is not None:
                    await run_manager.on_llm_new_token(chunk.text, chunk=chunk)
                yield chunk

    def _generate(
        self,
        prompts: list[str],
        stop: list[str] | None = None,
        run_manager: CallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> LLMResult:
        backend = self._backend()
        if len(prompts) > 1 and isinstance(backend, LlamaCppBackend) and backend.scheduled:
            return self._generate_together(backend, prompts, stop, run_manager, kwargs)
        generations = []
        for prompt in prompts:
            acc = ChunkAggregate()
            for chunk in self._stream(prompt, stop, run_manager, **kwargs):
                acc.add(chunk)
            generations.append([acc.generation()])
        return self._result(generations)

    def _generate_together(
        self,
        backend: LlamaCppBackend,
        prompts: list[str],
        stop: list[str] | None,
        run_manager: CallbackManagerForLLMRun | None,
        kwargs: dict[str, Any],
    ) -> LLMResult:
        """Every prompt submitted to the model's scheduler at once (``max_parallel > 1``).

        The callback sees each chunk as it is generated, so chunks of different prompts interleave.
        """
        requests = [self._request(prompt, stop, kwargs) for prompt in prompts]
        accs = [ChunkAggregate() for _ in prompts]
        with closing(backend.stream_all(requests)) as pairs:
            for i, piece in pairs:
                chunk = llm_chunk(piece)
                if run_manager is not None:
                    run_manager.on_llm_new_token(chunk.text, chunk=chunk)
                accs[i].add(chunk)
        return self._result([[acc.generation()] for acc in accs])

    async def _agenerate(
        self,
        prompts: list[str],
        stop: list[str] | None = None,
        run_manager: AsyncCallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> LLMResult:
        async def collect(prompt: str) -> Generation:
            acc = ChunkAggregate()
            async for chunk in self._astream(prompt, stop, run_manager, **kwargs):
                acc.add(chunk)
            return acc.generation()

        backend = self._backend()
        if len(prompts) > 1 and isinstance(backend, LlamaCppBackend) and backend.scheduled:
            # All at once: the scheduler batches them (a failure cancels the others).
            return self._result([[g] for g in await _gather([collect(p) for p in prompts])])
        return self._result([[await collect(prompt)] for prompt in prompts])

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
        model_name = self._model_label({})
        output = {"token_usage": usage, "model_name": model_name, "model_provider": self._provider}
        return LLMResult(generations=generations, llm_output=output)


async def _gather(coroutines: list[Coroutine[Any, Any, Generation]]) -> list[Generation]:
    """Run ``coroutines`` together; the first failure cancels the rest and is raised."""
    tasks = [asyncio.ensure_future(c) for c in coroutines]
    try:
        return list(await asyncio.gather(*tasks))
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
