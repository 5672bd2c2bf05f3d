"""A small, real sparse-training run on the bundled CollegeMsg graph (single process).

Temporal link prediction: edges sorted by time, the last 20% are test positives; one random
non-edge per positive as negatives. Model: a node-embedding table (dense) and a two-layer MLP on
the concatenated pair (the sparse layers). Prints loss, accuracy, density and exploration
degree per epoch. The full PyG/DeepSpeed workload lives in the link-prediction modules.
"""
from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import torch

from gsparse.sparsifier import Sparsifier

DEFAULT_GRAPH = Path(__file__).resolve().parent.parent / "graphs" / "samples" / "CollegeMsg.txt"


class PairMLP(torch.nn.Module):
    def __init__(self, num_nodes: int, embedding_dim: int = 32, hidden: int = 128):
        super().__init__()
        self.embedding = torch.nn.Embedding(num_nodes, embedding_dim)
        self.fc1 = torch.nn.Linear(2 * embedding_dim, hidden)
        self.fc2 = torch.nn.Linear(hidden, 1)

    def forward(self, pairs: torch.Tensor) -> torch.Tensor:
        features = self.embedding(pairs).flatten(1)
        return self.fc2(torch.relu(self.fc1(features))).squeeze(1)


def _with_negatives(positives: np.ndarray, num_nodes: int, existing: set, rng: np.random.Generator):
    negatives = rng.integers(0, num_nodes, size=(2 * len(positives), 2))
    keep = np.fromiter(((s, d) not in existing and s != d for s, d in negatives), bool, len(negatives))
    negatives = negatives[keep][: len(positives)]
    pairs = np.concatenate([positives, negatives])
    labels = np.concatenate([np.ones(len(positives)), np.zeros(len(negatives))])
    return torch.from_numpy(pairs).long(), torch.from_numpy(labels).float()


def run_demo(recipe: str | dict | None = None, graph: Path = DEFAULT_GRAPH, epochs: int = 20, sparsity: float = 0.9,
             batch_size: int = 1024, seed: int = 0) -> dict:
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    edges = np.loadtxt(graph, dtype=np.int64, skiprows=1)
    edges = edges[np.argsort(edges[:, 2], kind="stable")]
    num_nodes = int(edges[:, :2].max()) + 1
    existing = set(map(tuple, edges[:, :2].tolist()))
    split = int(0.8 * len(edges))
    train_pairs, train_labels = _with_negatives(edges[:split, :2], num_nodes, existing, rng)
    test_pairs, test_labels = _with_negatives(edges[split:, :2], num_nodes, existing, rng)

    steps_per_epoch = -(-len(train_pairs) // batch_size)
    total_steps = epochs * steps_per_epoch
    if recipe is None:
        recipe = {"method": "dst_ee", "sparsity": sparsity, "distribution": "uniform",
                  "schedule": {"update_interval": max(total_steps // 20, 1), "drop_fraction": 0.5,
                               "drop_fraction_decay": "cosine", "final_drop_fraction": 0.005,
                               "last_update_step": max(int(0.75 * total_steps), 1)},
                  "method_args": {"c": 0.01}, "seed": seed}
    model = PairMLP(num_nodes)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2, weight_decay=1e-4)
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=total_steps)
    sparsifier = Sparsifier(model, optimizer, recipe)
    print(f"CollegeMsg: {num_nodes} nodes, {len(edges)} temporal edges; method={sparsifier.recipe.method} "
          f"sparsity={sparsifier.recipe.sparsity} sparse layers={[s.name for s in sparsifier.specs]}")
    loss_fn = torch.nn.BCEWithLogitsLoss()
    started = time.time()
    for epoch in range(1, epochs + 1):
        model.train()
        order = torch.randperm(len(train_pairs))
        total_loss = 0.0
        for start in range(0, len(order), batch_size):
            batch = order[start:start + batch_size]
            optimizer.zero_grad()
            loss = loss_fn(model(train_pairs[batch]), train_labels[batch])
            loss.backward()
            optimizer.step()
            scheduler.step()
            total_loss += loss.item() * len(batch)
        model.eval()
        with torch.no_grad():
            test_accuracy = ((model(test_pairs) > 0).float() == test_labels).float().mean().item()
        metrics = sparsifier.metrics()
        print(f"epoch {epoch:2d}  loss {total_loss / len(order):.4f}  test_acc {test_accuracy:.4f}  "
              f"density {metrics['density']:.4f}  exploration {metrics['exploration_degree']:.4f}  "
              f"updates {metrics['num_updates']}")
    result = {"test_accuracy": test_accuracy, "density": metrics["density"],
              "exploration_degree": metrics["exploration_degree"], "seconds": round(time.time() - started, 1)}
    print(f"final: {result}")
    return result
