"""plan_batches, the batch planner of predict, sentence similarity and the server: every input once, longest
first, within the row and token caps, and (with a cost per batch) the cheapest split there is, checked against
every way of splitting a few lengths."""

from __future__ import annotations

import random
import time

import pytest
from hypothesis import given, settings, strategies as st

from taskzoo.predict_batches import plan_batches


def cost(batches, lengths, batch_cost):
    return sum(batch_cost + len(batch) * max(lengths[i] for i in batch) for batch in batches)


def allowed(batch, lengths, max_rows, max_tokens):
    rows, longest = len(batch), max(lengths[i] for i in batch)
    return rows == 1 or ((max_rows is None or rows <= max_rows)
                         and (max_tokens is None or rows * longest <= max_tokens))


def partitions(indices):
    """Every way to split ``indices`` into groups (for a brute-force check on a few lengths)."""
    if not indices:
        yield []
        return
    first, rest = indices[0], indices[1:]
    for split in partitions(rest):
        yield [[first], *split]
        for i in range(len(split)):
            yield [*split[:i], [first, *split[i]], *split[i + 1:]]


def check_shape(batches, lengths, max_rows, max_tokens):
    assert sorted(i for batch in batches for i in batch) == list(range(len(lengths)))
    assert all(allowed(batch, lengths, max_rows, max_tokens) for batch in batches)
    sizes = [lengths[i] for batch in batches for i in batch]
    assert sizes == sorted(sizes, reverse=True)  # longest first, within and across batches


caps = st.one_of(st.none(), st.integers(1, 5))


@given(st.lists(st.integers(0, 12), min_size=1, max_size=7), caps, st.one_of(st.none(), st.integers(1, 40)),
       st.one_of(st.integers(0, 25), st.floats(0, 25)))
@settings(max_examples=300, deadline=None)
def test_the_plan_is_the_cheapest_split_within_both_caps(lengths, max_rows, max_tokens, batch_cost):
    batches = plan_batches(lengths, max_rows=max_rows, max_tokens=max_tokens, batch_cost=batch_cost)
    check_shape(batches, lengths, max_rows, max_tokens)
    cheapest = min(cost(split, lengths, batch_cost) for split in partitions(list(range(len(lengths))))
                   if all(allowed(batch, lengths, max_rows, max_tokens) for batch in split))
    assert cost(batches, lengths, batch_cost) == pytest.approx(cheapest)


@given(st.lists(st.integers(0, 12), min_size=1, max_size=7), caps, st.one_of(st.none(), st.integers(1, 40)))
@settings(max_examples=200, deadline=None)
def test_without_a_batch_cost_the_plan_has_the_fewest_batches(lengths, max_rows, max_tokens):
    batches = plan_batches(lengths, max_rows=max_rows, max_tokens=max_tokens)
    check_shape(batches, lengths, max_rows, max_tokens)
    fewest = min(len(split) for split in partitions(list(range(len(lengths))))
                 if all(allowed(batch, lengths, max_rows, max_tokens) for batch in split))
    assert len(batches) == fewest


def test_a_row_cap_alone_cuts_the_longest_first_order_every_n():
    assert plan_batches([4, 90, 7, 30], max_rows=32) == [[1, 3, 2, 0]]
    assert plan_batches([4, 90, 7, 30], max_rows=2) == [[1, 3], [2, 0]]
    assert plan_batches([0, 0, 0], max_rows=2) == [[0, 1], [2]]  # no lengths (images): input order
    assert plan_batches([1, 1, 1], max_rows=32, batch_cost=0.5) == [[0, 1, 2]]  # equal lengths: no split
    assert plan_batches([], max_rows=4) == [] and plan_batches([], max_tokens=10, batch_cost=1) == []


def test_padding_is_weighed_against_the_cost_of_a_batch():
    lengths = [5, 3, 5, 3, 5]
    # A batch costs nothing: two padding-free batches, one per length.
    assert plan_batches(lengths, max_tokens=100, batch_cost=0) == [[0, 2, 4], [1, 3]]
    # A batch costs more than the 2 x 2 tokens of padding that one batch adds: one batch.
    assert plan_batches(lengths, max_tokens=100, batch_cost=10) == [[0, 2, 4, 1, 3]]
    # At most 10 padded tokens a batch: two rows of 5, then the last 5 alone (beside a 3 it would leave the
    # other 3 alone: one batch more all the same), then the 3s.
    assert plan_batches(lengths, max_tokens=10, batch_cost=10) == [[0, 2], [4], [1, 3]]
    assert plan_batches([300, 2, 2], max_tokens=64, batch_cost=48) == [[0], [1, 2]]  # too long: a batch alone


def test_thousands_of_sentences_are_planned_within_the_budget_quickly():
    rng = random.Random(0)
    lengths = [rng.choice([3, 5, 5, 8, 12, 40, 90, 300]) + rng.randint(0, 30) for _ in range(5000)]
    for budget, batch_cost in [(64, 0), (512, 48), (4096, 48), (4096, 4096)]:
        started = time.process_time()
        batches = plan_batches(lengths, max_tokens=budget, batch_cost=batch_cost)
        # CPU time, not wall time: ~20 ms on a 2-core shared VM; the bound is loose for busy CI machines.
        assert time.process_time() - started < 1.0
        check_shape(batches, lengths, None, budget)
