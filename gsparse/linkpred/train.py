"""Link-prediction training, dense or with any gsparse recipe, in one process or under DeepSpeed.

    from gsparse.linkpred import LinkPredConfig, train_link_prediction
    metrics = train_link_prediction(LinkPredConfig(dataset="collegemsg", recipe="recipes/linkpred_dst_ee.yaml"))

Each epoch: one pass over the training pairs (positives and their negatives, shuffled; under
DeepSpeed every rank takes its share of each global batch), then accuracy and ROC-AUC on the
validation and test pairs. The run folder gets ``log.csv`` / ``log.jsonl`` (one row per epoch),
``metrics.json`` (test metrics at the epoch with the best validation accuracy) and a checkpoint
per epoch from which an interrupted run resumes (``resume=True``).
"""
from __future__ import annotations

import csv
import json
import math
import os
import time
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from gsparse.linkpred.metrics import accuracy, roc_auc
from gsparse.linkpred.models import ENCODERS, FeatureLinkPredictor, GNNLinkPredictor

SPLITS = ("temporal", "random")
FEATURES = ("gnn", "walks")
OPTIMIZERS = ("adamw", "sgd")


@dataclass
class LinkPredConfig:
    """Everything a link-prediction run needs; checked before any data is loaded."""

    dataset: str = "collegemsg"  # a dataset card name (graphs/*.yaml) or an edge-list path
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
        if not self.lr > 0 or self.weight_decay < 0:
            raise ValueError(f"lr must be > 0 and weight_decay >= 0, got {self.lr}, {self.weight_decay}")


class _Distributed:
    """Rank bookkeeping; a single process is rank 0 of 1."""

    def __init__(self, enabled: bool):
        self.enabled = enabled
        self.rank, self.world_size = 0, 1
        if enabled:
            import deepspeed
            import torch.distributed as dist

            deepspeed.init_distributed(dist_backend="nccl" if torch.cuda.is_available() else "gloo")
            self.rank, self.world_size = dist.get_rank(), dist.get_world_size()

    def barrier(self):
        if self.enabled:
            import torch.distributed as dist

            dist.barrier()


def _load_split(config: LinkPredConfig):
    from gsparse.graphs import load_dataset
    from gsparse.linkpred.split import random_split, temporal_split

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
        from gsparse.linkpred.walks import node_embeddings_from_edges

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


def _make_optimizer(config: LinkPredConfig, model: torch.nn.Module) -> torch.optim.Optimizer:
    if config.optimizer == "sgd":
        return torch.optim.SGD(model.parameters(), lr=config.lr, momentum=0.9, nesterov=True,
                               weight_decay=config.weight_decay)
    return torch.optim.AdamW(model.parameters(), lr=config.lr, weight_decay=config.weight_decay)


def _deepspeed_config(config: LinkPredConfig, world_size: int) -> dict:
    ds_config = config.deepspeed_config
    if not isinstance(ds_config, dict):
        ds_config = json.loads(Path(ds_config).read_text())
    ds_config = dict(ds_config)
    if config.batch_size % world_size:
        raise ValueError(f"batch_size {config.batch_size} is not divisible by the {world_size} ranks")
    ds_config["train_micro_batch_size_per_gpu"] = config.batch_size // world_size
    ds_config["gradient_accumulation_steps"] = 1
    ds_config.pop("train_batch_size", None)
    return ds_config


class _Trainer:
    """Holds the model (plain or a DeepSpeed engine), its optimizer, scheduler and sparsifier."""

    def __init__(self, config: LinkPredConfig, model, total_steps: int, distributed: _Distributed):
        self.config, self.distributed = config, distributed
        self.optimizer = _make_optimizer(config, model)
        # DeepSpeed steps this same torch optimizer inside ZeRO, so the schedule applies there too.
        self.scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(self.optimizer, T_max=max(total_steps, 1))
        self.sparsifier = None
        recipe = config.recipe
        if distributed.enabled:
            import gsparse.deepspeed as gds

            ds_config = _deepspeed_config(config, distributed.world_size)
            if recipe is None:
                recipe = ds_config.get(gds.CONFIG_KEY)
            ds_config.pop(gds.CONFIG_KEY, None)
            if recipe is None:
                import deepspeed

                self.model, *_ = deepspeed.initialize(model=model, optimizer=self.optimizer, config=ds_config)
            else:
                self.model, *_, self.sparsifier = gds.initialize(model=model, optimizer=self.optimizer,
                                                                 config=ds_config, recipe=recipe)
        else:
            self.model = model
            if recipe is not None:
                from gsparse.sparsifier import Sparsifier

                self.sparsifier = Sparsifier(model, self.optimizer, recipe)

    def train_step(self, loss: torch.Tensor) -> None:
        if self.distributed.enabled:
            self.model.backward(loss)
            self.model.step()
        else:
            self.optimizer.zero_grad()
            loss.backward()
            self.optimizer.step()
        self.scheduler.step()

    def sparse_metrics(self) -> dict:
        if self.sparsifier is None:
            return {"density": 1.0, "exploration_degree": 1.0}
        metrics = self.sparsifier.metrics()
        return {"density": metrics["density"], "exploration_degree": metrics["exploration_degree"]}

    # ---- checkpoints (one per epoch; the run resumes from the newest) -------------------------

    def save(self, run_dir: Path, epoch: int, history: list) -> None:
        client_state = {"epoch": epoch, "history": history, "scheduler": self.scheduler.state_dict()}
        if self.distributed.enabled:
            self.model.save_checkpoint(str(run_dir / "checkpoints"), tag=f"epoch{epoch}", client_state=client_state)
            return
        state = {**client_state, "model": self.model.state_dict(), "optimizer": self.optimizer.state_dict(),
                 "sparsifier": None if self.sparsifier is None else self.sparsifier.state_dict()}
        temporary = run_dir / "checkpoint.pt.tmp"
        torch.save(state, temporary)
        os.replace(temporary, run_dir / "checkpoint.pt")

    def load(self, run_dir: Path) -> tuple[int, list]:
        """Restore the newest checkpoint; returns (last finished epoch, history) or (0, [])."""
        if self.distributed.enabled:
            if not (run_dir / "checkpoints" / "latest").is_file():
                return 0, []
            _, client_state = self.model.load_checkpoint(str(run_dir / "checkpoints"))
        else:
            if not (run_dir / "checkpoint.pt").is_file():
                return 0, []
            client_state = torch.load(run_dir / "checkpoint.pt", weights_only=False)
            self.model.load_state_dict(client_state["model"])
            self.optimizer.load_state_dict(client_state["optimizer"])
            if self.sparsifier is not None:
                self.sparsifier.load_state_dict(client_state["sparsifier"])
        self.scheduler.load_state_dict(client_state["scheduler"])
        return client_state["epoch"], client_state["history"]


def _evaluate(model, pairs: torch.Tensor, labels: torch.Tensor, adjacency) -> dict:
    model.eval()
    with torch.no_grad():
        logits = model(pairs, adjacency).float()
    model.train()
    return {"accuracy": accuracy(logits, labels), "auc": roc_auc(logits, labels)}


def train_link_prediction(config: LinkPredConfig) -> dict:
    """Train and evaluate; returns the final metrics (also written to ``run_dir/metrics.json``)."""
    started = time.time()
    if config.deterministic:
        # Sparse adjacency products otherwise reduce in a thread-dependent order (same speed here).
        torch.use_deterministic_algorithms(True, warn_only=True)
        # ... but do not NaN-fill every torch.empty: DeepSpeed allocates large buffers each step.
        torch.utils.deterministic.fill_uninitialized_memory = False
    distributed = _Distributed(config.deepspeed_config is not None)
    if config.recipe is not None:
        from gsparse.recipe import load_recipe

        load_recipe(config.recipe)  # a bad recipe fails before any data is read
    edges, split = _load_split(config)
    model, adjacency = _build_model(config, edges, split)
    parts = {part: [torch.from_numpy(a) for a in split.pairs_and_labels(part)] for part in ("train", "val", "test")}
    train_pairs, train_labels = parts["train"]
    train_pairs = train_pairs.long()
    steps_per_epoch = len(train_pairs) // config.batch_size
    if steps_per_epoch == 0:
        raise ValueError(f"batch_size {config.batch_size} exceeds the {len(train_pairs)} training pairs")
    trainer = _Trainer(config, model, steps_per_epoch * config.epochs, distributed)
    run_dir = Path(config.run_dir)
    if distributed.rank == 0:
        run_dir.mkdir(parents=True, exist_ok=True)
    distributed.barrier()
    first_epoch, history = trainer.load(run_dir) if config.resume else (0, [])
    if first_epoch == 0 and distributed.rank == 0 and (run_dir / "updates.jsonl").exists():
        (run_dir / "updates.jsonl").unlink()
    if distributed.rank == 0:
        sparse = trainer.sparsifier
        print(f"{config.dataset}: {split.num_nodes} nodes, {len(edges)} temporal edges; "
              f"train/val/test positives {len(split.train_pos)}/{len(split.val_pos)}/{len(split.test_pos)}; "
              f"{'dense' if sparse is None else f'{sparse.recipe.method} at sparsity {sparse.recipe.sparsity}'}; "
              f"{distributed.world_size} process(es)" + (f"; resuming after epoch {first_epoch}" if first_epoch else ""),
              flush=True)
    loss_fn = torch.nn.BCEWithLogitsLoss()
    local_batch = config.batch_size // distributed.world_size
    for epoch in range(first_epoch + 1, config.epochs + 1):
        epoch_started = time.time()
        order = torch.randperm(len(train_pairs), generator=torch.Generator().manual_seed(config.seed * 1000 + epoch))
        total_loss = 0.0
        batches = range(steps_per_epoch)
        if config.progress and distributed.rank == 0:
            from tqdm import tqdm

            batches = tqdm(batches, desc=f"epoch {epoch}/{config.epochs}", leave=False, dynamic_ncols=True)
        for index in batches:
            rows = order[index * config.batch_size:(index + 1) * config.batch_size]
            rows = rows[distributed.rank * local_batch:(distributed.rank + 1) * local_batch]
            loss = loss_fn(trainer.model(train_pairs[rows], adjacency).float(), train_labels[rows])
            trainer.train_step(loss)
            total_loss += loss.item()
            update = trainer.sparsifier.last_update if trainer.sparsifier is not None else None
            if update is not None and update["step"] == trainer.sparsifier.step and distributed.rank == 0:
                _append_update(run_dir, epoch, update["metrics"])
        validation = _evaluate(trainer.model, parts["val"][0].long(), parts["val"][1], adjacency)
        test = _evaluate(trainer.model, parts["test"][0].long(), parts["test"][1], adjacency)
        row = {"epoch": epoch, "loss": total_loss / steps_per_epoch, "val_accuracy": validation["accuracy"],
               "val_auc": validation["auc"], "test_accuracy": test["accuracy"], "test_auc": test["auc"],
               **trainer.sparse_metrics(), "lr": trainer.scheduler.get_last_lr()[0],
               "seconds": round(time.time() - epoch_started, 2)}
        history.append(row)
        if distributed.rank == 0:
            _append_log(run_dir, row)
            print(f"epoch {epoch:3d}  loss {row['loss']:.4f}  val_acc {row['val_accuracy']:.4f}  "
                  f"test_acc {row['test_accuracy']:.4f}  test_auc {row['test_auc']:.4f}  density {row['density']:.4f}  "
                  f"exploration {row['exploration_degree']:.4f}", flush=True)
        trainer.save(run_dir, epoch, history)
    best = max(history, key=lambda r: (r["val_accuracy"], -r["epoch"]))
    metrics = {
        "dataset": config.dataset, "num_nodes": split.num_nodes, "num_edges": len(edges),
        "method": "dense" if trainer.sparsifier is None else trainer.sparsifier.recipe.method,
        "sparsity": 0.0 if trainer.sparsifier is None else trainer.sparsifier.recipe.sparsity,
        "best_epoch": best["epoch"], "test_accuracy": best["test_accuracy"], "test_auc": best["test_auc"],
        "val_accuracy": best["val_accuracy"], "final_test_accuracy": history[-1]["test_accuracy"],
        "density": history[-1]["density"], "exploration_degree": history[-1]["exploration_degree"],
        "epochs": config.epochs, "world_size": distributed.world_size, "seconds": round(time.time() - started, 1),
        **_compute_counts(trainer, model, steps_per_epoch * config.epochs, config.batch_size),
        "config": {k: v for k, v in asdict(config).items() if k != "extra"}, **config.extra,
    }
    if distributed.rank == 0:
        (run_dir / "metrics.json").write_text(json.dumps(metrics, indent=1, default=str))
        print(f"test accuracy {metrics['test_accuracy']:.4f} (AUC {metrics['test_auc']:.4f}) at epoch "
              f"{metrics['best_epoch']}, chosen on validation; metrics in {run_dir / 'metrics.json'}", flush=True)
    return metrics


def _compute_counts(trainer: _Trainer, model: torch.nn.Module, total_steps: int, batch_size: int) -> dict:
    """What training FLOPs follow: weights of the sparse layers, how many were active summed over
    steps, and the other weight matrices (dense throughout)."""
    sparse_names = set() if trainer.sparsifier is None else {spec.name for spec in trainer.sparsifier.specs}
    from gsparse.params import full_shape

    matrices = {name: math.prod(full_shape(p)) for name, p in model.named_parameters()
                if len(full_shape(p)) >= 2 and not name.startswith("embedding")}
    sparse_weights = sum(n for name, n in matrices.items() if name in sparse_names)
    engine = None if trainer.sparsifier is None else trainer.sparsifier.engine
    return {"total_steps": total_steps, "batch_size": batch_size, "sparse_weights": sparse_weights,
            "other_weights": sum(n for name, n in matrices.items() if name not in sparse_names),
            "active_weight_steps": sparse_weights * total_steps if engine is None else engine.active_weight_steps,
            "num_updates": 0 if engine is None else engine.num_updates,
            "dense_gradient_updates": 0 if engine is None or not engine.method.needs_grad else engine.num_updates}


def _append_update(run_dir: Path, epoch: int, metrics: dict) -> None:
    """One line per mask update in ``updates.jsonl`` (exploration degree per round: Figure 3)."""
    row = {"epoch": epoch, "step": metrics["step"], "update": metrics["num_updates"], "density": metrics["density"],
           "exploration_degree": metrics["exploration_degree"], "mask_change": metrics["mask_change"]}
    with (run_dir / "updates.jsonl").open("a") as output:
        output.write(json.dumps(row) + "\n")


def _append_log(run_dir: Path, row: dict) -> None:
    log_csv = run_dir / "log.csv"
    new_file = not log_csv.exists() or row["epoch"] == 1
    with log_csv.open("w" if new_file else "a", newline="") as output:
        writer = csv.DictWriter(output, fieldnames=list(row))
        if new_file:
            writer.writeheader()
        writer.writerow(row)
    with (run_dir / "log.jsonl").open("w" if new_file else "a") as output:
        output.write(json.dumps(row) + "\n")
