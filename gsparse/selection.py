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

The structured variants build on it: :func:`select_top_k_per_row` (``structure: fan_in``, and
``structure: n_m`` with groups of M as its rows) and :func:`select_top_k_blocks` (``structure:
block``, the blocks ranked by their score sums).
"""
from __future__ import annotations

import math
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
    """Map float scores to int32 keys whose signed integer order is the float order.

    ``-0.0`` and ``0.0`` get the same key; NaN gets the smallest key of all.
    """
    scores = scores.detach().to(torch.float32) + 0.0  # a new tensor; +0.0 turns -0.0 into 0.0
    nan = torch.isnan(scores)
    keys = scores.view(torch.int32)
    # Negative floats order backwards by their bits: flip all bits but the sign. In place where
    # possible: on CPU, allocating and freeing layer-sized temporaries costs more than the math.
    flips = keys >> 31
    keys ^= flips.bitwise_and_(0x7FFFFFFF)
    return keys.masked_fill_(nan, torch.iinfo(torch.int32).min)


def _digits(keys: torch.Tensor, shift: int, out: torch.Tensor | None = None) -> torch.Tensor:
    """Byte ``shift // 8`` of the keys as unsigned order (the sign bit flipped in the top byte)."""
    digits = torch.bitwise_right_shift(keys, shift, out=out) if out is not None else keys >> shift
    digits.bitwise_and_(_NUM_BUCKETS - 1)
    return digits.bitwise_xor_(_NUM_BUCKETS // 2) if shift == _SHIFTS[0] else digits


def _compact(running: int, numel: int) -> bool:
    """Whether a running set of ``running`` positions out of ``numel`` is kept as a list."""
    return running * 8 < numel


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
    if len(scores) == 0:
        return []
    selected, ties, still_needed = _select_above_threshold(scores, eligible, k, communicator)
    # What is left per layer are positions whose key equals the threshold exactly; take the
    # lowest global indices. Each rank's slice is contiguous and ranks are ordered by index, so
    # a rank's share is what remains after the tie counts of all lower ranks.
    tie_counts = _tie_counts(ties, communicator)
    ties_before_me = tie_counts[: communicator.rank].sum(dim=0)
    my_share = (still_needed - ties_before_me).clamp(min=0).tolist()
    for layer in range(len(scores)):
        take = min(my_share[layer], ties[layer].numel())
        if take:
            selected[layer][ties[layer][:take]] = True
    return selected


def select_top_k_global(
    scores: Sequence[torch.Tensor],
    eligible: Sequence[torch.Tensor | None],
    k: int,
    communicator: Communicator | None = None,
) -> list[torch.Tensor]:
    """Select the ``k`` largest eligible scores over all layers together (budgets emerge).

    The same rule as :func:`select_top_k` with the layers laid end to end in their order: ties
    are broken by (layer, global index within the layer), whatever the sharding. Arguments and
    result are per layer as in :func:`select_top_k`; ``k`` is one number for the whole pool.
    """
    communicator = communicator or LocalCommunicator()
    if len(scores) == 0:
        return []
    lengths = [s.numel() for s in scores]
    pooled_scores = torch.cat([s.reshape(-1).to(torch.float32) for s in scores])
    pooled_eligible = torch.cat([torch.ones(s.numel(), dtype=torch.bool, device=s.device) if e is None
                                 else e.reshape(-1) for s, e in zip(scores, eligible)])
    (selected,), (ties,), still_needed = _select_above_threshold(
        [pooled_scores], [pooled_eligible], [k], communicator, names=[f"global selection over {len(scores)} layers"])
    # Ties in global order: all of layer 0 (rank by rank), then layer 1, ...
    offsets = torch.tensor([0] + lengths, device=ties.device).cumsum(0)
    layer_of_tie = torch.bucketize(ties, offsets[1:], right=True)
    per_layer_ties = [ties[layer_of_tie == layer] for layer in range(len(scores))]
    tie_counts = _tie_counts(per_layer_ties, communicator)  # [world, layers]
    totals = tie_counts.sum(dim=0)
    before = totals.cumsum(0) - totals + tie_counts[: communicator.rank].sum(dim=0)
    my_share = (int(still_needed[0]) - before).clamp(min=0).tolist()
    for layer, layer_ties in enumerate(per_layer_ties):
        take = min(my_share[layer], layer_ties.numel())
        if take:
            selected[layer_ties[:take]] = True
    return list(torch.split(selected, lengths))


def _tie_counts(ties: Sequence[torch.Tensor], communicator: Communicator) -> torch.Tensor:
    """``[world_size, layers]`` number of tied positions per rank and layer (one all-reduce)."""
    device = ties[0].device if ties else None
    tie_counts = torch.zeros(communicator.world_size, len(ties), dtype=torch.int64, device=device)
    tie_counts[communicator.rank] = torch.tensor([t.numel() for t in ties], dtype=torch.int64, device=device)
    communicator.all_reduce_sum(tie_counts)
    return tie_counts


def _select_above_threshold(
    scores: Sequence[torch.Tensor],
    eligible: Sequence[torch.Tensor | None],
    k: Sequence[int],
    communicator: Communicator,
    names: Sequence[str] | None = None,
) -> tuple[list[torch.Tensor], list[torch.Tensor], torch.Tensor]:
    """The radix passes: per layer, the positions strictly above the k-th largest key, the
    positions (sorted) whose key equals it, and how many of those are still needed globally."""
    num_layers = len(scores)
    device = scores[0].device
    # The running set per layer: eligible positions whose key prefix equals the threshold so far.
    # It is a whole-layer mask while many positions are in it (scores often share their top
    # bytes, e.g. a bonus plus small gradients, so early passes keep most positions) and a list of
    # positions with their keys once few enough remain that gathering them is cheaper than
    # rescanning the layer - from the start if few are eligible (drop: the active weights).
    keys: list[torch.Tensor] = []
    candidates: list[torch.Tensor] = []
    positions: list[torch.Tensor | None] = []
    for layer_scores, layer_eligible in zip(scores, eligible):
        layer_scores = layer_scores.reshape(-1)
        if layer_eligible is None:
            layer_eligible = torch.ones_like(layer_scores, dtype=torch.bool)
        layer_eligible = layer_eligible.reshape(-1)
        if _compact(int(torch.count_nonzero(layer_eligible)), layer_scores.numel()):
            layer_positions = torch.nonzero(layer_eligible, as_tuple=True)[0]
            keys.append(order_keys(layer_scores[layer_positions]))
            positions.append(layer_positions)
            candidates.append(torch.zeros(0, dtype=torch.bool, device=layer_scores.device))
        else:
            keys.append(order_keys(layer_scores))
            positions.append(None)
            candidates.append(layer_eligible.clone())
    selected = [torch.zeros(s.numel(), dtype=torch.bool, device=s.device) for s in scores]
    # Reused by every whole-layer pass: on CPU, allocating and freeing layer-sized temporaries
    # costs more than the arithmetic (and mixed-dtype ops take a slow path, hence the copies).
    digit_buffers = [torch.empty_like(layer_keys) if p is None else None for layer_keys, p in zip(keys, positions)]
    int_flag_buffers = [torch.empty_like(layer_keys) if p is None else None for layer_keys, p in zip(keys, positions)]
    flag_buffers = [torch.empty_like(c) if p is None else None for c, p in zip(candidates, positions)]
    still_needed = torch.tensor(list(k), dtype=torch.int64, device=device)
    # Buckets [256, 512) hold positions out of the running and are never counted.
    histogram = torch.zeros(num_layers, 2 * _NUM_BUCKETS, dtype=torch.int64, device=device)
    for shift in _SHIFTS:
        histogram.zero_()
        digits = []
        for layer in range(num_layers):
            if positions[layer] is None:
                layer_digits = _digits(keys[layer], shift, out=digit_buffers[layer])
                # Positions out of the running move up by 256, out of the counted buckets (an
                # add, not masked_fill_: that is ~8x slower on CPU for an irregular mask).
                out_of_running = torch.logical_not(candidates[layer], out=flag_buffers[layer])
                layer_digits.add_(int_flag_buffers[layer].copy_(out_of_running), alpha=_NUM_BUCKETS)
            else:
                layer_digits = _digits(keys[layer], shift)
            digits.append(layer_digits)
            if layer_digits.numel():
                histogram[layer] = torch.bincount(layer_digits, minlength=2 * _NUM_BUCKETS)
        counts = histogram[:, :_NUM_BUCKETS].contiguous()
        communicator.all_reduce_sum(counts)
        if shift == _SHIFTS[0]:
            available = counts.sum(dim=1)
            short = torch.nonzero(available < still_needed, as_tuple=True)[0]
            if short.numel():
                layer = int(short[0])
                where = names[layer] if names is not None else f"layer {layer}"
                raise ValueError(f"{where}: asked to select {int(still_needed[layer])} positions "
                                 f"but only {int(available[layer])} are eligible")
        # Per layer, the digit d at which the running count (from the top bucket down) reaches
        # the number still needed: buckets above d are taken whole, bucket d is refined next pass.
        descending = counts.flip(1)
        running = descending.cumsum(1)
        first_reaching = torch.searchsorted(running, still_needed.clamp(min=1).unsqueeze(1)).clamp(max=_NUM_BUCKETS - 1)
        taken_above = (running.gather(1, first_reaching) - descending.gather(1, first_reaching)).squeeze(1)
        done = still_needed == 0
        still_needed = still_needed - torch.where(done, 0, taken_above)
        thresholds = ((_NUM_BUCKETS - 1) - first_reaching.squeeze(1)).tolist()
        remaining_here = histogram.gather(1, ((_NUM_BUCKETS - 1) - first_reaching)).squeeze(1).tolist()
        for layer, layer_done in enumerate(done.tolist()):
            layer_digits, threshold = digits[layer], thresholds[layer]
            if layer_done:
                candidates[layer] = torch.zeros_like(candidates[layer])
                positions[layer] = torch.zeros(0, dtype=torch.int64, device=device)
                keys[layer] = keys[layer][:0]
            elif positions[layer] is None:
                above = torch.gt(layer_digits, threshold, out=flag_buffers[layer])
                selected[layer] |= above.logical_and_(candidates[layer])
                torch.eq(layer_digits, threshold, out=candidates[layer])
                if _compact(remaining_here[layer], candidates[layer].numel()):
                    positions[layer] = torch.nonzero(candidates[layer], as_tuple=True)[0]
                    keys[layer] = keys[layer][positions[layer]]
                    digit_buffers[layer] = int_flag_buffers[layer] = flag_buffers[layer] = None
            else:
                selected[layer][positions[layer][layer_digits > threshold]] = True
                at_threshold = layer_digits == threshold
                positions[layer], keys[layer] = positions[layer][at_threshold], keys[layer][at_threshold]

    ties = [torch.nonzero(c, as_tuple=True)[0] if p is None else p for c, p in zip(candidates, positions)]
    return selected, ties, still_needed


def reference_top_k(scores: torch.Tensor, eligible: torch.Tensor | None, k: int) -> torch.Tensor:
    """Plain sort-based implementation of the same rule on a whole (unsharded) tensor.

    Used by tests and as documentation of the rule; O(n log n) and single process only.
    """
    keys = order_keys(scores.reshape(-1)).to(torch.int64)
    index = torch.arange(keys.numel(), device=keys.device)
    # Sort by key descending, then index ascending: the composite fits in int64.
    composite = keys * (1 << 31) + ((1 << 31) - 1 - index) if keys.numel() < (1 << 31) else None
    if composite is None:  # pragma: no cover - tensors that large are not used in tests
        raise ValueError("reference_top_k supports tensors of fewer than 2**31 elements")
    if eligible is not None:
        composite = torch.where(eligible.reshape(-1), composite, torch.iinfo(torch.int64).min)
    selected = torch.zeros(keys.numel(), dtype=torch.bool, device=keys.device)
    if k:
        selected[torch.topk(composite, k).indices] = True
    return selected


def split_rows(slices: Sequence[LocalSlice], row_lengths: Sequence[int], numels: Sequence[int],
               communicator: Communicator | None = None) -> list[list[int]]:
    """Per layer, the rows (of ``row_length`` elements) that more than one rank holds a part of,
    the same list on every rank (one all-reduce of every rank's piece boundaries)."""
    communicator = communicator or LocalCommunicator()
    bounds = torch.zeros(len(slices), communicator.world_size, 2, dtype=torch.int64)
    for layer, piece in enumerate(slices):
        bounds[layer, communicator.rank] = torch.tensor([piece.start, piece.start + piece.length])
    if communicator.world_size > 1:
        communicator.all_reduce_sum(bounds)
    rows = []
    for layer, (row_length, numel) in enumerate(zip(row_lengths, numels)):
        cuts = {int(b) for b in bounds[layer].reshape(-1).tolist() if 0 < b < numel and b % row_length}
        rows.append(sorted({cut // row_length for cut in cuts}))
    return rows


def select_top_k_per_row(
    scores: Sequence[torch.Tensor],
    eligible: Sequence[torch.Tensor | None],
    k: Sequence[int],
    slices: Sequence[LocalSlice],
    row_lengths: Sequence[int],
    shared_rows: Sequence[Sequence[int]],
    communicator: Communicator | None = None,
) -> list[torch.Tensor]:
    """Select, per layer, the ``k[l]`` largest eligible scores in every row (constant fan-in).

    The rule of :func:`select_top_k` row by row: float32 order, NaN lowest, ties by the lower
    global index. ``slices`` place each layer's local 1-D piece in the flattened parameter;
    ``row_lengths`` are the rows' sizes (the fan-in); ``shared_rows`` (:func:`split_rows`) are
    the rows split across ranks: those go through the distributed selection, every row this rank
    holds whole is selected locally. Each row must have at least ``k`` eligible positions.
    """
    communicator = communicator or LocalCommunicator()
    selected = [torch.zeros(score.numel(), dtype=torch.bool, device=score.device) for score in scores]
    pieces, pieces_eligible, pieces_k, placements = [], [], [], []
    for layer, (score, allowed, count, piece, row_length) in enumerate(
            zip(scores, eligible, k, slices, row_lengths)):
        shared = set(shared_rows[layer])
        end = piece.start + piece.length
        for row in sorted(shared):  # every rank lists every shared row, empty where it holds none of it
            begin, stop = max(row * row_length, piece.start), min((row + 1) * row_length, end)
            begin, stop = (begin, stop) if begin < stop else (piece.start, piece.start)
            local = slice(begin - piece.start, stop - piece.start)
            pieces.append(score[local])
            pieces_eligible.append(None if allowed is None else allowed[local])
            pieces_k.append(count)
            placements.append((layer, local))
        # the rows this piece holds whole: consecutive, and no other rank's boundary cuts them (shared
        # rows can only be at the piece's ends; trimmed in case a caller lists more)
        first, last = -(-piece.start // row_length), end // row_length  # [first, last)
        while first < last and first in shared:
            first += 1
        while last > first and last - 1 in shared:
            last -= 1
        rows = last - first
        if rows <= 0 or count == 0:
            continue
        offset = first * row_length - piece.start
        block = slice(offset, offset + rows * row_length)
        keys = order_keys(score[block]).to(torch.int64).view(rows, row_length)
        if allowed is not None:
            keys = keys.masked_fill(~allowed[block].view(rows, row_length), torch.iinfo(torch.int64).min)
        order = torch.sort(keys, dim=1, descending=True, stable=True).indices[:, :count]
        if allowed is not None and not bool(allowed[block].view(rows, row_length).gather(1, order).all()):
            raise ValueError(f"layer {layer}: a row has fewer than {count} eligible positions")
        chosen = torch.zeros(rows, row_length, dtype=torch.bool, device=score.device)
        chosen.scatter_(1, order, True)
        selected[layer][block] = chosen.view(-1)
    if pieces:
        for (layer, local), chosen in zip(placements, select_top_k(pieces, pieces_eligible, pieces_k, communicator)):
            selected[layer][local] |= chosen
    return selected


def matrix_shape(shape: Sequence[int]) -> tuple[int, int]:
    """A weight viewed as a matrix: ``(shape[0], the product of the rest)`` (``(numel, 1)`` for 1-D)."""
    shape = tuple(shape)
    return (shape[0], math.prod(shape[1:])) if shape else (1, 1)


def split_block_rows(slices: Sequence[LocalSlice], matrix_shapes: Sequence[tuple[int, int]],
                     block_shapes: Sequence[tuple[int, int]],
                     communicator: Communicator | None = None) -> list[list[int]]:
    """Per layer, the block-rows (``block_rows`` consecutive rows) that more than one rank holds a
    part of, the same list on every rank (one all-reduce of every rank's piece boundaries)."""
    return split_rows(slices, [block[0] * cols for (_, cols), block in zip(matrix_shapes, block_shapes)],
                      [rows * cols for rows, cols in matrix_shapes], communicator)


def block_scores(scores: torch.Tensor, cols: int, block_shape: tuple[int, int]) -> torch.Tensor:
    """The sums of ``scores`` (whole block-rows of a ``? x cols`` matrix, flattened) over each block,
    in block order (row-major over the block grid), as float32.

    The sum runs in float64 over the block's elements in one fixed order (row-major within the
    block), whatever the number of block-rows, so a block scores the same on every rank."""
    block_rows, block_cols = block_shape
    grid_rows, grid_cols = scores.numel() // (block_rows * cols), cols // block_cols
    parts = (scores.detach().to(torch.float32).to(torch.float64).reshape(grid_rows, block_rows, grid_cols, block_cols)
             .permute(1, 3, 0, 2).reshape(block_rows * block_cols, grid_rows * grid_cols))
    total = parts[0].clone()
    for part in parts[1:]:
        total += part
    return total.to(torch.float32)


def _block_eligible(allowed: torch.Tensor, cols: int, block_shape: tuple[int, int]) -> torch.Tensor:
    """Per block (block order): whether all of its elements are eligible."""
    block_rows, block_cols = block_shape
    grid_rows, grid_cols = allowed.numel() // (block_rows * cols), cols // block_cols
    return allowed.reshape(grid_rows, block_rows, grid_cols, block_cols).all(dim=3).all(dim=1).reshape(-1)


def _expand_blocks(chosen: torch.Tensor, cols: int, block_shape: tuple[int, int]) -> torch.Tensor:
    """Per-block decisions (whole block-rows, block order) as a flat element mask."""
    block_rows, block_cols = block_shape
    grid = chosen.view(-1, 1, cols // block_cols, 1)
    return grid.expand(-1, block_rows, -1, block_cols).reshape(-1)


def select_top_k_blocks(
    scores: Sequence[torch.Tensor],
    eligible: Sequence[torch.Tensor | None],
    k: Sequence[int],
    slices: Sequence[LocalSlice],
    matrix_shapes: Sequence[tuple[int, int]],
    block_shapes: Sequence[tuple[int, int]],
    shared_block_rows: Sequence[Sequence[int]],
    communicator: Communicator | None = None,
) -> list[torch.Tensor]:
    """Select, per layer, the ``k[l]`` blocks with the largest score sums (block sparsity).

    A layer is a ``rows x cols`` matrix (``matrix_shapes``) tiled by ``block_rows x block_cols``
    blocks (``block_shapes``). A block's score is the sum of its elements' scores
    (:func:`block_scores`); it is eligible when all its elements are. The rule is
    :func:`select_top_k`'s over the blocks: float32 order, NaN lowest, ties by the lower global
    block index (row-major over the block grid). ``slices`` place each layer's local 1-D piece in
    the flattened parameter; ``shared_block_rows`` (:func:`split_block_rows`) are the block-rows
    split across ranks: their element scores are summed over ranks (one all-reduce, sized by those
    block-rows only), each is scored by the rank holding its first element, and that rank's
    decisions reach the others (one all-reduce). Block-rows a rank holds whole are scored locally.

    Returns per layer a bool tensor like ``scores``: True on the elements of the selected blocks.
    """
    communicator = communicator or LocalCommunicator()
    device = scores[0].device if len(scores) else None
    selected = [torch.zeros(score.numel(), dtype=torch.bool, device=score.device) for score in scores]
    # The shared block-rows' element scores and ineligible flags, assembled from every rank's part.
    segments = []  # (layer, block_row, offset into the buffer)
    size = 0
    for layer, ((_, cols), block) in enumerate(zip(matrix_shapes, block_shapes)):
        for block_row in shared_block_rows[layer]:
            segments.append((layer, block_row, size))
            size += block[0] * cols
    shared_scores = shared_flags = None
    if segments:
        buffer = torch.zeros(2, size, dtype=torch.float32, device=device)
        for layer, block_row, offset in segments:
            piece, row_length = slices[layer], block_shapes[layer][0] * matrix_shapes[layer][1]
            begin = max(block_row * row_length, piece.start)
            stop = min((block_row + 1) * row_length, piece.start + piece.length)
            if begin < stop:
                local = slice(begin - piece.start, stop - piece.start)
                place = slice(offset + begin - block_row * row_length, offset + stop - block_row * row_length)
                buffer[0, place] = scores[layer][local].detach().to(torch.float32)
                if eligible[layer] is not None:
                    buffer[1, place] = (~eligible[layer][local]).to(torch.float32)
        communicator.all_reduce_sum(buffer)  # the parts are disjoint: x + 0 is x (NaN and Inf included)
        shared_scores, shared_flags = buffer[0], buffer[1] == 0
    candidates, candidates_eligible, whole_rows, owned = [], [], [], []
    for layer, (score, allowed, piece, (_, cols), block) in enumerate(
            zip(scores, eligible, slices, matrix_shapes, block_shapes)):
        row_length = block[0] * cols
        first, stop = -(-piece.start // row_length), (piece.start + piece.length) // row_length
        whole = range(first, max(stop, first))
        offset = first * row_length - piece.start
        part = slice(offset, offset + len(whole) * row_length)
        layer_scores = [block_scores(score[part], cols, block)]
        layer_eligible = [torch.ones(layer_scores[0].numel(), dtype=torch.bool, device=score.device)
                          if allowed is None else _block_eligible(allowed[part], cols, block)]
        mine = [(block_row, buffer_offset) for segment_layer, block_row, buffer_offset in segments
                if segment_layer == layer and piece.start <= block_row * row_length < piece.start + piece.length]
        for block_row, buffer_offset in mine:  # at most one: it starts here and runs past this piece
            span = slice(buffer_offset, buffer_offset + row_length)
            layer_scores.append(block_scores(shared_scores[span], cols, block))
            layer_eligible.append(_block_eligible(shared_flags[span], cols, block))
        candidates.append(torch.cat(layer_scores))
        candidates_eligible.append(torch.cat(layer_eligible))
        whole_rows.append((part, len(whole) * (cols // block[1])))
        owned.append(mine)
    chosen = select_top_k(candidates, candidates_eligible, k, communicator)
    for layer, ((part, whole_blocks), layer_chosen) in enumerate(zip(whole_rows, chosen)):
        if whole_blocks:
            selected[layer][part] = _expand_blocks(layer_chosen[:whole_blocks], matrix_shapes[layer][1],
                                                   block_shapes[layer])
    if segments:
        # The owners' decisions on the shared blocks, for every rank that holds a part of them.
        block_offsets, blocks = {}, 0
        for layer, block_row, _ in segments:
            block_offsets[(layer, block_row)] = blocks
            blocks += matrix_shapes[layer][1] // block_shapes[layer][1]
        decisions = torch.zeros(blocks, dtype=torch.int32, device=device)
        for layer, mine in enumerate(owned):
            grid_cols = matrix_shapes[layer][1] // block_shapes[layer][1]
            start = whole_rows[layer][1]
            for block_row, _ in mine:
                at = block_offsets[(layer, block_row)]
                decisions[at:at + grid_cols] = chosen[layer][start:start + grid_cols].to(torch.int32)
                start += grid_cols
        communicator.all_reduce_sum(decisions)
        for layer, block_row, _ in segments:
            piece, cols, block = slices[layer], matrix_shapes[layer][1], block_shapes[layer]
            row_length = block[0] * cols
            begin = max(block_row * row_length, piece.start)
            stop = min((block_row + 1) * row_length, piece.start + piece.length)
            if begin < stop:
                at = block_offsets[(layer, block_row)]
                row_mask = _expand_blocks(decisions[at:at + cols // block[1]].bool(), cols, block)
                selected[layer][begin - piece.start:stop - piece.start] = \
                    row_mask[begin - block_row * row_length:stop - block_row * row_length]
    return selected
