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

from gsparse.tasks.linkpred.models import FeatureLinkPredictor, GNNLinkPredictor

FEATURES = ("gnn", "walks")
OPTIMIZERS = ("adamw", "sgd")


@dataclass
class LinkPredConfig:
    """Everything a link-prediction run needs; checked before any data is loaded.

    The allowed values of every option are in :data:`CHOICES`; the command line's ``--help`` shows
    each option with its description (:data:`gsparse.tasks.linkpred.cli.HELP`) and default."""

    dataset: str = "collegemsg"  # a dataset card name (gsparse/tasks/graphs/cards/*.yaml) or an edge-list path
    data_dir: str | None = None
    format: str = "auto"  # of an edge-list file: auto (from its first lines) | snap | konect | csv | networkrepository | mtx
    columns: str | None = None  # csv: "src=a,dst=b,time=c[,weight=d]" when the header names differ
    remap: bool = False  # map node ids to 0..n-1 (default: ids as in the file, num_nodes = max id + 1)
    protocol: str = "chronological"  # chronological | paper | random (gsparse.tasks.linkpred.slices)
    negatives: str = "random"  # random | historical
    eval_links: str = "all"  # all | new: score only pairs never seen before their slice
    val_fraction: float = 0.15
    test_fraction: float = 0.15
    train_windows: int = 8  # chronological: training slice cut into windows; window 0 is history only
    ranking_negatives: int = 20  # negatives per positive for MRR
    features: str = "gnn"  # gnn: PyG encoder on the known graph | walks: temporal walks + skip-gram
    encoder: str = "sage"
    pair_features: bool = True  # append the pair's structural features to the predictor's input
    embedding_dim: int = 32
    hidden: int = 64
    predictor_hidden: int = 128
    dropout: float = 0.0
    walks_per_node: int = 10
    walk_length: int = 5
    epochs: int = 20
    batch_size: int = 1024  # global, over all ranks
    optimizer: str = "adamw"  # adamw | sgd (momentum 0.9, Nesterov)
    lr: float = 0.003
    weight_decay: float = 1e-4
    recipe: Any = None  # a gsparse recipe (path, dict); None trains dense
    deepspeed_config: Any = None  # a DeepSpeed JSON path or dict; None trains in one process
    run_dir: str = "runs/linkpred"
    seed: int = 0
    baselines: bool = True  # score the no-learning baselines on the same slices and report them
    threads: int | None = None  # intra-op threads per rank; None: cores / local ranks
    progress: bool = True
    resume: bool = False
    resume_anyway: bool = False  # resume although the checkpoint's data fingerprint differs
    collective_timeout: float | None = None  # seconds; None: $GSPARSE_COLLECTIVE_TIMEOUT, else 600
    export: bool = False  # write the final model with CSR linear layers to run_dir/export/
    deterministic: bool = True  # torch.use_deterministic_algorithms: bitwise-repeatable runs and resumes
    accumulation_steps: int | None = None  # micro-batches per step; None: 1 (under DeepSpeed: the config's)
    max_nonfinite_steps: int = 20  # optimizer steps in a row with a non-finite loss before TrainingDiverged
    extra: dict = field(default_factory=dict)  # recorded in metrics.json as given

    def __post_init__(self):
        for key, allowed in CHOICES.items():
            if getattr(self, key) not in allowed:
                raise ValueError(f"{key}: '{getattr(self, key)}' is not one of: {', '.join(allowed)}")
        for key in ("embedding_dim", "hidden", "predictor_hidden", "walks_per_node", "walk_length", "epochs",
                    "batch_size", "train_windows"):
            if not isinstance(getattr(self, key), int) or getattr(self, key) < 1:
                raise ValueError(f"{key}: expected a positive integer, got {getattr(self, key)!r}")
        for key in ("accumulation_steps", "max_nonfinite_steps", "threads"):
            value = getattr(self, key)
            if value is not None and (not isinstance(value, int) or value < 1):
                raise ValueError(f"{key}: expected a positive integer, got {value!r}")
        if not isinstance(self.ranking_negatives, int) or self.ranking_negatives < 0:
            raise ValueError(f"ranking_negatives: expected an integer >= 0, got {self.ranking_negatives!r}")
        if self.protocol == "chronological" and self.train_windows < 2:
            raise ValueError(f"train_windows: expected >= 2 (window 0 is history only), got {self.train_windows}")
        for key in ("val_fraction", "test_fraction"):
            if not 0 < getattr(self, key) < 1:
                raise ValueError(f"{key}: expected a fraction in (0, 1), got {getattr(self, key)!r}")
        if self.val_fraction + self.test_fraction >= 1:
            raise ValueError(f"val_fraction + test_fraction must be < 1, got {self.val_fraction + self.test_fraction}")
        if not 0 <= self.dropout < 1:
            raise ValueError(f"dropout: expected a value in [0, 1), got {self.dropout!r}")
        if not self.lr > 0 or self.weight_decay < 0:
            raise ValueError(f"lr must be > 0 and weight_decay >= 0, got {self.lr}, {self.weight_decay}")
        if self.protocol != "chronological" and (self.negatives != "random" or self.eval_links != "all"):
            raise ValueError(f"protocol '{self.protocol}' supports only negatives=random and eval_links=all "
                             "(they need the chronological protocol's history per slice)")
        self.column_map()  # a malformed --columns fails here

    def column_map(self) -> dict[str, str] | None:
        """``columns`` as ``{role: column name}``."""
        if self.columns is None:
            return None
        mapping = {}
        for item in str(self.columns).split(","):
            role, sep, name = item.partition("=")
            if not sep or role.strip() not in ("src", "dst", "time", "weight") or not name.strip():
                raise ValueError(f"columns: expected 'src=NAME,dst=NAME,time=NAME[,weight=NAME]', got {self.columns!r}")
            mapping[role.strip()] = name.strip()
        return mapping


def _choices() -> dict[str, tuple[str, ...]]:
    from gsparse.tasks.graphs.io import FORMATS
    from gsparse.tasks.linkpred.models import ENCODERS
    from gsparse.tasks.linkpred.slices import EVAL_LINKS, NEGATIVE_STRATEGIES, PROTOCOLS

    return {"format": ("auto", *FORMATS), "protocol": PROTOCOLS, "negatives": NEGATIVE_STRATEGIES,
            "eval_links": EVAL_LINKS, "features": FEATURES, "encoder": ENCODERS, "optimizer": OPTIMIZERS}


CHOICES = _choices()


def _load_split(config: LinkPredConfig):
    from gsparse.tasks.graphs import load_dataset
    from gsparse.tasks.linkpred.slices import make_split

    edges = load_dataset(config.dataset, data_dir=config.data_dir, remap=config.remap, format=config.format,
                         columns=config.column_map())
    split = make_split(edges.src, edges.dst, edges.time, edges.num_nodes, seed=config.seed, protocol=config.protocol,
                       negatives=config.negatives, eval_links=config.eval_links, val_fraction=config.val_fraction,
                       test_fraction=config.test_fraction, train_windows=config.train_windows,
                       ranking_negatives=config.ranking_negatives)
    return edges, split


def _build_model(config: LinkPredConfig, edges, split) -> torch.nn.Module:
    """The link predictor; a GNN's graph is passed per slice (:func:`known_graph`)."""
    torch.manual_seed(config.seed)  # identical initial weights on every rank
    if config.features == "walks":
        from gsparse.tasks.linkpred.walks import node_embeddings_from_edges

        # The walks see the edges known before validation: every training edge.
        known = split.val.history
        embeddings = node_embeddings_from_edges(known[:, 0], known[:, 1], _times_of(edges, known), split.num_nodes,
                                                walks_per_node=config.walks_per_node,
                                                walk_length=config.walk_length, seed=config.seed)
        return FeatureLinkPredictor(torch.from_numpy(embeddings), config.predictor_hidden, config.pair_features)
    return GNNLinkPredictor(split.num_nodes, config.encoder, config.embedding_dim, config.hidden,
                            config.predictor_hidden, pair_features=config.pair_features, dropout=config.dropout)


def known_graph(history: np.ndarray, num_nodes: int) -> torch.Tensor:
    """The sparse CSR adjacency the encoder passes messages over: both directions of each distinct
    pair of ``history`` (repeated temporal edges count once)."""
    from torch_geometric.utils import coalesce, to_torch_csr_tensor

    known = torch.from_numpy(np.ascontiguousarray(history)).long().reshape(-1, 2)
    # A sparse CSR adjacency aggregates ~50x faster on CPU than scatter over edge_index.
    edge_index = coalesce(torch.cat([known.t(), known.t().flip(0)], dim=1), num_nodes=num_nodes)
    with warnings.catch_warnings():  # torch's notes that sparse CSR is "beta"
        warnings.filterwarnings("ignore", message="Sparse (CSR tensor support|invariant checks)")
        return to_torch_csr_tensor(edge_index.flip(0), size=(num_nodes, num_nodes))


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
                    resume=config.resume, resume_anyway=config.resume_anyway, progress=config.progress,
                    collective_timeout=config.collective_timeout, export=config.export,
                    max_nonfinite_steps=config.max_nonfinite_steps, deterministic=config.deterministic,
                    threads=config.threads)
    extra = {"config": {k: v for k, v in asdict(config).items() if k != "extra"}, **config.extra}
    metrics = train(LinkPredTask(config), run, extra_metrics=extra)
    if _is_rank_zero():
        _report(config, metrics)
    return metrics


def _report(config: LinkPredConfig, metrics: dict) -> None:
    """Print the result beside the no-learning baselines, with a plain verdict (also in metrics.json)."""
    from gsparse.checkpoint import write_json_atomic
    from gsparse.tasks.linkpred.evaluation import format_baselines, verdict

    path = Path(config.run_dir) / "metrics.json"
    mrr = f", MRR {metrics['test_mrr']:.4f}" if "test_mrr" in metrics else ""
    print(f"test accuracy {metrics['test_accuracy']:.4f} (AUC {metrics['test_auc']:.4f}{mrr}) at epoch "
          f"{metrics['best_epoch']}, chosen on validation; metrics in {path}", flush=True)
    baselines = metrics.get("baselines")
    if baselines:
        metrics.update(verdict(metrics, baselines))
        print("no-learning baselines on the same test slice:\n" + format_baselines(baselines), flush=True)
        print(metrics["baseline_verdict"], flush=True)
        write_json_atomic(path, metrics)


def _is_rank_zero() -> bool:
    import torch.distributed as dist

    return not dist.is_available() or not dist.is_initialized() or dist.get_rank() == 0
