"""The method contract: what a sparse-training method decides, and nothing about where tensors live.

A method is a small class on two seams of the engine (:mod:`gsparse.engine`):

**Policy seam** (every method). Per optimizer step the engine asks, in this order:

1. :meth:`SparseMethod.begin_step` - once per step, for step-level state (ADMM's ``rho``).
2. :meth:`SparseMethod.mask_change` - ``None`` (masks stay) or a :class:`MaskChange`: swap a
   fraction (drop ``k`` / grow ``k``), resize to per-layer counts or to one global count
   (budgets may rise or fall), or reselect the top counts by :meth:`keep_score`. A *global*
   change (one count over all layers) is decided at the start of the step from weights and
   method state only; a per-layer change is decided per layer and may read this step's dense
   gradient (``needs_grad``).
3. :meth:`SparseMethod.observe` - every step, for every layer, before gradients are masked
   (``observes = True``): update the method's per-weight state (``per_weight_state``) from the
   weight and the dense gradient, e.g. an accumulated score.
4. :meth:`SparseMethod.gradient_terms` - terms added to the gradient (``shapes_gradients``).

Scores and observations see :class:`LayerView` s: 1-D tensors over the piece of a layer this
process holds (all of it in one process, a ZeRO partition under DeepSpeed). Scores must be
elementwise. Per-weight state is sharded exactly like the mask and checkpointed with it.

**Forward seam** (optional, ``transforms_forward = True``). :meth:`forward_weight` maps a sparse
layer's full weight (gathered, under ZeRO-3), the layer's own trainable parameters
(``layer_parameters``: name -> initial value, one scalar per layer, trained by the optimizer; an
instance may compute the initial values from its options) and its :class:`LayerInfo` to the
weight used in forward; it may use a custom autograd function to shape the backward.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from types import SimpleNamespace
from typing import Any, ClassVar, Mapping, Sequence

import torch

from gsparse import hashrng
from gsparse.distributions import round_half_up
from gsparse.options import RUN_RELATIVE, Option, RecipeError, RunProblem, resolve_options

MIN_MASK_UPDATES = 5  # fewer mask updates in a run than this: a drop/grow method barely explores


@dataclass
class LayerView:
    """What a score function may read about one layer, as 1-D tensors over the piece of the
    layer this process holds (all of it in a single process). Scores must be elementwise."""

    name: str
    step: int
    weight: torch.Tensor
    mask: torch.Tensor
    counter: torch.Tensor
    grad: torch.Tensor | None
    global_start: int
    seed: int
    state: dict[str, torch.Tensor] = field(default_factory=dict)  # the method's per-weight state (writable)
    target_active: int = 0  # the recipe's number of active weights for the whole layer
    parameters: dict[str, float] = field(default_factory=dict)  # the layer's own trainable scalars, if any
    _random_draws: int = field(default=0, repr=False)

    def uniform(self) -> torch.Tensor:
        """Uniform [0, 1) scores keyed by global index: equal whatever the sharding."""
        key = hashrng.stream_key(self.seed, f"grow/{self._random_draws}", self.name, self.step)
        self._random_draws += 1
        return hashrng.uniform(key, self.global_start, self.weight.numel(), self.weight.device)


@dataclass(frozen=True)
class LayerInfo:
    """A sparse layer as a method sees it at setup: full shape and the recipe's active count."""

    name: str
    shape: tuple[int, ...]
    numel: int
    target_active: int


@dataclass(frozen=True)
class MaskChange:
    """What the engine does to the masks at one step. Build with the class methods.

    * ``swap``: per layer drop ``round(drop_fraction * active)`` active weights, or a given number
      per layer (lowest :meth:`SparseMethod.drop_score`), and grow as many inactive ones (highest
      grow score).
    * ``resize``: reach the given active counts - per layer (``layer_counts``) or one number over
      all layers (``total``) - by dropping (lowest drop score) or growing (highest grow score).
    * ``reselect``: the new mask is the top counts by :meth:`SparseMethod.keep_score` over all
      weights, active or not (per layer or global).
    * ``assign``: per layer, the mask is what :meth:`SparseMethod.assign_mask` says (an
      elementwise rule such as ``|w| > T``); the active counts follow from it.
    """

    kind: str
    drop_fraction: float = 0.0
    layer_counts: tuple[int, ...] | None = None
    total: int | None = None

    @classmethod
    def swap(cls, drop_fraction: float | None = None, layer_counts: Sequence[int] | None = None) -> "MaskChange":
        """Drop and grow ``round(drop_fraction * active)`` weights per layer, or ``layer_counts[l]``
        in layer ``l`` (capped by the active and the inactive weights)."""
        if (drop_fraction is None) == (layer_counts is None):
            raise ValueError("MaskChange.swap: give exactly one of drop_fraction or layer_counts")
        if layer_counts is not None:
            return cls("swap", **_counts(layer_counts, None))
        if not 0.0 <= drop_fraction <= 1.0:
            raise ValueError(f"MaskChange.swap: drop_fraction must be in [0, 1], got {drop_fraction}")
        return cls("swap", drop_fraction=float(drop_fraction))

    @classmethod
    def assign(cls) -> "MaskChange":
        return cls("assign")

    @classmethod
    def resize(cls, layer_counts: Sequence[int] | None = None, total: int | None = None) -> "MaskChange":
        return cls("resize", **_counts(layer_counts, total))

    @classmethod
    def reselect(cls, layer_counts: Sequence[int] | None = None, total: int | None = None) -> "MaskChange":
        return cls("reselect", **_counts(layer_counts, total))

    @property
    def is_global(self) -> bool:
        return self.total is not None


def _counts(layer_counts, total) -> dict:
    if (layer_counts is None) == (total is None):
        raise ValueError("give exactly one of layer_counts (per layer) or total (global)")
    counts = [total] if total is not None else list(layer_counts)
    if any(int(count) < 0 for count in counts):
        raise ValueError(f"active counts must be >= 0, got {counts}")
    if total is not None:
        return {"total": int(total)}
    return {"layer_counts": tuple(int(count) for count in layer_counts)}


class SparseMethod:
    """Base of every method; the defaults are a sparse-from-scratch method whose masks never move.

    A method may also define a classmethod ``harness_recipe(total_steps, steps_per_epoch,
    update_interval) -> dict`` (recipe keys such as ``schedule`` and ``method_args``) that sizes its
    schedule to a run of that length for the comparison harness (``gsparse.training.compare``).

    Class attributes declare what the engine must provide: ``needs_grad`` (dense gradients in
    per-layer scores and :meth:`observe`), ``observes``, ``shapes_gradients``,
    ``per_weight_state`` (name -> dtype of extra per-weight tensors, zero-initialised),
    ``regrow_dropped`` (may a swap grow a weight it just dropped), ``needs_last_update_step``
    (its schedule needs ``schedule.last_update_step``), ``transforms_forward`` and
    ``layer_parameters`` (the forward seam) and ``enforces_mask`` (True: inactive weights are
    held at zero, their gradients and optimizer state cleared; False: the mask only records which
    weights the forward transform keeps, e.g. AutoSparse's ``|w| > T``, for metrics and FLOPs)
    and ``dormant_weights`` (True: a pruned weight's value is kept in the per-weight state
    ``dormant`` and it comes back with that value when regrown, instead of at zero - forward still
    sees zero, as with ``w * m``; OptG) and ``exact_target`` (True: the run must end at the
    recipe's active counts, checked by the training runner; False: the sparsity reached is an
    outcome, e.g. AutoSparse's learned thresholds, and is only recorded).

    :meth:`check_run` says, before training, whether a (fitted) recipe fits a run of a given length.
    """

    name: ClassVar[str]
    options: ClassVar[Mapping[str, Option]] = {}
    needs_grad: ClassVar[bool] = False
    observes: ClassVar[bool] = False
    regrow_dropped: ClassVar[bool] = False
    shapes_gradients: ClassVar[bool] = False
    per_weight_state: ClassVar[Mapping[str, torch.dtype]] = {}
    needs_last_update_step: ClassVar[bool] = False
    transforms_forward: ClassVar[bool] = False
    layer_parameters: ClassVar[Mapping[str, float]] = {}
    # optimizer options of the group gsparse adds for the layer parameters ({}: the optimizer's defaults)
    layer_parameter_group: ClassVar[Mapping[str, Any]] = {"weight_decay": 0.0}
    enforces_mask: ClassVar[bool] = True
    dormant_weights: ClassVar[bool] = False
    exact_target: ClassVar[bool] = True
    # its mask changes are per-layer swaps and selections (no global change, no elementwise assign), so
    # they can keep every row's (or every group of M's) active count or whole blocks: it can run with
    # the recipe's ``structure: fan_in``, ``structure: n_m`` or ``structure: block``
    supports_fan_in: ClassVar[bool] = False

    def __init__(self, **args: Any):
        resolved = resolve_options(args, self.options, "method_args.")
        for key, value in resolved.items():
            if any(isinstance(item, RUN_RELATIVE) for item in (value if isinstance(value, tuple) else (value,))):
                raise RecipeError(f"method_args.{key}", "is relative to the run (\"N%\" or auto): fit the recipe to "
                                                        "the run first (Recipe.fit_to_run or total_steps=)")
        self.args = SimpleNamespace(**resolved)
        self.layers: list[LayerInfo] = []
        self.schedule = None

    def setup(self, layers: Sequence[LayerInfo], schedule) -> None:
        """Called once by the engine before the initial mask: the sparse layers and the schedule."""
        self.layers = list(layers)
        self.schedule = schedule

    def needs_dense_gradient(self, step: int) -> bool:
        """Whether optimizer ``step`` needs gradients of inactive weights: its mask change scores them
        (``needs_grad``) or grows weights, which that same step then updates with their gradient.
        Sparse execution computes the dense weight gradient for that step's micro-batches.
        Default: the schedule's update steps; a method that changes masks at other steps overrides it."""
        return self.schedule is not None and self.schedule.is_update_step(step)

    @classmethod
    def sparse_execution_problem(cls) -> str | None:
        """Why the method cannot run its layers with sparse kernels (``None``: it can): it must
        enforce its masks and read dense weights or gradients only at its mask changes."""
        for attribute, why in (("transforms_forward", "transforms the weights in forward"),
                                ("observes", "reads the dense gradients every step"),
                                ("shapes_gradients", "adds terms to the dense gradients every step")):
            if getattr(cls, attribute):
                return f"method '{cls.name}' {why}"
        if not cls.enforces_mask:
            return f"method '{cls.name}' does not hold inactive weights at zero"
        return None

    def check_run(self, recipe, total_steps: int) -> list[RunProblem]:
        """Problems of running ``recipe`` (fitted: integer steps) for ``total_steps`` optimizer steps,
        found before training. Default: a method whose schedule ends at ``last_update_step``
        (``needs_last_update_step``, e.g. a sparsity ramp) must reach it within the run."""
        last = recipe.schedule.last_update_step
        if self.needs_last_update_step and last is not None and last > total_steps:
            return [RunProblem("schedule.last_update_step", f"{self.name} reaches its target at step {last:,} but "
                               f"the run has {total_steps:,} steps: the target sparsity would not be reached; "
                               f"give it as a fraction of the run (e.g. \"75%\")")]
        return []

    # ---- policy ------------------------------------------------------------------------------

    def initial_change(self) -> MaskChange:
        """The initial mask: the top counts of a random score (default: the recipe's counts)."""
        return MaskChange.reselect(layer_counts=[layer.target_active for layer in self.layers])

    def begin_step(self, step: int) -> None:
        """Once per optimizer step (steps count from 1), before anything else of that step."""

    def mask_change(self, step: int) -> MaskChange | None:
        """How the masks change at ``step``; ``None``: they stay."""
        return None

    def forced_change(self, step: int) -> MaskChange | None:
        """The change for an update asked for outside the schedule (``Sparsifier.update_masks``)."""
        return self.mask_change(step)

    def observe(self, layers: list[LayerView]) -> None:
        """Every step (``observes``): update ``layer.state`` from weights and dense gradients."""

    def gradient_terms(self, layers: list[LayerView], select) -> list[torch.Tensor | None]:
        """Terms added to each layer's gradient before masking (``shapes_gradients`` methods).
        ``select(scores, eligible, k)`` is the exact per-layer top-k over all processes."""
        return [None] * len(layers)

    def drop_score(self, layer: LayerView) -> torch.Tensor:
        """Active weights with the lowest scores are dropped (default: magnitude)."""
        return layer.weight.abs()

    def grow_score(self, layer: LayerView) -> torch.Tensor:
        """Inactive weights with the highest scores are grown (default: random, keyed by index)."""
        return layer.uniform()

    def assign_mask(self, layer: LayerView) -> torch.Tensor:
        """For ``assign`` changes: the new mask, elementwise (bool, like ``layer.weight``)."""
        raise NotImplementedError

    def initial_score(self, layer: LayerView) -> torch.Tensor | None:
        """The score whose top counts form the initial mask; ``None`` (the default): a random score,
        the same however the layer is sharded."""
        return None

    def keep_score(self, layer: LayerView) -> torch.Tensor:
        """For ``reselect`` changes: the weights with the highest scores are active (default: magnitude)."""
        return layer.weight.abs()

    # ---- forward seam ------------------------------------------------------------------------

    def forward_weight(self, weight: torch.Tensor, parameters: Mapping[str, torch.Tensor],
                       layer: LayerInfo) -> torch.Tensor:
        """The weight used in forward (``transforms_forward``), from the full weight, the layer's
        own parameters (each a 1-element tensor) and which layer it is."""
        return weight

    # ---- helpers and checkpoints -------------------------------------------------------------

    def counts_at_fraction(self, pruned_fraction: float) -> list[int]:
        """Per-layer active counts a fraction of the way from dense (0) to the recipe's counts (1)."""
        return [layer.numel - round_half_up(pruned_fraction * (layer.numel - layer.target_active))
                for layer in self.layers]

    def state_dict(self) -> dict:
        return {}

    def load_state_dict(self, state: dict) -> None:
        pass


class DropGrowMethod(SparseMethod):
    """Sparse from scratch, a swap on the schedule (RigL's drop/grow updater): subclasses only
    change :meth:`drop_score` / :meth:`grow_score`."""

    supports_fan_in = True

    def mask_change(self, step: int) -> MaskChange | None:
        if not self.schedule.is_update_step(step):
            return None
        return self.forced_change(step)

    def forced_change(self, step: int) -> MaskChange | None:
        return MaskChange.swap(self.schedule.drop_fraction_at(step))

    def check_run(self, recipe, total_steps: int) -> list[RunProblem]:
        return drop_grow_run_problems(recipe.schedule, total_steps)


def drop_grow_run_problems(schedule, total_steps: int) -> list[RunProblem]:
    """A drop/grow schedule in a run of ``total_steps``: no update at all is an error; fewer than
    :data:`MIN_MASK_UPDATES` updates, or a drop-fraction decay cut by the run's end, a warning."""
    first, interval, last = schedule.first_update_step, schedule.update_interval, schedule.last_update_step
    if first > total_steps:
        return [RunProblem("schedule.first_update_step", f"the first mask update is at step {first:,} but the run "
                           f"has {total_steps:,} steps: the mask would never change")]
    problems = []
    updates = schedule.updates_in_run(total_steps)
    if updates < MIN_MASK_UPDATES:
        until = f" until step {last:,}" if last is not None and last < total_steps else ""
        problems.append(RunProblem("schedule.update_interval", f"{updates} mask updates in a run of {total_steps:,} "
                                   f"steps (every {interval:,} steps from step {first:,}{until}), fewer than "
                                   f"{MIN_MASK_UPDATES}; give the interval as a fraction of the run (e.g. \"2%\")",
                                   error=False))
    if schedule.drop_fraction_decay != "constant" and last is not None and last > total_steps:
        problems.append(RunProblem("schedule.last_update_step", f"the {schedule.drop_fraction_decay} drop-fraction "
                                   f"decay ends at step {last:,} but the run has {total_steps:,} steps: it is cut "
                                   f"at {schedule.drop_fraction_at(total_steps):.3g} instead of reaching "
                                   f"{schedule.final_drop_fraction:.3g}", error=False))
    return problems


class PruneFromDenseMethod(SparseMethod):
    """Starts dense and prunes (drop only) towards the recipe's counts along :meth:`pruned_fraction`."""

    def pruned_fraction(self, step: int) -> float:
        """Fraction of the way from dense to the target counts at ``step``."""
        raise NotImplementedError

    def is_update_step(self, step: int) -> bool:
        return self.schedule.is_update_step(step)

    def initial_change(self) -> MaskChange:
        return MaskChange.reselect(layer_counts=self.counts_at_fraction(self.pruned_fraction(0)))

    def mask_change(self, step: int) -> MaskChange | None:
        if not self.is_update_step(step):
            return None
        return self.forced_change(step)

    def forced_change(self, step: int) -> MaskChange | None:
        return MaskChange.resize(layer_counts=self.counts_at_fraction(self.pruned_fraction(step)))
