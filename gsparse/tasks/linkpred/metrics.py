"""Link-prediction metrics: binary ones on balanced positives/negatives, and ranking ones (MRR,
hits@k) of each positive among its own negatives."""
from __future__ import annotations

import numpy as np
import torch


def accuracy(logits: torch.Tensor, labels: torch.Tensor) -> float:
    """Accuracy at probability 0.5 (logit 0), the DST-EE paper's number."""
    return ((logits > 0).float() == labels).float().mean().item()


def roc_auc(scores: torch.Tensor, labels: torch.Tensor) -> float:
    """Area under the ROC curve (Mann-Whitney U, ties counted half)."""
    scores, labels = scores.detach().double().flatten(), labels.flatten().bool()
    positives, negatives = int(labels.sum()), int((~labels).sum())
    if positives == 0 or negatives == 0:
        return float("nan")
    order = torch.argsort(scores)
    sorted_scores = scores[order]
    ranks = torch.empty_like(scores)
    ranks[order] = torch.arange(1, len(scores) + 1, dtype=torch.float64)
    # average the ranks of tied scores
    unique, inverse, counts = torch.unique_consecutive(sorted_scores, return_inverse=True, return_counts=True)
    ends = torch.cumsum(counts, 0).double()
    average_rank = ends - (counts.double() - 1) / 2
    ranks[order] = average_rank[inverse]
    rank_sum = ranks[labels].sum().item()
    return (rank_sum - positives * (positives + 1) / 2) / (positives * negatives)


def _ranks(positive_scores, negative_scores) -> np.ndarray:
    """Rank of each positive among its own negatives: ``1 + #(neg > pos) + 0.5 * #(neg == pos)``.

    Ties count half, the average of the optimistic and the pessimistic rank (as the TGB
    benchmark). NaN scores count as the lowest: below any number, tied with each other.
    """
    positive = torch.as_tensor(positive_scores).detach().cpu().double().numpy()
    negative = torch.as_tensor(negative_scores).detach().cpu().double().numpy()
    if positive.ndim != 1 or negative.ndim != 2 or negative.shape[0] != positive.shape[0]:
        raise ValueError(f"expected positive scores [n] and negative scores [n, K], got {positive.shape} "
                         f"and {negative.shape}")
    positive = positive[:, None]
    positive_nan, negative_nan = np.isnan(positive), np.isnan(negative)
    # A comparison with NaN is False, so NaN negatives are never above nor tied with a number.
    above = (negative > positive) | (positive_nan & ~negative_nan)
    tied = (negative == positive) | (positive_nan & negative_nan)
    return 1.0 + above.sum(axis=1) + 0.5 * tied.sum(axis=1)


def mean_reciprocal_rank(positive_scores, negative_scores) -> float:
    """Mean of ``1 / rank`` of each positive (``[n]``) among its row of negatives (``[n, K]``);
    tensors or arrays. Ranks as in TGB: ties count half, NaN is the lowest score. nan when n == 0."""
    ranks = _ranks(positive_scores, negative_scores)
    return float(np.mean(1.0 / ranks)) if len(ranks) else float("nan")


def hits_at_k(positive_scores, negative_scores, k: int) -> float:
    """Fraction of positives (``[n]``) ranked ``<= k`` among their negatives (``[n, K]``), with the
    ranks of :func:`mean_reciprocal_rank` (a half-tied rank such as 1.5 misses k = 1). nan when n == 0."""
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    ranks = _ranks(positive_scores, negative_scores)
    return float(np.mean(ranks <= k)) if len(ranks) else float("nan")
