"""Exact per-layer top-k over (possibly sharded) score tensors.

Every mask decision in gsparse - initial masks, drop, grow - is a call to :func:`select_top_k`.
The rule is the same whatever the sharding, so a ZeRO run picks bit-for-bit the weights a
single-process run picks:

* scores are float32; the ``k`` largest among the eligible positions are selected;
* NaN ranks below every number and ``-0.0`` equals ``0.0``;
* ties are broken by global flat index (row-major order of the full parameter): the lower
  index wins.

The algorithm is a radix select on order-preserving 32-bit keys: four passes, each building an
``[L, 256]`` histogram for all layers at once and summing it over ranks with one all-reduce, then
one all-reduce of per-rank tie counts. Communication is a few KiB per call, independent of the
number of weights, and no rank ever sees another rank's scores.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol, Sequence

import torch

_DIGIT_BITS = 8
_NUM_BUCKETS = 1 << _DIGIT_BITS
_SHIFTS = (24, 16, 8, 0)


class Communicator(Protocol):
    """The collectives the shared mask logic needs; a backend provides one."""

    rank: int
    world_size: int

    def all_reduce_sum(self, tensor: torch.Tensor) -> None:
        """Sum ``tensor`` in place over all ranks."""


class LocalCommunicator:
    """Single-process communicator: every collective is the identity."""

    rank = 0
    world_size = 1

    def all_reduce_sum(self, tensor: torch.Tensor) -> None:
        return None


@dataclass(frozen=True)
class LocalSlice:
    """This rank's contiguous piece ``[start, start + length)`` of a flattened parameter."""

    start: int
    length: int


def order_keys(scores: torch.Tensor) -> torch.Tensor:
    """Map float scores to int64 keys in ``[0, 2**32)`` whose integer order is the float order."""
    scores = scores.detach().to(torch.float32) + 0.0  # +0.0 turns -0.0 into 0.0
    bits = scores.view(torch.int32).to(torch.int64)
    keys = torch.where(bits >= 0, bits + (1 << 31), -1 - bits)
    # Key 0 belongs to a NaN bit pattern only, so NaN can take it and rank below -inf.
    return torch.where(torch.isnan(scores), 0, keys)


def select_top_k(
    scores: Sequence[torch.Tensor],
    eligible: Sequence[torch.Tensor | None],
    k: Sequence[int],
    communicator: Communicator | None = None,
) -> list[torch.Tensor]:
    """Select, per layer, the ``k[l]`` largest eligible scores across all ranks.

    Args:
        scores: per layer, this rank's 1-D slice of the score (global index order).
        eligible: per layer, a bool tensor like ``scores`` (``None``: all eligible).
        k: per layer, the global number of positions to select.
        communicator: sums histograms over ranks (default: single process).

    Returns:
        Per layer a bool tensor like ``scores``: True where selected on this rank.

    Raises:
        ValueError: if a layer has fewer eligible positions than ``k`` over all ranks.
    """
    communicator = communicator or LocalCommunicator()
    num_layers = len(scores)
    selected = [torch.zeros(s.numel(), dtype=torch.bool, device=s.device) for s in scores]
    candidate_keys: list[torch.Tensor] = []
    candidate_positions: list[torch.Tensor] = []
    for layer_scores, layer_eligible in zip(scores, eligible):
        keys = order_keys(layer_scores.reshape(-1))
        if layer_eligible is None:
            positions = torch.arange(keys.numel(), device=keys.device)
        else:
            positions = torch.nonzero(layer_eligible.reshape(-1), as_tuple=True)[0]
            keys = keys[positions]
        candidate_keys.append(keys)
        candidate_positions.append(positions)

    device = scores[0].device if num_layers else torch.device("cpu")
    still_needed = torch.tensor(list(k), dtype=torch.int64, device=device)
    if num_layers == 0:
        return selected
    for shift in _SHIFTS:
        histogram = torch.zeros(num_layers, _NUM_BUCKETS, dtype=torch.int64, device=device)
        digits = []
        for layer, keys in enumerate(candidate_keys):
            layer_digits = (keys >> shift) & (_NUM_BUCKETS - 1)
            digits.append(layer_digits)
            if layer_digits.numel():
                histogram[layer] = torch.bincount(layer_digits, minlength=_NUM_BUCKETS)
        communicator.all_reduce_sum(histogram)
        if shift == _SHIFTS[0]:
            available = histogram.sum(dim=1)
            short = torch.nonzero(available < still_needed, as_tuple=True)[0]
            if short.numel():
                layer = int(short[0])
                raise ValueError(
                    f"layer {layer}: asked to select {int(still_needed[layer])} positions "
                    f"but only {int(available[layer])} are eligible"
                )
        # Per layer, the digit d at which the running count (from the top bucket down) reaches
        # the number still needed: buckets above d are taken whole, bucket d is refined next pass.
        descending = histogram.flip(1)
        running = descending.cumsum(1)
        first_reaching = torch.searchsorted(running, still_needed.clamp(min=1).unsqueeze(1)).squeeze(1)
        first_reaching = first_reaching.clamp(max=_NUM_BUCKETS - 1)
        threshold_digit = (_NUM_BUCKETS - 1) - first_reaching
        taken_above = (running.gather(1, first_reaching.unsqueeze(1)) - descending.gather(1, first_reaching.unsqueeze(1))).squeeze(1)
        done = still_needed == 0
        taken_above = torch.where(done, 0, taken_above)
        threshold_list = threshold_digit.tolist()
        done_list = done.tolist()
        for layer in range(num_layers):
            if done_list[layer]:
                candidate_keys[layer] = candidate_keys[layer][:0]
                candidate_positions[layer] = candidate_positions[layer][:0]
                continue
            layer_digits = digits[layer]
            above = layer_digits > threshold_list[layer]
            selected[layer][candidate_positions[layer][above]] = True
            at_threshold = layer_digits == threshold_list[layer]
            candidate_keys[layer] = candidate_keys[layer][at_threshold]
            candidate_positions[layer] = candidate_positions[layer][at_threshold]
        still_needed = still_needed - taken_above

    # What is left per layer are positions whose key equals the threshold exactly; take the
    # lowest global indices. Each rank's slice is contiguous and ranks are ordered by index, so
    # a rank's share is what remains after the tie counts of all lower ranks.
    tie_counts = torch.zeros(communicator.world_size, num_layers, dtype=torch.int64, device=device)
    tie_counts[communicator.rank] = torch.tensor(
        [p.numel() for p in candidate_positions], dtype=torch.int64, device=device
    )
    communicator.all_reduce_sum(tie_counts)
    ties_before_me = tie_counts[: communicator.rank].sum(dim=0)
    my_share = (still_needed - ties_before_me).clamp(min=0).tolist()
    for layer in range(num_layers):
        take = min(my_share[layer], candidate_positions[layer].numel())
        if take:
            selected[layer][candidate_positions[layer][:take]] = True
    return selected


def reference_top_k(scores: torch.Tensor, eligible: torch.Tensor | None, k: int) -> torch.Tensor:
    """Plain sort-based implementation of the same rule on a whole (unsharded) tensor.

    Used by tests and as documentation of the rule; O(n log n) and single process only.
    """
    keys = order_keys(scores.reshape(-1))
    index = torch.arange(keys.numel(), device=keys.device)
    # Sort by key descending, then index ascending: composite key fits in int64.
    composite = keys * (1 << 31) + ((1 << 31) - 1 - index) if keys.numel() < (1 << 31) else None
    if composite is None:  # pragma: no cover - tensors that large are not used in tests
        raise ValueError("reference_top_k supports tensors of fewer than 2**31 elements")
    if eligible is not None:
        composite = torch.where(eligible.reshape(-1), composite, torch.full_like(composite, -1))
    selected = torch.zeros(keys.numel(), dtype=torch.bool, device=keys.device)
    if k:
        selected[torch.topk(composite, k).indices] = True
    return selected
