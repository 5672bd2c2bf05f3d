from pathlib import Path

import numpy as np
import pytest

import gsparse.tasks.linkpred.split as split_module
from gsparse.tasks.linkpred.split import (
    LinkSplit,
    NegativeSamplingError,
    random_split,
    sample_negatives,
    temporal_split,
)

COLLEGE_MSG = Path(__file__).resolve().parents[1] / "gsparse" / "tasks" / "graphs" / "cards" / "samples" / "CollegeMsg.txt"
PARTS = ("train", "val", "test")


def rows(pairs: np.ndarray) -> list[tuple[int, int]]:
    return [tuple(map(int, pair)) for pair in pairs]


def edge_set(src, dst) -> set[tuple[int, int]]:
    return set(zip(src.tolist(), dst.tolist()))


def small_temporal_graph():
    """20 edges on 8 nodes, times deliberately out of order, with ties and repeated pairs."""
    src = np.array([0, 1, 2, 3, 4, 5, 6, 7, 0, 1, 2, 3, 4, 5, 6, 7, 0, 2, 4, 6], dtype=np.int64)
    dst = np.array([1, 2, 3, 4, 5, 6, 7, 0, 2, 3, 4, 5, 6, 7, 0, 1, 1, 3, 5, 7], dtype=np.int64)
    time = np.array([5, 3, 9, 1, 7, 7, 2, 8, 4, 6, 0, 12, 11, 10, 13, 14, 15, 16, 16, 16], dtype=np.int64)
    return src, dst, time, 8


def check_negatives(split: LinkSplit, full_edges: set[tuple[int, int]]) -> None:
    for part in PARTS:
        positives = getattr(split, f"{part}_pos")
        negatives = getattr(split, f"{part}_neg")
        assert negatives.shape == positives.shape and negatives.dtype == np.int64
        assert not (set(rows(negatives)) & full_edges), part
        assert (negatives[:, 0] != negatives[:, 1]).all(), part
        assert ((negatives >= 0) & (negatives < split.num_nodes)).all()
        half = len(positives) // 2
        np.testing.assert_array_equal(negatives[:half, 0], positives[:half, 0])


# ------------------------------------------------------------------------------- temporal split


def test_temporal_test_part_is_the_last_fifth_in_stable_time_order():
    src, dst, time, n = small_temporal_graph()
    split = temporal_split(src, dst, time, n, seed=0, exclude_test_pairs_from_train=False)
    order = np.argsort(time, kind="stable")
    # Times 15, 16, 16, 16: the tie at 16 keeps input order (rows 17, 18, 19).
    np.testing.assert_array_equal(order[-4:], [16, 17, 18, 19])
    assert rows(split.test_pos) == [(0, 1), (2, 3), (4, 5), (6, 7)]
    history = [(int(src[i]), int(dst[i]), int(time[i])) for i in order[:16]]
    history_pairs = {(s, d) for s, d, _ in history}
    assert len(split.train_pos) == 12 and len(split.val_pos) == 4
    assert set(rows(split.train_pos)) <= history_pairs
    assert set(rows(split.val_pos)) <= history_pairs


def test_temporal_tie_at_the_boundary_is_cut_by_position():
    src = np.arange(10, dtype=np.int64)
    dst = (src + 1) % 10
    time = np.array([0, 0, 0, 0, 0, 0, 0, 1, 1, 1])  # the cut (8 | 2) falls inside the tie at 1
    split = temporal_split(src, dst, time, 10, seed=0, train_fraction=0.5, val_fraction=0.3)
    assert rows(split.test_pos) == [(8, 9), (9, 0)]
    assert len(split.train_pos) == 5 and len(split.val_pos) == 3
    assert set(split.train_pos[:, 0]) <= set(range(8))


def test_temporal_ties_keep_input_order():
    # 300 distinct pairs over only three timestamps: an unstable sort would reorder the ties.
    src = np.arange(300, dtype=np.int64)
    dst = (src + 1) % 300
    time = np.random.default_rng(0).integers(0, 3, size=300).astype(np.float64)
    split = temporal_split(src, dst, time, 300, seed=0)
    last_time = np.flatnonzero(time == 2.0)
    middle_time = np.flatnonzero(time == 1.0)
    expected = np.concatenate([middle_time, last_time])[-60:]
    np.testing.assert_array_equal(split.test_pos[:, 0], expected)


def test_temporal_train_and_val_are_without_replacement_and_chronological():
    # A ring of 50 distinct pairs, with shuffled times: each row is identified by its source.
    src = np.arange(50, dtype=np.int64)
    dst = (src + 1) % 50
    time = np.random.default_rng(0).permutation(50)
    split = temporal_split(src, dst, time, 50, seed=1)
    history = set(np.argsort(time, kind="stable")[:40].tolist())
    for positives, size in ((split.train_pos, 30), (split.val_pos, 10)):
        sources = positives[:, 0]
        assert len(sources) == size and len(set(sources.tolist())) == size
        assert set(sources.tolist()) <= history
        assert (np.diff(time[sources]) > 0).all()


def test_temporal_is_deterministic_per_seed_and_varies_across_seeds():
    src, dst, time, n = small_temporal_graph()
    first = temporal_split(src, dst, time, n, seed=3)
    again = temporal_split(src, dst, time, n, seed=3)
    for name in ("train_pos", "val_pos", "test_pos", "train_neg", "val_neg", "test_neg"):
        np.testing.assert_array_equal(getattr(first, name), getattr(again, name))
    others = [temporal_split(src, dst, time, n, seed=s) for s in (4, 5, 6)]
    # Train takes all 12 edges left after the exclusion; validation picks 4 of them.
    assert any(not np.array_equal(o.val_pos, first.val_pos) for o in others)
    assert any(not np.array_equal(o.train_neg, first.train_neg) for o in others)


def test_temporal_default_keeps_test_pairs_out_of_train_and_val():
    src, dst, time, n = small_temporal_graph()
    # (0, 1) at t=5 and (2, 3) at t=9 repeat the test pairs at t=15, 16.
    for seed in range(10):
        split = temporal_split(src, dst, time, n, seed=seed)
        test_pairs = set(rows(split.test_pos))
        assert not test_pairs & set(rows(split.train_pos))
        assert not test_pairs & set(rows(split.val_pos))
        # 16 history edges minus the 4 earlier copies of test pairs leave 12: train 12, val 4.
        assert len(split.train_pos) == 12 and len(split.val_pos) == 4


def test_temporal_reference_protocol_lets_repeated_pairs_leak():
    src, dst, time, n = small_temporal_graph()
    overlaps = 0
    for seed in range(10):
        split = temporal_split(src, dst, time, n, seed=seed, exclude_test_pairs_from_train=False)
        overlaps += bool(set(rows(split.test_pos)) & set(rows(split.train_pos)))
    assert overlaps > 0


def test_temporal_exclusion_shrinks_train_to_what_is_available():
    # 9 edges on the pair (0, 1) and the last on (2, 3): both test pairs, so nothing remains.
    src = np.array([0] * 9 + [2], dtype=np.int64)
    dst = np.array([1] * 9 + [3], dtype=np.int64)
    time = np.arange(10)
    split = temporal_split(src, dst, time, 4, seed=0, train_fraction=0.6, val_fraction=0.2)
    assert rows(split.test_pos) == [(0, 1), (2, 3)]
    assert len(split.train_pos) == 0 and len(split.val_pos) == 0
    src[0], dst[0] = 2, 1  # (2, 1) at t=0 is the only history edge not on a test pair
    split = temporal_split(src, dst, time, 4, seed=0)
    assert rows(split.test_pos) == [(0, 1), (2, 3)]
    assert rows(split.train_pos) == [(2, 1)] and rows(split.val_pos) == [(2, 1)]


def test_temporal_disjoint_val():
    src, dst, time, n = small_temporal_graph()
    for seed in range(5):
        split = temporal_split(
            src, dst, time, n, seed=seed, train_fraction=0.5, val_fraction=0.2, disjoint_val=True,
            exclude_test_pairs_from_train=False,
        )
        # History pairs other than (0, 1) are unique, so disjoint rows means disjoint pairs.
        train, val = set(rows(split.train_pos)) - {(0, 1)}, set(rows(split.val_pos)) - {(0, 1)}
        assert not train & val
        assert len(split.train_pos) == 10 and len(split.val_pos) == 4
    # After excluding the test pairs 12 history edges remain: train takes 10, validation the other 2.
    split = temporal_split(src, dst, time, n, seed=0, train_fraction=0.5, val_fraction=0.3, disjoint_val=True)
    assert (len(split.train_pos), len(split.val_pos)) == (10, 2)
    assert not set(rows(split.train_pos)) & set(rows(split.val_pos))
    with pytest.raises(ValueError, match="disjoint_val"):
        temporal_split(src, dst, time, n, seed=0, val_fraction=0.3, disjoint_val=True)  # 0.9 > 0.8


def test_temporal_rejects_bad_inputs():
    src, dst, time, n = small_temporal_graph()
    with pytest.raises(ValueError, match="node ids"):
        temporal_split(src, dst, time, 7, seed=0)
    with pytest.raises(ValueError, match="same length"):
        temporal_split(src, dst[:-1], time, n, seed=0)


# ------------------------------------------------------------------------------- negatives


def test_negatives_avoid_every_edge_and_mix_as_documented():
    src, dst, time, n = small_temporal_graph()
    full = edge_set(src, dst)
    for seed in range(5):
        split = temporal_split(src, dst, time, n, seed=seed)
        check_negatives(split, full)
        # Test positives carry 4 rows: 2 keep the source; the other 2 need not.
        assert len(split.test_neg) == 4


def test_negatives_second_half_corrupts_both_endpoints():
    rng = np.random.default_rng(0)
    num_nodes = 1000
    positives = np.zeros((2001, 2), dtype=np.int64)
    positives[:, 1] = 1  # every positive is (0, 1)
    graph_keys = np.array([1], dtype=np.int64)
    negatives = sample_negatives(positives, graph_keys, num_nodes, rng)
    assert (negatives[:1000, 0] == 0).all()
    # Random sources in the second half: almost none is node 0, and they spread widely.
    assert (negatives[1000:, 0] == 0).mean() < 0.01
    assert len(np.unique(negatives[1000:, 0])) > 500
    assert len(np.unique(negatives[:1000, 1])) > 500


def complete_graph_but(num_nodes: int, missing: list[tuple[int, int]]):
    pairs = [(u, v) for u in range(num_nodes) for v in range(num_nodes) if u != v and (u, v) not in missing]
    src, dst = (np.array(column, dtype=np.int64) for column in zip(*pairs))
    return src, dst


def test_negatives_found_on_a_near_complete_graph():
    # Only (3, 0) and (4, 2) are free, among 30 non-loop pairs. Sources 3 and 4 must be kept.
    src, dst = complete_graph_but(6, [(3, 0), (4, 2)])
    keys = np.unique(src * 6 + dst)
    positives = np.array([[3, 1], [4, 1], [3, 2], [0, 1], [1, 2], [2, 3]], dtype=np.int64)
    negatives = sample_negatives(positives, keys, 6, np.random.default_rng(0))
    assert rows(negatives[:3]) == [(3, 0), (4, 2), (3, 0)]
    assert set(rows(negatives[3:])) <= {(3, 0), (4, 2)}


def test_negatives_raise_when_a_source_touches_every_node():
    src, dst = complete_graph_but(6, [(3, 0)])
    keys = np.unique(src * 6 + dst)
    positives = np.array([[1, 2], [3, 1]], dtype=np.int64)  # source 1 has no free destination
    with pytest.raises(NegativeSamplingError, match=r"\[1\]"):
        sample_negatives(positives, keys, 6, np.random.default_rng(0))


def test_rejection_alone_raises_when_a_source_is_saturated(monkeypatch):
    monkeypatch.setattr(split_module, "EXACT_FALLBACK_MAX_PAIRS", 0)  # as on a large graph
    src, dst = complete_graph_but(6, [(3, 0)])
    keys = np.unique(src * 6 + dst)
    with pytest.raises(NegativeSamplingError, match="too dense"):
        sample_negatives(np.array([[1, 2], [3, 1]]), keys, 6, np.random.default_rng(0))


def test_negatives_raise_on_a_complete_graph():
    src, dst = complete_graph_but(5, [])
    time = np.arange(len(src))
    with pytest.raises(NegativeSamplingError, match="complete"):
        temporal_split(src, dst, time, 5, seed=0)


# ------------------------------------------------------------------------------- random split


def test_random_split_is_a_disjoint_cover_with_the_right_sizes():
    n_edges, num_nodes = 1000, 200
    rng = np.random.default_rng(7)
    src = rng.integers(0, num_nodes, n_edges)
    dst = rng.integers(0, num_nodes, n_edges)
    split = random_split(src, dst, num_nodes, seed=0, test_fraction=0.2, val_fraction=0.1)
    assert (len(split.train_pos), len(split.val_pos), len(split.test_pos)) == (700, 100, 200)
    # Edges are tagged by row index through a unique pair per row: rebuild with distinct ids.
    ids = np.arange(n_edges, dtype=np.int64)
    tagged = random_split(ids, (ids + 1) % n_edges, n_edges, seed=0)
    parts = [set(getattr(tagged, f"{p}_pos")[:, 0].tolist()) for p in PARTS]
    assert sum(map(len, parts)) == n_edges and set().union(*parts) == set(range(n_edges))
    check_negatives(split, edge_set(src, dst))
    other = random_split(ids, (ids + 1) % n_edges, n_edges, seed=1)
    assert not np.array_equal(other.test_pos, tagged.test_pos)


# ------------------------------------------------------------------------------- pairs_and_labels


def test_pairs_and_labels_order_and_dtype():
    src, dst, time, n = small_temporal_graph()
    split = temporal_split(src, dst, time, n, seed=0)
    for part in PARTS:
        pairs, labels = split.pairs_and_labels(part)
        positives, negatives = getattr(split, f"{part}_pos"), getattr(split, f"{part}_neg")
        assert pairs.dtype == np.int64 and labels.dtype == np.float32
        np.testing.assert_array_equal(pairs, np.concatenate([positives, negatives]))
        np.testing.assert_array_equal(labels, [1.0] * len(positives) + [0.0] * len(negatives))
    with pytest.raises(ValueError):
        split.pairs_and_labels("validation")


# ------------------------------------------------------------------------------- real data


@pytest.fixture(scope="module")
def college_msg():
    edges = np.loadtxt(COLLEGE_MSG, dtype=np.int64, skiprows=1)
    return edges[:, 0], edges[:, 1], edges[:, 2], int(edges[:, :2].max()) + 1


def test_college_msg_temporal_split_invariants(college_msg):
    src, dst, time, num_nodes = college_msg
    total = len(src)
    split = temporal_split(src, dst, time, num_nodes, seed=0)
    n_test = total // 5
    assert len(split.test_pos) == n_test
    order = np.argsort(time, kind="stable")
    np.testing.assert_array_equal(split.test_pos, np.stack([src, dst], 1)[order[total - n_test :]])
    history = np.stack([src, dst], 1)[order[: total - n_test]]
    test_pairs = set(rows(split.test_pos))
    available = sum(pair not in test_pairs for pair in rows(history))
    assert len(split.train_pos) == min(int(0.6 * total), available)
    assert len(split.val_pos) == min(int(0.2 * total), available)
    assert not test_pairs & set(rows(split.train_pos))
    assert not test_pairs & set(rows(split.val_pos))
    assert set(rows(split.train_pos)) <= set(rows(history))
    check_negatives(split, edge_set(src, dst))


def test_college_msg_reference_protocol_overlaps(college_msg):
    src, dst, time, num_nodes = college_msg
    split = temporal_split(src, dst, time, num_nodes, seed=0, exclude_test_pairs_from_train=False)
    total = len(src)
    assert (len(split.train_pos), len(split.val_pos)) == (int(0.6 * total), int(0.2 * total))
    assert set(rows(split.test_pos)) & set(rows(split.train_pos))  # repeated messages leak
    check_negatives(split, edge_set(src, dst))


def test_college_msg_random_split(college_msg):
    src, dst, _, num_nodes = college_msg
    split = random_split(src, dst, num_nodes, seed=0)
    total = len(src)
    sizes = (len(split.train_pos), len(split.val_pos), len(split.test_pos))
    assert sizes == (total - total // 5 - total // 10, total // 10, total // 5)
    every = np.concatenate([split.train_pos, split.val_pos, split.test_pos])
    order = np.lexsort((every[:, 1], every[:, 0]))
    original = np.lexsort((dst, src))
    np.testing.assert_array_equal(every[order], np.stack([src, dst], 1)[original])
    check_negatives(split, edge_set(src, dst))
