"""A small, real sparse-training run on the bundled CollegeMsg graph, in one process or under
the DeepSpeed launcher (any ZeRO stage).

Temporal link prediction: edges sorted by time, the last 20% are test positives; one random
non-edge per positive as negatives. Model: a node-embedding table (dense) and a two-layer MLP on
the concatenated pair (the sparse layers). Prints loss, accuracy, density and exploration
degree per epoch (rank 0).
"""
from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import torch

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


def load_split(graph: Path, seed: int):
    """Temporal split of a ``src dst time`` file with a header line, with sampled negatives."""
    rng = np.random.default_rng(seed)
    edges = np.loadtxt(graph, dtype=np.int64, skiprows=1)
    edges = edges[np.argsort(edges[:, 2], kind="stable")]
    num_nodes = int(edges[:, :2].max()) + 1
    existing = set(map(tuple, edges[:, :2].tolist()))
    split = int(0.8 * len(edges))
    return (num_nodes, len(edges), _with_negatives(edges[:split, :2], num_nodes, existing, rng),
            _with_negatives(edges[split:, :2], num_nodes, existing, rng))


def default_recipe(sparsity: float, total_steps: int, seed: int) -> dict:
    return {"method": "dst_ee", "sparsity": sparsity, "distribution": "uniform",
            "schedule": {"update_interval": max(total_steps // 20, 1), "drop_fraction": 0.5,
                         "drop_fraction_decay": "cosine", "final_drop_fraction": 0.005,
                         "last_update_step": max(int(0.75 * total_steps), 1)},
            "method_args": {"c": 0.01}, "seed": seed}


def run_demo(recipe: str | dict | None = None, graph: Path = DEFAULT_GRAPH, epochs: int = 20, sparsity: float = 0.9,
             batch_size: int = 1024, seed: int = 0, deepspeed_config: str | None = None) -> dict:
    """Train and return the final test accuracy, density and exploration degree.

    With ``deepspeed_config`` (run under ``deepspeed`` or ``torchrun``) each rank trains on its
    share of every global batch of ``batch_size`` pairs; the config's ``train_micro_batch_size_per_gpu``
    is set to ``batch_size / world_size``.
    """
    torch.manual_seed(seed)
    num_nodes, num_edges, (train_pairs, train_labels), (test_pairs, test_labels) = load_split(graph, seed)
    steps_per_epoch = -(-len(train_pairs) // batch_size)
    total_steps = epochs * steps_per_epoch
    model = PairMLP(num_nodes)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2, weight_decay=1e-4)
    # DeepSpeed steps this same torch optimizer inside its ZeRO wrapper, so the schedule applies.
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=total_steps)
    rank, world_size = 0, 1
    if deepspeed_config is None:
        from gsparse.sparsifier import Sparsifier

        sparsifier = Sparsifier(model, optimizer, recipe or default_recipe(sparsity, total_steps, seed))
        trainer = model
    else:
        import json

        import deepspeed
        import torch.distributed as dist

        import gsparse.deepspeed as gds

        deepspeed.init_distributed(dist_backend="gloo" if not torch.cuda.is_available() else "nccl")
        rank, world_size = dist.get_rank(), dist.get_world_size()
        config = json.loads(Path(deepspeed_config).read_text())
        config["train_micro_batch_size_per_gpu"] = batch_size // world_size
        config["gradient_accumulation_steps"] = 1
        recipe = recipe or config.pop(gds.CONFIG_KEY, None) or default_recipe(sparsity, total_steps, seed)
        trainer, _, _, _, sparsifier = gds.initialize(model=model, optimizer=optimizer, config=config, recipe=recipe)
    if rank == 0:
        print(f"CollegeMsg: {num_nodes} nodes, {num_edges} temporal edges; method={sparsifier.recipe.method} "
              f"sparsity={sparsifier.recipe.sparsity} ranks={world_size} sparse layers={[s.name for s in sparsifier.specs]}")
    loss_fn = torch.nn.BCEWithLogitsLoss()
    started = time.time()
    generator = torch.Generator().manual_seed(seed)  # the same order on every rank
    for epoch in range(1, epochs + 1):
        trainer.train()
        order = torch.randperm(len(train_pairs), generator=generator)
        total_loss, seen = 0.0, 0
        for start in range(0, len(order) - world_size + 1, batch_size):
            batch = order[start:start + batch_size][rank::world_size]
            loss = loss_fn(trainer(train_pairs[batch]), train_labels[batch])
            if deepspeed_config is None:
                optimizer.zero_grad()
                loss.backward()
                optimizer.step()
            else:
                trainer.backward(loss)
                trainer.step()
            scheduler.step()
            total_loss, seen = total_loss + loss.item() * len(batch), seen + len(batch)
        trainer.eval()
        with torch.no_grad():
            test_accuracy = ((trainer(test_pairs) > 0).float() == test_labels).float().mean().item()
        metrics = sparsifier.metrics()
        if rank == 0:
            print(f"epoch {epoch:2d}  loss {total_loss / seen:.4f}  test_acc {test_accuracy:.4f}  "
                  f"density {metrics['density']:.4f}  exploration {metrics['exploration_degree']:.4f}  "
                  f"updates {metrics['num_updates']}", flush=True)
    result = {"test_accuracy": test_accuracy, "density": metrics["density"],
              "exploration_degree": metrics["exploration_degree"], "seconds": round(time.time() - started, 1)}
    if rank == 0:
        print(f"final: {result}")
    return result
