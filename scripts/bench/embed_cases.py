"""Embedding comparisons (14a GGUF, 14b HF; numbered after issue 14): ``embed_documents`` of 256 mixed-length texts.

Each side embeds the same 256 texts: ours batched (the defaults), ours one text per forward
(``batch_size=1``, the same code path otherwise), and the peer package on the same model
(langchain-community's ``LlamaCppEmbeddings`` on the same GGUF; langchain-huggingface's
``HuggingFaceEmbeddings``, i.e. sentence-transformers, on the same HF directory). Every side
keeps its model loaded across repeats, so only embedding is timed.
"""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any

from langchain_localllm import HFLocalEmbeddings, LocalGGMLEmbeddings
from scripts.bench.harness import Comparison, Goal, interleave, timed

N_TEXTS = 256
WORDS = [
    *("rose", "tulip", "lily", "daisy", "orchid", "peony", "iris", "violet", "garden", "vase", "bouquet"),
    *("stem", "petal", "water", "sun", "shop", "order", "delivery", "fresh", "wilted", "red", "white"),
    *("pink", "customer", "price", "week", "spring", "ribbon"),
]
PHRASES = ["玫瑰是什么类型的花？", "满天星和绿叶", "Keep the stems in cold water.", "Delivered on Monday."]


def mixed_texts(n: int = N_TEXTS, seed: int = 0) -> list[str]:
    """``n`` texts from a few words to a long paragraph (lengths drawn log-uniformly, 3 to 200 words)."""
    rng = random.Random(seed)
    texts = []
    for _ in range(n):
        n_words = round(3 * (200 / 3) ** rng.random())
        words = [rng.choice(WORDS) for _ in range(n_words)]
        if rng.random() < 0.3:
            words.insert(rng.randrange(len(words) + 1), rng.choice(PHRASES))
        texts.append(" ".join(words).capitalize() + ".")
    return texts


def _side(fn: Any, texts: list[str]) -> Any:
    def run() -> float:
        seconds, vectors = timed(lambda: fn(texts))
        if len(vectors) != len(texts):
            raise RuntimeError(f"{len(vectors)} vectors for {len(texts)} texts")
        return seconds

    return run


def case_embed_gguf(gguf: Path, repeats: int) -> Comparison:
    texts = mixed_texts()
    comp = Comparison("14a", f"embed_documents of {len(texts)} mixed-length texts, GGUF (llama.cpp)")
    ours = LocalGGMLEmbeddings(model_path=str(gguf))
    alone = LocalGGMLEmbeddings(model_path=str(gguf), batch_size=1)
    ours.load()
    with ours._backend().hold() as model:
        n_tokens = sum(len(model.llama.tokenize(t.encode())) for t in texts)
    comp.notes.append(f"{n_tokens} tokens in all ({min(map(len, texts))}-{max(map(len, texts))} characters a text)")
    sides = {
        "ours (batched)": _side(ours.embed_documents, texts),
        "ours (batch_size=1)": _side(alone.embed_documents, texts),
    }
    try:
        import llama_cpp
        from langchain_community.embeddings import LlamaCppEmbeddings
    except ImportError as e:
        comp.notes.append(f"langchain-community not installed ({e}): no peer side")
    else:
        defaults = LlamaCppEmbeddings(model_path=str(gguf), verbose=False)
        got = len(defaults.embed_documents(texts[:8]))
        comp.notes.append(
            f"LlamaCppEmbeddings with its defaults returned {got} vectors for 8 texts (the GGUF names no pooling "
            "type: one vector per token, flattened); timed below with pooling_type=MEAN on its Llama"
        )
        del defaults
        client = llama_cpp.Llama(
            str(gguf),
            embedding=True,
            pooling_type=llama_cpp.LLAMA_POOLING_TYPE_MEAN,
            n_ctx=4096,
            n_batch=512,
            verbose=False,
        )
        peer = LlamaCppEmbeddings(model_path=str(gguf), client=client)
        sides["langchain-community LlamaCppEmbeddings"] = _side(peer.embed_documents, texts)
        # The hardware's ceiling for batching: llama-cpp-python itself, one text per call
        # (LlamaCppEmbeddings above is its batched Llama.embed).
        sides["raw llama-cpp-python, one text per embed()"] = _side(lambda ts: [client.embed(t) for t in ts], texts)
    stats = interleave(sides, repeats=repeats)
    comp.sides.extend(stats.values())
    base = stats["ours (batched)"].median
    comp.goals.append(Goal("one-at-a-time / batched", stats["ours (batch_size=1)"].median / base, 4.0))
    peer_stats = stats.get("langchain-community LlamaCppEmbeddings")
    if peer_stats is not None:
        comp.goals.append(Goal("LlamaCppEmbeddings / ours", peer_stats.median / base, 3.0))
        raw_one = stats["raw llama-cpp-python, one text per embed()"].median
        comp.notes.append(
            f"ceiling: raw llama-cpp-python one text per call / its batched embed = {raw_one / peer_stats.median:.2f}x "
            "(what batching can give on this machine; information, no goal)"
        )
    comp.notes.append(f"ours: {n_tokens / base:.0f} tokens/s")
    short = [" ".join(t.split()[:6]) for t in texts]
    short_stats = interleave(
        {
            "ours (batched)": _side(ours.embed_documents, short),
            "ours (batch_size=1)": _side(alone.embed_documents, short),
        },
        repeats=repeats,
    )
    ratio = short_stats["ours (batch_size=1)"].median / short_stats["ours (batched)"].median
    comp.notes.append(
        f"the same 256 texts cut to 6 words: one-at-a-time / batched = {ratio:.2f}x (information, no goal)"
    )
    return comp


def st_packaged(hf: Path) -> Path:
    """``hf`` with sentence-transformers files (mean pooling, normalize), symlinked beside it."""
    out = hf.with_name(hf.name + "-st")
    if (out / "modules.json").exists():
        return out
    out.mkdir(exist_ok=True)
    for f in hf.iterdir():
        if not (out / f.name).exists():
            (out / f.name).symlink_to(f.resolve())
    dim = json.loads((hf / "config.json").read_text())["hidden_size"]
    modules = [
        {"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
        {"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"},
        {"idx": 2, "name": "2", "path": "2_Normalize", "type": "sentence_transformers.models.Normalize"},
    ]
    (out / "1_Pooling").mkdir(exist_ok=True)
    (out / "2_Normalize").mkdir(exist_ok=True)
    (out / "1_Pooling" / "config.json").write_text(
        json.dumps({"word_embedding_dimension": dim, "pooling_mode_mean_tokens": True})
    )
    (out / "sentence_bert_config.json").write_text(json.dumps({"max_seq_length": 4096, "do_lower_case": False}))
    (out / "modules.json").write_text(json.dumps(modules))
    return out


def case_embed_hf(hf: Path, repeats: int) -> Comparison:
    texts = mixed_texts()
    comp = Comparison("14b", f"embed_documents of {len(texts)} mixed-length texts, HF (transformers, CPU)")
    hf = st_packaged(hf)  # the same mean pooling on both sides (sentence-transformers 6 would pool the last token)
    ours = HFLocalEmbeddings(model=str(hf), device="cpu")
    alone = HFLocalEmbeddings(model=str(hf), device="cpu", batch_size=1)
    ours.load()
    sides = {
        "ours (batched)": _side(ours.embed_documents, texts),
        "ours (batch_size=1)": _side(alone.embed_documents, texts),
    }
    try:
        from langchain_huggingface import HuggingFaceEmbeddings
    except ImportError as e:
        comp.notes.append(f"langchain-huggingface not installed ({e}): no peer side")
    else:
        peer = HuggingFaceEmbeddings(
            model_name=str(hf), model_kwargs={"device": "cpu"}, encode_kwargs={"normalize_embeddings": True}
        )
        sides["langchain-huggingface HuggingFaceEmbeddings"] = _side(peer.embed_documents, texts)
    raw = _RawHF(hf)
    sides["raw transformers, 32 a forward"] = _side(lambda ts: raw.embed(ts, 32), texts)
    sides["raw transformers, one text a forward"] = _side(lambda ts: raw.embed(ts, 1), texts)
    stats = interleave(sides, repeats=repeats)
    comp.sides.extend(stats.values())
    base = stats["ours (batched)"].median
    comp.goals.append(Goal("one-at-a-time / batched", stats["ours (batch_size=1)"].median / base, 4.0))
    peer_stats = stats.get("langchain-huggingface HuggingFaceEmbeddings")
    if peer_stats is not None:
        comp.goals.append(Goal("HuggingFaceEmbeddings / ours", peer_stats.median / base, 1.0))
    ceiling = stats["raw transformers, one text a forward"].median / stats["raw transformers, 32 a forward"].median
    comp.notes.append(
        f"ceiling: raw transformers one text a forward / 32 a forward (length-sorted) = {ceiling:.2f}x "
        "(what batching can give on this machine; information, no goal)"
    )
    return comp


class _RawHF:
    """transformers by hand: the base model, length-sorted right-padded batches, mean pool, normalize."""

    def __init__(self, path: Path) -> None:
        import torch
        import transformers

        self.torch = torch
        self.tokenizer = transformers.AutoTokenizer.from_pretrained(str(path))
        self.model = transformers.AutoModel.from_pretrained(str(path), dtype=torch.float32).eval()

    def embed(self, texts: list[str], batch_size: int) -> list[list[float]]:
        torch = self.torch
        rows = self.tokenizer(texts)["input_ids"]
        order = sorted(range(len(rows)), key=lambda i: len(rows[i]), reverse=True)
        out: list[list[float]] = [[] for _ in texts]
        pad = self.tokenizer.pad_token_id or 0
        with torch.inference_mode():
            for start in range(0, len(order), batch_size):
                chunk = order[start : start + batch_size]
                width = max(len(rows[i]) for i in chunk)
                ids = torch.tensor([rows[i] + [pad] * (width - len(rows[i])) for i in chunk])
                mask = torch.tensor([[1] * len(rows[i]) + [0] * (width - len(rows[i])) for i in chunk])
                hidden = self.model(input_ids=ids, attention_mask=mask).last_hidden_state
                weights = mask.unsqueeze(-1).to(hidden.dtype)
                pooled = torch.nn.functional.normalize((hidden * weights).sum(1) / weights.sum(1), dim=1)
                for i, vector in zip(chunk, pooled.tolist(), strict=True):
                    out[i] = vector
        return out
