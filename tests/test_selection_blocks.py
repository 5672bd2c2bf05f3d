"""Block top-k (``structure: block``), single process and sharded over simulated ranks."""
import random

import pytest
import torch

from gsparse.selection import (LocalSlice, block_scores, reference_top_k, select_top_k_blocks, split_block_rows)
from tests.test_selection import ThreadCommunicator, random_lengths, random_scores, run_ranks


def _reference(score, allowed, k, shape, block):
    """Brute force: each block's sum (float64, row-major within the block, then float32), all its
    elements eligible, the element rule of reference_top_k over the blocks, expanded back."""
    (rows, cols), (block_rows, block_cols) = shape, block
    values = score.view(rows, cols).tolist()
    ok = None if allowed is None else allowed.view(rows, cols).tolist()
    sums, eligible, cells = [], [], []
    for top in range(0, rows, block_rows):
        for left in range(0, cols, block_cols):
            cell = [(r, c) for r in range(top, top + block_rows) for c in range(left, left + block_cols)]
            total = 0.0
            for index, (r, c) in enumerate(cell):
                total = values[r][c] if index == 0 else total + values[r][c]
            sums.append(total)
            eligible.append(ok is None or all(ok[r][c] for r, c in cell))
            cells.append(cell)
    chosen = reference_top_k(torch.tensor(sums, dtype=torch.float64).to(torch.float32), torch.tensor(eligible), k)
    mask = torch.zeros(rows, cols, dtype=torch.bool)
    for cell, taken in zip(cells, chosen.tolist()):
        for r, c in cell:
            mask[r, c] = taken
    return mask.view(-1)


def _whole(score, allowed, k, shape, block):
    [chosen] = select_top_k_blocks([score], [allowed], [k], [LocalSlice(0, score.numel())], [shape], [block], [[]])
    return chosen


def test_hand_made_blocks_sum_and_ties_take_the_lower_block_index():
    # a 4 x 6 matrix in 2 x 3 blocks: block grid 2 x 2, blocks numbered 0 1 / 2 3 row-major
    scores = torch.tensor([[1.0, 1, 1, 5, 0, 0],
                           [1, 1, 1, 0, 0, 1],      # block 0 sums to 6, block 1 to 6
                           [2, 2, 2, 9, -9, 6],
                           [0, 0, 0, 0, 0, 0]])     # block 2 sums to 6, block 3 to 6
    chosen = _whole(scores.view(-1), None, 2, (4, 6), (2, 3)).view(4, 6)
    assert chosen[:2].all() and not chosen[2:].any()  # a four-way tie: blocks 0 and 1
    scores[3, 5] = 0.5  # block 3: 6.5, the largest
    chosen = _whole(scores.view(-1), None, 2, (4, 6), (2, 3)).view(4, 6)
    assert chosen[:2, :3].all() and chosen[2:, 3:].all() and chosen.sum() == 12
    eligible = torch.ones(4, 6, dtype=torch.bool)
    eligible[0, 0] = eligible[3, 3] = False  # one ineligible element rules out its whole block (0, 3)
    chosen = _whole(scores.view(-1), eligible.view(-1), 2, (4, 6), (2, 3)).view(4, 6)
    assert chosen[:2, 3:].all() and chosen[2:, :3].all() and chosen.sum() == 12


def test_nan_sums_rank_lowest_and_block_scores_are_float32_sums():
    scores = torch.tensor([float("nan"), 1.0, 2.0, 3.0, -1.0, -1.0, 1e30, -1e30])  # 1 x 8 in 1 x 2 blocks
    assert block_scores(scores, 8, (1, 2)).tolist()[1:] == [5.0, -2.0, 0.0]
    chosen = _whole(scores, None, 3, (1, 8), (1, 2))
    assert chosen.tolist() == [False, False, True, True, True, True, True, True]  # NaN block last


def test_too_few_eligible_blocks_is_an_error():
    eligible = torch.tensor([True, True, False, True])
    with pytest.raises(ValueError, match="asked to select 2 positions but only 1 are eligible"):
        _whole(torch.ones(4), eligible, 2, (2, 2), (1, 2))


@pytest.mark.parametrize("seed", range(14))
def test_sharded_blocks_equal_the_brute_force_reference(seed):
    """Random layers and block shapes cut at random places over 1-4 ranks (block-rows split
    anywhere, empty pieces): the union of the ranks' picks is the brute-force reference."""
    rng = random.Random(seed)
    world_size = rng.randint(1, 4)
    layers = []
    for _ in range(rng.randint(1, 3)):
        block = (rng.randint(1, 3), rng.randint(1, 3))
        shape = (block[0] * rng.randint(1, 4), block[1] * rng.randint(1, 4))
        numel = shape[0] * shape[1]
        score = random_scores(rng, numel)
        blocks = numel // (block[0] * block[1])
        allowed = None
        if rng.random() < 0.5:
            allowed = torch.tensor([rng.random() < 0.85 for _ in range(numel)])
            grid = allowed.view(shape[0] // block[0], block[0], shape[1] // block[1], block[1])
            blocks = int(grid.all(dim=3).all(dim=1).sum())
        layers.append((score, allowed, rng.randint(0, blocks), shape, block,
                       random_lengths(rng, numel, world_size)))

    def rank_call(communicator):
        rank = communicator.rank
        slices = [LocalSlice(sum(lengths[:rank]), lengths[rank]) for *_, lengths in layers]
        shared = split_block_rows(slices, [layer[3] for layer in layers], [layer[4] for layer in layers],
                                  communicator)
        return select_top_k_blocks(
            [score[piece.start:piece.start + piece.length] for (score, *_), piece in zip(layers, slices)],
            [None if allowed is None else allowed[piece.start:piece.start + piece.length]
             for (_, allowed, *_), piece in zip(layers, slices)],
            [layer[2] for layer in layers], slices, [layer[3] for layer in layers], [layer[4] for layer in layers],
            shared, communicator)

    outcomes = run_ranks(world_size, rank_call)
    for outcome in outcomes:
        if isinstance(outcome, BaseException):
            raise outcome
    for index, (score, allowed, k, shape, block, _) in enumerate(layers):
        joined = torch.cat([outcomes[rank][index] for rank in range(world_size)])
        assert torch.equal(joined, _reference(score, allowed, k, shape, block)), (seed, index)


def test_split_block_rows_lists_the_block_rows_cut_between_ranks():
    # an 8 x 4 matrix in 2 x 2 blocks: block-rows of 8 elements; cuts at 8 (a boundary), 13 and 30
    lengths = [8, 5, 17, 2]

    def rank_call(communicator):
        start = sum(lengths[:communicator.rank])
        return split_block_rows([LocalSlice(start, lengths[communicator.rank])], [(8, 4)], [(2, 2)], communicator)

    assert run_ranks(4, rank_call) == [[[1, 3]]] * 4


class _Recording(ThreadCommunicator):
    def all_reduce_sum(self, tensor):
        self.sizes.append(tensor.numel())
        super().all_reduce_sum(tensor)


def test_shared_block_rows_cost_two_small_all_reduces_and_never_the_layer():
    """A 64 x 64 layer in 4 x 4 blocks cut inside block-row 5 between two ranks: the shared
    block-row's 4 x 64 element scores and flags, then its 16 owner decisions, go over the wire."""
    generator = torch.Generator().manual_seed(0)
    score = torch.randn(64 * 64, generator=generator)
    cut = 5 * 256 + 100
    recorded = {}

    def rank_call(communicator):
        recording = _Recording(communicator.group, communicator.rank)
        recording.sizes = []
        piece = LocalSlice(0, cut) if communicator.rank == 0 else LocalSlice(cut, 64 * 64 - cut)
        shared = split_block_rows([piece], [(64, 64)], [(4, 4)], communicator)
        chosen = select_top_k_blocks([score[piece.start:piece.start + piece.length]], [None], [40], [piece],
                                     [(64, 64)], [(4, 4)], shared, recording)
        recorded[communicator.rank] = recording.sizes
        return shared, chosen

    outcomes = run_ranks(2, rank_call)
    assert outcomes[0][0] == [[5]]
    joined = torch.cat([outcomes[0][1][0], outcomes[1][1][0]])
    assert torch.equal(joined, _reference(score, None, 40, (64, 64), (4, 4)))
    sizes = recorded[0]
    assert sizes[0] == 2 * 4 * 64 and sizes[-1] == 16 and recorded[1] == sizes
    assert max(sizes) < 64 * 64 // 4
