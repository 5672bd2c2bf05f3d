"""Link prediction as a :class:`gsparse.training.Task`.

The split's slices (:mod:`gsparse.tasks.linkpred.slices`) are scored from their own history: each
training window, the validation and the test slice get the adjacency of the edges before them (and,
with ``pair_features``, the structural features computed from those edges). Training is binary
cross-entropy on balanced positives and negatives, one training window per global batch; evaluation
reports accuracy, ROC-AUC and MRR; the best epoch is the one with the highest validation accuracy.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Iterable

import numpy as np
import torch

from gsparse.tasks.linkpred.evaluation import best_threshold, slice_metrics
from gsparse.training.task import RunContext, TaskBase


@dataclass
class _Scored:
    """A slice as tensors: its pairs, labels, ranking pairs, features, and which graph scores it."""

    pairs: torch.Tensor
    labels: torch.Tensor
    ranking_pairs: torch.Tensor
    ranking_shape: tuple
    features: torch.Tensor | None
    ranking_features: torch.Tensor | None
    graph: int  # index into LinkPredTask.graphs


class LinkPredTask(TaskBase):
    """Trains on ``config`` (a :class:`~gsparse.tasks.linkpred.train.LinkPredConfig`)."""

    name = "linkpred"
    selection_metric = "val_accuracy"
    selection_mode = "max"
    eval_splits = ("val", "test")

    def __init__(self, config):
        self.config = config
        self.batch_size = config.batch_size  # global, over all ranks and micro-batches
        self.edges = self.split = None
        self.graphs: list[torch.Tensor | None] = []
        self.baselines: dict | None = None

    # ---- data and model ---------------------------------------------------------------------

    def setup(self, context: RunContext) -> None:
        from gsparse.tasks.linkpred.train import _load_split

        self.context = context
        self.edges, self.split = _load_split(self.config)
        self._graph_of_history: dict[int, int] = {}
        self.train_slices = [self._prepare(piece) for piece in self.split.train]
        self.eval_slices = {part: self._prepare(self.split.eval_slice(part)) for part in self.eval_splits}
        if self.config.baselines and context.rank == 0:
            from gsparse.tasks.linkpred.evaluation import baseline_results

            self.baselines = baseline_results(self.split)

    def _prepare(self, piece) -> _Scored:
        pairs, labels = piece.pairs_and_labels()
        ranking_pairs = piece.ranking_pairs()
        features = ranking_features = None
        if self.config.pair_features:
            from gsparse.tasks.linkpred.baselines import History

            history = History(piece.history, self.split.num_nodes)
            features = torch.from_numpy(history.pair_features(pairs))
            ranking_features = torch.from_numpy(history.pair_features(ranking_pairs))
        return _Scored(torch.from_numpy(pairs).long(), torch.from_numpy(labels), torch.from_numpy(ranking_pairs).long(),
                       tuple(piece.ranking.shape), features, ranking_features, self._graph_for(piece.history))

    def _graph_for(self, history: np.ndarray) -> int:
        """One adjacency per distinct history array (the paper's protocol shares the training one)."""
        key = id(history)
        if key not in self._graph_of_history:
            from gsparse.tasks.linkpred.train import known_graph

            graph = known_graph(history, self.split.num_nodes) if self.config.features == "gnn" else None
            self._graph_of_history[key] = len(self.graphs)
            self.graphs.append(graph)
        return self._graph_of_history[key]

    def build_model(self) -> torch.nn.Module:
        from gsparse.tasks.linkpred.train import _build_model

        return _build_model(self.config, self.edges, self.split)

    def build_optimizer(self, model: torch.nn.Module) -> torch.optim.Optimizer:
        config = self.config
        if config.optimizer == "sgd":
            return torch.optim.SGD(model.parameters(), lr=config.lr, momentum=0.9, nesterov=True,
                                   weight_decay=config.weight_decay)
        return torch.optim.AdamW(model.parameters(), lr=config.lr, weight_decay=config.weight_decay)

    def build_scheduler(self, optimizer: torch.optim.Optimizer, total_steps: int) -> Any:
        return torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=max(total_steps, 1))

    def prepare(self, model: torch.nn.Module, context: RunContext) -> None:
        self.graphs = [graph.to(context.dtype) if graph is not None and graph.dtype != context.dtype else graph
                       for graph in self.graphs]  # bf16 / fp16 engines

    # ---- training ---------------------------------------------------------------------------

    def _window_steps(self) -> list[int]:
        return [len(piece.pairs) // self.config.batch_size for piece in self.train_slices]

    def steps_per_epoch(self) -> int:
        steps = sum(self._window_steps())
        if steps == 0:
            largest = max(len(piece.pairs) for piece in self.train_slices)
            raise ValueError(f"batch_size {self.config.batch_size} exceeds the training pairs of every window "
                             f"(largest: {largest}); lower batch_size or train_windows")
        return steps

    def train_batches(self, epoch: int, context: RunContext) -> Iterable[Any]:
        """Each global batch comes from one training window (so one graph per step), the windows'
        batches in a shuffled order; everything is seeded by (seed, epoch). Each global batch is cut
        into equal shares per rank, and each rank's share into ``accumulation_steps`` micro-batches."""
        batch_size = self.config.batch_size
        if batch_size % context.micro_batches:
            raise ValueError(f"batch_size {batch_size} is not divisible by {context.world_size} rank(s) x "
                             f"{context.accumulation_steps} micro-batches")
        generator = torch.Generator().manual_seed(self.config.seed * 1000 + epoch)
        orders = [torch.randperm(len(piece.pairs), generator=generator) for piece in self.train_slices]
        batches = [(window, index) for window, steps in enumerate(self._window_steps()) for index in range(steps)]
        local = batch_size // context.world_size
        micro = local // context.accumulation_steps
        for position in torch.randperm(len(batches), generator=generator).tolist():
            window, index = batches[position]
            piece = self.train_slices[window]
            rows = orders[window][index * batch_size:(index + 1) * batch_size]
            rows = rows[context.rank * local:(context.rank + 1) * local]
            for part in range(context.accumulation_steps):
                chosen = rows[part * micro:(part + 1) * micro]
                features = None if piece.features is None else piece.features[chosen]
                yield piece.pairs[chosen], piece.labels[chosen], features, piece.graph

    def loss(self, model: torch.nn.Module, batch: Any) -> torch.Tensor:
        pairs, labels, features, graph = batch
        logits = model(pairs, self.graphs[graph], features).float()
        return torch.nn.functional.binary_cross_entropy_with_logits(logits, labels)

    def evaluate(self, model: torch.nn.Module, split: str) -> dict[str, float]:
        piece = self.eval_slices[split]
        graph = self.graphs[piece.graph]
        model.eval()
        with torch.no_grad():
            logits = model(piece.pairs, graph, piece.features).float()
            ranking = model(piece.ranking_pairs, graph, piece.ranking_features).float() if len(piece.ranking_pairs) \
                else torch.zeros(piece.ranking_shape)
        model.train()
        logits = logits.numpy()
        if split == "val":  # evaluated before test each epoch: test's tuned accuracy uses this threshold
            self.val_threshold = best_threshold(logits, piece.labels.numpy())
        return slice_metrics(logits, piece.labels.numpy(), ranking.reshape(piece.ranking_shape).numpy(),
                             tuned_threshold=getattr(self, "val_threshold", 0.0))

    # ---- reporting --------------------------------------------------------------------------

    def describe(self) -> str:
        info = self.split.info
        counts = "/".join(str(count) for count in info["positives"].values())
        return (f"{self.config.dataset}: {self.split.num_nodes} nodes, {len(self.edges)} temporal edges; protocol "
                f"{info['protocol']}, negatives {info['negatives']}, eval links {info['eval_links']}; positives per "
                f"slice ({', '.join(info['positives'])}) {counts}")

    def summary(self) -> dict[str, Any]:
        summary = {"dataset": self.config.dataset, "num_nodes": self.split.num_nodes, "num_edges": len(self.edges),
                   "split": self.split.info}
        if self.baselines is not None:
            summary["baselines"] = self.baselines
        return summary

    def fingerprint(self) -> dict[str, Any]:
        """The graph and how it was split (a resumed run must train on the same slices)."""
        return {"name": self.name, "batch_size": self.batch_size, "dataset": self.config.dataset,
                "num_nodes": self.split.num_nodes, "num_edges": len(self.edges), "split": self.split.info}
