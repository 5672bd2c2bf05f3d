"""The link-prediction protocols as slices: time order, identical treatment of validation and test,
negatives, new-links-only scoring, ranking negatives."""
from pathlib import Path

import numpy as np
import pytest

from gsparse.tasks.linkpred.slices import build_slice, chronological_split, make_split

COLLEGE_MSG = Path(__file__).resolve().parents[1] / "gsparse" / "tasks" / "graphs" / "cards" / "samples" / "CollegeMsg.txt"


def pair_set(pairs) -> set:
    return {tuple(map(int, row)) for row in np.asarray(pairs).reshape(-1, 2)}


def toy_graph(seed=0, edges=400, nodes=30):
    """Random temporal edges with repeated pairs, self loops and many tied timestamps."""
    rng = np.random.default_rng(seed)
    src = rng.integers(0, nodes, edges)
    dst = rng.integers(0, nodes, edges)
    time = rng.integers(0, 100, edges)  # about 4 edges per timestamp
    return src, dst, time, nodes


@pytest.fixture(scope="module")
def college_msg():
    data = np.loadtxt(COLLEGE_MSG, skiprows=1, dtype=np.int64)
    return data[:, 0], data[:, 1], data[:, 2], int(data[:, :2].max()) + 1


def slices_with_times(split, src, dst, time):
    """Each slice with the timestamps of the events that made it (from the recorded boundaries)."""
    order = np.argsort(time, kind="stable")
    times = time[order]
    bounds = split.info["slice_edges"]
    pieces = [*split.train, split.val, split.test]
    return [(piece, times[start:end], times[:start]) for piece, start, end in zip(pieces, bounds[1:-1], bounds[2:])]


@pytest.mark.parametrize("negatives", ["random", "historical"])
def test_slices_are_ordered_and_disjoint_in_time_with_history_everything_before(negatives):
    src, dst, time, nodes = toy_graph()
    split = chronological_split(src, dst, time, nodes, seed=3, negatives=negatives, train_windows=3)
    assert [piece.name for piece in split.train] == ["train1", "train2"]
    previous_last = None
    order = np.argsort(time, kind="stable")
    for piece, slice_times, history_times in slices_with_times(split, src, dst, time):
        assert len(slice_times) and slice_times.min() > (history_times.max() if len(history_times) else -1)
        if previous_last is not None:
            assert slice_times.min() > previous_last  # no timestamp spans two slices
        previous_last = slice_times.max()
        # The history is exactly the events before the slice, in time order.
        expected = np.stack([src[order], dst[order]], axis=1)[: len(history_times)]
        np.testing.assert_array_equal(piece.history, expected)
        assert piece.time_range == (slice_times.min(), slice_times.max())


@pytest.mark.parametrize("negatives", ["random", "historical"])
@pytest.mark.parametrize("eval_links", ["all", "new"])
def test_every_slice_is_built_alike(negatives, eval_links):
    src, dst, time, nodes = toy_graph(1)
    split = chronological_split(src, dst, time, nodes, seed=0, negatives=negatives, eval_links=eval_links,
                                train_windows=3, ranking_negatives=6)
    order = np.argsort(time, kind="stable")
    for piece, slice_times, _ in slices_with_times(split, src, dst, time):
        events = pair_set(np.stack([src[order], dst[order]], axis=1)[len(piece.history):len(piece.history) + len(slice_times)])
        history = pair_set(piece.history)
        positives = pair_set(piece.positives)
        assert len(positives) == len(piece.positives)  # repeated pairs scored once
        expected = {p for p in events if p[0] != p[1]}
        if eval_links == "new":
            expected -= history
        assert positives == expected
        negatives_set = pair_set(piece.negatives)
        assert not negatives_set & events  # never a positive (or any event) of the same slice
        assert all(u != v for u, v in piece.negatives.tolist())
        historical = [p for p in map(tuple, piece.negatives.tolist()) if p in history]
        if negatives == "random":
            assert not historical  # random negatives are never known edges
        else:
            available = len(history - events)
            assert len(historical) == min(len(piece.positives) // 2, available)
        assert piece.ranking.shape == (len(piece.positives), 6)
        ranked = piece.ranking_pairs()
        np.testing.assert_array_equal(ranked[:, 0], np.repeat(piece.positives[:, 0], 6))
        assert not pair_set(ranked) & events and (ranked[:, 0] != ranked[:, 1]).all()
        if negatives == "random":
            assert not pair_set(ranked) & history


def test_historical_ranking_negatives_are_the_sources_past_destinations():
    history = np.array([[0, 1], [0, 2], [0, 3], [4, 5]])
    events = np.array([[0, 1], [4, 6], [7, 8]])  # (0, 1) repeats: not a negative for this slice
    piece = build_slice("test", history, events, 10, np.random.default_rng(0), "historical", ranking_negatives=4)
    rows = {tuple(p): list(r) for p, r in zip(piece.positives.tolist(), piece.ranking.tolist())}
    assert set(rows[(0, 1)][:2]) <= {2, 3}  # the first half: 0's past destinations not in the slice
    assert rows[(4, 6)][:2] == [5, 5]  # 4's only past destination
    assert all(d not in (7, 8) for d in rows[(7, 8)])  # 7 has no past: random, never (7, 8) or (7, 7)
    assert pair_set(piece.negatives) & {(0, 2), (0, 3), (4, 5)}  # a historical pair negative


def test_new_links_only_and_empty_slices_fail_clearly():
    history = np.array([[0, 1], [1, 2]])
    piece = build_slice("val", history, np.array([[0, 1], [2, 3], [2, 3], [3, 3]]), 5, np.random.default_rng(0),
                        new_links_only=True)
    assert pair_set(piece.positives) == {(2, 3)}
    with pytest.raises(ValueError, match="slice 'val' has no pairs"):
        build_slice("val", history, np.array([[0, 1], [1, 2]]), 5, np.random.default_rng(0), new_links_only=True)


def test_seeded_and_repeatable(college_msg):
    first = make_split(*college_msg, seed=5, negatives="historical")
    second = make_split(*college_msg, seed=5, negatives="historical")
    other = make_split(*college_msg, seed=6, negatives="historical")
    for a, b in zip([*first.train, first.val, first.test], [*second.train, second.val, second.test]):
        np.testing.assert_array_equal(a.negatives, b.negatives)
        np.testing.assert_array_equal(a.ranking, b.ranking)
    assert not np.array_equal(first.test.negatives, other.test.negatives)
    np.testing.assert_array_equal(first.test.positives, other.test.positives)  # the split itself has no randomness
    assert first.info["protocol"] == "chronological" and first.info["seed"] == 5
    assert first.info["negatives"] == "historical" and first.info["eval_links"] == "all"


def test_college_msg_fractions(college_msg):
    split = make_split(*college_msg, seed=0)
    bounds = split.info["slice_edges"]
    total = len(college_msg[0])
    assert bounds[0] == 0 and bounds[-1] == total
    # Cut at timestamp boundaries at or after 70% and 85% of the edges.
    assert 0 <= bounds[-3] - int(0.70 * total) < 5 and 0 <= bounds[-2] - (total - int(0.15 * total)) < 5
    assert len(split.val.history) == bounds[-3] and len(split.test.history) == bounds[-2]


def test_other_protocols_score_from_the_training_edges(college_msg):
    paper = make_split(*college_msg, seed=0, protocol="paper")
    assert len(paper.train) == 1 and paper.val.history is paper.test.history is paper.train[0].history
    np.testing.assert_array_equal(paper.train[0].history, paper.train[0].positives)
    assert paper.info["protocol"] == "paper" and paper.test.ranking.shape == (len(paper.test.positives), 20)
    with pytest.raises(ValueError, match="supports only negatives=random"):
        make_split(*college_msg, seed=0, protocol="paper", negatives="historical")
    with pytest.raises(ValueError, match="protocol: 'weekly' is not one of"):
        make_split(*college_msg, seed=0, protocol="weekly")


def test_too_small_graph_is_refused_with_the_boundaries():
    src, dst, time = np.array([0, 1, 2]), np.array([1, 2, 0]), np.array([0, 0, 0])
    with pytest.raises(ValueError, match="too small"):
        chronological_split(src, dst, time, 3, seed=0)
