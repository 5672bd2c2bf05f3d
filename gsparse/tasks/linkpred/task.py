"""Link prediction as a :class:`gsparse.training.Task`: the temporal split of a graph, a PyG (or
walk-feature) link predictor, binary cross-entropy on balanced positives and negatives, accuracy
and ROC-AUC on the validation and test pairs; the best epoch is the one with the highest
validation accuracy."""
from __future__ import annotations

from typing import Any, Iterable

import torch

from gsparse.tasks.linkpred.metrics import accuracy, roc_auc
from gsparse.training.task import RunContext, TaskBase


class LinkPredTask(TaskBase):
    """Trains on ``config`` (a :class:`~gsparse.tasks.linkpred.train.LinkPredConfig`)."""

    name = "linkpred"
    selection_metric = "val_accuracy"
    selection_mode = "max"
    eval_splits = ("val", "test")

    def __init__(self, config):
        self.config = config
        self.batch_size = config.batch_size  # global, over all ranks and micro-batches
        self.edges = self.split = self.adjacency = None

    # ---- data and model ---------------------------------------------------------------------

    def setup(self, context: RunContext) -> None:
        from gsparse.tasks.linkpred.train import _load_split

        self.context = context
        self.edges, self.split = _load_split(self.config)
        self.parts = {part: [torch.from_numpy(a) for a in self.split.pairs_and_labels(part)]
                      for part in ("train", "val", "test")}
        for part in self.parts.values():
            part[0] = part[0].long()

    def build_model(self) -> torch.nn.Module:
        from gsparse.tasks.linkpred.train import _build_model

        model, self.adjacency = _build_model(self.config, self.edges, self.split)
        return model

    def build_optimizer(self, model: torch.nn.Module) -> torch.optim.Optimizer:
        config = self.config
        if config.optimizer == "sgd":
            return torch.optim.SGD(model.parameters(), lr=config.lr, momentum=0.9, nesterov=True,
                                   weight_decay=config.weight_decay)
        return torch.optim.AdamW(model.parameters(), lr=config.lr, weight_decay=config.weight_decay)

    def build_scheduler(self, optimizer: torch.optim.Optimizer, total_steps: int) -> Any:
        return torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=max(total_steps, 1))

    def prepare(self, model: torch.nn.Module, context: RunContext) -> None:
        if self.adjacency is not None and context.dtype != self.adjacency.dtype:
            self.adjacency = self.adjacency.to(context.dtype)  # bf16 / fp16 engines

    def steps_per_epoch(self) -> int:
        train_pairs = len(self.parts["train"][0])
        steps = train_pairs // self.config.batch_size
        if steps == 0:
            raise ValueError(f"batch_size {self.config.batch_size} exceeds the {train_pairs} training pairs")
        return steps

    def train_batches(self, epoch: int, context: RunContext) -> Iterable[Any]:
        """Shuffled with a generator seeded by (seed, epoch); each global batch is cut into equal
        shares per rank, and each rank's share into ``accumulation_steps`` micro-batches."""
        batch_size = self.config.batch_size
        if batch_size % context.micro_batches:
            raise ValueError(f"batch_size {batch_size} is not divisible by {context.world_size} rank(s) x "
                             f"{context.accumulation_steps} micro-batches")
        pairs, labels = self.parts["train"]
        local = batch_size // context.world_size
        micro = local // context.accumulation_steps
        order = torch.randperm(len(pairs), generator=torch.Generator().manual_seed(self.config.seed * 1000 + epoch))
        for index in range(self.steps_per_epoch()):
            rows = order[index * batch_size:(index + 1) * batch_size]
            rows = rows[context.rank * local:(context.rank + 1) * local]
            for piece in range(context.accumulation_steps):
                chosen = rows[piece * micro:(piece + 1) * micro]
                yield pairs[chosen], labels[chosen]

    def loss(self, model: torch.nn.Module, batch: Any) -> torch.Tensor:
        pairs, labels = batch
        return torch.nn.functional.binary_cross_entropy_with_logits(model(pairs, self.adjacency).float(), labels)

    def evaluate(self, model: torch.nn.Module, split: str) -> dict[str, float]:
        pairs, labels = self.parts[split]
        model.eval()
        with torch.no_grad():
            logits = model(pairs, self.adjacency).float()
        model.train()
        return {"accuracy": accuracy(logits, labels), "auc": roc_auc(logits, labels)}

    # ---- reporting --------------------------------------------------------------------------

    def describe(self) -> str:
        split = self.split
        return (f"{self.config.dataset}: {split.num_nodes} nodes, {len(self.edges)} temporal edges; "
                f"train/val/test positives {len(split.train_pos)}/{len(split.val_pos)}/{len(split.test_pos)}")

    def summary(self) -> dict[str, Any]:
        return {"dataset": self.config.dataset, "num_nodes": self.split.num_nodes, "num_edges": len(self.edges)}
