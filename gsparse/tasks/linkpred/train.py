"""Link-prediction training, dense or with any gsparse recipe, in one process or under DeepSpeed.

    from gsparse.tasks.linkpred import LinkPredConfig, train_link_prediction
    metrics = train_link_prediction(LinkPredConfig(dataset="collegemsg", recipe="recipes/linkpred_dst_ee.yaml"))

Each epoch: one pass over the training pairs (positives and their negatives, shuffled; under
DeepSpeed every rank takes its share of each global batch), then accuracy and ROC-AUC on the
validation and test pairs. The run folder gets ``log.csv`` / ``log.jsonl`` (one row per epoch),
``metrics.json`` (test metrics at the epoch with the best validation accuracy) and a checkpoint
per epoch from which an interrupted run resumes (``resume=True``). The loop is the generic
runner's (:mod:`gsparse.training`); the task is :class:`gsparse.tasks.linkpred.task.LinkPredTask`.
"""
from __future__ import annotations

import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from gsparse.tasks.linkpred.models import ENCODERS, FeatureLinkPredictor, GNNLinkPredictor

SPLITS = ("temporal", "random")
FEATURES = ("gnn", "walks")
OPTIMIZERS = ("adamw", "sgd")


@dataclass
class LinkPredConfig:
    """Everything a link-prediction run needs; checked before any data is loaded."""

    dataset: str = "collegemsg"  # a dataset card name (gsparse/tasks/graphs/cards/*.yaml) or an edge-list path
    data_dir: str | None = None
    remap: bool = False  # map node ids to 0..n-1 (default: ids as in the file, num_nodes = max id + 1)
    split: str = "temporal"  # temporal (the paper's protocol) | random
    features: str = "gnn"  # gnn: PyG encoder on the training graph | walks: temporal walks + skip-gram
    encoder: str = "sage"  # sage | gcn
    embedding_dim: int = 32
    hidden: int = 64
    predictor_hidden: int = 128
    walks_per_node: int = 10
    walk_length: int = 5
    epochs: int = 20
    batch_size: int = 1024  # global, over all ranks
    optimizer: str = "adamw"  # adamw | sgd (momentum 0.9, Nesterov)
    lr: float = 0.01
    weight_decay: float = 1e-4
    recipe: Any = None  # a gsparse recipe (path, dict); None trains dense
    deepspeed_config: Any = None  # a DeepSpeed JSON path or dict; None trains in one process
    run_dir: str = "runs/linkpred"
    seed: int = 0
    progress: bool = True
    resume: bool = False
    deterministic: bool = True  # torch.use_deterministic_algorithms: bitwise-repeatable runs and resumes
    accumulation_steps: int | None = None  # micro-batches per step; None: 1 (under DeepSpeed: the config's)
    max_nonfinite_steps: int = 20  # optimizer steps in a row with a non-finite loss before TrainingDiverged
    extra: dict = field(default_factory=dict)  # recorded in metrics.json as given

    def __post_init__(self):
        choices = {"split": SPLITS, "features": FEATURES, "encoder": ENCODERS, "optimizer": OPTIMIZERS}
        for key, allowed in choices.items():
            if getattr(self, key) not in allowed:
                raise ValueError(f"{key}: '{getattr(self, key)}' is not one of: {', '.join(allowed)}")
        for key in ("embedding_dim", "hidden", "predictor_hidden", "walks_per_node", "walk_length", "epochs",
                    "batch_size"):
            if not isinstance(getattr(self, key), int) or getattr(self, key) < 1:
                raise ValueError(f"{key}: expected a positive integer, got {getattr(self, key)!r}")
        for key in ("accumulation_steps", "max_nonfinite_steps"):
            value = getattr(self, key)
            if value is not None and (not isinstance(value, int) or value < 1):
                raise ValueError(f"{key}: expected a positive integer, got {value!r}")
        if not self.lr > 0 or self.weight_decay < 0:
            raise ValueError(f"lr must be > 0 and weight_decay >= 0, got {self.lr}, {self.weight_decay}")


def _load_split(config: LinkPredConfig):
    from gsparse.tasks.graphs import load_dataset
    from gsparse.tasks.linkpred.split import random_split, temporal_split

    edges = load_dataset(config.dataset, data_dir=config.data_dir, remap=config.remap)
    if config.split == "temporal":
        split = temporal_split(edges.src, edges.dst, edges.time, edges.num_nodes, seed=config.seed)
    else:
        split = random_split(edges.src, edges.dst, edges.num_nodes, seed=config.seed)
    return edges, split


def _build_model(config: LinkPredConfig, edges, split) -> tuple[torch.nn.Module, torch.Tensor | None]:
    """The model and the graph its encoder runs on (a sparse adjacency; None for walk features)."""
    torch.manual_seed(config.seed)  # identical initial weights on every rank
    if config.features == "walks":
        from gsparse.tasks.linkpred.walks import node_embeddings_from_edges

        train = split.train_pos
        times = _times_of(edges, train)
        embeddings = node_embeddings_from_edges(train[:, 0], train[:, 1], times, split.num_nodes,
                                                walks_per_node=config.walks_per_node,
                                                walk_length=config.walk_length, seed=config.seed)
        return FeatureLinkPredictor(torch.from_numpy(embeddings), config.predictor_hidden), None
    from torch_geometric.utils import coalesce, to_torch_csr_tensor

    train = torch.from_numpy(split.train_pos).long()
    # Messages flow both ways along each distinct training link (repeated temporal edges count
    # once); a sparse CSR adjacency aggregates ~50x faster on CPU than scatter over edge_index.
    edge_index = coalesce(torch.cat([train.t(), train.t().flip(0)], dim=1), num_nodes=split.num_nodes)
    with warnings.catch_warnings():  # torch's notes that sparse CSR is "beta"
        warnings.filterwarnings("ignore", message="Sparse (CSR tensor support|invariant checks)")
        adjacency = to_torch_csr_tensor(edge_index.flip(0), size=(split.num_nodes, split.num_nodes))
    model = GNNLinkPredictor(split.num_nodes, config.encoder, config.embedding_dim, config.hidden,
                             config.predictor_hidden)
    return model, adjacency


def _times_of(edges, pairs: np.ndarray) -> np.ndarray:
    """Timestamps for the walk graph: each training pair takes the time of an edge it came from."""
    keys = edges.src.astype(np.int64) * edges.num_nodes + edges.dst
    order = np.argsort(keys, kind="stable")
    wanted = pairs[:, 0].astype(np.int64) * edges.num_nodes + pairs[:, 1]
    positions = np.searchsorted(keys[order], wanted)
    return np.asarray(edges.time)[order[np.minimum(positions, len(order) - 1)]]


def train_link_prediction(config: LinkPredConfig) -> dict:
    """Train and evaluate; returns the final metrics (also written to ``run_dir/metrics.json``).

    :class:`~gsparse.tasks.linkpred.task.LinkPredTask` run by :func:`gsparse.training.train`;
    raises :class:`gsparse.training.TrainingDiverged` if the loss stops being finite."""
    from gsparse.tasks.linkpred.task import LinkPredTask
    from gsparse.training import RunConfig, train

    run = RunConfig(epochs=config.epochs, run_dir=config.run_dir, recipe=config.recipe,
                    deepspeed_config=config.deepspeed_config, accumulation_steps=config.accumulation_steps,
                    resume=config.resume, progress=config.progress, max_nonfinite_steps=config.max_nonfinite_steps,
                    deterministic=config.deterministic)
    extra = {"config": {k: v for k, v in asdict(config).items() if k != "extra"}, **config.extra}
    metrics = train(LinkPredTask(config), run, extra_metrics=extra)
    if _is_rank_zero():
        print(f"test accuracy {metrics['test_accuracy']:.4f} (AUC {metrics['test_auc']:.4f}) at epoch "
              f"{metrics['best_epoch']}, chosen on validation; metrics in {Path(config.run_dir) / 'metrics.json'}",
              flush=True)
    return metrics


def _is_rank_zero() -> bool:
    import torch.distributed as dist

    return not dist.is_available() or not dist.is_initialized() or dist.get_rank() == 0
