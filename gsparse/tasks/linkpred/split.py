"""Train/validation/test splits of an edge list for link prediction, with negative pairs.

Everything is vectorised numpy. A directed pair ``(u, v)`` is encoded as the int64 key
``u * num_nodes + v``; membership in the graph is a binary search in the sorted unique keys
of all its edges, which keeps memory at one int64 per distinct edge.

Negatives: each part gets one negative per positive. The first ``n // 2`` keep the source of
the matching positive and draw a new destination ("corrupt the destination"); the rest draw both
endpoints uniformly ("corrupt both"). A negative is never a self loop and never a directed edge
of the full graph (every edge, every time). Rejected draws are redrawn in vectorised rounds;
on a small graph the rows still rejected after those rounds are drawn exactly from the list of
free pairs, and :class:`NegativeSamplingError` is raised where no valid negative exists.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

PARTS = ("train", "val", "test")
MAX_REJECTION_ROUNDS = 64
# Below this many possible pairs the free pairs can be listed outright (32 MiB of int64 keys).
EXACT_FALLBACK_MAX_PAIRS = 1 << 22


class NegativeSamplingError(RuntimeError):
    """The graph is too dense to find a valid negative for some positive."""


@dataclass
class LinkSplit:
    """Positive edges of each part (``[n, 2]`` int64 ``(src, dst)``) and one negative per positive."""

    train_pos: np.ndarray
    val_pos: np.ndarray
    test_pos: np.ndarray
    train_neg: np.ndarray
    val_neg: np.ndarray
    test_neg: np.ndarray
    num_nodes: int

    def pairs_and_labels(self, part: str) -> tuple[np.ndarray, np.ndarray]:
        """The part's positives then its negatives as ``[n, 2]`` int64, with float32 labels 1 then 0."""
        if part not in PARTS:
            raise ValueError(f"part must be one of {PARTS}, got {part!r}")
        positives = getattr(self, f"{part}_pos")
        negatives = getattr(self, f"{part}_neg")
        pairs = np.concatenate([positives, negatives]).astype(np.int64, copy=False)
        labels = np.concatenate(
            [np.ones(len(positives), dtype=np.float32), np.zeros(len(negatives), dtype=np.float32)]
        )
        return pairs, labels


# ---------------------------------------------------------------------------------------------
# Pair keys


def pair_keys(src: np.ndarray, dst: np.ndarray, num_nodes: int) -> np.ndarray:
    """int64 key ``src * num_nodes + dst`` of each directed pair."""
    return src.astype(np.int64, copy=False) * np.int64(num_nodes) + dst.astype(np.int64, copy=False)


def sorted_unique(keys: np.ndarray) -> np.ndarray:
    """Sorted distinct values of ``keys`` (as ``np.unique``)."""
    # Sort-and-mask: over 10x faster than np.unique on millions of int64 keys with numpy 2.4.
    ordered = np.sort(keys)
    first = np.ones(len(ordered), dtype=bool)
    np.not_equal(ordered[1:], ordered[:-1], out=first[1:])
    return ordered[first]


def contains_sorted(sorted_keys: np.ndarray, keys: np.ndarray) -> np.ndarray:
    """Boolean mask: which of ``keys`` occur in the sorted unique array ``sorted_keys``."""
    found = np.zeros(len(keys), dtype=bool)
    if len(sorted_keys) == 0 or len(keys) == 0:
        return found
    # Binary searches for ascending keys walk memory almost in order; for keys in random order
    # every search misses the cache at each level, which is ~50x slower at millions of keys.
    order = np.argsort(keys)
    ascending = keys[order]
    positions = np.searchsorted(sorted_keys, ascending)
    np.minimum(positions, len(sorted_keys) - 1, out=positions)
    found[order] = sorted_keys[positions] == ascending
    return found


def _as_edge_pairs(src: np.ndarray, dst: np.ndarray, rows: np.ndarray) -> np.ndarray:
    return np.stack([src[rows], dst[rows]], axis=1).astype(np.int64, copy=False)


def _validate_edges(src, dst, num_nodes: int, time=None) -> tuple[np.ndarray, np.ndarray]:
    src = np.asarray(src)
    dst = np.asarray(dst)
    if src.ndim != 1 or src.shape != dst.shape or (time is not None and np.shape(time) != src.shape):
        raise ValueError("src, dst (and time) must be 1-D arrays of the same length")
    if not (np.issubdtype(src.dtype, np.integer) and np.issubdtype(dst.dtype, np.integer)):
        raise TypeError("src and dst must hold integer node ids")
    num_nodes = int(num_nodes)
    if num_nodes < 1 or num_nodes > math.isqrt(np.iinfo(np.int64).max):
        raise ValueError(f"num_nodes={num_nodes} must be >= 1 and small enough for int64 pair keys")
    if len(src) and (min(src.min(), dst.min()) < 0 or max(src.max(), dst.max()) >= num_nodes):
        raise ValueError(f"node ids must lie in [0, {num_nodes})")
    return src, dst


def _fraction_count(fraction: float, total: int) -> int:
    """``floor(fraction * total)``, robust to float error such as ``0.29 * 100 = 28.999...``."""
    if not 0.0 <= fraction <= 1.0:
        raise ValueError(f"fractions must lie in [0, 1], got {fraction}")
    return math.floor(round(fraction * total, 6))


# ---------------------------------------------------------------------------------------------
# Negatives


def _free_pair_keys(graph_keys: np.ndarray, num_nodes: int) -> np.ndarray:
    """Sorted keys of every pair that is neither an edge nor a self loop (small graphs only)."""
    all_keys = np.arange(num_nodes * num_nodes, dtype=np.int64)
    free = np.ones(len(all_keys), dtype=bool)
    free[graph_keys] = False
    free[np.arange(num_nodes, dtype=np.int64) * (num_nodes + 1)] = False
    return all_keys[free]


def _draw_exactly(sources, keep_source, graph_keys, num_nodes, rng) -> tuple[np.ndarray, np.ndarray]:
    """Uniform valid negatives drawn from the listed free pairs; a row's source is kept where asked."""
    free = _free_pair_keys(graph_keys, num_nodes)
    if len(free) == 0:
        raise NegativeSamplingError("the graph is complete: every non-loop pair is an edge")
    lows = np.zeros(len(sources), dtype=np.int64)
    counts = np.full(len(sources), len(free), dtype=np.int64)
    # Free pairs of source u form the contiguous run of keys in [u * n, (u + 1) * n).
    kept = sources[keep_source]
    lows[keep_source] = np.searchsorted(free, kept * num_nodes)
    counts[keep_source] = np.searchsorted(free, (kept + 1) * num_nodes) - lows[keep_source]
    if (counts == 0).any():
        stuck = np.unique(sources[counts == 0])
        raise NegativeSamplingError(
            f"node(s) {stuck[:10].tolist()} have an edge to every other node: no destination "
            "can be corrupted for their positives"
        )
    offsets = np.floor(rng.random(len(sources)) * counts).astype(np.int64)
    keys = free[lows + np.minimum(offsets, counts - 1)]
    return keys // num_nodes, keys % num_nodes


def sample_negatives(
    positives: np.ndarray, graph_keys: np.ndarray, num_nodes: int, rng: np.random.Generator,
    keep_source: np.ndarray | None = None,
) -> np.ndarray:
    """One negative per row of ``positives`` (``[n, 2]``): the first ``n // 2`` keep the positive's
    source and corrupt the destination, the rest corrupt both endpoints (or, given the boolean
    ``keep_source`` per row, the rows it marks keep their source).

    ``graph_keys`` are the sorted unique pair keys of the full graph; no negative is one of them
    and none is a self loop. Raises :class:`NegativeSamplingError` where that is impossible.
    """
    count = len(positives)
    if keep_source is None:
        keep_source = np.arange(count) < count // 2
    src = rng.integers(0, num_nodes, size=count, dtype=np.int64)
    src[keep_source] = positives[keep_source, 0]
    dst = rng.integers(0, num_nodes, size=count, dtype=np.int64)

    pending = np.flatnonzero((src == dst) | contains_sorted(graph_keys, pair_keys(src, dst, num_nodes)))
    for _ in range(MAX_REJECTION_ROUNDS):
        if len(pending) == 0:
            break
        redraw_source = pending[~keep_source[pending]]
        src[redraw_source] = rng.integers(0, num_nodes, size=len(redraw_source), dtype=np.int64)
        dst[pending] = rng.integers(0, num_nodes, size=len(pending), dtype=np.int64)
        rejected = (src[pending] == dst[pending]) | contains_sorted(
            graph_keys, pair_keys(src[pending], dst[pending], num_nodes)
        )
        pending = pending[rejected]

    if len(pending):
        if num_nodes * num_nodes > EXACT_FALLBACK_MAX_PAIRS:
            raise NegativeSamplingError(
                f"{len(pending)} negatives still rejected after {MAX_REJECTION_ROUNDS} rounds of "
                "redrawing: the graph (or the neighbourhood of some source) is too dense"
            )
        src[pending], dst[pending] = _draw_exactly(src[pending], keep_source[pending], graph_keys, num_nodes, rng)
    return np.stack([src, dst], axis=1)


def _with_negatives(parts: dict[str, np.ndarray], graph_keys, num_nodes, rng) -> LinkSplit:
    negatives = {f"{name}_neg": sample_negatives(pos, graph_keys, num_nodes, rng) for name, pos in parts.items()}
    positives = {f"{name}_pos": pos for name, pos in parts.items()}
    return LinkSplit(**positives, **negatives, num_nodes=num_nodes)


# ---------------------------------------------------------------------------------------------
# Splits


def _draw_train_val(pool, n_train, n_val, disjoint_val, rng) -> tuple[np.ndarray, np.ndarray]:
    """Random train and validation rows from ``pool``, each sorted (so chronological)."""
    n_train = min(n_train, len(pool))
    if disjoint_val:
        n_val = min(n_val, len(pool) - n_train)
        chosen = rng.choice(len(pool), size=n_train + n_val, replace=False)
        train, val = chosen[:n_train], chosen[n_train:]
    else:
        n_val = min(n_val, len(pool))
        train = rng.choice(len(pool), size=n_train, replace=False)
        val = rng.choice(len(pool), size=n_val, replace=False)
    return pool[np.sort(train)], pool[np.sort(val)]


def temporal_split(
    src,
    dst,
    time,
    num_nodes: int,
    seed: int,
    test_fraction: float = 0.2,
    train_fraction: float = 0.6,
    val_fraction: float = 0.2,
    disjoint_val: bool = False,
    exclude_test_pairs_from_train: bool = True,
) -> LinkSplit:
    """Temporal link-prediction split (the DST-EE / IISWC'21 temporal-walk protocol), with negatives.

    Edges are stable-sorted by time. The last ``floor(test_fraction * |E|)`` of them are the test
    positives; from the earlier edges (the history), ``floor(train_fraction * |E|)`` train and
    ``floor(val_fraction * |E|)`` validation positives are drawn at random without replacement,
    independently of each other (validation may overlap train, as in the reference) unless
    ``disjoint_val``. Repeated temporal edges stay separate rows. Each part is in time order.

    ``exclude_test_pairs_from_train`` (default) first drops from the history every edge whose
    ``(src, dst)`` pair is also a test positive, so test pairs are links never seen in training;
    train/val sizes become ``min(requested, available)``. With False this is the reference
    protocol exactly, and a pair repeated over time can be in both train and test.
    """
    src, dst = _validate_edges(src, dst, num_nodes, time)
    num_nodes = int(num_nodes)
    if disjoint_val and train_fraction + val_fraction > 1.0 - test_fraction + 1e-9:
        raise ValueError("disjoint_val needs train_fraction + val_fraction <= 1 - test_fraction")
    total = len(src)
    n_test = _fraction_count(test_fraction, total)
    n_train = _fraction_count(train_fraction, total)
    n_val = _fraction_count(val_fraction, total)
    rng = np.random.default_rng(seed)

    chronological = np.argsort(np.asarray(time), kind="stable")
    history, test_rows = chronological[: total - n_test], chronological[total - n_test :]
    keys = pair_keys(src, dst, num_nodes)
    if exclude_test_pairs_from_train:
        test_keys = sorted_unique(keys[test_rows])
        history = history[~contains_sorted(test_keys, keys[history])]
    train_rows, val_rows = _draw_train_val(history, n_train, n_val, disjoint_val, rng)

    parts = {name: _as_edge_pairs(src, dst, rows) for name, rows in
             (("train", train_rows), ("val", val_rows), ("test", test_rows))}
    graph_keys = sorted_unique(keys)
    del keys
    return _with_negatives(parts, graph_keys, num_nodes, rng)


def random_split(
    src, dst, num_nodes: int, seed: int, test_fraction: float = 0.2, val_fraction: float = 0.1
) -> LinkSplit:
    """Uniformly random split of the edges into disjoint parts covering them all, with negatives.

    ``floor(test_fraction * |E|)`` edges go to test, ``floor(val_fraction * |E|)`` to validation,
    the rest to train; each part keeps the input order of its edges.
    """
    src, dst = _validate_edges(src, dst, num_nodes)
    num_nodes = int(num_nodes)
    total = len(src)
    n_test = _fraction_count(test_fraction, total)
    n_val = _fraction_count(val_fraction, total)
    if n_test + n_val > total:
        raise ValueError("test_fraction + val_fraction must not exceed 1")
    rng = np.random.default_rng(seed)

    permutation = rng.permutation(total)
    test_rows = np.sort(permutation[:n_test])
    val_rows = np.sort(permutation[n_test : n_test + n_val])
    train_rows = np.sort(permutation[n_test + n_val :])
    parts = {name: _as_edge_pairs(src, dst, rows) for name, rows in
             (("train", train_rows), ("val", val_rows), ("test", test_rows))}
    return _with_negatives(parts, sorted_unique(pair_keys(src, dst, num_nodes)), num_nodes, rng)
