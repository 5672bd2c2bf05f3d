"""Scoring slices for the model and the baselines alike: thresholds chosen on validation, the
verdict line, and baselines computed on a split's own histories."""
import numpy as np
import pytest

from gsparse.tasks.linkpred.evaluation import baseline_results, best_threshold, slice_metrics, verdict
from gsparse.tasks.linkpred.slices import Slice, SlicedSplit


def test_best_threshold_maximises_accuracy_between_distinct_scores():
    scores = np.array([0.1, 0.2, 0.2, 0.7, 0.9])
    labels = np.array([0, 0, 1, 1, 1])
    # Cuts: below 0.1 -> 3/5; between 0.1 and 0.2 -> 4/5; between 0.2 and 0.7 -> 4/5; ... the lowest wins.
    assert best_threshold(scores, labels) == pytest.approx(0.15)
    assert best_threshold(np.array([1.0, 1.0]), np.array([1, 1])) == pytest.approx(0.0)  # all positive
    assert best_threshold(np.array([1.0, 2.0]), np.array([0, 0])) == pytest.approx(2.0)  # all negative


def test_slice_metrics_accuracy_auc_mrr_by_hand():
    pair_scores = np.array([2.0, -1.0, 0.5, -3.0])  # positives 2, -1; negatives 0.5, -3
    labels = np.array([1, 1, 0, 0])
    ranking = np.array([[1.0, 3.0], [-1.0, -2.0]])  # ranks: 2 -> 2; -1 -> 1.5 (one tie, one below)
    result = slice_metrics(pair_scores, labels, ranking)
    assert result["accuracy"] == pytest.approx(0.5)  # 2 > 0 right, -1 wrong, 0.5 wrong, -3 right
    assert result["auc"] == pytest.approx(0.75)  # 3 of the 4 positive/negative orderings right
    assert result["mrr"] == pytest.approx((1 / 2 + 1 / 1.5) / 2)
    assert slice_metrics(pair_scores, labels, ranking, threshold=-2.0)["accuracy"] == pytest.approx(0.75)
    assert slice_metrics(pair_scores, labels, ranking, tuned_threshold=-2.0)["tuned_accuracy"] == pytest.approx(0.75)


def test_verdict_names_the_scores_the_model_loses():
    baselines = {"edgebank": {"test_tuned_accuracy": 0.6, "test_auc": 0.6, "test_mrr": 0.3},
                 "common_neighbors": {"test_tuned_accuracy": 0.55, "test_auc": 0.7, "test_mrr": 0.2}}
    winning = verdict({"test_tuned_accuracy": 0.7, "test_auc": 0.8, "test_mrr": 0.4}, baselines)
    assert all(item["beats"] for item in winning["baseline_comparison"].values())
    assert winning["baseline_verdict"].startswith("the model beats every no-learning baseline")
    losing = verdict({"test_tuned_accuracy": 0.7, "test_auc": 0.65, "test_mrr": 0.4}, baselines)
    assert losing["baseline_comparison"]["auc"] == {"model": 0.65, "best_baseline": "common_neighbors",
                                                    "baseline": 0.7, "beats": False}
    assert "does NOT beat" in losing["baseline_verdict"] and "auc 0.6500 <= common_neighbors 0.7000" in \
        losing["baseline_verdict"]


def test_baselines_are_scored_from_each_slice_own_history():
    # Validation sees only (0, 1); test also sees (1, 2). EdgeBank scores (1, 2) 0 on val and 1 on test.
    history_val = np.array([[0, 1]])
    history_test = np.array([[0, 1], [1, 2]])
    val = Slice("val", history_val, np.array([[1, 2], [0, 1]]), np.array([[3, 4], [4, 3]]), np.array([[3], [3]]))
    test = Slice("test", history_test, np.array([[1, 2]]), np.array([[3, 4]]), np.array([[4]]))
    split = SlicedSplit(train=[], val=val, test=test, num_nodes=5)
    results = baseline_results(split, names=["edgebank"])["edgebank"]
    # val: positives score 0 and 1, negatives 0 and 0 -> threshold 0.5: accuracy 3/4; AUC (0.5*2+1*2)/4.
    assert results["threshold"] == pytest.approx(0.5)
    assert results["val_tuned_accuracy"] == pytest.approx(0.75) and results["val_auc"] == pytest.approx(0.75)
    assert results["test_tuned_accuracy"] == pytest.approx(1.0) and results["test_auc"] == pytest.approx(1.0)
    assert "test_accuracy" not in results
    assert results["test_mrr"] == pytest.approx(1.0)  # (1, 2) seen: 1 > its ranking negative (1, 4): 0
    assert results["val_mrr"] == pytest.approx((1 / 1.5 + 1 / 1) / 2)  # (1,2) ties its negative; (0,1) wins
