"""Per-row exact top-k (constant fan-in), single process and sharded over simulated ranks."""
import random

import pytest
import torch

from gsparse.selection import LocalSlice, reference_top_k, select_top_k_per_row, split_rows
from tests.test_selection import random_lengths, random_scores, run_ranks


def _reference(score, allowed, k, row_length):
    rows = []
    for row in range(score.numel() // row_length):
        part = slice(row * row_length, (row + 1) * row_length)
        rows.append(reference_top_k(score[part], None if allowed is None else allowed[part], k))
    return torch.cat(rows)


def test_hand_made_rows_with_ties_take_the_lower_index():
    scores = torch.tensor([3.0, 1.0, 3.0, 2.0,    # row 0: the two 3.0s
                           5.0, 5.0, 5.0, 0.0,    # row 1: ties -> positions 4 and 5
                           float("nan"), -1.0, -2.0, -1.0])  # row 2: NaN lowest -> 9 and 11
    [chosen] = select_top_k_per_row([scores], [None], [2], [LocalSlice(0, 12)], [4], [[]])
    assert chosen.nonzero().flatten().tolist() == [0, 2, 4, 5, 9, 11]
    eligible = torch.tensor([0, 1, 1, 1, 1, 0, 0, 1, 1, 1, 0, 0], dtype=torch.bool)
    [chosen] = select_top_k_per_row([scores], [eligible], [2], [LocalSlice(0, 12)], [4], [[]])
    assert chosen.nonzero().flatten().tolist() == [2, 3, 4, 7, 8, 9]


def test_a_row_short_of_eligible_positions_is_an_error():
    eligible = torch.tensor([1, 0, 0, 1, 1, 1], dtype=torch.bool)
    with pytest.raises(ValueError, match="fewer than 2 eligible"):
        select_top_k_per_row([torch.ones(6)], [eligible], [2], [LocalSlice(0, 6)], [3], [[]])


@pytest.mark.parametrize("seed", range(12))
def test_sharded_rows_equal_the_single_process_rule(seed):
    """Random layers cut at random places over 1-4 ranks (rows split anywhere, empty pieces):
    the union of the ranks' picks is the per-row reference, whatever the cut."""
    rng = random.Random(seed)
    world_size = rng.randint(1, 4)
    layers = []
    for _ in range(rng.randint(1, 3)):
        row_length, rows = rng.randint(1, 9), rng.randint(1, 7)
        score = random_scores(rng, row_length * rows)
        allowed = torch.tensor([rng.random() < 0.7 for _ in range(score.numel())]) if rng.random() < 0.5 else None
        if allowed is not None:  # every row keeps at least k eligible
            k = min(int(allowed.view(rows, row_length).sum(1).min()), rng.randint(0, row_length))
        else:
            k = rng.randint(0, row_length)
        layers.append((score, allowed, k, row_length, random_lengths(rng, score.numel(), world_size)))

    def rank_call(communicator):
        rank = communicator.rank
        slices = [LocalSlice(sum(lengths[:rank]), lengths[rank]) for *_, lengths in layers]
        shared = split_rows(slices, [layer[3] for layer in layers], [layer[0].numel() for layer in layers],
                            communicator)
        return select_top_k_per_row(
            [score[piece.start:piece.start + piece.length] for (score, *_), piece in zip(layers, slices)],
            [None if allowed is None else allowed[piece.start:piece.start + piece.length]
             for (_, allowed, *_), piece in zip(layers, slices)],
            [layer[2] for layer in layers], slices, [layer[3] for layer in layers], shared, communicator)

    outcomes = run_ranks(world_size, rank_call)
    for outcome in outcomes:
        if isinstance(outcome, BaseException):
            raise outcome
    for index, (score, allowed, k, row_length, _) in enumerate(layers):
        joined = torch.cat([outcomes[rank][index] for rank in range(world_size)])
        assert torch.equal(joined, _reference(score, allowed, k, row_length)), (seed, index)
