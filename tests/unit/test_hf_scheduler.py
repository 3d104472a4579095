"""The transformers scheduler's pure parts: merging and selecting rows of a left-padded KV batch."""

from __future__ import annotations

from typing import Any

import pytest

from langchain_localllm._backends.transformers.scheduler import merge_rows, select_rows

torch = pytest.importorskip("torch")


def _rows(lengths: list[int], width: int, layers: int = 2, seed: int = 0) -> tuple[list[Any], list[Any], Any]:
    """A left-padded batch: per layer (rows, heads 2, width, dim 3), padding zeros, mask 0 there."""
    generator = torch.Generator().manual_seed(seed)
    keys, values = [], []
    for _ in range(layers):
        k = torch.zeros(len(lengths), 2, width, 3)
        v = torch.zeros(len(lengths), 2, width, 3)
        for i, n in enumerate(lengths):
            k[i, :, width - n :] = torch.randn(2, n, 3, generator=generator)
            v[i, :, width - n :] = torch.randn(2, n, 3, generator=generator)
        keys.append(k)
        values.append(v)
    mask = torch.tensor([[0] * (width - n) + [1] * n for n in lengths])
    return keys, values, mask


def _real(batch: tuple[list[Any], list[Any], Any], row: int) -> list[Any]:
    """One row's unpadded keys and values, layer by layer."""
    keys, values, mask = batch
    kept = mask[row].bool()
    return [t[row][:, kept] for t in (*keys, *values)]


def test_merging_left_pads_the_narrower_side_and_keeps_every_row() -> None:
    old = _rows([3, 5], width=5, seed=1)
    new = _rows([7], width=7, seed=2)
    merged = merge_rows(old, new)
    assert merged[2].shape == (3, 7)
    assert merged[2].sum(dim=1).tolist() == [3, 5, 7]
    assert all(k.shape == (3, 2, 7, 3) for k in merged[0])
    for row, (source, index) in enumerate([(old, 0), (old, 1), (new, 0)]):
        for got, want in zip(_real(merged, row), _real(source, index), strict=True):
            assert torch.equal(got, want)
    assert merge_rows(None, new) is new


def test_selecting_rows_drops_the_others_and_the_padding_nobody_needs() -> None:
    batch = _rows([2, 9, 4], width=9)
    kept = select_rows(batch, [0, 2])
    assert kept is not None
    assert kept[2].shape == (2, 4)  # the 9-token row left: 5 leading columns were padding for both
    for row, index in ((0, 0), (1, 2)):
        for got, want in zip(_real(kept, row), _real(batch, index), strict=True):
            assert torch.equal(got, want)
    assert select_rows(batch, []) is None


def test_merge_then_select_round_trips() -> None:
    old = _rows([4, 6], width=6, seed=3)
    merged = merge_rows(old, _rows([10], width=10, seed=4))
    back = select_rows(merged, [0, 1])
    assert back is not None
    assert torch.equal(back[2], old[2])
    for got, want in zip(back[0] + back[1], old[0] + old[1], strict=True):
        assert torch.equal(got, want)


def test_rows_prefilled_alone_merged_and_reordered_decode_as_a_full_recompute() -> None:
    """The scheduler's cache surgery on a real (random, tiny) Llama: the logits of each whole sequence."""
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    config = transformers.LlamaConfig(
        vocab_size=50,
        hidden_size=16,
        intermediate_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=1,
        max_position_embeddings=64,
    )
    model = transformers.LlamaForCausalLM(config).eval()
    prompts = [[1, 5, 7, 9, 11], [2, 3], [4, 8, 12]]
    following = [13, 14, 15]
    batch = None
    with torch.inference_mode():
        for prompt in prompts:
            cache = transformers.DynamicCache(config=config)
            ids = torch.tensor([prompt])
            model(input_ids=ids, attention_mask=torch.ones_like(ids), use_cache=True, cache=cache)
            rows = ([la.keys for la in cache.layers], [la.values for la in cache.layers], torch.ones_like(ids))
            batch = merge_rows(batch, rows)
        order = [2, 0, 1]
        batch = select_rows(batch, order)  # rows leave and are reordered: the bookkeeping follows
        assert batch is not None
        keys, values, mask = batch
        cache = transformers.DynamicCache(ddp_cache_data=zip(keys, values, strict=True))
        mask = torch.cat([mask, torch.ones(3, 1, dtype=torch.long)], dim=1)
        out = model(
            input_ids=torch.tensor([[following[i]] for i in order]),
            attention_mask=mask,
            position_ids=torch.tensor([[len(prompts[i])] for i in order]),
            use_cache=True,
            cache=cache,
        )
        for row, i in enumerate(order):
            full = model(input_ids=torch.tensor([[*prompts[i], following[i]]])).logits[0, -1]
            torch.testing.assert_close(out.logits[row, -1], full, atol=1e-4, rtol=1e-4)
