"""Global top-k over several layers (budgets emerge): equal to one sort over the layers laid end
to end, ties broken by (layer, index), whatever the sharding."""
import random

import pytest
import torch

from gsparse.selection import reference_top_k, select_top_k_global
from tests.test_selection import random_layer, random_lengths, run_ranks


def reference_global(scores, eligible, k):
    pooled = torch.cat([s.reshape(-1) for s in scores])
    pooled_eligible = torch.cat([torch.ones(s.numel(), dtype=torch.bool) if e is None else e
                                 for s, e in zip(scores, eligible)])
    return list(torch.split(reference_top_k(pooled, pooled_eligible, k), [s.numel() for s in scores]))


def sharded_global(scores, eligible, k, lengths):
    world_size = len(lengths[0])
    starts = [[sum(layer_lengths[:rank]) for rank in range(world_size)] for layer_lengths in lengths]

    def rank_call(communicator):
        r = communicator.rank
        mine = [s[starts[l][r]: starts[l][r] + lengths[l][r]] for l, s in enumerate(scores)]
        my_eligible = [None if e is None else e[starts[l][r]: starts[l][r] + lengths[l][r]]
                       for l, e in enumerate(eligible)]
        return select_top_k_global(mine, my_eligible, k, communicator)

    outcomes = run_ranks(world_size, rank_call)
    for outcome in outcomes:
        if isinstance(outcome, BaseException):
            raise outcome
    return [torch.cat([outcomes[rank][l] for rank in range(world_size)]) for l in range(len(scores))]


def test_ties_across_layers_go_to_the_earlier_layer_then_lower_index():
    scores = [torch.tensor([1.0, 5.0, 1.0]), torch.tensor([1.0, 1.0]), torch.tensor([9.0, 1.0])]
    chosen = select_top_k_global(scores, [None, None, None], 4)
    assert [c.tolist() for c in chosen] == [[True, True, True], [False, False], [True, False]]


def test_sharded_ties_follow_layer_order_not_rank_order():
    # all equal: the first 5 positions of layer 0 then layer 1 win, although rank 1 holds the
    # start of layer 1 before rank 0's tail of layer 0 in a rank-major order
    scores = [torch.full((4,), 2.0), torch.full((4,), 2.0)]
    chosen = sharded_global(scores, [None, None], 5, [[2, 2], [1, 3]])
    assert [c.tolist() for c in chosen] == [[True] * 4, [True, False, False, False]]


@pytest.mark.parametrize("seed", range(6))
def test_single_process_equals_reference(seed):
    rng = random.Random(seed)
    for _ in range(20):
        layers = [random_layer(rng) for _ in range(rng.randint(1, 5))]
        scores, eligible, _ = zip(*layers)
        available = sum(s.numel() if e is None else int(e.sum()) for s, e in zip(scores, eligible))
        k = rng.choice([0, available, rng.randint(0, available)])
        chosen = select_top_k_global(list(scores), list(eligible), k)
        expected = reference_global(scores, eligible, k)
        assert all(torch.equal(c, e) for c, e in zip(chosen, expected))
        assert sum(int(c.sum()) for c in chosen) == k


@pytest.mark.parametrize("world_size, seed", [(2, 0), (2, 1), (3, 2), (4, 3)])
def test_sharded_equals_reference(world_size, seed):
    rng = random.Random(100 + seed)
    for _ in range(8):
        layers = [random_layer(rng) for _ in range(rng.randint(1, 4))]
        scores, eligible, _ = zip(*layers)
        available = sum(s.numel() if e is None else int(e.sum()) for s, e in zip(scores, eligible))
        k = rng.choice([0, available, rng.randint(0, available)])
        lengths = [random_lengths(rng, s.numel(), world_size) for s in scores]
        chosen = sharded_global(list(scores), list(eligible), k, lengths)
        expected = reference_global(scores, eligible, k)
        assert all(torch.equal(c, e) for c, e in zip(chosen, expected)), (scores, eligible, k, lengths)


def test_too_few_eligible_raises():
    with pytest.raises(ValueError, match="asked to select 3"):
        select_top_k_global([torch.ones(2)], [torch.tensor([True, False])], 3)
