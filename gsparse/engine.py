"""The shared mask engine: masks, counters, drop/grow updates, metrics and checkpoints.

One engine serves every method and every backend. Per sparse layer it keeps, for this process's
piece of the layer only, a bool ``mask``, a ``counter`` of how many mask states had each weight
active (the DST-EE counter ``N``; ``counter > 0`` marks explored weights) and any per-weight state
the method declares (ADMM's ``Z`` and ``U``).

The number of active weights of a layer follows the method's pruned fraction ``f(t)``:
``active = numel - round(f(t) * (numel - target))``, ``target`` being the recipe's count. Sparse
from scratch (DST) is ``f = 1`` throughout; prune-from-dense methods start dense (``f = 0``).
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Sequence

import torch

from gsparse import hashrng
from gsparse.backends.base import Backend, keeps_inactive_weights_zero
from gsparse.distributions import round_half_up
from gsparse.methods.base import DropGrowMethod, LayerView
from gsparse.params import SparseParamSpec
from gsparse.schedules import UpdateSchedule
from gsparse.selection import select_top_k

if TYPE_CHECKING:
    from gsparse.recipe import Recipe

logger = logging.getLogger("gsparse")

# The counter holds at most 1 + number of updates, so it starts as one byte and widens only when
# that bound would overflow the current dtype.
_COUNTER_DTYPES = (torch.uint8, torch.int16, torch.int32, torch.int64)


def counter_dtype_for(max_count: int) -> torch.dtype:
    for dtype in _COUNTER_DTYPES:
        if max_count <= torch.iinfo(dtype).max:
            return dtype
    raise OverflowError(max_count)


@dataclass
class LayerState:
    spec: SparseParamSpec
    start: int  # global flat index of this process's first element of the layer
    mask: torch.Tensor
    counter: torch.Tensor
    active: int = 0  # global number of active weights (exact: every selection is exact)
    extra: dict[str, torch.Tensor] = field(default_factory=dict)  # the method's per-weight state

    def per_weight_state(self) -> dict[str, torch.Tensor]:
        return {"mask": self.mask, "counter": self.counter, **self.extra}


class SparseEngine:
    """Keeps masks exact between updates and changes them on the schedule.

    The backend drives it through :meth:`start_step`, :meth:`before_layers_step`,
    :meth:`after_layers_step` and :meth:`finish_step` around every real optimizer step.
    """

    def __init__(self, specs: Sequence[SparseParamSpec], method: DropGrowMethod, schedule: UpdateSchedule,
                 backend: Backend, seed: int = 0, mask_weights_after_step: bool = True):
        self.method = method
        self.schedule = schedule
        self.backend = backend
        self.seed = seed
        self.mask_weights_after_step = mask_weights_after_step
        self.step = 0
        self.num_updates = 0
        self.last_update: dict[str, Any] | None = None
        self.active_weight_steps = 0  # sum over steps of the active weights: training FLOPs follow it
        self._updating = False
        self._grown: dict[int, int] = {}
        self.layers = [self._initial_layer(index, spec) for index, spec in enumerate(specs)]
        self._select_initial_masks()

    @classmethod
    def from_recipe(cls, specs: Sequence[SparseParamSpec], recipe: "Recipe", backend: Backend) -> "SparseEngine":
        """The engine for ``recipe`` on ``backend``; weights are masked after every step unless the
        recipe allows skipping it (``auto``) and the backend's optimizer provably keeps them zero."""
        skip = recipe.mask_weights_after_step == "auto" and keeps_inactive_weights_zero(backend.optimizer)
        return cls(specs, recipe.build_method(), recipe.schedule, backend, seed=recipe.seed,
                   mask_weights_after_step=not skip)

    # ---- masks -----------------------------------------------------------------------------

    def _initial_layer(self, index: int, spec: SparseParamSpec) -> LayerState:
        local = self.backend.local_slice(index)
        weight = self.backend.weight(index)
        state = LayerState(spec, local.start, torch.zeros(local.length, dtype=torch.bool, device=weight.device),
                           torch.zeros(local.length, dtype=torch.uint8, device=weight.device))
        state.extra = {name: torch.zeros(local.length, dtype=dtype, device=weight.device)
                       for name, dtype in self.method.per_weight_state.items()}
        return state

    def active_target(self, layer: LayerState, step: int) -> int:
        """How many weights of ``layer`` are active at ``step`` under the method's schedule."""
        fraction = self.method.pruned_fraction(step, self.schedule)
        return layer.spec.numel - round_half_up(fraction * (layer.spec.numel - layer.spec.active_count))

    def _select_initial_masks(self) -> None:
        scores = [
            hashrng.uniform(hashrng.stream_key(self.seed, "init", layer.spec.name, 0), layer.start,
                            layer.mask.numel(), layer.mask.device)
            for layer in self.layers
        ]
        counts = [self.active_target(layer, 0) for layer in self.layers]
        chosen = select_top_k(scores, [None] * len(scores), counts, self.backend.communicator)
        for index, (layer, mask, count) in enumerate(zip(self.layers, chosen, counts)):
            layer.mask, layer.active = mask, count
            layer.counter = mask.to(torch.uint8)
            # Attaching to a trained optimizer (a dense warm start) must not leave momentum behind.
            self.backend.reset_optimizer_state(index, ~mask)
        self.backend.mask_weights(list(enumerate(self.masks)))
        self.backend.sync_weights()

    @property
    def masks(self) -> list[torch.Tensor]:
        return [layer.mask for layer in self.layers]

    # ---- step hooks ------------------------------------------------------------------------
    # A backend calls these around every optimizer step that really happens. Optimizers that
    # step their parameter groups one at a time (ZeRO) report each group's layers separately;
    # layers are independent, so updating them group by group gives the same masks.

    def start_step(self) -> None:
        """A new optimizer step begins (steps are counted from 1)."""
        self.step += 1
        self._updating = self.method.updates_mask and self.method.is_update_step(self.step, self.schedule)
        self._grown = {}

    def before_layers_step(self, layers: Sequence[int]) -> None:
        """Update the masks of ``layers`` if this is an update step, then mask their gradients."""
        layers = list(layers)
        if self.method.shapes_gradients:
            views = [self._view(index) for index in layers]
            terms = self.method.gradient_terms(views, self._selector)
            for index, term in zip(layers, terms):
                if term is not None:
                    self.backend.add_to_gradient(index, term)
        if self._updating:
            self._update_layers(layers)
        self.backend.mask_gradients([(index, self.layers[index].mask) for index in layers])

    def after_layers_step(self, layers: Sequence[int]) -> None:
        """Zero inactive weights of ``layers`` again, unless the optimizer provably kept them zero."""
        if self.mask_weights_after_step:
            self.backend.mask_weights([(index, self.layers[index].mask) for index in layers])

    def finish_step(self) -> None:
        """All layers have stepped; record the update's metrics (a collective on update steps)."""
        self.active_weight_steps += sum(layer.active for layer in self.layers)
        if self._updating:
            self._record_update()
        self._updating = False

    def _selector(self, scores: Sequence[torch.Tensor], eligible: Sequence[torch.Tensor | None],
                  k: Sequence[int]) -> list[torch.Tensor]:
        """Exact top-k over whatever pieces this process holds (given to methods that select)."""
        return select_top_k(scores, eligible, k, self.backend.communicator)

    # ---- drop and grow ---------------------------------------------------------------------

    def update_masks(self) -> dict[str, Any]:
        """Drop and grow every layer now, outside the schedule (gradients must be populated)."""
        self._grown = {}
        self._update_layers(range(len(self.layers)))
        self.backend.mask_gradients([(index, layer.mask) for index, layer in enumerate(self.layers)])
        self.backend.sync_weights()
        return self._record_update()

    def _update_layers(self, layers: Sequence[int]) -> None:
        layers = list(layers)
        if not layers:
            return
        states = [self.layers[index] for index in layers]
        views = [self._view(index) for index in layers]
        if self.method.needs_grad and any(view.grad is None for view in views):
            raise RuntimeError(f"method '{self.method.name}' needs gradients at step {self.step}, but a sparse "
                               "parameter has none: call backward() before optimizer.step()")
        communicator = self.backend.communicator
        masks = [s.mask for s in states]
        if self.method.grows:
            drop_fraction = self.schedule.drop_fraction_at(self.step)
            k_drop = [min(round_half_up(drop_fraction * s.active), s.spec.numel - s.active) for s in states]
            k_grow = k_drop
        else:  # prune towards the schedule's target, grow nothing
            k_drop = [max(s.active - self.active_target(s, self.step), 0) for s in states]
            k_grow = [0] * len(states)
        drop_scores = [-self.method.drop_score(v) for v in views]
        if not self.method.grows:
            dropped = select_top_k(drop_scores, masks, k_drop, communicator)
            grown = [torch.zeros_like(mask) for mask in masks]
        elif self.method.regrow_dropped:  # grow eligibility depends on what was dropped
            dropped = select_top_k(drop_scores, masks, k_drop, communicator)
            grow_eligible = [~(mask & ~drop) for mask, drop in zip(masks, dropped)]
            grown = select_top_k([self.method.grow_score(v) for v in views], grow_eligible, k_grow, communicator)
        else:  # drop among active, grow among inactive: one selection, half the all-reduces
            chosen = select_top_k(drop_scores + [self.method.grow_score(v) for v in views],
                                  masks + [~mask for mask in masks], k_drop + k_grow, communicator)
            dropped, grown = chosen[:len(masks)], chosen[len(masks):]

        counter_dtype = counter_dtype_for(self.num_updates + 2)  # the bound after this update
        for index, state, drop, grow, dropped_count, grown_count in zip(layers, states, dropped, grown, k_drop, k_grow):
            state.mask = (state.mask & ~drop) | grow
            state.active += grown_count - dropped_count
            if state.counter.dtype != counter_dtype:
                state.counter = state.counter.to(counter_dtype)
            state.counter += state.mask.view(torch.uint8)  # same-dtype add: no slow cast path on CPU
            self.backend.reset_optimizer_state(index, drop | grow)
            self._grown[index] = max(grown_count, dropped_count)
        self.backend.mask_weights([(index, self.layers[index].mask) for index in layers])

    def _record_update(self) -> dict[str, Any]:
        self.num_updates += 1
        drop_fraction = self.schedule.drop_fraction_at(self.step)
        grown = [self._grown.get(index, 0) for index in range(len(self.layers))]
        metrics = self.metrics()
        metrics.update(step=self.step, drop_fraction=drop_fraction,
                       mask_change=_safe_ratio(sum(grown), sum(layer.active for layer in self.layers)))
        self.last_update = {"step": self.step, "drop_fraction": drop_fraction, "grown": grown, "metrics": metrics}
        logger.info("mask update %d at step %d: drop_fraction=%.4f exploration=%.4f", self.num_updates, self.step,
                    drop_fraction, metrics["exploration_degree"])
        return metrics

    def _view(self, index: int) -> LayerView:
        layer = self.layers[index]
        return LayerView(name=layer.spec.name, step=self.step, weight=self.backend.weight(index), mask=layer.mask,
                         counter=layer.counter, grad=self.backend.grad(index) if self.method.needs_grad else None,
                         global_start=layer.start, seed=self.seed, state=layer.extra,
                         target_active=layer.spec.active_count)

    # ---- metrics ---------------------------------------------------------------------------

    def metrics(self) -> dict[str, Any]:
        """Global and per-layer density and the exploration degree (a collective: call on all ranks)."""
        # count_nonzero: a bool .sum() widens every element to int64 first (~20x slower on CPU)
        local = torch.stack([torch.stack([torch.count_nonzero(layer.mask), torch.count_nonzero(layer.counter)])
                             for layer in self.layers])
        counts = local.to(torch.int64)
        self.backend.communicator.all_reduce_sum(counts)
        numels = [layer.spec.numel for layer in self.layers]
        active, explored = counts[:, 0].tolist(), counts[:, 1].tolist()
        total = sum(numels)
        return {
            "density": _safe_ratio(sum(active), total),
            "exploration_degree": _safe_ratio(sum(explored), total),
            "num_updates": self.num_updates,
            "layers": {layer.spec.name: {"density": _safe_ratio(a, n), "exploration_degree": _safe_ratio(e, n)}
                       for layer, a, e, n in zip(self.layers, active, explored, numels)},
        }

    # ---- checkpoints -----------------------------------------------------------------------

    def state_dict(self) -> dict[str, Any]:
        """This process's sparse state: per layer its global start, mask and counter."""
        return {
            "step": self.step,
            "num_updates": self.num_updates,
            "seed": self.seed,
            "active_weight_steps": self.active_weight_steps,
            "method_state": self.method.state_dict(),
            "layers": {
                layer.spec.name: {"shape": tuple(layer.spec.shape), "start": layer.start, "active": layer.active,
                                  **{key: value.clone() for key, value in layer.per_weight_state().items()}}
                for layer in self.layers
            },
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        saved = state["layers"]
        expected = {layer.spec.name for layer in self.layers}
        if set(saved) != expected:
            raise ValueError(f"checkpoint has sparse layers {sorted(saved)}, this model has {sorted(expected)}")
        for layer in self.layers:
            entry = saved[layer.spec.name]
            if tuple(entry["shape"]) != tuple(layer.spec.shape) or entry["start"] != layer.start \
                    or entry["mask"].numel() != layer.mask.numel():
                raise ValueError(f"checkpoint piece of '{layer.spec.name}' does not match this process's piece")
            missing = set(layer.extra) - set(entry)
            if missing:
                raise ValueError(f"checkpoint of '{layer.spec.name}' lacks the method's state {sorted(missing)}")
            device = layer.mask.device
            layer.mask = entry["mask"].to(device=device, dtype=torch.bool).clone()
            layer.counter = entry["counter"].to(device).clone()
            layer.extra = {key: entry[key].to(device=device, dtype=value.dtype).clone()
                           for key, value in layer.extra.items()}
            layer.active = int(entry["active"])
        self.step = int(state["step"])
        self.num_updates = int(state["num_updates"])
        self.seed = int(state["seed"])
        self.active_weight_steps = int(state.get("active_weight_steps", 0))
        self.method.load_state_dict(state.get("method_state", {}))
        self.backend.mask_weights(list(enumerate(self.masks)))
        self.backend.sync_weights()


def _safe_ratio(numerator: float, denominator: float) -> float:
    return float(numerator) / float(denominator) if denominator else 0.0
