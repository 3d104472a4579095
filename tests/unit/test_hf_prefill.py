"""Grouping a mixed-length batch for its prefill (no weights needed)."""

from __future__ import annotations

from langchain_localllm._backends.transformers.prefill import MIN_ROWS, plan_groups


def test_mixed_lengths_are_grouped_by_length_covering_every_row_once() -> None:
    lengths = [22, 185, 38, 171, 46, 163, 60, 147, 66, 141, 79, 128, 85, 118, 99, 104]
    groups = plan_groups(lengths)
    assert groups is not None
    assert sorted(i for group in groups for i in group) == list(range(16))
    assert len(groups) == 4
    maxima = [max(lengths[i] for i in group) for group in groups]
    minima = [min(lengths[i] for i in group) for group in groups]
    assert maxima == sorted(maxima)
    assert all(high <= low for high, low in zip(maxima, minima[1:], strict=False))  # no overlap


def test_even_lengths_small_batches_and_one_token_prompts_stay_one_padded_batch() -> None:
    assert plan_groups([100, 101, 99, 100, 102, 98, 100, 100]) is None  # little padding to save
    assert plan_groups([5, 500, 5][: MIN_ROWS - 1]) is None  # too few rows
    assert plan_groups([1, 300, 20, 40, 60]) is None  # a one-token prompt leaves generate nothing


def test_two_rows_per_group_at_least() -> None:
    groups = plan_groups([10, 200, 30, 150, 12])
    assert groups is not None
    assert [len(g) for g in groups] == [3, 2]
