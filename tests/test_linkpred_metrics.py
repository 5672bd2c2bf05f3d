import math

import numpy as np
import pytest
import torch

from gsparse.tasks.linkpred.metrics import hits_at_k, mean_reciprocal_rank

NAN, INF = float("nan"), float("inf")
POSITIVE = [3.0, 1.0, NAN, 2.0, 0.5]
NEGATIVE = [
    [1.0, 2.0, 3.0],     # one tie                          -> rank 1 + 0 + 0.5     = 1.5
    [2.0, NAN, 0.0],     # 2 above, NaN below               -> rank 1 + 1           = 2
    [1.0, NAN, -INF],    # NaN positive: 1 and -inf above, NaN tied -> 1 + 2 + 0.5 = 3.5
    [NAN, NAN, NAN],     # all NaN negatives are below 2    -> rank 1
    [0.5, 0.5, 1.0],     # 1 above, two ties                -> rank 1 + 1 + 1       = 3
]
RANKS = [1.5, 2.0, 3.5, 1.0, 3.0]


@pytest.mark.parametrize("as_type", [np.array, torch.tensor, list])
def test_hand_made_ranks(as_type):
    positive, negative = as_type(POSITIVE), as_type(NEGATIVE)
    # (1/1.5 + 1/2 + 1/3.5 + 1 + 1/3) / 5
    assert mean_reciprocal_rank(positive, negative) == pytest.approx((2 / 3 + 0.5 + 2 / 7 + 1 + 1 / 3) / 5)
    assert hits_at_k(positive, negative, 1) == pytest.approx(1 / 5)   # only rank 1 (1.5 misses)
    assert hits_at_k(positive, negative, 2) == pytest.approx(3 / 5)   # 1.5, 2, 1
    assert hits_at_k(positive, negative, 3) == pytest.approx(4 / 5)   # + 3
    assert hits_at_k(positive, negative, 10) == pytest.approx(1.0)


def test_empty_is_nan_and_no_negatives_is_rank_one():
    assert math.isnan(mean_reciprocal_rank(np.zeros(0), np.zeros((0, 5))))
    assert math.isnan(hits_at_k(np.zeros(0), np.zeros((0, 5)), 1))
    assert mean_reciprocal_rank(np.ones(3), np.zeros((3, 0))) == 1.0


def test_invalid_input():
    with pytest.raises(ValueError, match="k must be"):
        hits_at_k(POSITIVE, NEGATIVE, 0)
    with pytest.raises(ValueError, match=r"\[n, K\]"):
        mean_reciprocal_rank(POSITIVE, NEGATIVE[:4])
    with pytest.raises(ValueError, match=r"\[n, K\]"):
        mean_reciprocal_rank(POSITIVE, POSITIVE)


def slow_rank(positive: float, negatives: list[float]) -> float:
    def order(score):  # NaN lowest, tied with NaN
        return (0, 0.0) if math.isnan(score) else (1, score)
    above = sum(order(n) > order(positive) for n in negatives)
    tied = sum(order(n) == order(positive) for n in negatives)
    return 1 + above + 0.5 * tied


def test_matches_slow_reference_on_random_scores():
    rng = np.random.default_rng(0)
    positive = rng.integers(0, 5, 300).astype(np.float64)  # few distinct values: many ties
    negative = rng.integers(0, 5, (300, 20)).astype(np.float64)
    positive[rng.random(300) < 0.1] = np.nan
    negative[rng.random((300, 20)) < 0.1] = np.nan
    ranks = np.array([slow_rank(p, list(row)) for p, row in zip(positive.tolist(), negative.tolist())])
    assert mean_reciprocal_rank(positive, negative) == pytest.approx(np.mean(1 / ranks), rel=1e-12)
    assert mean_reciprocal_rank(torch.from_numpy(positive).float(), torch.from_numpy(negative).float()) == \
        pytest.approx(np.mean(1 / ranks), rel=1e-12)
    for k in (1, 3, 10):
        assert hits_at_k(positive, negative, k) == pytest.approx(np.mean(ranks <= k), rel=1e-12)
