import math

import numpy as np
import pytest

import gsparse.tasks.linkpred.baselines as baselines_module
from gsparse.tasks.linkpred.baselines import BASELINES, History, baseline_scores

# History on 6 nodes (node 5 never occurs): a repeated edge 0->1, its reverse 1->0, a self loop 3->3.
HISTORY = np.array([[0, 1], [0, 1], [1, 0], [0, 2], [2, 1], [2, 3], [3, 3], [4, 3], [0, 4]], dtype=np.int64)
NUM_NODES = 6
# Undirected simple graph: {0,1} {0,2} {1,2} {2,3} {3,4} {0,4} (loop dropped, 0-1 once).
#   N(0) = {1, 2, 4} deg 3    N(1) = {0, 2} deg 2    N(2) = {0, 1, 3} deg 3
#   N(3) = {2, 4}    deg 2    N(4) = {0, 3} deg 2    N(5) = {}     deg 0
PAIRS = np.array([[0, 1], [1, 0], [1, 2], [0, 3], [2, 4], [1, 3], [3, 3], [5, 0]], dtype=np.int64)
LN2, LN3 = math.log(2), math.log(3)
EXPECTED = {
    # directed pair seen?  (0,1) twice, (1,0) once, (1,2) only as 2->1, (3,3) the loop
    "edgebank": [1, 1, 0, 0, 0, 0, 1, 0],
    # (0,1): {2}  (1,0): {2}  (1,2): {0}  (0,3): {2,4}  (2,4): {0,3}  (1,3): {2}  self pair: 0  absent: 0
    "common_neighbors": [1, 1, 1, 2, 2, 1, 0, 0],
    # 1/ln deg(w): deg(2) = deg(0) = 3, deg(4) = deg(3) = 2
    "adamic_adar": [1 / LN3, 1 / LN3, 1 / LN3, 1 / LN3 + 1 / LN2, 1 / LN3 + 1 / LN2, 1 / LN3, 0, 0],
    # deg(u) * deg(v): 3*2, 2*3, 2*3, 3*2, 3*2, 2*2, 2*2, 0*3
    "preferential_attachment": [6, 6, 6, 6, 6, 4, 4, 0],
}
EDGE_COUNTS = [2, 1, 0, 0, 0, 0, 1, 0]


@pytest.mark.parametrize("name", BASELINES)
def test_hand_computed_scores(name):
    history = History(HISTORY, NUM_NODES)
    scores = history.score(name, PAIRS)
    assert scores.dtype == np.float64 and scores.shape == (len(PAIRS),)
    np.testing.assert_allclose(scores, EXPECTED[name], rtol=1e-12)
    np.testing.assert_array_equal(baseline_scores(name, HISTORY, NUM_NODES, PAIRS), scores)


def test_degrees_of_the_undirected_simple_graph():
    np.testing.assert_array_equal(History(HISTORY, NUM_NODES).degree, [3, 2, 3, 2, 2, 0])


def test_pair_features():
    features = History(HISTORY, NUM_NODES).pair_features(PAIRS)
    assert features.dtype == np.float32 and features.shape == (len(PAIRS), 7)
    degree = np.array([3, 2, 3, 2, 2, 0])
    # Recent: the last floor(9 / 4) = 2 edges, (4, 3) and (0, 4): node 0 once, 3 once, 4 twice.
    recent = np.array([1, 0, 0, 1, 2, 0])
    expected = np.stack([
        np.log1p(EDGE_COUNTS),
        np.log1p(EXPECTED["common_neighbors"]),
        EXPECTED["adamic_adar"],
        np.log1p(degree[PAIRS[:, 0]]), np.log1p(degree[PAIRS[:, 1]]),
        np.log1p(recent[PAIRS[:, 0]]), np.log1p(recent[PAIRS[:, 1]]),
    ], axis=1)
    np.testing.assert_allclose(features, expected, rtol=1e-6)
    # first row (0, 1) by hand: log(1 + 2), log(1 + 1), 1 / ln 3, log(1 + 3), log(1 + 2), log(1 + 1), log(1 + 0)
    np.testing.assert_allclose(features[0], [math.log(3), math.log(2), 1 / LN3, math.log(4), math.log(3),
                                             math.log(2), 0.0], rtol=1e-6)


@pytest.mark.parametrize("chunk", [1, 2, 3])
def test_chunked_common_neighbours_match(monkeypatch, chunk):
    monkeypatch.setattr(baselines_module, "LOOKUPS_PER_CHUNK", chunk)
    history = History(HISTORY, NUM_NODES)
    np.testing.assert_allclose(history.score("common_neighbors", PAIRS), EXPECTED["common_neighbors"])
    np.testing.assert_allclose(history.score("adamic_adar", PAIRS), EXPECTED["adamic_adar"], rtol=1e-12)


def test_empty_history_and_empty_pairs():
    empty = History(np.zeros((0, 2), dtype=np.int64), 3)
    for name in BASELINES:
        np.testing.assert_array_equal(empty.score(name, np.array([[0, 1], [2, 2]])), [0.0, 0.0])
        assert History(HISTORY, NUM_NODES).score(name, np.zeros((0, 2), dtype=np.int64)).shape == (0,)
    assert History(HISTORY, NUM_NODES).pair_features(np.zeros((0, 2), dtype=np.int64)).shape == (0, 7)


def test_invalid_input():
    history = History(HISTORY, NUM_NODES)
    with pytest.raises(ValueError, match="edgebank, common_neighbors, adamic_adar, preferential_attachment"):
        history.score("katz", PAIRS)
    with pytest.raises(ValueError, match="katz"):
        baseline_scores("katz", HISTORY, NUM_NODES, PAIRS)
    with pytest.raises(ValueError, match=r"\[0, 6\)"):
        history.score("edgebank", np.array([[0, 6]]))
    with pytest.raises(ValueError, match=r"\[0, 4\)"):
        History(HISTORY, 4)
    with pytest.raises(ValueError, match="shape"):
        history.score("edgebank", np.array([0, 1]))


def test_common_neighbours_match_set_reference_on_a_random_graph(monkeypatch):
    rng = np.random.default_rng(0)
    num_nodes, num_edges = 4000, 200_000
    # Skewed sources give hubs, so scanning the smaller-degree side matters.
    src = np.minimum((rng.pareto(1.0, num_edges) * 20).astype(np.int64), num_nodes - 1)
    dst = rng.integers(0, num_nodes, num_edges)
    edges = np.stack([src, dst], axis=1)
    history = History(edges, num_nodes)

    neighbours = [set() for _ in range(num_nodes)]
    for u, v in zip(src.tolist(), dst.tolist()):
        if u != v:
            neighbours[u].add(v)
            neighbours[v].add(u)
    pairs = np.concatenate([edges[rng.integers(0, num_edges, 250)], rng.integers(0, num_nodes, (250, 2))])
    pairs[0] = [0, 1]  # two hubs
    expected_cn, expected_aa = [], []
    for u, v in pairs.tolist():
        shared = neighbours[u] & neighbours[v] if u != v else set()
        expected_cn.append(len(shared))
        expected_aa.append(sum(1 / math.log(len(neighbours[w])) for w in shared))
    assert max(expected_cn) > 50  # the check is not vacuous

    np.testing.assert_array_equal(history.score("common_neighbors", pairs), expected_cn)
    np.testing.assert_allclose(history.score("adamic_adar", pairs), expected_aa, rtol=1e-9)
    np.testing.assert_array_equal(history.degree, [len(s) for s in neighbours])
    monkeypatch.setattr(baselines_module, "LOOKUPS_PER_CHUNK", 997)
    np.testing.assert_array_equal(history.score("common_neighbors", pairs), expected_cn)
