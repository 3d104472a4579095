"""Embeddings with transformers: padded batches sorted by length, pooled as the checkpoint says.

The vectors come from the model the chat class loads (the same cache entry): the
hidden states of its base model (``model.base_model``: the decoder stack without the LM
head), or of its encoder for a seq2seq model. How they are pooled comes from the
checkpoint's sentence-transformers files when present (:func:`read_sentence_config`):
``modules.json`` → ``1_Pooling/config.json`` (the pooling mode), ``2_Normalize`` (normalize),
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
_SUPPORTED = {"cls", "mean", "last", "max"}


@dataclass(frozen=True)
class SentenceConfig:
    """What a checkpoint's sentence-transformers files say (all None/empty without them)."""

    pooling: str | None = None
    normalize: bool = False
    max_seq_length: int | None = None
    prompts: dict[str, str] = field(default_factory=dict)


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
    for module in modules:
        if not isinstance(module, dict):
            continue
        kind = str(module.get("type", ""))
        if kind.endswith(".Pooling"):
            config = _json(_checkpoint_file(spec, f"{module.get('path', '')}/config.json".lstrip("/")))
            if isinstance(config, dict):
                modes = [mode for key, mode in _ST_MODES.items() if config.get(key)]
                pooling = "+".join(modes) if modes else None
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
    )


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
    """One vector per row of ``hidden`` (batch, tokens, dim) from its unpadded tokens (right padding)."""
    torch = import_optional("torch")
    if mode == "cls":
        return hidden[:, 0]
    if mode == "last":
        last = mask.sum(dim=1) - 1
        return hidden[torch.arange(hidden.shape[0], device=hidden.device), last.clamp(min=0)]
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


def forward(bundle: HFBundle, rows: Sequence[Sequence[int]], mode: str, *, normalize: bool) -> list[list[float]]:
    """Pooled vectors of ``rows`` (token ids) in one right-padded forward pass."""
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
        vectors = pool(hidden.float(), mask, mode)
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
        rows = _token_ids(bundle, request.texts, window(bundle, config), truncate=request.truncate)
    order = sorted(range(len(rows)), key=lambda i: len(rows[i]), reverse=True)
    for start in range(0, len(order), request.batch_size):
        indices = order[start : start + request.batch_size]
        with step() as bundle:
            vectors = forward(bundle, [rows[i] for i in indices], mode, normalize=request.normalize)
        yield indices, vectors
