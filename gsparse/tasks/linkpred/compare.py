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
import statistics
import sys
from dataclasses import dataclass, field, fields
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
    features: str = LinkPredConfig.features
    batch_size: int = LinkPredConfig.batch_size
    lr: float = LinkPredConfig.lr
    options: list = field(default_factory=list)  # "key=value" settings of LinkPredConfig for every cell

    def __post_init__(self):
        super().__post_init__()
        if self.features not in FEATURES:
            raise CompareError(f"features: '{self.features}' is not one of: {', '.join(FEATURES)}")
        self.batch_size = harness._check_int("batch_size", self.batch_size, 1)
        self.lr = harness._check_positive("lr", self.lr)
        self.task_options = parse_options(self.options)
        try:
            LinkPredConfig(**self.task_options)  # a bad value fails here, before any cell
        except (TypeError, ValueError) as error:
            raise CompareError(f"options: {error}") from None


_CELL_KEYS = ("dataset", "features", "epochs", "batch_size", "lr", "recipe", "seed", "run_dir", "progress", "resume",
              "resume_anyway")


def parse_options(options: list) -> dict:
    """``["protocol=paper", "pair_features=false"]`` -> typed :class:`LinkPredConfig` values."""
    kinds = {f.name: type(f.default) for f in fields(LinkPredConfig) if f.name not in _CELL_KEYS + ("extra",)}
    values = {}
    for option in options or ():
        key, sep, text = str(option).partition("=")
        key = key.strip()
        if not sep or key not in kinds:
            raise CompareError(f"options: expected KEY=VALUE with KEY one of {', '.join(sorted(kinds))}, got {option!r}")
        kind, text = kinds[key], text.strip()
        if kind is bool:
            if text.lower() not in ("true", "false", "1", "0", "yes", "no"):
                raise CompareError(f"options: {key} expects true or false, got {text!r}")
            values[key] = text.lower() in ("true", "1", "yes")
        elif kind in (int, float):
            try:
                values[key] = kind(text)
            except ValueError:
                raise CompareError(f"options: {key} expects a number, got {text!r}") from None
        else:
            values[key] = None if text.lower() == "none" else text
    return values


class LinkPredStudy:
    """Link prediction as a :class:`gsparse.training.compare.Study`."""

    sparse_params = SPARSE_LAYERS
    metric = "test_accuracy"
    metric_label = "test accuracy"
    secondary_metric = "test_auc"

    def __init__(self, settings: CompareSettings):
        self.settings = settings
        self.name = harness.folder_name(settings.dataset)  # a dataset file: its stem, not its path

    def steps_per_epoch(self, seeds: list[int], settings: GridSettings) -> dict[int, int]:
        """Optimizer steps per epoch for each seed's split (no training)."""
        s = self.settings
        return steps_per_epoch(s.dataset, seeds, s.batch_size, features=s.features, **s.task_options)

    def cell_config(self, settings: GridSettings, seed: int, epochs: int, recipe: dict | None) -> dict:
        s = self.settings
        return {"dataset": s.dataset, "features": s.features, "epochs": epochs, "batch_size": s.batch_size,
                "lr": s.lr, "recipe": recipe, "seed": seed, **s.task_options}

    def train_cell(self, config: dict, run_dir: str) -> dict:
        # looked up at call time, so tests can stand in for it
        trainer = sys.modules[__name__].train_link_prediction
        return trainer(LinkPredConfig(**config, run_dir=run_dir, progress=False, resume=True))

    def describe(self, settings: GridSettings) -> str:
        s = self.settings
        config = LinkPredConfig(dataset=s.dataset, features=s.features, **s.task_options)
        options = "".join(f", {key} {value}" for key, value in s.task_options.items())
        return (f"Link prediction with {s.features} features ({config.encoder} encoder, pair features "
                f"{'on' if config.pair_features else 'off'}), protocol {config.protocol}, {config.negatives} "
                f"negatives, {config.eval_links} links, batch {s.batch_size}, lr {s.lr}{options}, update interval "
                f"{s.update_interval}, DST-EE c = {harness._num(s.c)}. Sparsity of the two fully connected layers "
                f"(`predictor.fc1`, `predictor.fc2`, {s.distribution}).")


def steps_per_epoch(dataset: str, seeds: list[int], batch_size: int, **options) -> dict[int, int]:
    """Optimizer steps per epoch for each seed's split (no training)."""
    from gsparse.tasks.linkpred.task import LinkPredTask
    from gsparse.training.task import RunContext

    steps = {}
    for seed in seeds:
        task = LinkPredTask(LinkPredConfig(dataset=dataset, batch_size=batch_size, seed=seed,
                                           **{**options, "baselines": False, "pair_features": False}))
        task.setup(RunContext(seed=seed))
        try:
            steps[seed] = task.steps_per_epoch()
        except ValueError as error:
            raise CompareError(f"batch_size: {error}") from None
    return steps


def plan_cells(settings: CompareSettings, spe: dict[int, int] | None = None) -> Plan:
    """Every cell of the comparison, recipes checked; ``spe`` defaults to :func:`steps_per_epoch`."""
    return harness.plan_cells(settings, LinkPredStudy(settings), spe)


def run_cell(cell: Cell, dataset_dir: Path, quiet: bool = False) -> tuple[str, dict, float]:
    """Train one cell unless it is finished (see :func:`gsparse.training.compare.run_cell`)."""
    study = LinkPredStudy(CompareSettings(dataset=cell.config["dataset"], features=cell.config["features"]))
    return harness.run_cell(cell, dataset_dir, study, quiet)


def run_comparison(settings: CompareSettings, only_table: bool = False, quiet: bool = False, log=print) -> dict:
    """The harness's comparison, then the no-learning baselines and MRR appended to results.md."""
    study = LinkPredStudy(settings)
    plan = harness.plan_cells(settings, study)
    if not only_table:
        harness.run_cells(plan, Path(settings.out) / study.name, study, quiet, log)
    results = harness.write_results(plan, settings, study)
    dataset_dir = Path(settings.out) / study.name
    section = baselines_section(plan, dataset_dir, settings)
    with (dataset_dir / "results.md").open("a") as output:
        output.write("\n" + section)
    return results


_SCORES = (("test_tuned_accuracy", "accuracy (validation threshold)"), ("test_auc", "AUC"), ("test_mrr", "MRR"))


def _mean_std(values: list[float]) -> str:
    if not values:
        return "-"
    spread = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{100 * statistics.fmean(values):.2f} ± {100 * spread:.2f}"


def baselines_section(plan: Plan, dataset_dir: Path, settings: CompareSettings) -> str:
    """Markdown: the baselines on each seed's test slice, every cell's AUC and MRR, and which
    (method, sparsity) entries do not beat the best baseline."""
    per_seed: dict[int, dict] = {}
    cells: dict[tuple, list[dict]] = {}
    for cell in plan.grid:
        metrics = harness.finished_metrics(cell, dataset_dir)
        if metrics is None:
            continue
        if metrics.get("baselines"):
            per_seed.setdefault(cell.seed, metrics["baselines"])
        cells.setdefault((cell.method, cell.sparsity), []).append(metrics)
    lines = ["## No-learning baselines on the same test slices", ""]
    if not per_seed:
        return "\n".join(lines + ["No finished cell recorded baselines (run with baselines on).", ""])
    names = list(next(iter(per_seed.values())))
    lines += [f"Mean ± std over seeds {', '.join(map(str, sorted(per_seed)))} (%). A baseline's accuracy uses the "
              "threshold that is best on the validation slice (the model's tuned accuracy uses the same rule); AUC and MRR need none.", "",
              "| Baseline | " + " | ".join(label for _, label in _SCORES) + " |", "|---|" + "---:|" * len(_SCORES)]
    best = {}
    for name in names:
        row = []
        for key, _ in _SCORES:
            values = [seed[name][key] for seed in per_seed.values() if key in seed[name]]
            row.append(_mean_std(values))
            if values:
                best[key] = max(best.get(key, ("", -1.0)), (name, statistics.fmean(values)), key=lambda x: x[1])
        lines.append(f"| {name} | " + " | ".join(row) + " |")
    header = "| Method | " + " | ".join(f"{harness._num(100 * s)}%" for s in settings.sparsities) + " |"
    rule = "|---|" + "---:|" * len(settings.sparsities)
    below = []
    for key, label in _SCORES:
        if key not in best:
            continue
        lines += ["", f"## Test {label} (%), mean ± std over seeds; * = not above the best baseline "
                      f"({best[key][0]}, {100 * best[key][1]:.2f})", "", header, rule]
        for method in settings.methods:
            row = []
            for sparsity in settings.sparsities:
                group = cells.get((method, 0.0 if method == "dense" else sparsity), [])
                values = [m[key] for m in group if key in m]
                text = _mean_std(values)
                reached = [m["final_sparsity"] for m in group if m.get("final_sparsity") is not None]
                if method != "dense" and reached and abs(statistics.fmean(reached) - sparsity) > 0.005:
                    text += f" (at {100 * statistics.fmean(reached):.1f}% sparsity)"
                if values and statistics.fmean(values) <= best[key][1]:
                    text += " *"
                    below.append(f"{method} {harness._num(100 * sparsity)}% ({label})")
                row.append(text)
            lines.append(f"| {method} | " + " | ".join(row) + " |")
    lines += ["", "Entries marked * do not beat the best no-learning baseline: " + ", ".join(dict.fromkeys(below)) + "."
              if below else "Every finished entry beats the best no-learning baseline on every score.", ""]
    return "\n".join(lines)


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
    parser.add_argument("--options", nargs="*", default=[], metavar="KEY=VALUE",
                        help="other settings of every cell, as for train_linkpred (e.g. protocol=paper "
                             "negatives=historical pair_features=false)")
    harness.add_grid_arguments(parser, defaults)
    return parser


def settings_from_args(args: argparse.Namespace) -> CompareSettings:
    return harness.settings_from_args(args, CompareSettings)


def main(argv: list[str] | None = None) -> int:
    from gsparse.options import RecipeError
    from gsparse.tasks.graphs import DatasetError, GraphFormatError
    from gsparse.tasks.linkpred.split import NegativeSamplingError

    args = build_parser().parse_args(argv)
    try:
        settings = settings_from_args(args)
        results = run_comparison(settings, only_table=args.only_table, quiet=args.quiet)
    except (CompareError, RecipeError, DatasetError, GraphFormatError, NegativeSamplingError, FileNotFoundError,
            ValueError) as error:
        print(f"compare: error: {error}", file=sys.stderr)
        return 2
    return harness.report(results, settings, LinkPredStudy(settings))


if __name__ == "__main__":
    sys.exit(main())
