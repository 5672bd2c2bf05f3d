"""No-learning link-prediction baselines, scored from the edges known at evaluation time.

The history is every temporal edge before the evaluated slice, as ``(src, dst)`` rows (repeats
allowed). Scores of a candidate pair ``(u, v)``:

- ``edgebank``: EdgeBank with unlimited memory ("EdgeBank_inf", Poursafaei et al., "Towards
  Better Evaluation for Dynamic Link Prediction", NeurIPS 2022 Datasets and Benchmarks): 1.0 if
  the *directed* pair ``(u, v)`` occurs in the history, else 0.0.

The neighbourhood heuristics (Liben-Nowell & Kleinberg, "The link-prediction problem for social
networks", JASIST 2007) use the *undirected simple* graph of the history: each distinct unordered
pair ``{u, v}`` with ``u != v`` once, self loops dropped. ``N(u)`` is the neighbour set of ``u``
and ``deg(u) = |N(u)|``; a node absent from the history has no neighbours and degree 0.

- ``common_neighbors``: ``|N(u) & N(v)|``.
- ``adamic_adar`` (Adamic & Adar, "Friends and neighbors on the Web", Social Networks 2003):
  ``sum(1 / ln(deg(w)) for w in N(u) & N(v))``; a common neighbour has degree >= 2, so every
  term is finite.
- ``preferential_attachment`` (Barabasi & Albert, Science 1999; Newman, Phys. Rev. E 2001):
  ``deg(u) * deg(v)``.

A self pair ``(u, u)`` is not a candidate link of a simple graph: its ``common_neighbors`` and
``adamic_adar`` are 0 (the formulas would give ``deg(u)`` and possibly ``1 / ln(1)``); its
``edgebank`` and ``preferential_attachment`` follow the definitions above.

Everything is vectorised numpy. The undirected graph is kept as the sorted int64 keys
``u * num_nodes + w`` of both directions of each edge, which is a CSR layout: node ``u``'s
neighbours are the contiguous run ``offsets[u]:offsets[u + 1]``, in ascending order, and
``key % num_nodes`` recovers them. Common neighbours of ``(u, v)`` are found by looking up
``b * num_nodes + w`` for each neighbour ``w`` of the endpoint ``a`` of smaller degree (``b`` the
other) with a binary search in those keys.
"""
from __future__ import annotations

import math

import numpy as np

BASELINES = ("edgebank", "common_neighbors", "adamic_adar", "preferential_attachment")
PAIR_FEATURES = ("log1p_edge_count", "log1p_common_neighbors", "adamic_adar", "log1p_degree_src", "log1p_degree_dst",
                 "log1p_recent_events_src", "log1p_recent_events_dst")
# "Recent" activity: the last quarter of the history's edges (its latest, for a time-ordered history).
RECENT_FRACTION = 0.25
# Neighbour look-ups per vectorised chunk when counting common neighbours (bounds temporary memory).
LOOKUPS_PER_CHUNK = 1 << 22


def _sorted_unique_with_counts(keys: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    ordered = np.sort(keys)
    first = np.ones(len(ordered), dtype=bool)
    np.not_equal(ordered[1:], ordered[:-1], out=first[1:])
    starts = np.flatnonzero(first)
    counts = np.diff(np.append(starts, len(ordered)))
    return ordered[starts], counts


def _check_node_pairs(pairs, num_nodes: int, what: str) -> np.ndarray:
    pairs = np.asarray(pairs)
    if pairs.ndim != 2 or pairs.shape[1] != 2:
        raise ValueError(f"{what} must have shape [n, 2], got {pairs.shape}")
    if len(pairs) == 0:
        return pairs.astype(np.int64)
    if not np.issubdtype(pairs.dtype, np.integer):
        raise TypeError(f"{what} must hold integer node ids")
    if pairs.min() < 0 or pairs.max() >= num_nodes:
        raise ValueError(f"{what}: node ids must lie in [0, {num_nodes})")
    return pairs.astype(np.int64, copy=False)


class History:
    """The edges known at evaluation time (every temporal edge before the evaluated slice), indexed once.

    ``edges`` is ``[m, 2]`` int64 ``(src, dst)``, repeats allowed. Memory is about 16 bytes per
    distinct undirected pair, 16 per distinct directed pair and 24 per node.
    """

    def __init__(self, edges: np.ndarray, num_nodes: int):
        num_nodes = int(num_nodes)
        if num_nodes < 1 or num_nodes > math.isqrt(np.iinfo(np.int64).max):
            raise ValueError(f"num_nodes={num_nodes} must be >= 1 and small enough for int64 pair keys")
        edges = _check_node_pairs(edges, num_nodes, "edges")
        self.num_nodes = num_nodes
        n = np.int64(num_nodes)
        src, dst = edges[:, 0], edges[:, 1]

        # Directed pairs, for EdgeBank and the edge-count feature.
        self._directed_keys, self._directed_counts = _sorted_unique_with_counts(src * n + dst)

        # Undirected simple graph: each unordered non-loop pair once, then stored in both directions.
        loops = src == dst
        low, high = np.minimum(src[~loops], dst[~loops]), np.maximum(src[~loops], dst[~loops])
        undirected, _ = _sorted_unique_with_counts(low * n + high)
        del low, high
        low, high = undirected // n, undirected % n
        self._adjacency_keys = np.sort(np.concatenate([undirected, high * n + low]))
        del undirected, low, high
        self._offsets = np.searchsorted(self._adjacency_keys, np.arange(num_nodes + 1, dtype=np.int64) * n)
        self.degree = np.diff(self._offsets)
        recent = edges[len(edges) - int(len(edges) * RECENT_FRACTION):]
        self.recent_events = np.bincount(recent.reshape(-1), minlength=num_nodes)
        # Only nodes of degree >= 2 can be common neighbours; the 0 of the others is never used.
        self._inverse_log_degree = np.where(self.degree >= 2, 1.0 / np.log(np.maximum(self.degree, 2)), 0.0)

    # ------------------------------------------------------------------------------------- scores

    def score(self, name: str, pairs: np.ndarray) -> np.ndarray:
        """float64 ``[k]`` score of baseline ``name`` (one of :data:`BASELINES`) for ``pairs`` ``[k, 2]``."""
        if name not in BASELINES:
            raise ValueError(f"unknown baseline {name!r}; expected one of {', '.join(BASELINES)}")
        pairs = _check_node_pairs(pairs, self.num_nodes, "pairs")
        if name == "edgebank":
            return (self._edge_counts(pairs) > 0).astype(np.float64)
        if name == "preferential_attachment":
            return self._preferential_attachment(pairs)
        common, adamic_adar = self._common_neighbourhood(pairs, weighted=name == "adamic_adar")
        return adamic_adar if name == "adamic_adar" else common

    def pair_features(self, pairs: np.ndarray) -> np.ndarray:
        """float32 ``[k, 7]`` (see :data:`PAIR_FEATURES`): log1p of the times the directed pair occurs
        in the history, log1p(common_neighbors), adamic_adar, log1p of each endpoint's degree (the two
        factors of preferential attachment, kept apart), and log1p of each endpoint's recent events
        (edges it is in among the last :data:`RECENT_FRACTION` of the history; a self loop counts twice).

        Degrees split and recent activity added were chosen on the validation slices of CollegeMsg
        and Bitcoin OTC over the product ``deg(u) * deg(v)`` alone (docs/results/README.md)."""
        pairs = _check_node_pairs(pairs, self.num_nodes, "pairs")
        common, adamic_adar = self._common_neighbourhood(pairs, weighted=True)
        src, dst = pairs[:, 0], pairs[:, 1]
        return np.stack(
            [np.log1p(self._edge_counts(pairs)), np.log1p(common), adamic_adar,
             np.log1p(self.degree[src]), np.log1p(self.degree[dst]),
             np.log1p(self.recent_events[src]), np.log1p(self.recent_events[dst])],
            axis=1,
        ).astype(np.float32)

    # ----------------------------------------------------------------------------------- internals

    def _edge_counts(self, pairs: np.ndarray) -> np.ndarray:
        """How many times each directed pair occurs in the history (float64)."""
        counts = np.zeros(len(pairs), dtype=np.float64)
        if len(self._directed_keys) == 0 or len(pairs) == 0:
            return counts
        keys = pairs[:, 0] * np.int64(self.num_nodes) + pairs[:, 1]
        positions = np.minimum(np.searchsorted(self._directed_keys, keys), len(self._directed_keys) - 1)
        found = self._directed_keys[positions] == keys
        counts[found] = self._directed_counts[positions[found]]
        return counts

    def _preferential_attachment(self, pairs: np.ndarray) -> np.ndarray:
        return self.degree[pairs[:, 0]].astype(np.float64) * self.degree[pairs[:, 1]]

    def _common_neighbourhood(self, pairs: np.ndarray, weighted: bool) -> tuple[np.ndarray, np.ndarray]:
        """Common-neighbour counts and (if ``weighted``) Adamic-Adar sums, float64 ``[k]`` each."""
        count = len(pairs)
        common = np.zeros(count, dtype=np.float64)
        adamic_adar = np.zeros(count, dtype=np.float64)
        u, v = pairs[:, 0], pairs[:, 1]
        u_smaller = self.degree[u] <= self.degree[v]
        scan, probe = np.where(u_smaller, u, v), np.where(u_smaller, v, u)
        lookups = np.where(scan == probe, 0, self.degree[scan])
        # Rows grouped by the probed node: the look-ups of one group land in one run of keys.
        rows = np.flatnonzero(lookups)
        rows = rows[np.argsort(probe[rows], kind="stable")]
        cumulative = np.cumsum(lookups[rows])
        start = 0
        while start < len(rows):
            done = cumulative[start - 1] if start else 0
            stop = max(int(np.searchsorted(cumulative, done + LOOKUPS_PER_CHUNK, side="right")), start + 1)
            chunk = rows[start:stop]
            matches, neighbours = self._shared_neighbours(scan[chunk], probe[chunk], lookups[chunk])
            common[chunk] = np.bincount(matches, minlength=len(chunk))
            if weighted:
                adamic_adar[chunk] = np.bincount(
                    matches, weights=self._inverse_log_degree[neighbours], minlength=len(chunk)
                )
            start = stop
        return common, adamic_adar

    def _shared_neighbours(self, scan, probe, lookups) -> tuple[np.ndarray, np.ndarray]:
        """For each neighbour ``w`` of ``scan[i]`` that is also a neighbour of ``probe[i]``: ``(i, w)``."""
        n = np.int64(self.num_nodes)
        total = int(lookups.sum())
        row = np.repeat(np.arange(len(scan)), lookups)
        run_start = np.cumsum(lookups) - lookups
        positions = np.arange(total, dtype=np.int64) + np.repeat(self._offsets[scan] - run_start, lookups)
        neighbours = self._adjacency_keys[positions] % n
        wanted = probe[row] * n + neighbours
        found = np.searchsorted(self._adjacency_keys, wanted)
        np.minimum(found, len(self._adjacency_keys) - 1, out=found)
        shared = self._adjacency_keys[found] == wanted
        return row[shared], neighbours[shared]


def baseline_scores(name: str, history_edges: np.ndarray, num_nodes: int, pairs: np.ndarray) -> np.ndarray:
    """float64 ``[k]`` score of baseline ``name`` for ``pairs``, indexing ``history_edges`` on the fly.

    Build one :class:`History` instead when scoring several sets of pairs against the same edges.
    """
    if name not in BASELINES:
        raise ValueError(f"unknown baseline {name!r}; expected one of {', '.join(BASELINES)}")
    return History(history_edges, num_nodes).score(name, pairs)
