"""Embeddings with transformers: padded batches sorted by length, pooled as the checkpoint says.

The vectors come from the model the chat class loads (the same cache entry): the
hidden states of its base model (``model.base_model``: the decoder stack without the LM
head), or of its encoder for a seq2seq model. How they are pooled comes from the
checkpoint's sentence-transformers files when present (:func:`read_sentence_config`):
``modules.json`` → ``1_Pooling/config.json`` (the pooling mode, in sentence-transformers' current
``pooling_mode`` form or the legacy ``pooling_mode_*_token`` flags, and ``include_prompt``),
``2_Normalize`` (normalize),
``sentence_bert_config.json`` (``max_seq_length``) and ``config_sentence_transformers.json``
(the ``query``/``document`` prompts). Without them: mean pooling over the text's tokens, as
sentence-transformers itself does for a plain checkpoint.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Iterator, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from langchain_localllm._backends.transformers.load import HFBundle
from langchain_localllm._backends.transformers.settings import LoadSpec
from langchain_localllm._core.backend import EmbedRequest
from langchain_localllm._core.imports import import_optional
from langchain_localllm.errors import ContextWindowExceededError, InvalidParameterError, LocalLLMError

__all__ = ["SentenceConfig", "embed_batches", "pool", "read_sentence_config"]

logger = logging.getLogger("langchain_localllm")

DEFAULT_POOLING = "mean"
"""Pooling for a checkpoint without sentence-transformers files (sentence-transformers' own fallback)."""

_ST_MODES = {
    "pooling_mode_cls_token": "cls",
    "pooling_mode_mean_tokens": "mean",
    "pooling_mode_lasttoken": "last",
    "pooling_mode_max_tokens": "max",
    "pooling_mode_mean_sqrt_len_tokens": "mean_sqrt_len",
    "pooling_mode_weightedmean_tokens": "weightedmean",
}
_ST_NAMES = {"lasttoken": "last", "mean_sqrt_len_tokens": "mean_sqrt_len"}
"""sentence-transformers' ``pooling_mode`` names that differ from ours."""
_SUPPORTED = {"cls", "mean", "last", "max"}


@dataclass(frozen=True)
class SentenceConfig:
    """What a checkpoint's sentence-transformers files say (all None/empty without them)."""

    pooling: str | None = None
    normalize: bool = False
    max_seq_length: int | None = None
    prompts: dict[str, str] = field(default_factory=dict)
    include_prompt: bool = True
    """False: the instruction prefix's tokens are left out of the pooling (INSTRUCTOR-style models)."""


def _checkpoint_file(spec: LoadSpec, name: str) -> Path | None:
    """A file of the checkpoint if it is on disk (a local directory or the Hugging Face cache); never downloads."""
    try:
        source = spec.source()
    except LocalLLMError:
        return None
    if Path(source).is_dir():
        path = Path(source) / name
        return path if path.is_file() else None
    from huggingface_hub import try_to_load_from_cache  # noqa: PLC0415 - only for hub ids

    found = try_to_load_from_cache(source, name, cache_dir=spec.cache_dir, revision=spec.revision)
    return Path(found) if isinstance(found, str) else None


def _json(path: Path | None) -> Any:
    if path is None:
        return None
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        logger.warning("ignoring %s: not readable JSON", path)
        return None


def read_sentence_config(spec: LoadSpec) -> SentenceConfig:
    """The checkpoint's sentence-transformers settings (empty when it has no ``modules.json``)."""
    modules = _json(_checkpoint_file(spec, "modules.json"))
    if not isinstance(modules, list):
        return SentenceConfig()
    pooling: str | None = None
    normalize = False
    include_prompt = True
    for module in modules:
        if not isinstance(module, dict):
            continue
        kind = str(module.get("type", ""))
        if kind.endswith(".Pooling"):
            config = _json(_checkpoint_file(spec, f"{module.get('path', '')}/config.json".lstrip("/")))
            if isinstance(config, dict):
                pooling = _pooling_mode(config)
                include_prompt = config.get("include_prompt", True) is not False
        elif kind.endswith(".Normalize"):
            normalize = True
    bert = _json(_checkpoint_file(spec, "sentence_bert_config.json"))
    max_seq = bert.get("max_seq_length") if isinstance(bert, dict) else None
    extra = _json(_checkpoint_file(spec, "config_sentence_transformers.json"))
    prompts = extra.get("prompts") if isinstance(extra, dict) else None
    return SentenceConfig(
        pooling=pooling,
        normalize=normalize,
        max_seq_length=max_seq if isinstance(max_seq, int) and max_seq > 0 else None,
        prompts={str(k): str(v) for k, v in prompts.items()} if isinstance(prompts, dict) else {},
        include_prompt=include_prompt,
    )


def _pooling_mode(config: dict[str, Any]) -> str:
    """The pooling of a ``1_Pooling/config.json``, in our names (``"a+b"`` for a concatenation).

    sentence-transformers 5+ writes ``pooling_mode`` (a name or a list); earlier versions wrote
    one boolean per mode, and with none set pool by mean, as sentence-transformers still does.
    """
    mode = config.get("pooling_mode")
    if isinstance(mode, str | list | tuple) and mode:
        names = [mode] if isinstance(mode, str) else [str(m) for m in mode]
        return "+".join(_ST_NAMES.get(name, name) for name in names)
    modes = [name for key, name in _ST_MODES.items() if config.get(key)]
    return "+".join(modes) if modes else "mean"


def resolve_pooling(pooling: str, config: SentenceConfig, name: str) -> str:
    """``pooling``, or for ``"auto"`` the checkpoint's own (``mean`` without sentence-transformers files).

    Raises:
        InvalidParameterError: The checkpoint asks for a pooling mode this package does not implement.
    """
    if pooling != "auto":
        return pooling
    if config.pooling is None:
        return DEFAULT_POOLING
    if config.pooling not in _SUPPORTED:
        msg = (
            f"{name} pools with {config.pooling!r} (its 1_Pooling/config.json), which is not implemented; "
            "pass pooling='mean', 'cls' or 'last' to choose one"
        )
        raise InvalidParameterError(msg)
    return config.pooling


def window(bundle: HFBundle, config: SentenceConfig) -> int | None:
    """Most tokens per text: ``max_seq_length``, else the model's context window (and the tokenizer's limit)."""
    if config.max_seq_length:
        return config.max_seq_length
    limits = [bundle.context_window]
    model_max = getattr(bundle.tokenizer, "model_max_length", None)
    if isinstance(model_max, int) and 0 < model_max < 1_000_000:  # noqa: PLR2004 - "unbounded" sentinel
        limits.append(model_max)
    found = [n for n in limits if n]
    return min(found) if found else None


def pool(hidden: Any, mask: Any, mode: str) -> Any:
    """One vector per row of ``hidden`` (batch, tokens, dim) from the tokens ``mask`` keeps.

    ``cls`` is the first kept token (the first token, unless the prompt is left out), ``last`` the
    last kept one, ``mean``/``max`` over the kept ones.
    """
    torch = import_optional("torch")
    rows = torch.arange(hidden.shape[0], device=hidden.device)
    if mode == "cls":
        return hidden[rows, mask.to(torch.int).argmax(dim=1)]
    if mode == "last":
        last = mask.shape[1] - 1 - mask.flip(dims=(1,)).to(torch.int).argmax(dim=1)
        return hidden[rows, last]
    weights = mask.unsqueeze(-1).to(hidden.dtype)
    if mode == "max":
        return hidden.masked_fill(weights == 0, torch.finfo(hidden.dtype).min).max(dim=1).values
    return (hidden * weights).sum(dim=1) / weights.sum(dim=1).clamp(min=1e-9)


def _encoder(bundle: HFBundle) -> Any:
    """The module whose last hidden states are the token vectors (no LM head)."""
    model = bundle.model
    if bundle.is_seq2seq:
        return model.get_encoder()
    return getattr(model, "base_model", model)


def prompt_length(bundle: HFBundle, prefix: str) -> int:
    """Tokens of ``prefix`` at the start of a text, counted as sentence-transformers does.

    The prefix tokenized alone with the special tokens, less a closing special token (``[SEP]``,
    ``</s>``) when the tokenizer adds one; the opening one (``[CLS]``, BOS) counts, so it is
    left out of the pooling with the prompt.
    """
    if not prefix:
        return 0
    tokenizer = bundle.tokenizer
    ids = list(tokenizer(prefix, add_special_tokens=True)["input_ids"])
    special = set(getattr(tokenizer, "all_special_ids", []) or [])
    return len(ids) - 1 if ids and ids[-1] in special else len(ids)


def _token_ids(bundle: HFBundle, texts: Sequence[str], limit: int | None, *, truncate: bool) -> list[list[int]]:
    tokenizer = bundle.tokenizer
    ids: list[list[int]] = [list(row) for row in tokenizer(list(texts), add_special_tokens=True)["input_ids"]]
    if limit is None:
        return ids
    for i, row in enumerate(ids):
        if len(row) <= limit:
            continue
        if not truncate:
            msg = (
                f"text {i} has {len(row)} tokens, more than the {limit}-token window; shorten it, "
                "or set truncate=True to embed its first tokens"
            )
            raise ContextWindowExceededError(msg, prompt_tokens=len(row), context_window=limit)
        logger.debug("text %d has %d tokens: truncated to the %d-token window", i, len(row), limit)
        # The tokenizer's own truncation keeps the closing special tokens, as sentence-transformers does.
        ids[i] = list(tokenizer(texts[i], add_special_tokens=True, truncation=True, max_length=limit)["input_ids"])
    return ids


def forward(
    bundle: HFBundle, rows: Sequence[Sequence[int]], mode: str, *, normalize: bool, skip: int = 0
) -> list[list[float]]:
    """Pooled vectors of ``rows`` (token ids) in one right-padded forward pass.

    The first ``skip`` tokens of every row (an instruction prefix) are attended to but not pooled.
    """
    torch = import_optional("torch")
    width = max([1, *(len(r) for r in rows)])
    ids = torch.full((len(rows), width), bundle.pad_id, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, row in enumerate(rows):
        if row:
            ids[i, : len(row)] = torch.tensor(row, dtype=torch.long)
            mask[i, : len(row)] = 1
    ids, mask = ids.to(bundle.device), mask.to(bundle.device)
    with torch.inference_mode():
        out = _encoder(bundle)(input_ids=ids, attention_mask=mask)
        hidden = out[0] if isinstance(out, tuple) else out.last_hidden_state
        kept = mask
        if skip:
            kept = mask.clone()
            kept[:, :skip] = 0  # as sentence-transformers: a text that is all prompt pools to zeros
        vectors = pool(hidden.float(), kept, mode)
        if normalize:
            vectors = torch.nn.functional.normalize(vectors, p=2.0, dim=1)
    result: list[list[float]] = vectors.cpu().tolist()
    return result


def embed_batches(
    step: Callable[[], AbstractContextManager[HFBundle]], request: EmbedRequest, config: SentenceConfig
) -> Iterator[tuple[Sequence[int], list[list[float]]]]:
    """Embed ``request.texts`` longest first in padded batches of ``batch_size`` (the model held per batch)."""
    with step() as bundle:
        mode = resolve_pooling(request.pooling, config, bundle.name)
        texts = [request.prefix + text for text in request.texts]
        rows = _token_ids(bundle, texts, window(bundle, config), truncate=request.truncate)
        skip = 0 if config.include_prompt else prompt_length(bundle, request.prefix)
    order = sorted(range(len(rows)), key=lambda i: len(rows[i]), reverse=True)
    for start in range(0, len(order), request.batch_size):
        indices = order[start : start + request.batch_size]
        with step() as bundle:
            vectors = forward(bundle, [rows[i] for i in indices], mode, normalize=request.normalize, skip=skip)
        yield indices, vectors
