"""The comparison harness: a grid of methods x sparsities x seeds for any task, with tables and plots.

A *study* (:class:`Study`) says what one cell trains: the task's name (the results folder), which
parameters are sparse, its steps per epoch and how to train one cell's configuration. The
harness builds each cell's recipe from the method's schedule and epoch budget, trains every cell
in its own folder (``OUT/<study name>/<method>-s<sparsity>-seed<seed>/``, ``dense`` once per seed at
sparsity 0), plus DST-EE at several exploration coefficients for the exploration figure
(``dst_ee-c<c>-s<sparsity>-seed0``), then writes ``results.md`` / ``.csv`` / ``.json`` and three
plots. Each folder holds ``cell.json``, the cell's full specification, written before training: a
cell whose ``metrics.json`` exists and whose ``cell.json`` equals what this invocation would run
is skipped; one with the same spec but no ``metrics.json`` resumes from its last checkpoint; one
with another spec is cleared and trained again. A cell whose training diverged
(:class:`gsparse.training.TrainingDiverged`) is recorded as such and left out of the means.

Any :class:`gsparse.training.Task` becomes a study with :class:`TaskStudy`; link prediction has its
own (:mod:`gsparse.tasks.linkpred.compare`, the DST-EE paper's Tables 3-4 and Figure 3).

Training FLOPs of a cell come from the run's ``metrics.json`` (:mod:`gsparse.training.flops`:
counted from the layer types, the recorded uses of each weight per forward call, the active
weights per step and the dense weight gradients of RigL / DST-EE at mask updates)::

    6 * sum_l uses_l * weight_steps_l + 2 * sum_sparse uses_l * numel_l * dense_gradient_updates

reported relative to the dense cell of the same seed (else the mean over dense cells, else the
dense step FLOPs times the dense budget's steps). Metrics in ``results.csv`` / ``results.json``
are as in ``metrics.json``; ``results.md`` shows fractions as percent. ``std`` is the sample
standard deviation over seeds (0 for one seed).
"""
from __future__ import annotations

import argparse
import contextlib
import csv
import json
import math
import re
import shutil
import statistics
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Protocol

from gsparse.distributions import round_half_up

FROM_SCRATCH = ("dst_ee", "rigl", "set", "static")  # sparse from step 0, DST schedule
PLOTS = ("accuracy_vs_sparsity.png", "exploration_vs_round.png", "accuracy_vs_epoch.png")
FLOPS_FORMULA = ("6 * sum_l uses_l * weight_steps_l + 2 * sum_sparse uses_l * numel_l * dense_gradient_updates "
                 "(uses_l: times layer l's weight is applied per step; weight_steps_l: its active weights summed "
                 "over steps)")
LEGACY_FLOPS_FORMULA = ("6 * batch_size * (active_weight_steps + other_weights * total_steps) "
                        "+ 2 * batch_size * sparse_weights * dense_gradient_updates")


def _methods() -> tuple[str, ...]:
    from gsparse.methods import METHODS

    return ("dense",) + tuple(METHODS)


class CompareError(ValueError):
    """A comparison setting is not allowed; the message says which and what is."""


def folder_name(name: str) -> str:
    """A results folder name for ``name``: a plain name (a dataset card) as given; a path
    (``/data/My Graph.txt.gz``) its file name without suffixes, with runs of characters other than
    letters, digits, ``_`` and ``-`` replaced by ``_`` (``My_Graph``)."""
    if "/" not in name and "\\" not in name and "." not in name:
        return name or "dataset"
    stem = Path(name.replace("\\", "/")).name.lstrip(".").split(".")[0]
    return re.sub(r"[^A-Za-z0-9_-]+", "_", stem).strip("_") or "dataset"


# ---- what a task supplies ---------------------------------------------------------------------


class Study(Protocol):
    """What the harness needs from a task.

    ``name``: the results folder under ``OUT``; ``sparse_params``: parameter-name globs that are
    sparse (a recipe's ``params.include``; None: the recipe's default module types); ``metric``:
    the key of ``metrics.json`` the tables compare (a fraction), ``metric_label`` its name,
    ``secondary_metric`` a second key averaged in the records (or None)."""

    name: str
    sparse_params: list | None
    metric: str
    metric_label: str
    secondary_metric: str | None

    def steps_per_epoch(self, seeds: list[int], settings: "GridSettings") -> dict[int, int]: ...
    def cell_config(self, settings: "GridSettings", seed: int, epochs: int, recipe: dict | None) -> dict: ...
    def train_cell(self, config: dict, run_dir: str) -> dict: ...
    def describe(self, settings: "GridSettings") -> str: ...


class TaskStudy:
    """Any :class:`gsparse.training.Task` as a study: ``make_task(seed)`` builds the task of one
    cell; each cell runs :func:`gsparse.training.train` with the cell's recipe and epochs."""

    metric = "test_accuracy"
    metric_label = "test accuracy"
    secondary_metric = None

    def __init__(self, name: str, make_task: Callable[[int], Any], sparse_params: list | None = None,
                 metric: str | None = None, metric_label: str | None = None, secondary_metric: str | None = None,
                 options: dict | None = None):
        self.name, self.make_task, self.sparse_params = name, make_task, sparse_params
        self.metric = metric or self.metric
        self.metric_label = metric_label or self.metric.replace("_", " ")
        self.secondary_metric = secondary_metric
        self.options = dict(options or {})  # recorded in every cell's spec (e.g. the task's settings)

    def steps_per_epoch(self, seeds: list[int], settings: "GridSettings") -> dict[int, int]:
        from gsparse.training.task import RunContext

        steps = {}
        for seed in seeds:
            task = self.make_task(seed)
            task.setup(RunContext(seed=seed))
            steps[seed] = task.steps_per_epoch()
        return steps

    def cell_config(self, settings: "GridSettings", seed: int, epochs: int, recipe: dict | None) -> dict:
        return {"task": self.name, **self.options, "epochs": epochs, "recipe": recipe, "seed": seed}

    def train_cell(self, config: dict, run_dir: str) -> dict:
        from gsparse.training import RunConfig, train

        run = RunConfig(epochs=config["epochs"], run_dir=run_dir, recipe=config["recipe"], resume=True,
                        progress=False)
        return train(self.make_task(config["seed"]), run, extra_metrics={"config": config})

    def describe(self, settings: "GridSettings") -> str:
        layers = ", ".join(f"`{p}`" for p in self.sparse_params) if self.sparse_params else "the recipe's default layers"
        return f"Task `{self.name}`; sparsity of {layers} ({settings.distribution})."


# ---- settings ---------------------------------------------------------------------------------


@dataclass
class GridSettings:
    """The grid and its epoch budgets; checked on construction. Tasks subclass it to add their own
    settings and defaults (e.g. the paper's budgets)."""

    methods: list = field(default_factory=lambda: ["dense", "admm", "gmp", "set", "rigl", "dst_ee"])
    sparsities: list = field(default_factory=lambda: [0.8, 0.9, 0.98])
    seeds: list = field(default_factory=lambda: [0, 1, 2])
    dst_epochs: int = 50
    admm_epochs: list = field(default_factory=lambda: [20, 20, 20])  # pretrain, ADMM, retrain
    gmp_epochs: int = 60
    dense_epochs: int = 50
    epochs_scale: float = 1.0
    update_interval: int = 50
    c: float = 0.01
    explore_c: list = field(default_factory=lambda: [0.0, 0.01, 0.1, 1.0])
    explore_sparsity: float = 0.9
    curve_sparsity: float | None = None  # None: 0.9 if in the grid, else the middle sparsity
    distribution: str = "uniform"  # of the sparsity over the sparse layers: uniform | er | erk
    out: str = "runs/compare"

    def __post_init__(self):
        from gsparse.distributions import DISTRIBUTIONS

        if self.distribution not in DISTRIBUTIONS:
            raise CompareError(f"distribution: '{self.distribution}' is not one of: {', '.join(DISTRIBUTIONS)}")
        self.methods = _check_methods(self.methods)
        self.sparsities = sorted(_unique([_check_sparsity("sparsities", s) for s in self.sparsities]))
        if not self.sparsities and any(m != "dense" for m in self.methods):
            raise CompareError("sparsities: give at least one sparsity for the sparse methods")
        self.seeds = _unique([_check_int("seeds", s, 0) for s in self.seeds])
        if not self.seeds:
            raise CompareError("seeds: give at least one seed")
        for key in ("dst_epochs", "gmp_epochs", "dense_epochs", "update_interval"):
            setattr(self, key, _check_int(key, getattr(self, key), 1))
        self.admm_epochs = _check_admm_epochs(self.admm_epochs)
        self.epochs_scale = _check_positive("epochs_scale", self.epochs_scale)
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
    allowed = _methods()
    unknown = [m for m in methods if m not in allowed]
    if unknown:
        raise CompareError(f"methods: unknown {', '.join(map(repr, unknown))}; allowed: {', '.join(allowed)}")
    if not methods:
        raise CompareError(f"methods: give at least one of: {', '.join(allowed)}")
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
    config: dict  # what the study trains (JSON), without run folder, progress and resume
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


def build_recipe(method: str, sparsity: float, phases: list[int], spe: int, settings: GridSettings,
                 seed: int, c: float | None = None, sparse_params: list | None = None) -> dict | None:
    """The gsparse recipe of one cell (None for dense); raises CompareError when the step budget is
    too small for the method's schedule. ``sparse_params``: the study's sparse parameter globs."""
    if method == "dense":
        return None
    recipe = {"method": method, "sparsity": sparsity, "distribution": settings.distribution, "seed": seed}
    if sparse_params:
        recipe["params"] = {"include": list(sparse_params)}
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
    else:
        from gsparse.methods import get_method

        method_class = get_method(method)
        if hasattr(method_class, "harness_recipe"):  # the method sizes its own schedule to the run
            recipe.update(method_class.harness_recipe(total_steps=total, steps_per_epoch=spe,
                                                      update_interval=interval))
        else:  # its defaults, updates every update_interval until 75%
            recipe["schedule"] = {"update_interval": interval,
                                  "last_update_step": max(interval, round_half_up(0.75 * total))}
    return recipe


def make_cell(settings: GridSettings, study: Study, method: str, sparsity: float, seed: int, spe: int,
              c: float | None = None, folder: str | None = None) -> Cell:
    phases = settings.epochs(method)
    recipe = build_recipe(method, sparsity, phases, spe, settings, seed, c, study.sparse_params)
    config = study.cell_config(settings, seed, sum(phases), recipe)
    return Cell(method, sparsity, seed, phases, config, folder or f"{method}-s{_num(sparsity)}-seed{seed}")


def plan_cells(settings: GridSettings, study: Study, spe: dict[int, int] | None = None) -> Plan:
    """Every cell of the comparison, recipes checked; ``spe`` defaults to the study's steps per epoch."""
    from gsparse.recipe import load_recipe

    if not study.name or Path(study.name).name != study.name or study.name in (".", ".."):
        raise CompareError(f"study name {study.name!r}: expected a folder name (the results go to OUT/<name>/); "
                           f"e.g. {folder_name(study.name)!r}")
    explore_seed = 0
    seeds = _unique(settings.seeds + ([explore_seed] if settings.explore_c else []))
    spe = spe or study.steps_per_epoch(seeds, settings)
    grid = []
    for method in settings.methods:
        for sparsity in ([0.0] if method == "dense" else settings.sparsities):
            grid.extend(make_cell(settings, study, method, sparsity, seed, spe[seed]) for seed in settings.seeds)
    explore = {}
    for c in settings.explore_c:
        cell = make_cell(settings, study, "dst_ee", settings.explore_sparsity, explore_seed, spe[explore_seed], c=c,
                         folder=f"dst_ee-c{_num(c)}-s{_num(settings.explore_sparsity)}-seed{explore_seed}")
        explore[c] = next((g for g in grid if g.spec() == cell.spec()), cell)
    plan = Plan(grid, explore, spe)
    for cell in plan.cells:
        if cell.config["recipe"] is not None:
            load_recipe(cell.config["recipe"])
    return plan


def cell_state(cell_dir: Path, cell: Cell) -> str:
    """'finished', 'diverged' (finished by TrainingDiverged), 'partial' (same spec, a checkpoint to
    resume from), 'new' or 'stale' (another spec)."""
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
        try:
            status = json.loads((cell_dir / "metrics.json").read_text()).get("status", "finished")
        except json.JSONDecodeError:
            return "partial"
        return "diverged" if status == "diverged" else "finished"
    if (cell_dir / "checkpoint.pt").is_file() or (cell_dir / "checkpoints" / "latest").is_file():
        return "partial"
    return "new"


def run_cell(cell: Cell, dataset_dir: Path, study: Study, quiet: bool = False) -> tuple[str, dict, float]:
    """Train the cell unless it is finished; returns (status, metrics, seconds).

    Status: 'skipped' (finished with this spec), 'resumed', 'done' (trained from scratch),
    're-run' (its folder held a run with another spec, now cleared) or 'diverged' (its training
    raised TrainingDiverged, now or before; not trained again)."""
    from gsparse.training.runner import TrainingDiverged

    cell_dir = dataset_dir / cell.folder
    state = cell_state(cell_dir, cell)
    if state in ("finished", "diverged"):
        metrics = json.loads((cell_dir / "metrics.json").read_text())
        return "skipped" if state == "finished" else "diverged", metrics, float(metrics.get("seconds", 0.0))
    if state == "stale":
        shutil.rmtree(cell_dir)
    cell_dir.mkdir(parents=True, exist_ok=True)
    (cell_dir / "cell.json").write_text(json.dumps(cell.spec(), indent=1))
    started = time.time()
    with _training_output(cell_dir, quiet):
        try:
            metrics = study.train_cell(dict(cell.config), str(cell_dir))
        except TrainingDiverged as error:
            path = cell_dir / "metrics.json"
            metrics = json.loads(path.read_text()) if path.is_file() else {"status": "diverged", "error": str(error)}
            return "diverged", metrics, time.time() - started
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


def run_cells(plan: Plan, dataset_dir: Path, study: Study, quiet: bool = False,
              log: Callable[[str], None] = print) -> None:
    """Train every cell of the plan in order, one progress line each."""
    cells = plan.cells
    for index, cell in enumerate(cells, 1):
        status, metrics, seconds = run_cell(cell, dataset_dir, study, quiet)
        result = (f"{study.metric_label} {metrics[study.metric]:.4f}" if status != "diverged"
                  else f"no results ({metrics.get('error', 'the loss stopped being finite')})")
        log(f"[{index}/{len(cells)}] {cell.folder}: {status}, {result}, {seconds:.1f} s")


# ---- results ----------------------------------------------------------------------------------


def _short(metric: str) -> str:
    """Column stem of a metric: test_accuracy -> accuracy."""
    return metric[len("test_"):] if metric.startswith("test_") else metric


def _layers_text(study: Study) -> str:
    return ", ".join(study.sparse_params) if study.sparse_params else "the sparse layers"


def training_flops(metrics: dict) -> float:
    """The training FLOPs of one finished cell: ``metrics["training_flops"]`` as the runner counted
    them (see the module docstring), or for older runs the legacy estimate
    ``LEGACY_FLOPS_FORMULA`` (every weight used once per example)."""
    if metrics.get("training_flops") is not None:
        return float(metrics["training_flops"])
    batch = metrics["batch_size"]
    forward_backward = 6 * batch * (metrics["active_weight_steps"] + metrics["other_weights"] * metrics["total_steps"])
    return float(forward_backward + 2 * batch * metrics["sparse_weights"] * metrics["dense_gradient_updates"])


def _dense_estimate(metrics: dict, settings: GridSettings, spe: int) -> float:
    steps = settings.epochs("dense")[0] * spe
    if metrics.get("flops"):
        return float(metrics["flops"]["dense_step"] * steps)
    weights = metrics["sparse_weights"] + metrics["other_weights"]
    return float(6 * metrics["batch_size"] * weights * steps)


def finished_metrics(cell: Cell, dataset_dir: Path) -> dict | None:
    """The cell's metrics.json if it finished with this spec, else None."""
    cell_dir = dataset_dir / cell.folder
    return json.loads((cell_dir / "metrics.json").read_text()) if cell_state(cell_dir, cell) == "finished" else None


def cell_values(plan: Plan, dataset_dir: Path, settings: GridSettings, study: Study) -> tuple[list[dict], list[str], list[str]]:
    """Per-cell values of every finished grid cell (FLOPs relative to dense), the missing folders
    and the diverged ones."""
    found, missing, diverged = [], [], []
    for cell in plan.grid:
        metrics = finished_metrics(cell, dataset_dir)
        if metrics is not None:
            found.append((cell, metrics))
        elif cell_state(dataset_dir / cell.folder, cell) == "diverged":
            diverged.append(cell.folder)
        else:
            missing.append(cell.folder)
    dense = {cell.seed: training_flops(m) for cell, m in found if cell.method == "dense"}
    values = []
    for cell, metrics in found:
        flops = training_flops(metrics)
        reference = dense.get(cell.seed) or (statistics.fmean(dense.values()) if dense else
                                             _dense_estimate(metrics, settings, plan.steps_per_epoch[cell.seed]))
        value = {"method": cell.method, "sparsity": cell.sparsity, "seed": cell.seed, "c": cell.c,
                 "folder": cell.folder, "phases": cell.phases, "epochs": cell.epochs,
                 study.metric: metrics[study.metric]}
        if study.secondary_metric:
            value[study.secondary_metric] = metrics.get(study.secondary_metric)
        value.update({"best_epoch": metrics["best_epoch"], "density": metrics["density"],
                      "exploration_degree": metrics["exploration_degree"], "flops": flops,
                      "flops_relative": flops / reference, "seconds": metrics.get("seconds"),
                      "inference_flops_relative": metrics.get("inference_flops_relative"),
                      "final_sparsity": metrics.get("final_sparsity", 1.0 - metrics["density"])})
        values.append(value)
    return values, missing, diverged


def summarise(values: list[dict], metric: str = "test_accuracy", secondary_metric: str | None = "test_auc") -> list[dict]:
    """One record per (method, sparsity): mean and sample std of the metric over seeds, etc.
    Keys use the metric's stem: ``accuracy_mean``, ``accuracy_std``, ``auc_mean`` for test_accuracy / test_auc."""
    groups: dict[tuple, list[dict]] = {}
    for value in values:
        groups.setdefault((value["method"], value["sparsity"]), []).append(value)
    records = []
    short = _short(metric)
    for (method, sparsity), group in groups.items():
        scores = [v[metric] for v in group]
        record = {"method": method, "sparsity": sparsity, "seeds": " ".join(str(v["seed"]) for v in group),
                  f"{short}_mean": statistics.fmean(scores),
                  f"{short}_std": statistics.stdev(scores) if len(scores) > 1 else 0.0}
        if secondary_metric:
            found = [v[secondary_metric] for v in group if v.get(secondary_metric) is not None]
            record[f"{_short(secondary_metric)}_mean"] = statistics.fmean(found) if found else None
        inference = [v["inference_flops_relative"] for v in group if v.get("inference_flops_relative") is not None]
        record.update({"epochs": group[0]["epochs"],
                       "flops_relative": statistics.fmean(v["flops_relative"] for v in group),
                       "inference_flops_relative": statistics.fmean(inference) if inference else None,
                       "n": len(group), "phases": group[0]["phases"],
                       "final_sparsity": statistics.fmean(v.get("final_sparsity", sparsity) for v in group)})
        records.append(record)
    return records


def csv_columns(study: Study) -> tuple[str, ...]:
    short = _short(study.metric)
    secondary = (f"{_short(study.secondary_metric)}_mean",) if study.secondary_metric else ()
    return ("method", "sparsity", "seeds", f"{short}_mean", f"{short}_std", *secondary, "epochs", "flops_relative",
            "inference_flops_relative", "n")


def write_csv(records: list[dict], path: Path, study: Study) -> None:
    with path.open("w", newline="") as output:
        writer = csv.DictWriter(output, fieldnames=csv_columns(study), extrasaction="ignore")
        writer.writeheader()
        writer.writerows(records)


def markdown_table(records: list[dict], settings: GridSettings, study: Study, diverged: list[str] = ()) -> str:
    """results.md: metric and training-FLOPs tables (rows methods, columns sparsities) and notes."""
    by_key = {(r["method"], r["sparsity"]): r for r in records}
    header = "| Method | Epochs | " + " | ".join(f"{_num(100 * s)}%" for s in settings.sparsities) + " |"
    rule = "|---|---:|" + "---:|" * len(settings.sparsities)
    short = _short(study.metric)

    def rows(entry: Callable[[dict], str]) -> list[str]:
        lines = []
        for method in settings.methods:
            found = [by_key.get((method, 0.0 if method == "dense" else s)) for s in settings.sparsities]
            epochs = _epochs_text(settings.epochs(method))
            lines.append(f"| {method} | {epochs} | " + " | ".join(entry(r) if r else "-" for r in found) + " |")
        return lines

    def score(r: dict) -> str:
        text = f"{100 * r[f'{short}_mean']:.2f} ± {100 * r[f'{short}_std']:.2f}"
        if off_target(r):
            text += f" (at {100 * r['final_sparsity']:.1f}% sparsity)"
        return text if r["n"] == len(settings.seeds) else f"{text} (n={r['n']})"

    seeds = ", ".join(map(str, settings.seeds))
    label = study.metric_label[0].upper() + study.metric_label[1:]
    notes = [f"Diverged cells (the loss stopped being finite; no results, left out of the means): "
             f"{', '.join(diverged)}.", ""] if diverged else []
    if any(off_target(r) for r in records):
        notes += ["\"(at x% sparsity)\": the method ended away from the column's sparsity (a learned sparsity, "
                  "or a schedule the run did not complete); compare it at the sparsity it reached, not the column's.", ""]
    return "\n".join([
        f"# {study.name}: dense vs prune-from-dense vs sparse from scratch",
        "",
        study.describe(settings) + " Dense is one run per seed at sparsity 0, repeated in every column.",
        "",
        f"## {label} (%), mean ± std over seeds {seeds}",
        "",
        f"{label} at the epoch the task's validation metric picks; std is the sample standard deviation "
        "(0 for one seed); (n=k) marks entries with fewer seeds than asked for; - a cell not finished.",
        "",
        header, rule, *rows(score),
        "",
        *notes,
        "## Training FLOPs relative to dense",
        "",
        header, rule, *rows(lambda r: f"{r['flops_relative']:.3f}x"),
        "",
        f"Training FLOPs of a cell, counted over the weights of Linear and Conv layers: `{FLOPS_FORMULA}`. "
        "6 FLOPs per weight use = 2 forward + 4 backward (a multiply-add each for the output, the input "
        "gradient and the weight gradient); uses are recorded once per layer with forward hooks (batch x output "
        "positions); the active weights of the sparse layers are summed over all steps (dense phases of ADMM and "
        "GMP count in full); the last term is the dense weight gradient RigL and DST-EE compute at mask updates "
        "(`dense_gradient_updates` of them). Relative to the dense cell of the same seed. Biases, "
        "normalisation, activations, embeddings and the optimizer update are left out.",
        "",
        *([] if not any(r.get("inference_flops_relative") is not None for r in records) else [
            "## Inference FLOPs relative to dense",
            "",
            header, rule,
            *rows(lambda r: "-" if r.get("inference_flops_relative") is None else f"{r['inference_flops_relative']:.3f}x"),
            "",
            "One forward call of the final model with its final masks (2 FLOPs per active weight use), "
            "relative to the dense model (the DST-EE paper's Table 2).",
            "",
        ]),
    ])


def off_target(record: dict) -> bool:
    """A (method, sparsity) entry whose mean final sparsity is more than half a point off its column."""
    final = record.get("final_sparsity")
    return record["method"] != "dense" and final is not None and abs(final - record["sparsity"]) > 0.005


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


def exploration_curves(plan: Plan, dataset_dir: Path, settings: GridSettings) -> list[dict]:
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


def accuracy_curves(plan: Plan, dataset_dir: Path, settings: GridSettings, study: Study) -> list[dict]:
    """The study's metric per epoch (``log.jsonl``), mean over finished seeds, per method at the
    curve sparsity (dense too)."""
    curves = []
    for method in settings.methods:
        sparsity = 0.0 if method == "dense" else settings.curve_sparsity
        per_epoch: dict[int, list[float]] = {}
        cells = [g for g in plan.grid if g.method == method and g.sparsity == sparsity]
        for cell in cells:
            if finished_metrics(cell, dataset_dir) is not None:
                for row in read_jsonl(dataset_dir / cell.folder / "log.jsonl", "epoch"):
                    per_epoch.setdefault(row["epoch"], []).append(row[study.metric])
        if per_epoch:
            epochs = sorted(per_epoch)
            curves.append({"method": method, "epochs": epochs,
                           study.metric: [statistics.fmean(per_epoch[e]) for e in epochs],
                           "phases": cells[0].phases})
    return curves


def _figure():
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    from cycler import cycler
    from matplotlib import colormaps

    figure = Figure(figsize=(7, 4.5))
    FigureCanvasAgg(figure)  # the Agg backend, without touching pyplot's global state
    axes = figure.add_subplot()
    # 20 distinct colours: the default cycle repeats after 10 and a grid has up to 13 methods
    axes.set_prop_cycle(cycler(color=colormaps["tab20"].colors))
    return figure, axes


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


def plot_accuracy_vs_sparsity(records: list[dict], settings: GridSettings, study: Study, path: Path) -> None:
    short = _short(study.metric)
    figure, axes = _figure()
    for method in settings.methods:
        found = sorted((r for r in records if r["method"] == method), key=lambda r: r["sparsity"])
        if method == "dense" and found:
            mean, std = 100 * found[0][f"{short}_mean"], 100 * found[0][f"{short}_std"]
            axes.axhline(mean, color="black", linestyle="--", label=f"dense ({mean:.2f}%)")
            axes.axhspan(mean - std, mean + std, color="black", alpha=0.08)
        elif found:
            axes.errorbar([100 * r["sparsity"] for r in found], [100 * r[f"{short}_mean"] for r in found],
                          yerr=[100 * r[f"{short}_std"] for r in found], marker="o", capsize=3, label=method)
    axes.set_xlabel(f"sparsity of {_layers_text(study)} (%)")
    axes.set_ylabel(f"{study.metric_label} (%)")
    axes.set_title(f"{study.name}: {study.metric_label} vs sparsity (mean ± std over seeds)")
    _save(figure, axes, path, bool(records))


def plot_exploration_vs_round(curves: list[dict], settings: GridSettings, study: Study, path: Path) -> None:
    figure, axes = _figure()
    for curve in curves:
        axes.plot(curve["rounds"], curve["exploration_degree"], marker=".",
                  linestyle=":" if curve["method"] == "rigl" else "-", label=curve["label"])
    axes.set_xlabel("mask-update round")
    axes.set_ylabel("exploration degree R (fraction of weights ever active)")
    axes.set_title(f"{study.name}: exploration degree at {_num(100 * settings.explore_sparsity)}% sparsity")
    _save(figure, axes, path, bool(curves), integer_x=True)


def plot_accuracy_vs_epoch(curves: list[dict], settings: GridSettings, study: Study, path: Path) -> None:
    figure, axes = _figure()
    for curve in curves:
        axes.plot(curve["epochs"], [100 * a for a in curve[study.metric]], marker="o", markersize=3,
                  linestyle="--" if curve["method"] == "dense" else "-", label=curve["method"])
        if curve["method"] == "admm":  # phase boundaries: ADMM starts, then the prune
            for boundary in (curve["phases"][0], curve["phases"][0] + curve["phases"][1]):
                axes.axvline(boundary + 0.5, color="gray", linestyle=":", linewidth=1)
    axes.set_xlabel("epoch")
    axes.set_ylabel(f"{study.metric_label} (%)")
    sparsity = "-" if settings.curve_sparsity is None else f"{_num(100 * settings.curve_sparsity)}%"
    axes.set_title(f"{study.name}: {study.metric_label} per epoch at {sparsity} sparsity (mean over seeds)")
    _save(figure, axes, path, bool(curves), integer_x=True)


# ---- the whole comparison ---------------------------------------------------------------------


def write_results(plan: Plan, settings: GridSettings, study: Study) -> dict:
    """Tables (md, csv, json) and plots from the finished cells; returns the results.json content."""
    dataset_dir = Path(settings.out) / study.name
    dataset_dir.mkdir(parents=True, exist_ok=True)
    values, missing, diverged = cell_values(plan, dataset_dir, settings, study)
    records = summarise(values, study.metric, study.secondary_metric)
    exploration = exploration_curves(plan, dataset_dir, settings)
    curves = accuracy_curves(plan, dataset_dir, settings, study)
    (dataset_dir / "results.md").write_text(markdown_table(records, settings, study, diverged))
    write_csv(records, dataset_dir / "results.csv", study)
    results = {"dataset": study.name, "task": study.name, "metric": study.metric, "settings": asdict(settings),
               "flops_formula": FLOPS_FORMULA, "records": records, "cells": values, "missing": missing,
               "diverged": diverged, "exploration": exploration, "accuracy_curves": curves}
    (dataset_dir / "results.json").write_text(json.dumps(results, indent=1))
    plot_accuracy_vs_sparsity(records, settings, study, dataset_dir / PLOTS[0])
    plot_exploration_vs_round(exploration, settings, study, dataset_dir / PLOTS[1])
    plot_accuracy_vs_epoch(curves, settings, study, dataset_dir / PLOTS[2])
    return results


def run_comparison(settings: GridSettings, study: Study, only_table: bool = False, quiet: bool = False,
                   log: Callable[[str], None] = print, spe: dict[int, int] | None = None) -> dict:
    """Plan (checking every cell's recipe first), train what is not finished, then write the results."""
    plan = plan_cells(settings, study, spe)
    if not only_table:
        run_cells(plan, Path(settings.out) / study.name, study, quiet, log)
    return write_results(plan, settings, study)


def add_grid_arguments(parser: argparse.ArgumentParser, defaults: GridSettings) -> None:
    """The grid's command-line options, with ``defaults`` (a task's settings) shown."""
    add = parser.add_argument
    allowed = _methods()
    add("--methods", nargs="+", default=list(defaults.methods), metavar="M", help=f"of: {', '.join(allowed)}")
    add("--sparsities", nargs="+", type=float, default=list(defaults.sparsities), metavar="S", help="each in (0, 1)")
    add("--seeds", nargs="+", type=int, default=list(defaults.seeds), metavar="SEED", help="one run per seed and cell")
    add("--dst-epochs", type=int, default=defaults.dst_epochs, metavar="E", help="DST-EE, RigL, SET, static")
    add("--admm-epochs", type=int, nargs=3, default=list(defaults.admm_epochs), metavar=("P", "A", "R"),
        help="dense pretraining, ADMM training, masked retraining")
    add("--gmp-epochs", type=int, default=defaults.gmp_epochs, metavar="E", help="gradual magnitude pruning")
    add("--dense-epochs", type=int, default=defaults.dense_epochs, metavar="E", help="dense baseline")
    add("--epochs-scale", type=float, default=defaults.epochs_scale, metavar="F",
        help="multiply every epoch budget (round up, >= 1)")
    add("--update-interval", type=int, default=defaults.update_interval, metavar="U",
        help="mask update interval in steps (DST, GMP)")
    add("--c", type=float, default=defaults.c, help="DST-EE exploration coefficient of the grid")
    add("--explore-c", nargs="*", type=float, default=list(defaults.explore_c), metavar="C",
        help="DST-EE coefficients for the exploration figure (none: no extra cells)")
    add("--explore-sparsity", type=float, default=defaults.explore_sparsity, metavar="S",
        help="sparsity of the exploration cells")
    add("--curve-sparsity", type=float, default=defaults.curve_sparsity, metavar="S",
        help="sparsity of the metric-per-epoch plot (none: 0.9 if in the grid, else the middle one)")
    add("--distribution", default=defaults.distribution, help="how the sparsity is spread over the sparse layers: "
        "uniform, er or erk")
    add("--out", default=defaults.out, help="cells and results go to OUT/<task name>/")
    add("--only-table", action="store_true", help="rebuild the table and plots from finished cells; train nothing")
    add("--quiet", action="store_true", help="send each cell's per-epoch lines to its train.log")


def settings_from_args(args: argparse.Namespace, kind: type = GridSettings) -> GridSettings:
    names = [n for n in kind.__dataclass_fields__]
    return kind(**{name: getattr(args, name) for name in names})


def report(results: dict, settings: GridSettings, study: Study) -> int:
    """Print where the results are; the exit code: 0 when some cell finished, else 1."""
    dataset_dir = Path(settings.out) / study.name
    if results["missing"]:
        print(f"{len(results['missing'])} cell(s) not finished with these settings: "
              f"{', '.join(results['missing'])}")
    if results["diverged"]:
        print(f"{len(results['diverged'])} cell(s) diverged (no results): {', '.join(results['diverged'])}")
    print(f"table: {dataset_dir / 'results.md'} (also results.csv, results.json)")
    print("plots: " + ", ".join(str(dataset_dir / name) for name in PLOTS))
    return 0 if results["cells"] else 1
