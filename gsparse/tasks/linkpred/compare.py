"""The DST-EE paper's graph comparison (its Tables 3-4 and Figure 3) on the generic harness.

A grid of methods x sparsities x seeds on one dataset, each cell trained with
:func:`gsparse.tasks.linkpred.train_link_prediction` in its own folder, then one table and three
plots (see :mod:`gsparse.training.compare` for cells, resuming, tables and FLOPs)::

    python scripts/compare.py                                  # the paper's grid (hours on a CPU)
    python scripts/compare.py --epochs-scale 0.1 --seeds 0     # a quick look
    python scripts/compare.py --only-table                     # rebuild table and plots

What link prediction supplies: the dataset and features, the sparse layers (the predictor's two
fully connected layers, ``predictor.fc1.weight`` and ``predictor.fc2.weight``), the paper's epoch
budgets (sparse from scratch and dense 50, GMP 60, ADMM 20 dense pretraining + 20
ADMM-regularised + 20 masked retraining) and the exploration coefficients of Figure 3 (DST-EE at
c = 0, 0.01, 0.1, 1 at 90% sparsity). With ``--features walks`` the predictor MLP is the whole
trainable model, so the FLOPs are the whole training cost apart from the fixed feature pipeline
(temporal walks and skip-gram), which every cell shares.
"""
from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass
from pathlib import Path

from gsparse.tasks.linkpred.train import FEATURES, LinkPredConfig, train_link_prediction
from gsparse.training import compare as harness
from gsparse.training.compare import (FLOPS_FORMULA, PLOTS, Cell, CompareError, GridSettings, Plan,  # noqa: F401
                                      cell_state, summarise, training_flops)

SPARSE_LAYERS = ["predictor.fc1.weight", "predictor.fc2.weight"]
DEFAULT_METHODS = ("dense", "admm", "gmp", "set", "rigl", "dst_ee")


@dataclass
class CompareSettings(GridSettings):
    """The grid (budgets default to the paper's) plus the link-prediction settings of every cell."""

    dataset: str = "collegemsg"
    features: str = "walks"
    batch_size: int = 1024
    lr: float = 0.01

    def __post_init__(self):
        super().__post_init__()
        if self.features not in FEATURES:
            raise CompareError(f"features: '{self.features}' is not one of: {', '.join(FEATURES)}")
        self.batch_size = harness._check_int("batch_size", self.batch_size, 1)
        self.lr = harness._check_positive("lr", self.lr)


class LinkPredStudy:
    """Link prediction as a :class:`gsparse.training.compare.Study`."""

    sparse_params = SPARSE_LAYERS
    metric = "test_accuracy"
    metric_label = "test accuracy"
    secondary_metric = "test_auc"

    def __init__(self, settings: CompareSettings):
        self.settings = settings
        self.name = settings.dataset

    def steps_per_epoch(self, seeds: list[int], settings: GridSettings) -> dict[int, int]:
        """Optimizer steps per epoch for each seed's temporal split (no training)."""
        return steps_per_epoch(self.settings.dataset, seeds, self.settings.batch_size)

    def cell_config(self, settings: GridSettings, seed: int, epochs: int, recipe: dict | None) -> dict:
        s = self.settings
        return {"dataset": s.dataset, "features": s.features, "epochs": epochs, "batch_size": s.batch_size,
                "lr": s.lr, "recipe": recipe, "seed": seed}

    def train_cell(self, config: dict, run_dir: str) -> dict:
        # looked up at call time, so tests can stand in for it
        trainer = sys.modules[__name__].train_link_prediction
        return trainer(LinkPredConfig(**config, run_dir=run_dir, progress=False, resume=True))

    def describe(self, settings: GridSettings) -> str:
        s = self.settings
        return (f"Link prediction with {s.features} features, batch {s.batch_size}, lr {s.lr}, update interval "
                f"{s.update_interval}, DST-EE c = {harness._num(s.c)}. Sparsity of the two fully connected layers "
                f"(`predictor.fc1`, `predictor.fc2`, uniform).")


def steps_per_epoch(dataset: str, seeds: list[int], batch_size: int) -> dict[int, int]:
    """Optimizer steps per epoch for each seed's temporal split (no training)."""
    from gsparse.tasks.graphs import load_dataset
    from gsparse.tasks.linkpred.split import temporal_split

    edges = load_dataset(dataset)
    steps = {}
    for seed in seeds:
        split = temporal_split(edges.src, edges.dst, edges.time, edges.num_nodes, seed=seed)
        pairs = len(split.pairs_and_labels("train")[0])
        if pairs < batch_size:
            raise CompareError(f"batch_size: {batch_size} exceeds the {pairs} training pairs of {dataset}")
        steps[seed] = pairs // batch_size
    return steps


def plan_cells(settings: CompareSettings, spe: dict[int, int] | None = None) -> Plan:
    """Every cell of the comparison, recipes checked; ``spe`` defaults to :func:`steps_per_epoch`."""
    return harness.plan_cells(settings, LinkPredStudy(settings), spe)


def run_cell(cell: Cell, dataset_dir: Path, quiet: bool = False) -> tuple[str, dict, float]:
    """Train one cell unless it is finished (see :func:`gsparse.training.compare.run_cell`)."""
    study = LinkPredStudy(CompareSettings(dataset=cell.config["dataset"], features=cell.config["features"]))
    return harness.run_cell(cell, dataset_dir, study, quiet)


def run_comparison(settings: CompareSettings, only_table: bool = False, quiet: bool = False, log=print) -> dict:
    return harness.run_comparison(settings, LinkPredStudy(settings), only_table, quiet, log)


def build_parser() -> argparse.ArgumentParser:
    defaults = CompareSettings()
    parser = argparse.ArgumentParser(prog="compare", description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--dataset", default=defaults.dataset, help="dataset card name or edge-list file")
    parser.add_argument("--features", default=defaults.features, choices=FEATURES,
                        help="walks: the paper's pipeline; gnn: GraphSAGE")
    parser.add_argument("--batch-size", type=int, default=defaults.batch_size, metavar="B",
                        help="training pairs per step")
    parser.add_argument("--lr", type=float, default=defaults.lr, help="AdamW learning rate (cosine-annealed)")
    harness.add_grid_arguments(parser, defaults)
    return parser


def settings_from_args(args: argparse.Namespace) -> CompareSettings:
    return harness.settings_from_args(args, CompareSettings)


def main(argv: list[str] | None = None) -> int:
    from gsparse.tasks.graphs import DatasetError, GraphFormatError

    args = build_parser().parse_args(argv)
    try:
        settings = settings_from_args(args)
        results = run_comparison(settings, only_table=args.only_table, quiet=args.quiet)
    except (CompareError, DatasetError, GraphFormatError, FileNotFoundError, ValueError) as error:
        print(f"compare: error: {error}", file=sys.stderr)
        return 2
    return harness.report(results, settings, LinkPredStudy(settings))


if __name__ == "__main__":
    sys.exit(main())
