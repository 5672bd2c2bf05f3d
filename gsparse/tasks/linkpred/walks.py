"""Temporal random walks and skip-gram node embeddings for link-prediction edge features.

This follows the temporal random-walk pipeline of the IISWC'21 reference code used by DST-EE:

* ``walks_per_node`` walks start at every node (nodes without out-edges give walks of length 1);
  a walk starts "before all time", so any out-edge may be its first step, and afterwards it only
  follows out-edges whose timestamp is *strictly* later than the edge it arrived by. It stops
  early when no such edge exists.
* Among the allowed out-edges of node ``v``, edge ``e`` is chosen with probability proportional
  to ``exp((t_e - t_prev) / (max_t(v) - min_t(v)))``, where the span is over *all* out-edges of
  ``v`` (uniform when the span is 0). ``t_prev`` is the same for every candidate, so it cancels
  in the normalisation: the probabilities equal those for a start at time 0.
* Skip-gram with negative sampling (SGNS) over the walks gives ``dim``-dimensional embeddings
  (the centre table); negatives are drawn from the unigram distribution of walk nodes raised to
  the power 0.75, as in word2vec.
* An edge's feature is the concatenation of its two endpoint embeddings.

All walkers advance together with array operations; the only Python loop is over walk steps.
"""
from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Iterator

import numpy as np
import torch

_PAIR_CHUNK_BATCHES = 64  # batches of pairs generated (and shuffled) together; bounds memory


@dataclass(frozen=True)
class TemporalGraph:
    """Out-edges in CSR form, sorted by (source, time).

    Edge arrays are indexed by sorted position; ``edge_id`` maps a position back to the index of
    the edge in the arrays passed to :meth:`from_edges`.
    """

    num_nodes: int
    num_ranks: int  # distinct timestamps
    offsets: np.ndarray  # [num_nodes + 1] int64: out-edges of v are positions offsets[v]:offsets[v+1]
    dst: np.ndarray  # [E] int64
    time: np.ndarray  # [E] original timestamps
    time_rank: np.ndarray  # [E] int64 dense rank of the timestamp, 1-based (0 means "before all")
    edge_id: np.ndarray  # [E] int64
    search_key: np.ndarray  # [E] int64 src * (num_ranks + 1) + time_rank, ascending
    cumulative_weight: np.ndarray  # [E + 1] float64 prefix sums of the transition weights

    @classmethod
    def from_edges(cls, src, dst, time, num_nodes: int) -> "TemporalGraph":
        """Build the graph from parallel arrays of directed, timestamped edges."""
        src = np.asarray(src, dtype=np.int64).reshape(-1)
        dst = np.asarray(dst, dtype=np.int64).reshape(-1)
        time = np.asarray(time).reshape(-1)
        if not (len(src) == len(dst) == len(time)):
            raise ValueError(f"src, dst and time differ in length: {len(src)}, {len(dst)}, {len(time)}")
        if len(src) and (min(src.min(), dst.min()) < 0 or max(src.max(), dst.max()) >= num_nodes):
            raise ValueError(f"node ids must lie in [0, {num_nodes})")
        if not (np.issubdtype(time.dtype, np.integer) or np.issubdtype(time.dtype, np.floating)):
            raise TypeError(f"timestamps must be integers or floats, not {time.dtype}")
        if np.issubdtype(time.dtype, np.floating) and np.isnan(time).any():
            raise ValueError("timestamps contain NaN")

        unique_times, rank0 = np.unique(time, return_inverse=True)
        num_ranks = len(unique_times)
        if num_nodes * (num_ranks + 1) >= np.iinfo(np.int64).max:
            raise ValueError("graph too large for int64 search keys")
        time_rank = rank0.reshape(-1).astype(np.int64) + 1
        key = src * (num_ranks + 1) + time_rank
        order = np.argsort(key, kind="stable")
        src, dst, time, time_rank, key = src[order], dst[order], time[order], time_rank[order], key[order]
        offsets = np.zeros(num_nodes + 1, dtype=np.int64)
        np.cumsum(np.bincount(src, minlength=num_nodes), out=offsets[1:])
        weight = _transition_weights(src, time, offsets)
        cumulative_weight = np.concatenate([[0.0], np.cumsum(weight)])
        edge_id = order.astype(np.int64)
        return cls(num_nodes, num_ranks, offsets, dst, time, time_rank, edge_id, key, cumulative_weight)

    @property
    def num_edges(self) -> int:
        return len(self.dst)


def _transition_weights(src_sorted: np.ndarray, time_sorted: np.ndarray, offsets: np.ndarray) -> np.ndarray:
    """``exp((t_e - min_t(src)) / (max_t(src) - min_t(src)))`` per edge, 1 where the span is 0.

    Measured from the node's earliest time rather than ``t_prev``, so every weight lies in
    ``[1, e]`` (no overflow, and the prefix sums stay strictly increasing); the shift cancels
    when normalising over a node's allowed edges.
    """
    if len(src_sorted) == 0:
        return np.zeros(0)
    time = time_sorted.astype(np.float64)
    first = offsets[:-1][src_sorted]
    last = offsets[1:][src_sorted] - 1
    span = time[last] - time[first]
    relative = np.divide(time - time[first], span, out=np.zeros_like(time), where=span > 0)
    return np.exp(relative)


def temporal_walks(
    graph: TemporalGraph,
    walks_per_node: int = 10,
    walk_length: int = 5,
    seed: int = 0,
    start_nodes=None,
    return_edges: bool = False,
):
    """Exponentially time-weighted temporal random walks, all walkers stepped together.

    Returns ``(walks, lengths)``: ``walks`` is ``[W, walk_length]`` int64 padded with -1, where
    ``W = len(start_nodes) * walks_per_node`` and the walks of each start node are consecutive;
    ``lengths`` is ``[W]`` int64 (node count, at least 1). With ``return_edges=True`` a third
    array ``[W, walk_length - 1]`` holds the index (into the arrays given to
    :meth:`TemporalGraph.from_edges`) of the edge taken at each step, -1 padded.
    """
    if walk_length < 1 or walks_per_node < 0:
        raise ValueError("walk_length must be >= 1 and walks_per_node >= 0")
    starts = np.arange(graph.num_nodes) if start_nodes is None else np.asarray(start_nodes, dtype=np.int64)
    if len(starts) and (starts.min() < 0 or starts.max() >= graph.num_nodes):
        raise ValueError(f"start nodes must lie in [0, {graph.num_nodes})")
    rng = np.random.default_rng(seed)
    num_walks = len(starts) * walks_per_node
    walks = np.full((num_walks, walk_length), -1, dtype=np.int64)
    walks[:, 0] = np.repeat(starts, walks_per_node)
    edges = np.full((num_walks, walk_length - 1), -1, dtype=np.int64)
    lengths = np.ones(num_walks, dtype=np.int64)

    active = np.arange(num_walks)
    current = walks[:, 0].copy()
    previous_rank = np.zeros(num_walks, dtype=np.int64)  # rank 0: before every edge
    for step in range(1, walk_length):
        lo, hi = _allowed_edge_ranges(graph, current, previous_rank)
        can_move = lo < hi
        active, current, lo, hi = active[can_move], current[can_move], lo[can_move], hi[can_move]
        if len(active) == 0:
            break
        chosen = _draw_weighted_edges(graph, lo, hi, rng)
        current = graph.dst[chosen]
        previous_rank = graph.time_rank[chosen]
        walks[active, step] = current
        edges[active, step - 1] = graph.edge_id[chosen]
        lengths[active] += 1
    return (walks, lengths, edges) if return_edges else (walks, lengths)


def _allowed_edge_ranges(graph: TemporalGraph, nodes: np.ndarray, previous_rank: np.ndarray):
    """Sorted positions ``[lo, hi)`` of each node's out-edges later than ``previous_rank``.

    Keys are ``src * (num_ranks + 1) + rank``, so one global searchsorted finds, within each
    node's segment, the first edge whose rank is strictly greater.
    """
    lo = np.searchsorted(graph.search_key, nodes * (graph.num_ranks + 1) + previous_rank, side="right")
    hi = graph.offsets[nodes + 1]
    return lo, hi


def _draw_weighted_edges(graph: TemporalGraph, lo: np.ndarray, hi: np.ndarray, rng) -> np.ndarray:
    """One edge per range ``[lo, hi)`` (non-empty), drawn proportionally to its weight.

    Inverse CDF on the global prefix sums: a uniform point in ``[C[lo], C[hi])`` falls in edge
    ``e``'s interval ``[C[e], C[e + 1])`` with probability ``w_e / sum(w[lo:hi])``.
    """
    cumulative = graph.cumulative_weight
    target = cumulative[lo] + rng.random(len(lo)) * (cumulative[hi] - cumulative[lo])
    chosen = np.searchsorted(cumulative, target, side="right") - 1
    return np.clip(chosen, lo, hi - 1)  # guards against rounding at the segment ends


def _context_distances(walk_length: int, window: int) -> range:
    return range(1, min(window, walk_length - 1) + 1)


def context_pairs(walks: np.ndarray, window: int) -> tuple[np.ndarray, np.ndarray]:
    """All (centre, context) pairs at distance 1..window within each -1 padded walk, both ways."""
    centres, contexts = [], []
    for distance in _context_distances(walks.shape[1], window):
        left, right = walks[:, :-distance], walks[:, distance:]
        valid = right >= 0  # right valid implies left valid
        left, right = left[valid], right[valid]
        centres += [left, right]
        contexts += [right, left]
    if not centres:
        return np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.int64)
    return np.concatenate(centres), np.concatenate(contexts)


def _shuffled_pair_batches(
    walks: np.ndarray, window: int, batch_size: int, generator: torch.Generator
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Batches of (centre, context) pairs in random order, built a chunk of walks at a time."""
    walk_length = walks.shape[1]
    max_pairs_per_walk = max(1, 2 * sum(walk_length - d for d in _context_distances(walk_length, window)))
    walks_per_chunk = max(1, batch_size * _PAIR_CHUNK_BATCHES // max_pairs_per_walk)
    walk_order = torch.randperm(len(walks), generator=generator).numpy()
    for start in range(0, len(walks), walks_per_chunk):
        chunk = walk_order[start : start + walks_per_chunk]
        centres, contexts = context_pairs(walks[chunk], window)
        pair_order = torch.randperm(len(centres), generator=generator)
        centres, contexts = torch.from_numpy(centres)[pair_order], torch.from_numpy(contexts)[pair_order]
        for first in range(0, len(centres), batch_size):
            yield centres[first : first + batch_size], contexts[first : first + batch_size]


def _noise_cdf(walks: np.ndarray, num_nodes: int) -> torch.Tensor:
    """CDF of the word2vec noise distribution: walk-node frequency to the power 0.75."""
    counts = np.bincount(walks[walks >= 0], minlength=num_nodes).astype(np.float64)
    noise = torch.from_numpy(counts**0.75)
    return torch.cumsum(noise, 0) / noise.sum()


def sgns_gradients(centre_vectors: torch.Tensor, context_vectors: torch.Tensor):
    """Gradients of the skip-gram negative-sampling loss, averaged over the ``B`` pairs.

    ``context_vectors`` is ``[B, 1 + negatives, dim]``: the true context first, then the noise
    nodes. The loss is ``-mean(log s(c . x_0) + sum_k log s(-c . x_k))`` with ``s`` the sigmoid;
    its derivative with respect to each score is ``(s(score) - label) / B``.
    Returns ``(centre_gradient [B, dim], context_gradient [B, 1 + negatives, dim])``.
    """
    scores = torch.bmm(context_vectors, centre_vectors.unsqueeze(-1)).squeeze(-1)
    score_gradient = torch.sigmoid(scores)
    score_gradient[:, 0] -= 1.0
    score_gradient /= len(scores)
    centre_gradient = torch.bmm(score_gradient.unsqueeze(1), context_vectors).squeeze(1)
    context_gradient = score_gradient.unsqueeze(-1) * centre_vectors.unsqueeze(1)
    return centre_gradient, context_gradient


class _RowAdam:
    """Adam that updates only the rows a step touches (``torch.optim.SparseAdam``'s rule).

    Written out because SparseAdam's sparse-tensor coalescing dominated the training time.
    """

    def __init__(self, table: torch.Tensor, lr: float, betas=(0.9, 0.999), eps: float = 1e-8):
        self.table, self.lr, self.betas, self.eps = table, lr, betas, eps
        self.exp_avg = torch.zeros_like(table)
        self.exp_avg_sq = torch.zeros_like(table)
        self.steps = 0
        self._gradient = torch.zeros_like(table)  # per-step scratch; zero between steps
        self._touched = torch.zeros(len(table), dtype=torch.bool)

    def step(self, rows: torch.Tensor, row_gradients: torch.Tensor) -> None:
        """Apply one step; ``rows`` may repeat (their gradients add up)."""
        self.steps += 1
        beta1, beta2 = self.betas
        self._gradient.index_add_(0, rows, row_gradients)
        self._touched.index_fill_(0, rows, True)
        unique_rows = self._touched.nonzero().squeeze(1)  # sorted, no sort needed
        self._touched.index_fill_(0, unique_rows, False)
        gradient = self._gradient.index_select(0, unique_rows)
        self._gradient.index_fill_(0, unique_rows, 0.0)
        exp_avg = self.exp_avg.index_select(0, unique_rows).mul_(beta1).add_(gradient, alpha=1 - beta1)
        exp_avg_sq = self.exp_avg_sq.index_select(0, unique_rows).mul_(beta2)
        exp_avg_sq.addcmul_(gradient, gradient, value=1 - beta2)
        self.exp_avg.index_copy_(0, unique_rows, exp_avg)
        self.exp_avg_sq.index_copy_(0, unique_rows, exp_avg_sq)
        step_size = self.lr * (1 - beta2**self.steps) ** 0.5 / (1 - beta1**self.steps)
        update = exp_avg.div_(exp_avg_sq.sqrt_().add_(self.eps))
        self.table.index_add_(0, unique_rows, update, alpha=-step_size)


@contextlib.contextmanager
def _single_torch_thread():
    """Run torch ops on one thread, restoring the previous setting afterwards.

    Skip-gram batches are tiny (``batch_size x dim``): intra-op parallelism gains nothing on
    them, and on a busy machine its thread synchronisation made training several times slower.
    """
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


def train_skipgram(
    walks: np.ndarray,
    lengths: np.ndarray,
    num_nodes: int,
    dim: int = 8,
    window: int = 10,
    negatives: int = 5,
    epochs: int = 1,
    batch_size: int = 4096,
    lr: float = 0.01,
    seed: int = 0,
) -> np.ndarray:
    """Skip-gram with negative sampling over the walks; returns the centre embeddings.

    Two tables (centre: word2vec's uniform init, context: zeros) trained with lazy (row-wise)
    Adam on shuffled mini-batches of (centre, context) pairs, ``negatives`` noise nodes per pair
    drawn from unigram^0.75. ``lengths`` is accepted for symmetry with :func:`temporal_walks`;
    the -1 padding already marks where walks end. Deterministic for a seed.
    Returns ``[num_nodes, dim]`` float32.
    """
    with _single_torch_thread():
        walks = np.asarray(walks, dtype=np.int64)
        return _train_skipgram(walks, num_nodes, dim, window, negatives, epochs, batch_size, lr, seed)


def _train_skipgram(walks, num_nodes, dim, window, negatives, epochs, batch_size, lr, seed) -> np.ndarray:
    generator = torch.Generator().manual_seed(seed)
    centre_table = torch.empty(num_nodes, dim).uniform_(-0.5 / dim, 0.5 / dim, generator=generator)
    context_table = torch.zeros(num_nodes, dim)
    if not (walks >= 0).any():
        return centre_table.numpy()
    noise_cdf = _noise_cdf(walks, num_nodes)
    centre_optimizer, context_optimizer = _RowAdam(centre_table, lr), _RowAdam(context_table, lr)
    for _ in range(epochs):
        for centres, contexts in _shuffled_pair_batches(walks, window, batch_size, generator):
            uniform = torch.rand(len(centres) * negatives, generator=generator, dtype=torch.float64)
            noise = torch.searchsorted(noise_cdf, uniform, right=True).clamp_(max=num_nodes - 1)
            context_rows = torch.cat([contexts.unsqueeze(1), noise.view(len(centres), negatives)], dim=1)
            centre_vectors, context_vectors = centre_table[centres], context_table[context_rows]
            centre_gradient, context_gradient = sgns_gradients(centre_vectors, context_vectors)
            centre_optimizer.step(centres, centre_gradient)
            context_optimizer.step(context_rows.reshape(-1), context_gradient.reshape(-1, dim))
    return centre_table.numpy()


def edge_features(embeddings: np.ndarray, pairs) -> np.ndarray:
    """``[n, 2 * dim]`` float32: the embeddings of each pair's source then destination."""
    embeddings = np.asarray(embeddings, dtype=np.float32)
    pairs = np.asarray(pairs, dtype=np.int64)
    if pairs.ndim != 2 or pairs.shape[1] != 2:
        raise ValueError(f"pairs must have shape [n, 2], got {pairs.shape}")
    return np.concatenate([embeddings[pairs[:, 0]], embeddings[pairs[:, 1]]], axis=1)


def node_embeddings_from_edges(
    src,
    dst,
    time,
    num_nodes: int,
    *,
    walks_per_node: int = 10,
    walk_length: int = 5,
    dim: int = 8,
    window: int = 10,
    negatives: int = 5,
    epochs: int = 1,
    seed: int = 0,
) -> np.ndarray:
    """The whole pipeline: temporal walks over the given edges, then skip-gram embeddings."""
    graph = TemporalGraph.from_edges(src, dst, time, num_nodes)
    walks, lengths = temporal_walks(graph, walks_per_node, walk_length, seed=seed)
    return train_skipgram(
        walks, lengths, num_nodes, dim=dim, window=window, negatives=negatives, epochs=epochs, seed=seed
    )
