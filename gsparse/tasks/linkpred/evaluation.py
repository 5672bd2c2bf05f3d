"""Scoring a slice the same way for the model and for the no-learning baselines, and saying plainly
whether the model beats them.

Every slice is scored on its balanced pairs (accuracy and ROC-AUC) and on its ranking negatives
(MRR: each positive ranked against its own ``K`` corrupted destinations). ``accuracy`` is the model's
at logit 0 (the DST-EE paper's number). ``tuned_accuracy`` uses the threshold that is best on the
validation slice, applied unchanged to test - the one accuracy a score without a natural threshold
(a baseline) has, and the one the model is compared on.
"""
from __future__ import annotations

import numpy as np
import torch

from gsparse.tasks.linkpred.metrics import accuracy, mean_reciprocal_rank, roc_auc

SCORES = ("tuned_accuracy", "auc", "mrr")  # what the verdict compares


def slice_metrics(pair_scores, labels, ranking_scores, threshold: float = 0.0,
                  tuned_threshold: float | None = None) -> dict[str, float]:
    """Accuracy (score > ``threshold``), AUC and MRR of one slice, and ``tuned_accuracy`` (score >
    ``tuned_threshold``) when that is given.

    ``pair_scores``: the slice's positives then negatives (``labels`` 1 then 0); ``ranking_scores``:
    ``[n, K]`` scores of each positive's ranking negatives (``K`` may be 0: no MRR)."""
    pair_scores = torch.as_tensor(np.asarray(pair_scores, dtype=np.float64))
    labels = torch.as_tensor(np.asarray(labels, dtype=np.float32))
    result = {"accuracy": accuracy(pair_scores - threshold, labels), "auc": roc_auc(pair_scores, labels)}
    if tuned_threshold is not None:
        result["tuned_accuracy"] = accuracy(pair_scores - tuned_threshold, labels)
    ranking_scores = np.asarray(ranking_scores, dtype=np.float64)
    if ranking_scores.size:
        positives = pair_scores[: ranking_scores.shape[0]].numpy()
        result["mrr"] = mean_reciprocal_rank(positives, ranking_scores)
    return result


def best_threshold(scores: np.ndarray, labels: np.ndarray) -> float:
    """The threshold ``t`` maximising accuracy of ``score > t`` (midway between two distinct scores;
    the lowest such ``t`` on ties)."""
    scores = np.asarray(scores, dtype=np.float64)
    labels = np.asarray(labels) > 0.5
    order = np.argsort(scores, kind="stable")
    ordered, positive = scores[order], labels[order]
    # Cutting after position i (predict positive for everything above): correct = negatives at or
    # below i + positives above i. Only cuts between distinct scores are valid.
    negatives_below = np.concatenate([[0], np.cumsum(~positive)])
    positives_above = positive.sum() - np.concatenate([[0], np.cumsum(positive)])
    correct = negatives_below + positives_above
    valid = np.concatenate([[True], ordered[1:] != ordered[:-1], [True]])
    cut = int(np.argmax(np.where(valid, correct, -1)))
    if cut == 0:
        return float(ordered[0]) - 1.0
    if cut == len(ordered):
        return float(ordered[-1])
    return float((ordered[cut - 1] + ordered[cut]) / 2)


def baseline_results(split, names=None) -> dict[str, dict[str, float]]:
    """``{baseline: {"val_tuned_accuracy", "val_auc", "val_mrr", "test_...", "threshold"}}`` on the
    split's validation and test slices, each scored from its own history."""
    from gsparse.tasks.linkpred.baselines import BASELINES, History

    names = tuple(names or BASELINES)
    scored = {}
    for part in ("val", "test"):
        piece = split.eval_slice(part)
        history = History(piece.history, split.num_nodes)
        pairs, labels = piece.pairs_and_labels()
        ranking_pairs = piece.ranking_pairs()
        for name in names:
            ranking = history.score(name, ranking_pairs).reshape(piece.ranking.shape) if len(ranking_pairs) \
                else np.zeros(piece.ranking.shape)
            scored[(name, part)] = (history.score(name, pairs), labels, ranking)
    results = {}
    for name in names:
        threshold = best_threshold(*scored[(name, "val")][:2])
        row = {"threshold": threshold}
        for part in ("val", "test"):
            scores = slice_metrics(*scored[(name, part)], tuned_threshold=threshold)
            del scores["accuracy"]  # at 0 it means nothing for a score without a natural threshold
            for key, value in scores.items():
                row[f"{part}_{key}"] = value
        results[name] = row
    return results


def verdict(metrics: dict, baselines: dict[str, dict[str, float]], part: str = "test") -> dict:
    """Whether the model's ``part`` scores beat the best baseline's, per score, and one plain line."""
    comparison, notes = {}, []
    for score in SCORES:
        key = f"{part}_{score}"
        if key not in metrics or not baselines:
            continue
        best_name = max(baselines, key=lambda name: baselines[name].get(key, float("-inf")))
        best_value = baselines[best_name][key]
        beats = metrics[key] > best_value
        comparison[score] = {"model": metrics[key], "best_baseline": best_name, "baseline": best_value,
                             "beats": bool(beats)}
        if not beats:
            notes.append(f"{score} {metrics[key]:.4f} <= {best_name} {best_value:.4f}")
    if not comparison:
        line = "no baselines were scored"
    elif notes:
        line = "the model does NOT beat the best no-learning baseline on " + part + ": " + "; ".join(notes)
    else:
        line = "the model beats every no-learning baseline on " + part + " (" + ", ".join(
            f"{score} {c['model']:.4f} vs {c['best_baseline']} {c['baseline']:.4f}" for score, c in comparison.items()) + ")"
    return {"baseline_comparison": comparison, "baseline_verdict": line}


def format_baselines(baselines: dict[str, dict[str, float]], part: str = "test") -> str:
    """One line per baseline: accuracy, AUC and MRR on ``part``."""
    lines = []
    for name, row in baselines.items():
        values = "  ".join(f"{score} {row[f'{part}_{score}']:.4f}" for score in SCORES if f"{part}_{score}" in row)
        lines.append(f"  {name:<24} {values}")
    return "\n".join(lines)
