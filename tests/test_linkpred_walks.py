import time
from pathlib import Path

import numpy as np
import pytest
import torch

from gsparse.tasks.linkpred.walks import (
    TemporalGraph,
    context_pairs,
    _RowAdam,
    edge_features,
    node_embeddings_from_edges,
    sgns_gradients,
    temporal_walks,
    train_skipgram,
)

COLLEGE_MSG = Path(__file__).resolve().parents[1] / "gsparse" / "tasks" / "graphs" / "cards" / "samples" / "CollegeMsg.txt"
CHI2_2DOF_P001 = 13.82  # chi-square critical values at p = 0.001
CHI2_3DOF_P001 = 16.27

# Tiny graph (src, dst, time); node 4 has no out-edges.
TINY_EDGES = [
    (0, 1, 1),  # a
    (0, 2, 5),  # b
    (1, 2, 2),  # c
    (1, 3, 1),  # d: not allowed after arriving at 1 by a (same time 1)
    (2, 3, 3),  # e
    (3, 0, 4),  # f
    (2, 4, 6),  # g
]
# Every walk of at most 5 nodes, enumerated by hand.
TINY_POSSIBLE_WALKS = {
    (0, 1, 2, 3, 0),  # a c e f (length cap)
    (0, 1, 2, 4),  # a c g, 4 is a sink
    (0, 2, 4),  # b g (e at 3 < 5 not allowed)
    (1, 2, 3, 0, 2),  # c e f b (length cap)
    (1, 2, 4),  # c g
    (1, 3, 0, 2, 4),  # d f b g
    (2, 3, 0, 2, 4),  # e f b g
    (2, 4),  # g
    (3, 0, 2, 4),  # f b g, then 4 is a sink
    (4,),  # no out-edges
}


def tiny_graph():
    src, dst, times = (np.array(column) for column in zip(*TINY_EDGES))
    return src, dst, times, TemporalGraph.from_edges(src, dst, times, 5)


def load_college_msg():
    edges = np.loadtxt(COLLEGE_MSG, skiprows=1, dtype=np.int64)
    return edges[:, 0], edges[:, 1], edges[:, 2], 1900


def assert_walk_invariants(src, dst, times, num_nodes, walks, lengths, edges):
    """Edges exist and join consecutive nodes, times strictly increase, padding is -1, and a walk
    shorter than the cap ends at a node with no out-edge later than its arrival."""
    walk_length = walks.shape[1]
    assert walks.dtype == np.int64 and lengths.dtype == np.int64
    assert edges.shape == (len(walks), walk_length - 1)
    assert (lengths >= 1).all() and (lengths <= walk_length).all()
    positions = np.arange(walk_length)
    node_valid = positions[None, :] < lengths[:, None]
    assert (walks[node_valid] >= 0).all() and (walks[~node_valid] == -1).all()
    edge_valid = node_valid[:, 1:]
    assert (edges[edge_valid] >= 0).all() and (edges[~edge_valid] == -1).all()

    assert (src[edges[edge_valid]] == walks[:, :-1][edge_valid]).all()
    assert (dst[edges[edge_valid]] == walks[:, 1:][edge_valid]).all()
    edge_times = np.where(edge_valid, times.astype(np.float64)[edges], np.nan)
    both = edge_valid[:, 1:] & edge_valid[:, :-1]
    assert (edge_times[:, 1:][both] > edge_times[:, :-1][both]).all()

    latest_out_time = np.full(num_nodes, -np.inf)
    np.maximum.at(latest_out_time, src, times.astype(np.float64))
    stopped = lengths < walk_length
    rows = np.flatnonzero(stopped)
    last_node = walks[rows, lengths[rows] - 1]
    arrival = np.full(len(rows), -np.inf)
    moved = lengths[rows] > 1
    arrival[moved] = edge_times[rows[moved], lengths[rows[moved]] - 2]
    assert (latest_out_time[last_node] <= arrival).all()


def chi_square(counts, probabilities):
    expected = np.asarray(probabilities) * counts.sum()
    return float(((counts - expected) ** 2 / expected).sum())


# ---------------------------------------------------------------------------------- walks


def test_tiny_graph_walks_are_exactly_the_hand_enumerated_ones():
    src, dst, times, graph = tiny_graph()
    walks, lengths, edges = temporal_walks(graph, walks_per_node=300, seed=1, return_edges=True)
    generated = {tuple(walk[:length]) for walk, length in zip(walks.tolist(), lengths.tolist())}
    assert generated == TINY_POSSIBLE_WALKS
    assert_walk_invariants(src, dst, times, 5, walks, lengths, edges)


def test_single_allowed_continuation_is_always_taken():
    _, _, _, graph = tiny_graph()
    walks, lengths = temporal_walks(graph, walks_per_node=200, walk_length=5, seed=2)
    from_three = walks[walks[:, 0] == 3]
    assert (from_three == [3, 0, 2, 4, -1]).all()  # f, then only b (t=5 > 4), then only g
    via_first_edge = walks[(walks[:, 0] == 0) & (walks[:, 1] == 1)]
    assert len(via_first_edge) > 0 and (via_first_edge[:, 2] == 2).all()  # 1->3 at t=1 is not later than 1
    assert (lengths[walks[:, 0] == 4] == 1).all()


def test_walk_invariants_on_random_graph_with_tied_timestamps():
    rng = np.random.default_rng(0)
    num_nodes, num_edges = 40, 300
    src, dst = rng.integers(0, num_nodes, num_edges), rng.integers(0, num_nodes, num_edges)
    times = rng.integers(0, 8, num_edges)  # many equal times: strictness matters
    graph = TemporalGraph.from_edges(src, dst, times, num_nodes)
    walks, lengths, edges = temporal_walks(graph, 50, walk_length=10, seed=3, return_edges=True)
    assert walks.shape == (num_nodes * 50, 10)
    assert (walks[:, 0] == np.repeat(np.arange(num_nodes), 50)).all()
    assert_walk_invariants(src, dst, times, num_nodes, walks, lengths, edges)
    assert len(np.unique(lengths)) > 2  # the stop rule was exercised, not just the cap


def test_float_times_and_start_nodes():
    src, dst = np.array([0, 1, 1]), np.array([1, 2, 0])
    times = np.array([0.5, 0.25, 0.75])
    graph = TemporalGraph.from_edges(src, dst, times, 3)
    walks, lengths, edges = temporal_walks(
        graph, walks_per_node=4, walk_length=4, start_nodes=[2, 0], seed=0, return_edges=True
    )
    assert (walks[:, 0] == [2, 2, 2, 2, 0, 0, 0, 0]).all()
    assert (lengths[:4] == 1).all()
    assert (walks[4:] == [0, 1, 0, -1]).all()  # 1->2 at 0.25 is earlier than the arrival at 0.5
    assert_walk_invariants(src, dst, times, 3, walks, lengths, edges)


def test_first_step_frequencies_follow_exponential_time_weights():
    graph = TemporalGraph.from_edges([0, 0, 0], [1, 2, 3], [1, 2, 3], 4)
    num_walks = 60_000
    walks, _ = temporal_walks(graph, walks_per_node=num_walks, walk_length=2, start_nodes=[0], seed=4)
    counts = np.bincount(walks[:, 1], minlength=4)[1:]
    weights = np.exp((np.array([1, 2, 3]) - 0) / (3 - 1))
    assert chi_square(counts, weights / weights.sum()) < CHI2_2DOF_P001
    uniform = np.full(3, 1 / 3)
    assert chi_square(counts, uniform) > 100  # the test can tell the weighting apart


def test_later_steps_weight_by_time_since_arrival_over_the_node_span():
    # 5 -> 0 at t=1.5, then node 0 may use only its edges at t=2 and t=3; span of 0 is 3 - 1 = 2.
    graph = TemporalGraph.from_edges([5, 0, 0, 0], [0, 1, 2, 3], [1.5, 1, 2, 3], 6)
    walks, lengths = temporal_walks(graph, walks_per_node=40_000, walk_length=3, start_nodes=[5], seed=5)
    assert (lengths == 3).all()
    assert not (walks[:, 2] == 1).any()  # t=1 <= 1.5 is never taken
    counts = np.bincount(walks[:, 2], minlength=4)[2:]
    weights = np.exp((np.array([2, 3]) - 1.5) / 2)
    probabilities = weights / weights.sum()
    assert chi_square(counts, probabilities) < 10.83  # 1 dof, p = 0.001
    allowed_span_only = np.exp((np.array([2, 3]) - 1.5) / 1)
    assert chi_square(counts, allowed_span_only / allowed_span_only.sum()) > 100


def test_equal_out_edge_times_give_a_uniform_choice():
    graph = TemporalGraph.from_edges([0, 0, 0, 0], [1, 2, 3, 4], [7, 7, 7, 7], 5)
    walks, _ = temporal_walks(graph, walks_per_node=40_000, walk_length=2, start_nodes=[0], seed=6)
    counts = np.bincount(walks[:, 1], minlength=5)[1:]
    assert chi_square(counts, np.full(4, 0.25)) < CHI2_3DOF_P001


def test_walks_are_deterministic_for_a_seed():
    src, dst, times = load_college_msg()[:3]
    graph = TemporalGraph.from_edges(src[:5000], dst[:5000], times[:5000], 1900)
    first = temporal_walks(graph, walks_per_node=3, seed=7)
    again = temporal_walks(graph, walks_per_node=3, seed=7)
    other = temporal_walks(graph, walks_per_node=3, seed=8)
    assert all(np.array_equal(a, b) for a, b in zip(first, again))
    assert not np.array_equal(first[0], other[0])


def test_from_edges_validates_input():
    with pytest.raises(ValueError, match="node ids"):
        TemporalGraph.from_edges([0, 3], [1, 1], [1, 2], 3)
    with pytest.raises(ValueError, match="length"):
        TemporalGraph.from_edges([0, 1], [1], [1, 2], 3)
    with pytest.raises(ValueError, match="NaN"):
        TemporalGraph.from_edges([0], [1], [np.nan], 3)


def test_graph_without_edges_gives_single_node_walks():
    graph = TemporalGraph.from_edges([], [], np.array([], dtype=np.int64), 3)
    walks, lengths = temporal_walks(graph, walks_per_node=2, walk_length=4)
    assert (lengths == 1).all() and (walks[:, 1:] == -1).all()


# ------------------------------------------------------------------------------ skip-gram


def test_context_pairs_respect_window_and_padding():
    walks = np.array([[0, 1, 2, -1], [3, -1, -1, -1], [4, 5, 6, 7]])
    centres, contexts = context_pairs(walks, window=2)
    pairs = sorted(zip(centres.tolist(), contexts.tolist()))
    expected = [(0, 1), (1, 0), (1, 2), (2, 1), (0, 2), (2, 0)]  # walk 0; walk 1 has none
    expected += [(4, 5), (5, 4), (5, 6), (6, 5), (6, 7), (7, 6), (4, 6), (6, 4), (5, 7), (7, 5)]
    assert pairs == sorted(expected)


def test_sgns_gradients_and_row_adam_match_autograd_and_sparse_adam():
    generator = torch.Generator().manual_seed(0)
    num_nodes, dim, batch, negatives = 12, 4, 16, 3
    centre_init = torch.randn(num_nodes, dim, generator=generator)
    context_init = torch.randn(num_nodes, dim, generator=generator)
    batches = [
        (torch.randint(0, num_nodes, (batch,), generator=generator),
         torch.randint(0, num_nodes, (batch, 1 + negatives), generator=generator))
        for _ in range(3)
    ]  # rows repeat within a batch, as hub nodes do

    centre, context = centre_init.clone(), context_init.clone()
    optimizers = _RowAdam(centre, lr=0.05), _RowAdam(context, lr=0.05)
    reference_centre = torch.nn.Embedding.from_pretrained(centre_init.clone(), freeze=False, sparse=True)
    reference_context = torch.nn.Embedding.from_pretrained(context_init.clone(), freeze=False, sparse=True)
    reference_optimizer = torch.optim.SparseAdam([reference_centre.weight, reference_context.weight], lr=0.05)
    for centres, context_rows in batches:
        centre_vectors = reference_centre(centres)
        scores = torch.bmm(reference_context(context_rows), centre_vectors.unsqueeze(-1)).squeeze(-1)
        log_sigmoid = torch.nn.functional.logsigmoid
        loss = -(log_sigmoid(scores[:, 0]) + log_sigmoid(-scores[:, 1:]).sum(1)).mean()
        reference_optimizer.zero_grad()
        loss.backward()
        reference_optimizer.step()

        centre_gradient, context_gradient = sgns_gradients(centre[centres], context[context_rows])
        optimizers[0].step(centres, centre_gradient)
        optimizers[1].step(context_rows.reshape(-1), context_gradient.reshape(-1, dim))
    assert torch.allclose(centre, reference_centre.weight.detach(), atol=1e-6)
    assert torch.allclose(context, reference_context.weight.detach(), atol=1e-6)
    assert not torch.allclose(centre, centre_init)


def two_clique_graph(clique_size=10, seed=0):
    rng = np.random.default_rng(seed)
    src, dst = [], []
    for offset in (0, clique_size):
        for i in range(clique_size):
            for j in range(clique_size):
                if i != j:
                    src += [offset + i] * 3
                    dst += [offset + j] * 3
    times = rng.integers(0, 1000, len(src))
    return np.array(src), np.array(dst), times, 2 * clique_size


def mean_cosines(embeddings, clique_size):
    unit = embeddings / np.linalg.norm(embeddings, axis=1, keepdims=True)
    cosine = unit @ unit.T
    community = np.arange(len(embeddings)) // clique_size
    same = community[:, None] == community[None, :]
    off_diagonal = ~np.eye(len(embeddings), dtype=bool)
    return cosine[same & off_diagonal].mean(), cosine[~same].mean()


def test_skipgram_puts_communities_closer_together():
    src, dst, times, num_nodes = two_clique_graph()
    graph = TemporalGraph.from_edges(src, dst, times, num_nodes)
    walks, lengths = temporal_walks(graph, walks_per_node=50, walk_length=5, seed=0)
    embeddings = train_skipgram(walks, lengths, num_nodes, dim=8, batch_size=256, epochs=2, seed=0)
    assert embeddings.shape == (num_nodes, 8) and embeddings.dtype == np.float32
    within, across = mean_cosines(embeddings, 10)
    assert within > across + 0.05, (within, across)
    # SGNS vectors share a common (frequency) direction; without it the communities separate fully.
    within, across = mean_cosines(embeddings - embeddings.mean(axis=0), 10)
    assert within > 0.5 and across < -0.5, (within, across)
    unit = embeddings / np.linalg.norm(embeddings, axis=1, keepdims=True)
    similarity = unit @ unit.T - 2 * np.eye(num_nodes)
    assert (similarity.argmax(axis=1) // 10 == np.arange(num_nodes) // 10).all()  # nearest node: same clique


def test_skipgram_is_deterministic_for_a_seed():
    src, dst, times, num_nodes = two_clique_graph()
    kwargs = dict(walks_per_node=5, walk_length=5)
    first = node_embeddings_from_edges(src, dst, times, num_nodes, seed=3, **kwargs)
    again = node_embeddings_from_edges(src, dst, times, num_nodes, seed=3, **kwargs)
    other = node_embeddings_from_edges(src, dst, times, num_nodes, seed=4, **kwargs)
    assert np.array_equal(first, again)
    assert not np.allclose(first, other)


def test_edge_features_concatenate_endpoint_embeddings():
    embeddings = np.arange(12, dtype=np.float64).reshape(6, 2)
    features = edge_features(embeddings, np.array([[0, 5], [3, 3]]))
    assert features.shape == (2, 4) and features.dtype == np.float32
    assert features.tolist() == [[0, 1, 10, 11], [6, 7, 6, 7]]
    assert edge_features(np.zeros((4, 8)), np.zeros((0, 2), dtype=np.int64)).shape == (0, 16)
    with pytest.raises(ValueError):
        edge_features(embeddings, np.array([0, 1]))


# ------------------------------------------------------------------------------ CollegeMsg


def test_college_msg_pipeline_invariants_and_runtime():
    src, dst, times, num_nodes = load_college_msg()
    started = time.perf_counter()
    graph = TemporalGraph.from_edges(src, dst, times, num_nodes)
    walks, lengths, edges = temporal_walks(graph, walks_per_node=10, walk_length=5, seed=0, return_edges=True)
    embeddings = train_skipgram(walks, lengths, num_nodes, dim=8, window=10, seed=0)
    elapsed = time.perf_counter() - started
    assert elapsed < 30, f"pipeline took {elapsed:.1f}s: per-walker Python work?"

    assert walks.shape == (num_nodes * 10, 5)
    assert_walk_invariants(src, dst, times, num_nodes, walks, lengths, edges)
    assert (lengths == 5).mean() > 0.3 and (lengths < 5).any()
    assert embeddings.shape == (num_nodes, 8) and np.isfinite(embeddings).all()
    assert edge_features(embeddings, np.stack([src, dst], axis=1)).shape == (len(src), 16)
