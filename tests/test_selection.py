"""Tests for gsparse.selection: exact per-layer top-k, single process and simulated sharding.

The sharded tests run every simulated rank in its own thread; ``ThreadCommunicator`` sums
tensors across the threads with a barrier, like a real all-reduce.
"""
import math
import random
import threading

import pytest
import torch

from gsparse.selection import LocalCommunicator, order_keys, reference_top_k, select_top_k

NAN, INF = float("nan"), float("inf")
SMALLEST_SUBNORMAL = 2.0 ** -149
SMALLEST_NORMAL = 2.0 ** -126
FLOAT32_MAX = 3.4028234663852886e38
SPECIAL_VALUES = [NAN, -INF, INF, -0.0, 0.0, 1.0, -1.0, 0.5, SMALLEST_SUBNORMAL, -SMALLEST_SUBNORMAL,
                  FLOAT32_MAX, -FLOAT32_MAX]


def indices(mask: torch.Tensor) -> list[int]:
    return torch.nonzero(mask, as_tuple=True)[0].tolist()


# --------------------------------------------------------------------------------------------
# order_keys


def test_order_keys_strictly_increasing_on_sorted_special_values():
    values = [-INF, -FLOAT32_MAX, -1.0, -SMALLEST_NORMAL, -SMALLEST_SUBNORMAL, 0.0,
              SMALLEST_SUBNORMAL, 2 * SMALLEST_SUBNORMAL, SMALLEST_NORMAL, 1.0, FLOAT32_MAX, INF]
    keys = order_keys(torch.tensor(values, dtype=torch.float32)).tolist()
    assert keys == sorted(keys)
    assert len(set(keys)) == len(keys)
    assert all(-2 ** 31 <= key < 2 ** 31 for key in keys)


def test_order_keys_negative_zero_equals_zero():
    keys = order_keys(torch.tensor([-0.0, 0.0])).tolist()
    assert keys[0] == keys[1]


def test_order_keys_nan_is_not_above_any_number():
    keys = order_keys(torch.tensor([NAN, -NAN, -INF, -FLOAT32_MAX, 0.0])).tolist()
    assert max(keys[:2]) <= min(keys[2:])


def test_nan_ranks_strictly_below_minus_inf():
    keys = order_keys(torch.tensor([NAN, -INF])).tolist()
    assert keys[0] < keys[1]
    # Documented rule: NaN ranks below every number, so -inf (index 1) must win over NaN.
    assert indices(select_top_k([torch.tensor([NAN, -INF])], [None], [1])[0]) == [1]


def test_order_keys_agree_with_float_comparisons_on_random_bit_patterns():
    generator = torch.Generator().manual_seed(0)
    bits = torch.randint(-2 ** 31, 2 ** 31, (4000,), generator=generator, dtype=torch.int64).to(torch.int32)
    values = bits.view(torch.float32)
    values = values[~torch.isnan(values)]
    extra = torch.tensor([-INF, INF, -0.0, 0.0, SMALLEST_SUBNORMAL, -SMALLEST_SUBNORMAL, 1.0, -1.0])
    values = torch.cat([values, extra])
    keys = order_keys(values)
    # All pairs of a 500-element subset (plus the extras) - compare the relations exactly.
    x, kx = values[-508:], keys[-508:]
    assert torch.equal(x.unsqueeze(1) < x.unsqueeze(0), kx.unsqueeze(1) < kx.unsqueeze(0))
    assert torch.equal(x.unsqueeze(1) == x.unsqueeze(0), kx.unsqueeze(1) == kx.unsqueeze(0))
    # And sorting by float vs by key gives the same sequence of values.
    assert torch.equal(torch.sort(values).values, values[torch.sort(keys, stable=True).indices])


# --------------------------------------------------------------------------------------------
# Hand-made single-process cases


@pytest.mark.parametrize("scores, eligible, k, expected", [
    # ties on 3.0 at 1, 2, 4: lower index wins
    ([1.0, 3.0, 3.0, 2.0, 3.0, 0.0], None, 2, [1, 2]),
    ([1.0, 3.0, 3.0, 2.0, 3.0, 0.0], None, 4, [1, 2, 3, 4]),
    # index 1 not eligible: the remaining 3.0 ties decide
    ([1.0, 3.0, 3.0, 2.0, 3.0, 0.0], [1, 0, 1, 1, 1, 1], 2, [2, 4]),
    # all equal: the k lowest indices
    ([7.0] * 6, None, 3, [0, 1, 2]),
    ([7.0] * 6, [0, 1, 0, 1, 1, 1], 3, [1, 3, 4]),
    # -0.0 == 0.0: tie broken by index
    ([-0.0, 0.0, -1.0], None, 1, [0]),
    ([0.0, -0.0, -1.0], None, 1, [0]),
    ([-1.0, -0.0, 0.0], None, 2, [1, 2]),
    # negative scores, +-inf, NaN lowest
    ([-5.0, -2.0, -3.0, -INF, NAN], None, 2, [1, 2]),
    ([NAN, -INF, INF, 0.0], None, 1, [2]),
    ([NAN, -1e30, NAN], None, 1, [1]),
    ([NAN, NAN, NAN], None, 2, [0, 1]),
    # subnormals are above zero
    ([0.0, SMALLEST_SUBNORMAL, -SMALLEST_SUBNORMAL], None, 1, [1]),
    # k = 0 and k = all eligible
    ([1.0, 2.0, 3.0], None, 0, []),
    ([1.0, 2.0, 3.0], [1, 0, 1], 2, [0, 2]),
])
def test_hand_made_cases(scores, eligible, k, expected):
    scores = torch.tensor(scores, dtype=torch.float32)
    mask = None if eligible is None else torch.tensor(eligible, dtype=torch.bool)
    assert indices(select_top_k([scores], [mask], [k])[0]) == expected
    assert indices(reference_top_k(scores, mask, k)) == expected


def test_several_layers_at_once_with_different_k():
    layers = [torch.tensor([0.1, 0.9, 0.5, 0.9]), torch.tensor([]), torch.tensor([2.0, 1.0, 3.0]),
              torch.tensor([-1.0, -1.0])]
    eligible = [None, None, torch.tensor([True, True, False]), None]
    result = select_top_k(layers, eligible, [3, 0, 1, 2])
    assert [indices(r) for r in result] == [[1, 2, 3], [], [0], [0, 1]]
    assert [r.dtype for r in result] == [torch.bool] * 4
    assert [r.numel() for r in result] == [4, 0, 3, 2]


def test_multidimensional_scores_use_row_major_global_index():
    scores = torch.tensor([[1.0, 5.0], [5.0, 2.0]])
    assert indices(select_top_k([scores], [None], [2])[0]) == [1, 2]


def test_no_layers_returns_empty_list():
    assert select_top_k([], [], []) == []


@pytest.mark.parametrize("scores, eligible, k", [
    ([1.0, 2.0], None, 3),
    ([1.0, 2.0, 3.0], [True, False, False], 2),
    ([], None, 1),
])
def test_value_error_when_k_exceeds_eligible(scores, eligible, k):
    mask = None if eligible is None else torch.tensor(eligible)
    with pytest.raises(ValueError, match="only"):
        select_top_k([torch.tensor(scores)], [mask], [k])


def test_value_error_names_the_short_layer():
    with pytest.raises(ValueError, match=r"layer 1: asked to select 3 positions but only 2 are eligible"):
        select_top_k([torch.ones(4), torch.ones(2)], [None, None], [4, 3])


def test_local_communicator_is_identity():
    tensor = torch.tensor([1, 2, 3])
    LocalCommunicator().all_reduce_sum(tensor)
    assert tensor.tolist() == [1, 2, 3]


# --------------------------------------------------------------------------------------------
# Random cases against the sort-based reference


def random_scores(rng: random.Random, n: int) -> torch.Tensor:
    kind = rng.choice(["normal", "handful", "all_equal", "special", "negative"])
    if kind == "normal":
        values = [rng.gauss(0.0, 1.0) for _ in range(n)]
    elif kind == "handful":
        pool = rng.sample([-2.0, -1.0, -0.0, 0.0, 0.25, 1.0, 3.0], rng.randint(1, 4))
        values = [rng.choice(pool) for _ in range(n)]
    elif kind == "all_equal":
        values = [rng.choice([0.0, -0.0, 1.5, -INF, NAN])] * n
    elif kind == "special":
        values = [rng.choice(SPECIAL_VALUES + [rng.uniform(-2, 2)]) for _ in range(n)]
    else:
        values = [-abs(rng.gauss(0.0, 1.0)) for _ in range(n)]
    return torch.tensor(values, dtype=torch.float32)


def random_layer(rng: random.Random, max_n: int = 70):
    n = rng.choice([0, 1, 2, rng.randint(3, max_n), rng.randint(3, max_n)])
    scores = random_scores(rng, n)
    if rng.random() < 0.5:
        eligible = None
        count = n
    else:
        p = rng.random()
        eligible = torch.tensor([rng.random() < p for _ in range(n)], dtype=torch.bool)
        count = int(eligible.sum())
    k = rng.choice([0, count, rng.randint(0, count), rng.randint(0, count)])
    return scores, eligible, k


@pytest.mark.parametrize("seed", range(10))
def test_matches_reference_on_random_cases(seed):
    rng = random.Random(seed)
    for _ in range(20):
        layers = [random_layer(rng) for _ in range(rng.randint(1, 5))]
        scores, eligible, k = zip(*layers)
        result = select_top_k(list(scores), list(eligible), list(k))
        for layer_scores, layer_eligible, layer_k, selected in zip(scores, eligible, k, result):
            expected = reference_top_k(layer_scores, layer_eligible, layer_k)
            assert torch.equal(selected, expected), (layer_scores, layer_eligible, layer_k)
            assert int(selected.sum()) == layer_k
            if layer_eligible is not None:
                assert not (selected & ~layer_eligible).any()


def test_matches_reference_on_larger_tensor_with_heavy_ties():
    generator = torch.Generator().manual_seed(1)
    scores = torch.randint(0, 5, (20000,), generator=generator).to(torch.float32) - 2.0
    eligible = torch.rand(20000, generator=generator) < 0.7
    for k in (0, 1, 4321, int(eligible.sum())):
        assert torch.equal(select_top_k([scores], [eligible], [k])[0], reference_top_k(scores, eligible, k))


def test_matches_reference_when_keys_differ_only_in_low_bits():
    # Adjacent float32 values: keys differ in the last radix digit only.
    one = torch.tensor(1.0)
    just_above_one = torch.nextafter(one, torch.tensor(2.0))
    scores = torch.where(torch.arange(8) % 2 == 1, just_above_one, one)
    assert indices(select_top_k([scores], [None], [3])[0]) == [1, 3, 5]
    assert indices(reference_top_k(scores, None, 3)) == [1, 3, 5]


# --------------------------------------------------------------------------------------------
# Simulated sharding: one thread per rank


class _Group:
    def __init__(self, world_size: int):
        self.world_size = world_size
        self.barrier = threading.Barrier(world_size, timeout=10)
        self.slots: list = [None] * world_size


class ThreadCommunicator:
    """One rank of a thread group; all_reduce_sum sums the tensors of all ranks in place."""

    def __init__(self, group: _Group, rank: int):
        self.group = group
        self.rank = rank
        self.world_size = group.world_size

    def all_reduce_sum(self, tensor: torch.Tensor) -> None:
        group = self.group
        group.slots[self.rank] = tensor.clone()
        group.barrier.wait()
        shapes = {tuple(slot.shape) for slot in group.slots}
        assert len(shapes) == 1, f"all_reduce over tensors of different shapes: {shapes}"
        total = torch.stack(group.slots).sum(dim=0)
        group.barrier.wait()  # everyone has read the slots before anyone reuses them
        tensor.copy_(total)


def run_ranks(world_size: int, function):
    """Run ``function(communicator)`` on ``world_size`` threads; return results or exceptions by rank."""
    group = _Group(world_size)
    outcomes: list = [None] * world_size

    def target(rank):
        try:
            outcomes[rank] = function(ThreadCommunicator(group, rank))
        except BaseException as error:  # noqa: BLE001 - re-raised or inspected by the caller
            outcomes[rank] = error
            if not isinstance(error, ValueError):
                group.barrier.abort()

    threads = [threading.Thread(target=target, args=(rank,)) for rank in range(world_size)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)
    assert not any(thread.is_alive() for thread in threads), "a rank hung"
    return outcomes


def sharded_select(scores, eligible, k, lengths):
    """``lengths[l]`` lists the slice length of each rank for layer ``l``; returns per-layer
    concatenations of the ranks' results (in rank order)."""
    world_size = len(lengths[0])
    starts = [[sum(layer_lengths[:rank]) for rank in range(world_size)] for layer_lengths in lengths]

    def rank_call(communicator):
        r = communicator.rank
        my_scores = [s[starts[l][r]: starts[l][r] + lengths[l][r]] for l, s in enumerate(scores)]
        my_eligible = [None if e is None else e[starts[l][r]: starts[l][r] + lengths[l][r]]
                       for l, e in enumerate(eligible)]
        result = select_top_k(my_scores, my_eligible, k, communicator)
        assert [t.numel() for t in result] == [lengths[l][r] for l in range(len(scores))]
        return result

    outcomes = run_ranks(world_size, rank_call)
    for outcome in outcomes:
        if isinstance(outcome, BaseException):
            raise outcome
    return [torch.cat([outcomes[rank][l] for rank in range(world_size)]) for l in range(len(scores))]


def random_lengths(rng: random.Random, n: int, world_size: int) -> list[int]:
    cuts = sorted(rng.randint(0, n) for _ in range(world_size - 1))
    bounds = [0] + cuts + [n]
    return [bounds[i + 1] - bounds[i] for i in range(world_size)]


def test_sharded_hand_made_ties_straddle_boundaries_and_empty_slice():
    # 10 equal scores split 3 | 0 | 7, k = 5: global indices 0..4 win, i.e. all of rank 0's
    # slice, nothing on the empty rank 1, and rank 2's first two positions.
    scores = [torch.full((10,), 2.0)]
    selected = sharded_select(scores, [None], [5], [[3, 0, 7]])[0]
    assert indices(selected) == [0, 1, 2, 3, 4]


def test_sharded_hand_made_with_eligibility():
    # scores   : 5 5 | 5 9 5 | 5
    # eligible : 0 1 | 1 0 1 | 1 ; k = 3 -> the 5.0 ties at global 1, 2, 4 (9 is ineligible)
    scores = [torch.tensor([5.0, 5.0, 5.0, 9.0, 5.0, 5.0])]
    eligible = [torch.tensor([False, True, True, False, True, True])]
    selected = sharded_select(scores, eligible, [3], [[2, 3, 1]])[0]
    assert indices(selected) == [1, 2, 4]


@pytest.mark.parametrize("world_size", [2, 3])
@pytest.mark.parametrize("seed", range(4))
def test_sharded_equals_reference_on_random_cases(world_size, seed):
    rng = random.Random(1000 * world_size + seed)
    for _ in range(6):
        layers = [random_layer(rng) for _ in range(rng.randint(1, 4))]
        scores, eligible, k = map(list, zip(*layers))
        lengths = [random_lengths(rng, s.numel(), world_size) for s in scores]
        # make sure some rank has an empty slice of the first layer
        if scores[0].numel() and rng.random() < 0.5:
            lengths[0] = [0] * world_size
            lengths[0][rng.randrange(world_size)] = scores[0].numel()
        result = sharded_select(scores, eligible, k, lengths)
        for l, selected in enumerate(result):
            assert torch.equal(selected, reference_top_k(scores[l], eligible[l], k[l])), (scores[l], lengths[l], k[l])


@pytest.mark.parametrize("world_size", [2, 3])
def test_sharded_equals_reference_with_heavy_ties_on_larger_layers(world_size):
    generator = torch.Generator().manual_seed(world_size)
    scores = [torch.randint(0, 3, (n,), generator=generator).to(torch.float32) for n in (997, 64, 1500)]
    eligible = [None, torch.rand(64, generator=generator) < 0.5, torch.rand(1500, generator=generator) < 0.9]
    counts = [997, int(eligible[1].sum()), int(eligible[2].sum())]
    k = [500, counts[1], counts[2] // 3]
    rng = random.Random(world_size)
    lengths = [random_lengths(rng, s.numel(), world_size) for s in scores]
    result = sharded_select(scores, eligible, k, lengths)
    for l in range(3):
        assert torch.equal(result[l], reference_top_k(scores[l], eligible[l], k[l]))


def test_sharded_value_error_on_every_rank_when_k_exceeds_eligible():
    # Each rank alone has 2 eligible positions, together 4 < 5.
    scores = torch.ones(6)
    eligible = torch.tensor([True, True, False, True, True, False])

    def rank_call(communicator):
        piece = slice(3 * communicator.rank, 3 * communicator.rank + 3)
        return select_top_k([scores[piece]], [eligible[piece]], [5], communicator)

    outcomes = run_ranks(2, rank_call)
    assert all(isinstance(outcome, ValueError) for outcome in outcomes), outcomes
    assert all("only 4 are eligible" in str(outcome) for outcome in outcomes)


def test_sharded_uses_global_k_not_per_rank_k():
    # rank 0 holds only small scores: it must get none of the k = 2 selections.
    scores = torch.tensor([0.1, 0.2, 0.9, 0.8])
    selected = sharded_select([scores], [None], [2], [[2, 2]])[0]
    assert indices(selected) == [2, 3]
    assert math.isclose(float(scores[selected].sum()), 1.7, rel_tol=1e-6)
