"""Comparison harness for the DST-EE paper's graph result (its Tables 3-4 and Figure 3).

A grid of methods x sparsities x seeds on one dataset, each cell trained with
:func:`gsparse.linkpred.train_link_prediction` in its own folder, then one table and three plots:

    python scripts/compare.py                                  # the paper's grid (hours on a CPU)
    python scripts/compare.py --epochs-scale 0.1 --seeds 0     # a quick look
    python scripts/compare.py --only-table                     # rebuild table and plots

Cells: ``OUT/<dataset>/<method>-s<sparsity>-seed<seed>/`` (``dense`` once per seed, at sparsity 0),
plus DST-EE at several exploration coefficients for Figure 3
(``dst_ee-c<c>-s<sparsity>-seed0``). Each folder holds ``cell.json``, the cell's full
specification, written before training: a cell whose ``metrics.json`` exists and whose
``cell.json`` equals what this invocation would run is skipped; one with the same spec but no
``metrics.json`` resumes from its last epoch checkpoint; one with another spec is cleared and
trained again.

Epoch budgets follow the paper: sparse from scratch (DST-EE, RigL, SET, static) and dense 50, GMP
60, ADMM 20 dense pretraining + 20 ADMM-regularised + 20 masked retraining.

Training FLOPs of a cell (an estimate over the weight matrices; biases, activations, the loss and
the optimizer update are left out)::

    6 * batch_size * (active_weight_steps + other_weights * total_steps)
      + 2 * batch_size * sparse_weights * dense_gradient_updates

``active_weight_steps`` sums the active weights of the sparse layers over all steps (dense
phases of prune-from-dense count in full). 6 FLOPs per weight and example: 2 forward (one
multiply-add) + 4 backward (the input gradient and the weight gradient, a multiply-add each); the
last term is the dense weight gradient (2 FLOPs per weight and example) that RigL and DST-EE
compute at update steps.
Reported relative to the dense cell of the same seed (else the mean over dense cells, else
``6 * batch_size * all weights * steps of the dense budget``). With ``--features walks`` the
predictor MLP is the whole trainable model, so this is the whole training cost apart from the
fixed feature pipeline (temporal walks and skip-gram), which every cell shares.

Accuracies in ``results.csv`` / ``results.json`` are fractions as in ``metrics.json``;
``results.md`` shows percent. ``std`` is the sample standard deviation over seeds (0 for one seed).
"""
from __future__ import annotations

import argparse
import contextlib
import csv
import json
import math
import shutil
import statistics
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

from gsparse.distributions import round_half_up
from gsparse.linkpred import LinkPredConfig, train_link_prediction
from gsparse.linkpred.train import FEATURES
from gsparse.methods import METHODS

DEFAULT_METHODS = ("dense", "admm", "gmp", "set", "rigl", "dst_ee")
ALLOWED_METHODS = ("dense",) + tuple(METHODS)
FROM_SCRATCH = ("dst_ee", "rigl", "set", "static")  # sparse from step 0, DST schedule
SPARSE_LAYERS = ["predictor.fc1.weight", "predictor.fc2.weight"]
PLOTS = ("accuracy_vs_sparsity.png", "exploration_vs_round.png", "accuracy_vs_epoch.png")
FLOPS_FORMULA = ("6 * batch_size * (active_weight_steps + other_weights * total_steps) "
                 "+ 2 * batch_size * sparse_weights * dense_gradient_updates")


class CompareError(ValueError):
    """A comparison setting is not allowed; the message says which and what is."""


# ---- settings ---------------------------------------------------------------------------------


@dataclass
class CompareSettings:
    """Everything one comparison needs; checked on construction."""

    dataset: str = "collegemsg"
    features: str = "walks"
    methods: list = field(default_factory=lambda: list(DEFAULT_METHODS))
    sparsities: list = field(default_factory=lambda: [0.8, 0.9, 0.98])
    seeds: list = field(default_factory=lambda: [0, 1, 2])
    dst_epochs: int = 50
    admm_epochs: list = field(default_factory=lambda: [20, 20, 20])  # pretrain, ADMM, retrain
    gmp_epochs: int = 60
    dense_epochs: int = 50
    epochs_scale: float = 1.0
    batch_size: int = 1024
    update_interval: int = 50
    c: float = 0.01
    lr: float = 0.01
    explore_c: list = field(default_factory=lambda: [0.0, 0.01, 0.1, 1.0])
    explore_sparsity: float = 0.9
    curve_sparsity: float | None = None  # None: 0.9 if in the grid, else the middle sparsity
    out: str = "runs/compare"

    def __post_init__(self):
        self.methods = _check_methods(self.methods)
        self.sparsities = sorted(_unique([_check_sparsity("sparsities", s) for s in self.sparsities]))
        if not self.sparsities and any(m != "dense" for m in self.methods):
            raise CompareError("sparsities: give at least one sparsity for the sparse methods")
        self.seeds = _unique([_check_int("seeds", s, 0) for s in self.seeds])
        if not self.seeds:
            raise CompareError("seeds: give at least one seed")
        if self.features not in FEATURES:
            raise CompareError(f"features: '{self.features}' is not one of: {', '.join(FEATURES)}")
        for key in ("dst_epochs", "gmp_epochs", "dense_epochs", "batch_size", "update_interval"):
            setattr(self, key, _check_int(key, getattr(self, key), 1))
        self.admm_epochs = _check_admm_epochs(self.admm_epochs)
        self.epochs_scale = _check_positive("epochs_scale", self.epochs_scale)
        self.lr = _check_positive("lr", self.lr)
        self.c = _check_nonnegative("c", self.c)
        self.explore_c = _unique([_check_nonnegative("explore_c", c) for c in self.explore_c])
        self.explore_sparsity = _check_sparsity("explore_sparsity", self.explore_sparsity)
        self.curve_sparsity = self._resolve_curve_sparsity()

    def _resolve_curve_sparsity(self) -> float | None:
        if self.curve_sparsity is None:
            if 0.9 in self.sparsities or not self.sparsities:
                return 0.9 if self.sparsities else None
            return self.sparsities[len(self.sparsities) // 2]
        value = _check_sparsity("curve_sparsity", self.curve_sparsity)
        if value not in self.sparsities:
            raise CompareError(f"curve_sparsity: {value} is not one of the grid's sparsities "
                               f"({', '.join(_num(s) for s in self.sparsities)})")
        return value

    def epochs(self, method: str) -> list[int]:
        """Epochs per phase of ``method`` after ``epochs_scale`` (ADMM: pretrain, ADMM, retrain)."""
        if method == "admm":
            return [self.scaled(e) for e in self.admm_epochs]
        budget = {"dense": self.dense_epochs, "gmp": self.gmp_epochs}.get(method, self.dst_epochs)
        return [self.scaled(budget)]

    def scaled(self, epochs: int) -> int:
        """``epochs * epochs_scale`` rounded up, at least 1 (0 stays 0)."""
        return 0 if epochs == 0 else max(1, math.ceil(epochs * self.epochs_scale - 1e-9))


def _unique(values: list) -> list:
    return list(dict.fromkeys(values))


def _check_methods(methods) -> list[str]:
    methods = _unique(list(methods))
    unknown = [m for m in methods if m not in ALLOWED_METHODS]
    if unknown:
        raise CompareError(f"methods: unknown {', '.join(map(repr, unknown))}; allowed: {', '.join(ALLOWED_METHODS)}")
    if not methods:
        raise CompareError(f"methods: give at least one of: {', '.join(ALLOWED_METHODS)}")
    return methods


def _check_sparsity(key: str, value) -> float:
    try:
        value = float(value)
    except (TypeError, ValueError):
        raise CompareError(f"{key}: expected a number in (0, 1), got {value!r}") from None
    if not 0.0 < value < 1.0:
        raise CompareError(f"{key}: sparsity must be in (0, 1) (exclusive), got {value}")
    return value


def _check_int(key: str, value, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise CompareError(f"{key}: expected an integer >= {minimum}, got {value!r}")
    return value


def _check_positive(key: str, value) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
        raise CompareError(f"{key}: expected a number > 0, got {value!r}")
    return float(value)


def _check_nonnegative(key: str, value) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not value >= 0:
        raise CompareError(f"{key}: expected a number >= 0, got {value!r}")
    return float(value)


def _check_admm_epochs(epochs) -> list[int]:
    epochs = list(epochs)
    if len(epochs) != 3:
        raise CompareError(f"admm_epochs: expected 3 numbers (pretrain, ADMM, retrain), got {epochs!r}")
    pretrain = _check_int("admm_epochs (pretraining)", epochs[0], 0)
    admm = _check_int("admm_epochs (ADMM training)", epochs[1], 1)
    retrain = _check_int("admm_epochs (retraining; the prune happens at its first step)", epochs[2], 1)
    return [pretrain, admm, retrain]


def _num(value: float) -> str:
    """Shortest exact text of a number for folder names and labels: 0.9, 0, 0.01."""
    short = f"{value:g}"
    return short if float(short) == value else repr(float(value))


# ---- cells ------------------------------------------------------------------------------------


@dataclass
class Cell:
    """One training run of the grid: its folder name and everything that defines it."""

    method: str
    sparsity: float
    seed: int
    phases: list  # epochs per phase
    config: dict  # LinkPredConfig keyword arguments except run_dir, progress and resume
    folder: str

    @property
    def epochs(self) -> int:
        return sum(self.phases)

    @property
    def c(self) -> float | None:
        recipe = self.config.get("recipe") or {}
        return recipe.get("method_args", {}).get("c") if self.method == "dst_ee" else None

    def spec(self) -> dict:
        """What ``cell.json`` records; two runs with equal specs are the same run."""
        return json.loads(json.dumps({"method": self.method, "sparsity": self.sparsity, "seed": self.seed,
                                      "phases": self.phases, "config": self.config}))


@dataclass
class Plan:
    """The cells to train (grid first, then the extra exploration cells) and their roles."""

    grid: list
    explore: dict  # c -> Cell (possibly a grid cell)
    steps_per_epoch: dict  # seed -> steps

    @property
    def cells(self) -> list[Cell]:
        seen, cells = set(), []
        for cell in self.grid + list(self.explore.values()):
            if cell.folder not in seen:
                seen.add(cell.folder)
                cells.append(cell)
        return cells


def steps_per_epoch(dataset: str, seeds: list[int], batch_size: int) -> dict[int, int]:
    """Optimizer steps per epoch for each seed's temporal split (no training)."""
    from gsparse.graphs import load_dataset
    from gsparse.linkpred.split import temporal_split

    edges = load_dataset(dataset)
    steps = {}
    for seed in seeds:
        split = temporal_split(edges.src, edges.dst, edges.time, edges.num_nodes, seed=seed)
        pairs = len(split.pairs_and_labels("train")[0])
        if pairs < batch_size:
            raise CompareError(f"batch_size: {batch_size} exceeds the {pairs} training pairs of {dataset}")
        steps[seed] = pairs // batch_size
    return steps


def build_recipe(method: str, sparsity: float, phases: list[int], spe: int, settings: CompareSettings,
                 seed: int, c: float | None = None) -> dict | None:
    """The gsparse recipe of one cell (None for dense); raises CompareError when the step budget is
    too small for the method's schedule."""
    if method == "dense":
        return None
    recipe = {"method": method, "sparsity": sparsity, "distribution": "uniform",
              "params": {"include": list(SPARSE_LAYERS)}, "seed": seed}
    total, interval = sum(phases) * spe, settings.update_interval
    if method in FROM_SCRATCH:
        last = round_half_up(0.75 * total)
        if last < interval:
            raise CompareError(f"{method}: 75% of its {total} steps ({last}) is below update_interval {interval}, "
                               f"so no mask would ever change; raise the epochs or lower --update-interval")
        recipe["schedule"] = {"update_interval": interval, "drop_fraction": 0.5, "drop_fraction_decay": "cosine",
                              "final_drop_fraction": 0.005, "last_update_step": last}
        if method == "dst_ee":
            recipe["method_args"] = {"c": settings.c if c is None else c, "eps": 1.0}
    elif method == "gmp":
        first = max(interval, interval * round_half_up(0.1 * total / interval))
        last = max(interval * round_half_up(0.75 * total / interval), first + interval)
        if last > total:
            raise CompareError(f"gmp: {total} steps leave no room for two pruning steps {interval} apart after "
                               f"step {first}; raise --gmp-epochs or lower --update-interval")
        recipe["schedule"] = {"update_interval": interval, "first_update_step": first, "last_update_step": last}
    elif method == "admm":
        pretrain, admm, _ = phases
        recipe["method_args"] = {"pretrain_steps": pretrain * spe, "admm_steps": admm * spe,
                                 "admm_interval": spe, "rho": 0.01}
    return recipe


def make_cell(settings: CompareSettings, method: str, sparsity: float, seed: int, spe: int,
              c: float | None = None, folder: str | None = None) -> Cell:
    phases = settings.epochs(method)
    recipe = build_recipe(method, sparsity, phases, spe, settings, seed, c)
    config = {"dataset": settings.dataset, "features": settings.features, "epochs": sum(phases),
              "batch_size": settings.batch_size, "lr": settings.lr, "recipe": recipe, "seed": seed}
    return Cell(method, sparsity, seed, phases, config, folder or f"{method}-s{_num(sparsity)}-seed{seed}")


def plan_cells(settings: CompareSettings, spe: dict[int, int] | None = None) -> Plan:
    """Every cell of the comparison, recipes checked; ``spe`` defaults to :func:`steps_per_epoch`."""
    from gsparse.recipe import load_recipe

    explore_seed = 0
    seeds = _unique(settings.seeds + ([explore_seed] if settings.explore_c else []))
    spe = spe or steps_per_epoch(settings.dataset, seeds, settings.batch_size)
    grid = []
    for method in settings.methods:
        for sparsity in ([0.0] if method == "dense" else settings.sparsities):
            grid.extend(make_cell(settings, method, sparsity, seed, spe[seed]) for seed in settings.seeds)
    explore = {}
    for c in settings.explore_c:
        cell = make_cell(settings, "dst_ee", settings.explore_sparsity, explore_seed, spe[explore_seed], c=c,
                         folder=f"dst_ee-c{_num(c)}-s{_num(settings.explore_sparsity)}-seed{explore_seed}")
        explore[c] = next((g for g in grid if g.spec() == cell.spec()), cell)
    plan = Plan(grid, explore, spe)
    for cell in plan.cells:
        if cell.config["recipe"] is not None:
            load_recipe(cell.config["recipe"])
    return plan


# ---- running ----------------------------------------------------------------------------------


def cell_state(cell_dir: Path, cell: Cell) -> str:
    """'finished', 'partial' (same spec, a checkpoint to resume from), 'new' or 'stale' (another spec)."""
    spec_file = cell_dir / "cell.json"
    if not spec_file.is_file():
        return "stale" if cell_dir.exists() and any(cell_dir.iterdir()) else "new"
    try:
        recorded = json.loads(spec_file.read_text())
    except json.JSONDecodeError:
        return "stale"
    if recorded != cell.spec():
        return "stale"
    if (cell_dir / "metrics.json").is_file():
        return "finished"
    if (cell_dir / "checkpoint.pt").is_file() or (cell_dir / "checkpoints" / "latest").is_file():
        return "partial"
    return "new"


def run_cell(cell: Cell, dataset_dir: Path, quiet: bool = False) -> tuple[str, dict, float]:
    """Train the cell unless it is finished; returns (status, metrics, seconds).

    Status: 'skipped' (finished with this spec), 'resumed', 'done' (trained from scratch) or
    're-run' (its folder held a run with another spec, now cleared)."""
    cell_dir = dataset_dir / cell.folder
    state = cell_state(cell_dir, cell)
    if state == "finished":
        metrics = json.loads((cell_dir / "metrics.json").read_text())
        return "skipped", metrics, float(metrics.get("seconds", 0.0))
    if state == "stale":
        shutil.rmtree(cell_dir)
    cell_dir.mkdir(parents=True, exist_ok=True)
    (cell_dir / "cell.json").write_text(json.dumps(cell.spec(), indent=1))
    started = time.time()
    config = LinkPredConfig(**cell.config, run_dir=str(cell_dir), progress=False, resume=True)
    with _training_output(cell_dir, quiet):
        metrics = train_link_prediction(config)
    status = {"finished": "skipped", "partial": "resumed", "new": "done", "stale": "re-run"}[state]
    return status, metrics, time.time() - started


@contextlib.contextmanager
def _training_output(cell_dir: Path, quiet: bool):
    """Training's per-epoch lines go to the console, or with ``quiet`` to the cell's train.log."""
    if not quiet:
        yield
        return
    with (cell_dir / "train.log").open("a") as log, contextlib.redirect_stdout(log):
        yield


def run_cells(plan: Plan, dataset_dir: Path, quiet: bool = False, log: Callable[[str], None] = print) -> None:
    """Train every cell of the plan in order, one progress line each."""
    cells = plan.cells
    for index, cell in enumerate(cells, 1):
        status, metrics, seconds = run_cell(cell, dataset_dir, quiet)
        log(f"[{index}/{len(cells)}] {cell.folder}: {status}, test accuracy {metrics['test_accuracy']:.4f}, "
            f"{seconds:.1f} s")


# ---- results ----------------------------------------------------------------------------------


def training_flops(metrics: dict) -> float:
    """The training-FLOPs estimate of one finished cell (see the module docstring)."""
    batch = metrics["batch_size"]
    forward_backward = 6 * batch * (metrics["active_weight_steps"] + metrics["other_weights"] * metrics["total_steps"])
    return float(forward_backward + 2 * batch * metrics["sparse_weights"] * metrics["dense_gradient_updates"])


def _dense_estimate(metrics: dict, settings: CompareSettings, spe: int) -> float:
    weights = metrics["sparse_weights"] + metrics["other_weights"]
    return float(6 * metrics["batch_size"] * weights * settings.epochs("dense")[0] * spe)


def finished_metrics(cell: Cell, dataset_dir: Path) -> dict | None:
    """The cell's metrics.json if it finished with this spec, else None."""
    cell_dir = dataset_dir / cell.folder
    return json.loads((cell_dir / "metrics.json").read_text()) if cell_state(cell_dir, cell) == "finished" else None


def cell_values(plan: Plan, dataset_dir: Path, settings: CompareSettings) -> tuple[list[dict], list[str]]:
    """Per-cell values of every finished grid cell (FLOPs relative to dense), and the missing folders."""
    found, missing = [], []
    for cell in plan.grid:
        metrics = finished_metrics(cell, dataset_dir)
        if metrics is None:
            missing.append(cell.folder)
        else:
            found.append((cell, metrics))
    dense = {cell.seed: training_flops(m) for cell, m in found if cell.method == "dense"}
    values = []
    for cell, metrics in found:
        flops = training_flops(metrics)
        reference = dense.get(cell.seed) or (statistics.fmean(dense.values()) if dense else
                                             _dense_estimate(metrics, settings, plan.steps_per_epoch[cell.seed]))
        values.append({"method": cell.method, "sparsity": cell.sparsity, "seed": cell.seed, "c": cell.c,
                       "folder": cell.folder, "phases": cell.phases, "epochs": cell.epochs,
                       "test_accuracy": metrics["test_accuracy"], "test_auc": metrics["test_auc"],
                       "best_epoch": metrics["best_epoch"], "density": metrics["density"],
                       "exploration_degree": metrics["exploration_degree"], "flops": flops,
                       "flops_relative": flops / reference, "seconds": metrics.get("seconds")})
    return values, missing


def summarise(values: list[dict]) -> list[dict]:
    """One record per (method, sparsity): mean and sample std of test accuracy over seeds, etc."""
    groups: dict[tuple, list[dict]] = {}
    for value in values:
        groups.setdefault((value["method"], value["sparsity"]), []).append(value)
    records = []
    for (method, sparsity), group in groups.items():
        accuracies = [v["test_accuracy"] for v in group]
        records.append({
            "method": method, "sparsity": sparsity, "seeds": " ".join(str(v["seed"]) for v in group),
            "accuracy_mean": statistics.fmean(accuracies),
            "accuracy_std": statistics.stdev(accuracies) if len(accuracies) > 1 else 0.0,
            "auc_mean": statistics.fmean(v["test_auc"] for v in group), "epochs": group[0]["epochs"],
            "flops_relative": statistics.fmean(v["flops_relative"] for v in group), "n": len(group),
            "phases": group[0]["phases"],
        })
    return records


CSV_COLUMNS = ("method", "sparsity", "seeds", "accuracy_mean", "accuracy_std", "auc_mean", "epochs",
               "flops_relative", "n")


def write_csv(records: list[dict], path: Path) -> None:
    with path.open("w", newline="") as output:
        writer = csv.DictWriter(output, fieldnames=CSV_COLUMNS, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(records)


def markdown_table(records: list[dict], settings: CompareSettings) -> str:
    """results.md: accuracy and training-FLOPs tables (rows methods, columns sparsities) and notes."""
    by_key = {(r["method"], r["sparsity"]): r for r in records}
    header = "| Method | Epochs | " + " | ".join(f"{_num(100 * s)}%" for s in settings.sparsities) + " |"
    rule = "|---|---:|" + "---:|" * len(settings.sparsities)

    def rows(entry: Callable[[dict], str]) -> list[str]:
        lines = []
        for method in settings.methods:
            found = [by_key.get((method, 0.0 if method == "dense" else s)) for s in settings.sparsities]
            epochs = _epochs_text(settings.epochs(method))
            lines.append(f"| {method} | {epochs} | " + " | ".join(entry(r) if r else "-" for r in found) + " |")
        return lines

    def accuracy(r: dict) -> str:
        text = f"{100 * r['accuracy_mean']:.2f} ± {100 * r['accuracy_std']:.2f}"
        return text if r["n"] == len(settings.seeds) else f"{text} (n={r['n']})"

    seeds = ", ".join(map(str, settings.seeds))
    return "\n".join([
        f"# {settings.dataset}: dense vs prune-from-dense vs sparse from scratch",
        "",
        f"Link prediction with {settings.features} features, batch {settings.batch_size}, lr {settings.lr}, "
        f"update interval {settings.update_interval}, DST-EE c = {_num(settings.c)}. Sparsity of the two fully "
        f"connected layers (`predictor.fc1`, `predictor.fc2`, uniform); dense is one run per seed at sparsity 0, "
        f"repeated in every column.",
        "",
        f"## Test accuracy (%), mean ± std over seeds {seeds}",
        "",
        "Test accuracy at the epoch with the best validation accuracy; std is the sample standard deviation "
        "(0 for one seed); (n=k) marks entries with fewer seeds than asked for.",
        "",
        header, rule, *rows(accuracy),
        "",
        "## Training FLOPs relative to dense",
        "",
        header, rule, *rows(lambda r: f"{r['flops_relative']:.3f}x"),
        "",
        f"Training FLOPs of a cell (an estimate over the weight matrices): `{FLOPS_FORMULA}`. "
        "6 FLOPs per weight and example = 2 forward + 4 backward (a multiply-add each for the output, the input "
        "gradient and the weight gradient); `active_weight_steps` sums the active weights of the sparse layers over all steps (dense phases of ADMM and GMP count in full); the last term "
        "is the dense weight gradient RigL and DST-EE compute at mask updates. Relative to the dense cell of the "
        "same seed. With walk features the predictor MLP is the whole trainable model, so this is the whole "
        "training cost apart from the shared, fixed feature pipeline.",
        "",
    ])


def _epochs_text(phases: list[int]) -> str:
    return str(phases[0]) if len(phases) == 1 else f"{sum(phases)} ({'+'.join(map(str, phases))})"


# ---- curves and plots -------------------------------------------------------------------------


def read_jsonl(path: Path, key: str) -> list[dict]:
    """Rows of a JSON-lines log, one per ``key`` value (the last one wins: a resumed run may repeat)."""
    if not path.is_file():
        return []
    rows = {}
    for line in path.read_text().splitlines():
        if line.strip():
            row = json.loads(line)
            rows[row[key]] = row
    return [rows[k] for k in sorted(rows)]


def exploration_curves(plan: Plan, dataset_dir: Path, settings: CompareSettings) -> list[dict]:
    """Exploration degree per mask-update round: DST-EE for each explore c, and RigL at that sparsity."""
    curves = []
    sources = [(f"DST-EE c={_num(c)}", c, cell) for c, cell in plan.explore.items()]
    rigl = [g for g in plan.grid if g.method == "rigl" and g.sparsity == settings.explore_sparsity]
    rigl.sort(key=lambda g: g.seed != 0)
    sources += [(f"RigL (seed {g.seed})", None, g) for g in rigl[:1]]
    for label, c, cell in sources:
        if finished_metrics(cell, dataset_dir) is None:
            continue
        rows = read_jsonl(dataset_dir / cell.folder / "updates.jsonl", "update")
        curves.append({"label": label, "method": cell.method, "c": c, "folder": cell.folder,
                       "rounds": [r["update"] for r in rows], "exploration_degree": [r["exploration_degree"] for r in rows]})
    return curves


def accuracy_curves(plan: Plan, dataset_dir: Path, settings: CompareSettings) -> list[dict]:
    """Test accuracy per epoch, mean over finished seeds, per method at the curve sparsity (dense too)."""
    curves = []
    for method in settings.methods:
        sparsity = 0.0 if method == "dense" else settings.curve_sparsity
        per_epoch: dict[int, list[float]] = {}
        cells = [g for g in plan.grid if g.method == method and g.sparsity == sparsity]
        for cell in cells:
            if finished_metrics(cell, dataset_dir) is not None:
                for row in read_jsonl(dataset_dir / cell.folder / "log.jsonl", "epoch"):
                    per_epoch.setdefault(row["epoch"], []).append(row["test_accuracy"])
        if per_epoch:
            epochs = sorted(per_epoch)
            curves.append({"method": method, "epochs": epochs,
                           "test_accuracy": [statistics.fmean(per_epoch[e]) for e in epochs],
                           "phases": cells[0].phases})
    return curves


def _figure():
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=(7, 4.5))
    FigureCanvasAgg(figure)  # the Agg backend, without touching pyplot's global state
    return figure, figure.add_subplot()


def _save(figure, axes, path: Path, has_data: bool, integer_x: bool = False) -> None:
    if integer_x:
        from matplotlib.ticker import MaxNLocator

        axes.xaxis.set_major_locator(MaxNLocator(integer=True))
    if has_data:
        axes.legend(fontsize="small")
    else:
        axes.text(0.5, 0.5, "no finished cells yet", ha="center", va="center", transform=axes.transAxes)
    axes.grid(alpha=0.3)
    figure.tight_layout()
    figure.savefig(path, dpi=120)


def plot_accuracy_vs_sparsity(records: list[dict], settings: CompareSettings, path: Path) -> None:
    figure, axes = _figure()
    for method in settings.methods:
        found = sorted((r for r in records if r["method"] == method), key=lambda r: r["sparsity"])
        if method == "dense" and found:
            mean, std = 100 * found[0]["accuracy_mean"], 100 * found[0]["accuracy_std"]
            axes.axhline(mean, color="black", linestyle="--", label=f"dense ({mean:.2f}%)")
            axes.axhspan(mean - std, mean + std, color="black", alpha=0.08)
        elif found:
            axes.errorbar([100 * r["sparsity"] for r in found], [100 * r["accuracy_mean"] for r in found],
                          yerr=[100 * r["accuracy_std"] for r in found], marker="o", capsize=3, label=method)
    axes.set_xlabel("sparsity of fc1 and fc2 (%)")
    axes.set_ylabel("test accuracy (%)")
    axes.set_title(f"{settings.dataset}: test accuracy vs sparsity (mean ± std over seeds)")
    _save(figure, axes, path, bool(records))


def plot_exploration_vs_round(curves: list[dict], settings: CompareSettings, path: Path) -> None:
    figure, axes = _figure()
    for curve in curves:
        axes.plot(curve["rounds"], curve["exploration_degree"], marker=".",
                  linestyle=":" if curve["method"] == "rigl" else "-", label=curve["label"])
    axes.set_xlabel("mask-update round")
    axes.set_ylabel("exploration degree R (fraction of weights ever active)")
    axes.set_title(f"{settings.dataset}: exploration degree at {_num(100 * settings.explore_sparsity)}% sparsity")
    _save(figure, axes, path, bool(curves), integer_x=True)


def plot_accuracy_vs_epoch(curves: list[dict], settings: CompareSettings, path: Path) -> None:
    figure, axes = _figure()
    for curve in curves:
        axes.plot(curve["epochs"], [100 * a for a in curve["test_accuracy"]], marker="o", markersize=3,
                  linestyle="--" if curve["method"] == "dense" else "-", label=curve["method"])
        if curve["method"] == "admm":  # phase boundaries: ADMM starts, then the prune
            for boundary in (curve["phases"][0], curve["phases"][0] + curve["phases"][1]):
                axes.axvline(boundary + 0.5, color="gray", linestyle=":", linewidth=1)
    axes.set_xlabel("epoch")
    axes.set_ylabel("test accuracy (%)")
    sparsity = "-" if settings.curve_sparsity is None else f"{_num(100 * settings.curve_sparsity)}%"
    axes.set_title(f"{settings.dataset}: test accuracy per epoch at {sparsity} sparsity (mean over seeds)")
    _save(figure, axes, path, bool(curves), integer_x=True)


# ---- the whole comparison ---------------------------------------------------------------------


def write_results(plan: Plan, settings: CompareSettings) -> dict:
    """Tables (md, csv, json) and plots from the finished cells; returns the results.json content."""
    dataset_dir = Path(settings.out) / settings.dataset
    dataset_dir.mkdir(parents=True, exist_ok=True)
    values, missing = cell_values(plan, dataset_dir, settings)
    records = summarise(values)
    exploration = exploration_curves(plan, dataset_dir, settings)
    curves = accuracy_curves(plan, dataset_dir, settings)
    (dataset_dir / "results.md").write_text(markdown_table(records, settings))
    write_csv(records, dataset_dir / "results.csv")
    results = {"dataset": settings.dataset, "settings": asdict(settings), "flops_formula": FLOPS_FORMULA,
               "records": records, "cells": values, "missing": missing, "exploration": exploration,
               "accuracy_curves": curves}
    (dataset_dir / "results.json").write_text(json.dumps(results, indent=1))
    plot_accuracy_vs_sparsity(records, settings, dataset_dir / PLOTS[0])
    plot_exploration_vs_round(exploration, settings, dataset_dir / PLOTS[1])
    plot_accuracy_vs_epoch(curves, settings, dataset_dir / PLOTS[2])
    return results


def run_comparison(settings: CompareSettings, only_table: bool = False, quiet: bool = False,
                   log: Callable[[str], None] = print) -> dict:
    """Plan (checking every cell's recipe first), train what is not finished, then write the results."""
    plan = plan_cells(settings)
    if not only_table:
        run_cells(plan, Path(settings.out) / settings.dataset, quiet, log)
    return write_results(plan, settings)


def build_parser() -> argparse.ArgumentParser:
    defaults = CompareSettings.__dataclass_fields__
    parser = argparse.ArgumentParser(prog="compare", description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    add = parser.add_argument
    add("--dataset", default="collegemsg", help="dataset card name or edge-list file")
    add("--features", default="walks", choices=FEATURES, help="walks: the paper's pipeline; gnn: GraphSAGE")
    add("--methods", nargs="+", default=list(DEFAULT_METHODS), metavar="M", help=f"of: {', '.join(ALLOWED_METHODS)}")
    add("--sparsities", nargs="+", type=float, default=[0.8, 0.9, 0.98], metavar="S", help="each in (0, 1)")
    add("--seeds", nargs="+", type=int, default=[0, 1, 2], metavar="SEED", help="one run per seed and cell")
    add("--dst-epochs", type=int, default=50, metavar="E", help="DST-EE, RigL, SET, static")
    add("--admm-epochs", type=int, nargs=3, default=[20, 20, 20], metavar=("P", "A", "R"),
        help="dense pretraining, ADMM training, masked retraining")
    add("--gmp-epochs", type=int, default=60, metavar="E", help="gradual magnitude pruning")
    add("--dense-epochs", type=int, default=50, metavar="E", help="dense baseline")
    add("--epochs-scale", type=float, default=1.0, metavar="F", help="multiply every epoch budget (round up, >= 1)")
    add("--batch-size", type=int, default=1024, metavar="B", help="training pairs per step")
    add("--update-interval", type=int, default=50, metavar="U", help="mask update interval in steps (DST, GMP)")
    add("--c", type=float, default=0.01, help="DST-EE exploration coefficient of the grid")
    add("--lr", type=float, default=0.01, help="AdamW learning rate (cosine-annealed)")
    add("--explore-c", nargs="*", type=float, default=[0.0, 0.01, 0.1, 1.0], metavar="C",
        help="DST-EE coefficients for the exploration figure (none: no extra cells)")
    add("--explore-sparsity", type=float, default=0.9, metavar="S", help="sparsity of the exploration cells")
    add("--curve-sparsity", type=float, default=None, metavar="S", help="sparsity of the accuracy-per-epoch plot "
        "(none: 0.9 if in the grid, else the middle one)")
    add("--out", default=defaults["out"].default, help="cells and results go to OUT/<dataset>/")
    add("--only-table", action="store_true", help="rebuild the table and plots from finished cells; train nothing")
    add("--quiet", action="store_true", help="send each cell's per-epoch lines to its train.log")
    return parser


def settings_from_args(args: argparse.Namespace) -> CompareSettings:
    names = [n for n in CompareSettings.__dataclass_fields__]
    return CompareSettings(**{name: getattr(args, name) for name in names})


def main(argv: list[str] | None = None) -> int:
    from gsparse.graphs import DatasetError, GraphFormatError

    args = build_parser().parse_args(argv)
    try:
        settings = settings_from_args(args)
        results = run_comparison(settings, only_table=args.only_table, quiet=args.quiet)
    except (CompareError, DatasetError, GraphFormatError, FileNotFoundError, ValueError) as error:
        print(f"compare: error: {error}", file=sys.stderr)
        return 2
    dataset_dir = Path(settings.out) / settings.dataset
    if results["missing"]:
        print(f"{len(results['missing'])} cell(s) not finished with these settings: "
              f"{', '.join(results['missing'])}")
    print(f"table: {dataset_dir / 'results.md'} (also results.csv, results.json)")
    print("plots: " + ", ".join(str(dataset_dir / name) for name in PLOTS))
    return 0 if results["cells"] else 1


if __name__ == "__main__":
    sys.exit(main())
