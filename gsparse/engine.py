"""The shared mask engine: masks, counters, mask changes, metrics and checkpoints.

One engine serves every method and every backend. Per sparse layer it keeps, for this process's
piece of the layer only, a bool ``mask``, a ``counter`` of how many mask states had each weight
active (the DST-EE counter ``N``; ``counter > 0`` marks explored weights) and any per-weight state
the method declares (ADMM's ``Z`` and ``U``, an accumulated score).

Per optimizer step it runs the method's policy (see :mod:`gsparse.methods.base`): ``begin_step``,
then a global mask change (from weights and state, all layers at once) if the method asks for
one, then per layer ``observe``, gradient terms and a per-layer mask change, then gradient
masking. Every mask decision is an exact (distributed) top-k, so the masks are equal whatever
the sharding. Non-finite scores never enter masks: such an update is skipped with a warning and
counted (``skipped_updates``).
"""
from __future__ import annotations

import logging
import warnings
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable, Sequence

import torch

from gsparse import hashrng
from gsparse.backends.base import Backend, keeps_inactive_weights_zero
from gsparse.distributions import round_half_up
from gsparse.methods.base import LayerInfo, LayerView, MaskChange, SparseMethod
from gsparse.params import SparseParamSpec
from gsparse.schedules import UpdateSchedule
from gsparse.selection import (LocalSlice, matrix_shape, select_top_k, select_top_k_blocks, select_top_k_global,
                               select_top_k_per_row, split_block_rows, split_rows)

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


DORMANT = "dormant"  # per-weight state of methods with dormant_weights: the values of pruned weights


class NonFiniteScores(UserWarning):
    """A mask update was skipped because some of its scores were NaN or infinite."""


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
    """Keeps masks exact between updates and changes them when the method says so.

    The backend drives it through :meth:`start_step`, :meth:`before_layers_step`,
    :meth:`after_layers_step` and :meth:`finish_step` around every real optimizer step.
    """

    def __init__(self, specs: Sequence[SparseParamSpec], method: SparseMethod, schedule: UpdateSchedule,
                 backend: Backend, seed: int = 0, mask_weights_after_step: bool = True,
                 layer_parameters: Sequence[dict[str, torch.nn.Parameter]] | None = None,
                 structure: str = "unstructured", block_size: tuple[int, int] = (4, 4),
                 n_m: tuple[int, int] = (2, 4)):
        self.method = method
        self.schedule = schedule
        self.backend = backend
        self.seed = seed
        self.mask_weights_after_step = mask_weights_after_step
        self.layer_parameters = list(layer_parameters or [{} for _ in specs])
        self.step = 0
        self.num_updates = 0
        self.mask_version = 0  # changes whenever any mask does (updates, loads): rebuild what depends on masks
        # called with "step" after every finished step, "update" after a forced update, "load" after a load
        self.step_callbacks: list[Callable[[str], None]] = []
        self.extra_state: dict[str, Any] = {}  # saved with the sparse state (e.g. sparse execution's decisions)
        self.skipped_updates = 0
        self.last_update: dict[str, Any] | None = None
        self.active_weight_steps = 0  # sum over steps of the active weights: training FLOPs follow it
        self.layer_active_steps = [0] * len(specs)  # the same per layer (budgets may move between layers)
        self._change: MaskChange | None = None  # this step's per-layer change, applied group by group
        self._changed = False  # did the masks change in this step
        self._skipped = False  # was this step's change skipped (non-finite scores)
        self._grown: dict[int, int] = {}
        self._parameter_values: list[dict[str, float]] = []
        method.setup([LayerInfo(spec.name, tuple(spec.shape), spec.numel, spec.active_count) for spec in specs],
                     schedule)
        self.layers = [self._initial_layer(index, spec) for index, spec in enumerate(specs)]
        self.structure = structure
        self.block = tuple(block_size) if structure == "block" else None  # masks are whole blocks of this shape
        self.n_m = tuple(n_m) if structure == "n_m" else None
        pieces = [LocalSlice(layer.start, layer.mask.numel()) for layer in self.layers]
        # fan_in and n_m: every group of a layer keeps the same active count, a group being a row
        # (fan_in) or M consecutive weights of a row (n_m); None: no such groups
        self._group_lengths: list[int] | None = None
        if structure == "fan_in":
            self._group_lengths = [matrix_shape(spec.shape)[1] for spec in specs]
        elif self.n_m is not None:
            n, m = self.n_m
            for spec in specs:
                if matrix_shape(spec.shape)[1] % m or spec.active_count != spec.numel // m * n:
                    raise ValueError(f"structure n_m: layer '{spec.name}' of shape {tuple(spec.shape)} with "
                                     f"{spec.active_count} active weights is not {n} of every {m} consecutive weights "
                                     f"of its rows: exclude it")
            self._group_lengths = [m] * len(specs)
        if self._group_lengths is not None:
            self._shared_groups = split_rows(pieces, self._group_lengths, [spec.numel for spec in specs],
                                             backend.communicator)  # one all-reduce, once
        if self.block is not None:
            self._matrix_shapes = [matrix_shape(spec.shape) for spec in specs]
            for spec, (rows, cols) in zip(specs, self._matrix_shapes):
                if rows % self.block[0] or cols % self.block[1] or spec.active_count % (self.block[0] * self.block[1]):
                    raise ValueError(f"structure block: {self.block[0]} x {self.block[1]} blocks do not tile layer "
                                     f"'{spec.name}' of shape {tuple(spec.shape)} (a {rows} x {cols} matrix) with "
                                     f"{spec.active_count} active weights: exclude it or pick another block size")
            self._shared_block_rows = split_block_rows(pieces, self._matrix_shapes, [self.block] * len(specs),
                                                       backend.communicator)  # one all-reduce, once
        self._select_initial_masks()

    @classmethod
    def from_recipe(cls, specs: Sequence[SparseParamSpec], recipe: "Recipe", backend: Backend,
                    layer_parameters: Sequence[dict[str, torch.nn.Parameter]] | None = None) -> "SparseEngine":
        """The engine for ``recipe`` on ``backend``; weights are masked after every step unless the
        recipe allows skipping it (``auto``) and the backend's optimizer provably keeps them zero."""
        skip = recipe.mask_weights_after_step == "auto" and keeps_inactive_weights_zero(backend.optimizer)
        return cls(specs, recipe.build_method(), recipe.schedule, backend, seed=recipe.seed,
                   mask_weights_after_step=not skip, layer_parameters=layer_parameters,
                   structure=getattr(recipe, "structure", "unstructured"),
                   block_size=getattr(recipe, "block_size", (4, 4)), n_m=getattr(recipe, "n_m", (2, 4)))

    # ---- masks -----------------------------------------------------------------------------

    def _initial_layer(self, index: int, spec: SparseParamSpec) -> LayerState:
        local = self.backend.local_slice(index)
        weight = self.backend.weight(index)
        state = LayerState(spec, local.start, torch.zeros(local.length, dtype=torch.bool, device=weight.device),
                           torch.zeros(local.length, dtype=torch.uint8, device=weight.device))
        state.extra = {name: torch.zeros(local.length, dtype=dtype, device=weight.device)
                       for name, dtype in self.method.per_weight_state.items()}
        if self.method.dormant_weights:
            state.extra[DORMANT] = torch.zeros(local.length, dtype=torch.float32, device=weight.device)
        return state

    def _select_initial_masks(self) -> None:
        change = self.method.initial_change()
        if change.kind != "reselect":
            raise ValueError(f"method '{self.method.name}': initial_change() must be a MaskChange.reselect")
        scores = []
        for index, layer in enumerate(self.layers):  # the method's score (e.g. magnitude), else a random one
            score = self.method.initial_score(self._view(index, with_grad=False))
            scores.append(score.reshape(-1).float() if score is not None else hashrng.uniform(
                hashrng.stream_key(self.seed, "init", layer.spec.name, 0), layer.start, layer.mask.numel(),
                layer.mask.device))
        if change.is_global:
            self._refuse_structure(change)
            chosen = select_top_k_global(scores, [None] * len(scores), change.total, self.backend.communicator)
            counts = self._global_counts(chosen)
        else:
            counts = list(change.layer_counts)
            chosen = self._select(scores, [None] * len(scores), list(range(len(scores))), counts)
        for index, (layer, mask, count) in enumerate(zip(self.layers, chosen, counts)):
            layer.mask, layer.active = mask, count
            layer.counter = mask.to(torch.uint8)
            if self.method.dormant_weights:  # the initial values of the weights that start pruned
                layer.extra[DORMANT].copy_(self.backend.weight(index).masked_fill(mask, 0))
            if self.enforces_mask:
                # Attaching to a trained optimizer (a dense warm start) must not leave momentum behind.
                self.backend.reset_optimizer_state(index, ~mask)
        if self.enforces_mask:
            self.backend.mask_weights(list(enumerate(self.masks)))
            self.backend.sync_weights()

    @property
    def enforces_mask(self) -> bool:
        """Whether inactive weights are kept at zero (False: the mask records what the method's
        forward transform keeps, and weights, gradients and optimizer state are left alone)."""
        return self.method.enforces_mask

    @property
    def masks(self) -> list[torch.Tensor]:
        return [layer.mask for layer in self.layers]

    # ---- step hooks ------------------------------------------------------------------------
    # A backend calls these around every optimizer step that really happens. Optimizers that
    # step their parameter groups one at a time (ZeRO) report each group's layers separately;
    # per-layer work is independent across layers, so doing it group by group gives the same
    # masks. Whatever involves all layers at once happens in start_step.

    def start_step(self) -> None:
        """A new optimizer step begins (steps are counted from 1)."""
        self.step += 1
        self._grown, self._changed, self._skipped = {}, False, False
        self._read_layer_parameters()
        self.method.begin_step(self.step)
        change = self.method.mask_change(self.step)
        self._change = None
        if change is not None and change.is_global:
            self._apply_global_change(change)
        else:
            self._change = change

    def before_layers_step(self, layers: Sequence[int]) -> None:
        """Observe, shape gradients, change the masks of ``layers`` if asked, then mask their gradients."""
        layers = list(layers)
        if layers and (self.method.observes or self.method.shapes_gradients):
            views = self._views(layers)
            if self.method.observes:
                self.method.observe(views)
            if self.method.shapes_gradients:
                terms = self.method.gradient_terms(views, self._selector)
                for index, term in zip(layers, terms):
                    if term is not None:
                        self.backend.add_to_gradient(index, term)
        if self._change is not None:
            self._apply_layer_change(layers, self._change)
        if self.enforces_mask:
            self.backend.mask_gradients([(index, self.layers[index].mask) for index in layers])

    def after_layers_step(self, layers: Sequence[int]) -> None:
        """Zero inactive weights of ``layers`` again, unless the optimizer provably kept them zero."""
        if self.mask_weights_after_step and self.enforces_mask:
            self.backend.mask_weights([(index, self.layers[index].mask) for index in layers])

    def finish_step(self) -> None:
        """All layers have stepped; record the update's metrics (a collective on update steps)."""
        for index, layer in enumerate(self.layers):
            self.layer_active_steps[index] += layer.active
        self.active_weight_steps += sum(layer.active for layer in self.layers)
        if self._skipped:
            self.skipped_updates += 1
        if self._changed:
            self._record_update()
        self._change, self._changed, self._skipped = None, False, False
        for callback in self.step_callbacks:
            callback("step")

    def _selector(self, scores: Sequence[torch.Tensor], eligible: Sequence[torch.Tensor | None],
                  k: Sequence[int]) -> list[torch.Tensor]:
        """Exact top-k over whatever pieces this process holds (given to methods that select)."""
        return select_top_k(scores, eligible, k, self.backend.communicator)

    # ---- mask changes ----------------------------------------------------------------------

    def update_masks(self) -> dict[str, Any]:
        """Change the masks now, outside the schedule (gradients must be populated): the method's
        ``forced_change`` for this step (a swap at the schedule's drop fraction for drop/grow
        methods; ``None`` - nothing changes - for methods whose changes are keyed to steps)."""
        self._grown, self._changed, self._skipped = {}, False, False
        self._read_layer_parameters()
        change = self.method.forced_change(self.step)
        if change is not None:
            if change.is_global:
                self._apply_global_change(change)
            else:
                self._apply_layer_change(range(len(self.layers)), change)
        if self.enforces_mask:
            self.backend.mask_gradients([(index, layer.mask) for index, layer in enumerate(self.layers)])
            self.backend.sync_weights()
        if self._skipped:
            self.skipped_updates += 1
        metrics = self._record_update() if self._changed else self.metrics()
        self._changed = self._skipped = False
        for callback in self.step_callbacks:
            callback("update")
        return metrics

    def _apply_layer_change(self, layers: Sequence[int], change: MaskChange) -> None:
        layers = list(layers)
        if not layers:
            return
        if change.layer_counts is not None and len(change.layer_counts) != len(self.layers):
            raise ValueError(f"method '{self.method.name}': MaskChange.{change.kind} has {len(change.layer_counts)} "
                             f"layer counts for {len(self.layers)} sparse layers")
        views = self._views(layers, with_grad=self.method.needs_grad)
        if self.method.needs_grad and any(view.grad is None for view in views):
            raise RuntimeError(f"method '{self.method.name}' needs gradients at step {self.step}, but a sparse "
                               "parameter has none: call backward() before optimizer.step()")
        method = self.method
        if self.n_m is not None and (change.kind == "resize" or (change.kind == "reselect" and any(
                change.layer_counts[i] != self.layers[i].spec.active_count for i in layers))):
            raise ValueError(f"structure n_m: method '{method.name}' asked for a {change.kind} to other counts, "
                             f"which does not keep {self.n_m[0]} of every {self.n_m[1]} consecutive weights")
        if change.kind == "assign":
            self._refuse_structure(change)
            inputs = [[view.weight, torch.tensor(list(view.parameters.values()), dtype=torch.float32)]
                      for view in views]
        elif change.kind == "reselect":
            inputs = [[method.keep_score(view)] for view in views]
        else:
            if change.kind == "swap" and self._group_lengths is not None:  # the same number in every group
                k_drop = []
                for i in layers:
                    group_length = self._group_lengths[i]
                    groups = self.layers[i].spec.numel // group_length
                    active = self.layers[i].active // groups
                    wanted = (change.layer_counts[i] // groups if change.layer_counts is not None
                              else round_half_up(change.drop_fraction * active))
                    k_drop.append(groups * min(wanted, active, group_length - active))
                k_grow = k_drop
            elif change.kind == "swap" and self.block is not None:  # whole blocks
                size = self.block[0] * self.block[1]
                k_drop = []
                for i in layers:
                    active, blocks = self.layers[i].active // size, self.layers[i].spec.numel // size
                    wanted = (change.layer_counts[i] // size if change.layer_counts is not None
                              else round_half_up(change.drop_fraction * active))
                    k_drop.append(size * min(wanted, active, blocks - active))
                k_grow = k_drop
            elif change.kind == "swap":
                wanted = [change.layer_counts[i] if change.layer_counts is not None
                          else round_half_up(change.drop_fraction * self.layers[i].active) for i in layers]
                k_drop = [min(count, self.layers[i].active, self.layers[i].spec.numel - self.layers[i].active)
                          for i, count in zip(layers, wanted)]
                k_grow = k_drop
            else:  # resize to the given per-layer counts
                targets = [change.layer_counts[index] for index in layers]
                k_drop = [max(self.layers[i].active - target, 0) for i, target in zip(layers, targets)]
                k_grow = [max(target - self.layers[i].active, 0) for i, target in zip(layers, targets)]
            grows = change.kind == "swap" or any(k_grow)
            inputs = [[-method.drop_score(view)] + ([method.grow_score(view)] if grows else []) for view in views]
        # A layer whose scores hold NaN/Inf on any rank keeps its mask; the others change. The
        # decision is per layer, so it is the same however the layers are split into step groups.
        finite = self._finite_layers(inputs, [self.layers[i].spec.name for i in layers])
        if not all(finite):
            chosen = [position for position, ok in enumerate(finite) if ok]
            layers, views, inputs = ([seq[p] for p in chosen] for seq in (layers, views, inputs))
            if change.kind in ("swap", "resize"):
                k_drop, k_grow = [k_drop[p] for p in chosen], [k_grow[p] for p in chosen]
            if not layers:
                return
        masks = [self.layers[index].mask for index in layers]
        if change.kind == "assign":
            assigned = [method.assign_mask(view).reshape(-1).to(torch.bool) for view in views]
            dropped = [mask & ~new for mask, new in zip(masks, assigned)]
            grown = [new & ~mask for mask, new in zip(masks, assigned)]
            k_drop, k_grow = self._changed_counts(dropped, grown)
        elif change.kind == "reselect":
            keep = self._select([scores[0] for scores in inputs], [None] * len(layers), layers,
                                [change.layer_counts[i] for i in layers])
            dropped = [mask & ~kept for mask, kept in zip(masks, keep)]
            grown = [kept & ~mask for mask, kept in zip(masks, keep)]
            k_drop, k_grow = self._changed_counts(dropped, grown)
        else:
            drop_scores = [scores[0] for scores in inputs]
            grow_scores = [scores[1] for scores in inputs] if grows else []
            if change.kind == "swap" and method.regrow_dropped:  # grow eligibility depends on what was dropped
                dropped = self._select(drop_scores, masks, layers, k_drop)
                grow_eligible = [~(mask & ~drop) for mask, drop in zip(masks, dropped)]
                grown = self._select(grow_scores, grow_eligible, layers, k_grow)
            elif grows:  # drop among active, grow among inactive: one selection, half the all-reduces
                chosen = self._select(drop_scores + grow_scores, masks + [~mask for mask in masks], layers + layers,
                                      k_drop + k_grow)
                dropped, grown = chosen[:len(masks)], chosen[len(masks):]
            else:
                dropped = self._select(drop_scores, masks, layers, k_drop)
                grown = [torch.zeros_like(mask) for mask in masks]
        self._commit(layers, dropped, grown, k_drop, k_grow)

    def _apply_global_change(self, change: MaskChange) -> None:
        """One count over all layers, decided from weights and method state (no gradients: under
        ZeRO, later parameter groups' gradients do not exist yet when the step starts)."""
        self._refuse_structure(change)
        layers = list(range(len(self.layers)))
        views = self._views(layers, with_grad=False)
        communicator = self.backend.communicator
        masks = self.masks
        names = [layer.spec.name for layer in self.layers]
        if change.kind == "reselect":
            keep_scores = [self.method.keep_score(v) for v in views]
            if not all(self._finite_layers([[score] for score in keep_scores], names)):
                return
            keep = select_top_k_global(keep_scores, [None] * len(masks), change.total, communicator)
            dropped = [mask & ~kept for mask, kept in zip(masks, keep)]
            grown = [kept & ~mask for mask, kept in zip(masks, keep)]
        elif change.kind == "resize":
            active = sum(layer.active for layer in self.layers)
            if change.total < active:
                scores = [-self.method.drop_score(v) for v in views]
                if not all(self._finite_layers([[score] for score in scores], names)):
                    return
                dropped = select_top_k_global(scores, masks, active - change.total, communicator)
                grown = [torch.zeros_like(mask) for mask in masks]
            else:
                scores = [self.method.grow_score(v) for v in views]
                if not all(self._finite_layers([[score] for score in scores], names)):
                    return
                grown = select_top_k_global(scores, [~mask for mask in masks], change.total - active, communicator)
                dropped = [torch.zeros_like(mask) for mask in masks]
        else:
            raise ValueError(f"method '{self.method.name}': a global MaskChange must be resize or reselect, "
                             f"not {change.kind}")
        k_drop, k_grow = self._changed_counts(dropped, grown)
        self._commit(layers, dropped, grown, k_drop, k_grow)

    def _select(self, scores: Sequence[torch.Tensor], eligible: Sequence[torch.Tensor | None],
                layers: Sequence[int], counts: Sequence[int]) -> list[torch.Tensor]:
        """The exact top-``counts[i]`` of each layer's scores, or with ``structure: fan_in`` / ``n_m``
        the same number in every group (a row / M consecutive weights of a row; ``counts`` are then
        whole multiples of the layer's groups), or with ``structure: block`` the top blocks by score
        sums (``counts`` are whole blocks)."""
        communicator = self.backend.communicator
        if self.block is not None:
            return self._select_blocks(scores, eligible, layers, counts)
        if self._group_lengths is None:
            return select_top_k(scores, eligible, counts, communicator)
        per_group = []
        for index, count in zip(layers, counts):
            groups = self.layers[index].spec.numel // self._group_lengths[index]
            if count % groups:
                unit, units = ("row", "rows") if self.n_m is None else (f"group of {self.n_m[1]}", "groups")
                raise ValueError(f"structure {self.structure}: layer '{self.layers[index].spec.name}' would change "
                                 f"{count} weights, not a whole number per {unit} ({groups} {units})")
            per_group.append(count // groups)
        return select_top_k_per_row(scores, eligible, per_group,
                                    [LocalSlice(self.layers[i].start, self.layers[i].mask.numel()) for i in layers],
                                    [self._group_lengths[i] for i in layers], [self._shared_groups[i] for i in layers],
                                    communicator)

    def _select_blocks(self, scores: Sequence[torch.Tensor], eligible: Sequence[torch.Tensor | None],
                       layers: Sequence[int], counts: Sequence[int]) -> list[torch.Tensor]:
        size = self.block[0] * self.block[1]
        for index, count in zip(layers, counts):
            if count % size:
                raise ValueError(f"structure block: layer '{self.layers[index].spec.name}' would change {count} "
                                 f"weights, not a whole number of {self.block[0]} x {self.block[1]} blocks")
        return select_top_k_blocks(scores, eligible, [count // size for count in counts],
                                   [LocalSlice(self.layers[i].start, self.layers[i].mask.numel()) for i in layers],
                                   [self._matrix_shapes[i] for i in layers], [self.block] * len(layers),
                                   [self._shared_block_rows[i] for i in layers], self.backend.communicator)

    def _refuse_structure(self, change: MaskChange) -> None:
        """Changes over all layers together, and elementwise assignments, keep neither equal groups
        (rows, N:M) nor blocks."""
        if self.structure not in ("fan_in", "block", "n_m"):
            return
        keeps = ("rows equal" if self.structure == "fan_in" else "masks in whole blocks" if self.block is not None
                 else f"{self.n_m[0]} of every {self.n_m[1]} consecutive weights")
        what = "an elementwise assign" if change.kind == "assign" else f"a {change.kind} over all layers together"
        raise ValueError(f"structure {self.structure}: method '{self.method.name}' asked for {what}, which does not "
                         f"keep {keeps}")

    def _changed_counts(self, dropped: Sequence[torch.Tensor], grown: Sequence[torch.Tensor]):
        """Global numbers of dropped and grown weights per layer (one all-reduce)."""
        counts = torch.stack([torch.stack([torch.count_nonzero(d), torch.count_nonzero(g)])
                              for d, g in zip(dropped, grown)]).to(torch.int64)
        self.backend.communicator.all_reduce_sum(counts)
        return counts[:, 0].tolist(), counts[:, 1].tolist()

    def _global_counts(self, chosen: Sequence[torch.Tensor]) -> list[int]:
        counts = torch.stack([torch.count_nonzero(c) for c in chosen]).to(torch.int64)
        self.backend.communicator.all_reduce_sum(counts)
        return counts.tolist()

    def _finite_layers(self, inputs: Sequence[Sequence[torch.Tensor]], names: Sequence[str]) -> list[bool]:
        """Per layer, whether all its scores are finite on every rank (one all-reduce); a layer
        that is not is left unchanged, with a warning, and the step counts a skipped update."""
        device = self.layers[0].mask.device if self.layers else None
        bad = torch.tensor([int(any(t.numel() and not bool(torch.isfinite(t).all()) for t in tensors))
                            for tensors in inputs], dtype=torch.int64, device=device)
        self.backend.communicator.all_reduce_sum(bad)
        finite = [not flag for flag in bad.tolist()]
        if not all(finite):
            skipped = [name for name, ok in zip(names, finite) if not ok]
            warnings.warn(f"gsparse: step {self.step}: non-finite mask scores (NaN/Inf in weights, gradients or "
                          f"method state) in {', '.join(skipped)}; these layers keep their masks",
                          NonFiniteScores, stacklevel=3)
            self._skipped = True
        return finite

    def _commit(self, layers: Sequence[int], dropped, grown, k_drop, k_grow) -> None:
        counter_dtype = counter_dtype_for(self.num_updates + 2)  # the bound after this update
        for index, drop, grow, dropped_count, grown_count in zip(layers, dropped, grown, k_drop, k_grow):
            state = self.layers[index]
            if self.method.dormant_weights:  # pruned weights keep their value; regrown ones get it back
                dormant = state.extra[DORMANT]
                weight = self.backend.weight(index)
                dormant.copy_(torch.where(drop, weight, dormant))
                self.backend.write_weights(index, grow, dormant)
                dormant.masked_fill_(grow, 0)
            state.mask = (state.mask & ~drop) | grow
            state.active += grown_count - dropped_count
            if state.counter.dtype != counter_dtype:
                state.counter = state.counter.to(counter_dtype)
            state.counter += state.mask.view(torch.uint8)  # same-dtype add: no slow cast path on CPU
            if self.enforces_mask:
                self.backend.reset_optimizer_state(index, drop | grow)
            self._grown[index] = max(grown_count, dropped_count)
        if self.enforces_mask:
            self.backend.mask_weights([(index, self.layers[index].mask) for index in layers])
        self._changed = True
        self.mask_version += 1

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

    def _read_layer_parameters(self) -> None:
        """The values of the method's per-layer parameters for this step's views (read once)."""
        if not self.method.layer_parameters:
            return
        flat = [(index, name, param) for index, entry in enumerate(self.layer_parameters)
                for name, param in entry.items()]
        values = self.backend.read_scalars([param for _, _, param in flat])
        self._parameter_values = [{} for _ in self.layers]
        for (index, name, _), value in zip(flat, values):
            self._parameter_values[index][name] = value

    def _views(self, layers: Sequence[int], with_grad: bool | None = None) -> list[LayerView]:
        with_grad = self.method.needs_grad if with_grad is None else with_grad
        return [self._view(index, with_grad) for index in layers]

    def _view(self, index: int, with_grad: bool) -> LayerView:
        layer = self.layers[index]
        # (before the first step has read them, e.g. for the initial mask, the parameters are unknown)
        parameters = self._parameter_values[index] if index < len(self._parameter_values) else {}
        return LayerView(name=layer.spec.name, step=self.step, weight=self.backend.weight(index), mask=layer.mask,
                         counter=layer.counter, grad=self.backend.grad(index) if with_grad else None,
                         global_start=layer.start, seed=self.seed, state=layer.extra,
                         target_active=layer.spec.active_count, parameters=parameters)

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
            "skipped_updates": self.skipped_updates,
            "layers": {layer.spec.name: {"density": _safe_ratio(a, n), "exploration_degree": _safe_ratio(e, n)}
                       for layer, a, e, n in zip(self.layers, active, explored, numels)},
        }

    # ---- gathering for analysis and export -------------------------------------------------

    def state_names(self) -> list[str]:
        """The per-weight tensors kept per layer: ``mask``, ``counter`` and the method's state."""
        return ["mask", "counter", *self.method.per_weight_state, *([DORMANT] if self.method.dormant_weights else [])]

    def gather(self, keys: Sequence[str] = ("mask",), layers: Sequence[str] | None = None,
               rank: int | None = None) -> dict[str, dict[str, torch.Tensor]] | None:
        """Full per-weight tensors (in the parameters' shapes) assembled from every process's piece.

        A collective: every process calls it with the same arguments. ``rank=None`` returns the
        result on every process; otherwise only on that rank (``None`` elsewhere). Layers are
        assembled one at a time, so no process holds more than one full layer beyond the result.
        """
        unknown = [key for key in keys if key not in self.state_names()]
        if unknown:
            raise ValueError(f"cannot gather {unknown}: per-weight tensors are {self.state_names()}")
        names = [layer.spec.name for layer in self.layers] if layers is None else list(layers)
        by_name = {layer.spec.name: layer for layer in self.layers}
        missing = [name for name in names if name not in by_name]
        if missing:
            raise ValueError(f"no sparse layers named {missing}; sparse layers are {list(by_name)}")
        communicator = self.backend.communicator
        result: dict[str, dict[str, torch.Tensor]] = {}
        for name in names:
            layer = by_name[name]
            pieces = layer.per_weight_state()
            result[name] = {}
            for key in keys:
                piece = pieces[key]
                if communicator.world_size == 1 and piece.numel() == layer.spec.numel:
                    full = piece.clone()
                else:
                    wire_dtype = _wire_dtype(piece.dtype)
                    full = torch.zeros(layer.spec.numel, dtype=wire_dtype, device=piece.device)
                    full[layer.start:layer.start + piece.numel()] = piece.to(wire_dtype)
                    communicator.all_reduce_sum(full)  # the pieces are disjoint: the sum assembles them
                    full = full.to(piece.dtype)
                result[name][key] = full.view(layer.spec.shape)
        if rank is not None and communicator.rank != rank:
            return None
        return result

    # ---- checkpoints -----------------------------------------------------------------------

    def state_dict(self) -> dict[str, Any]:
        """This process's sparse state: per layer its global start, mask and counter."""
        return {
            "step": self.step,
            "num_updates": self.num_updates,
            "skipped_updates": self.skipped_updates,
            "seed": self.seed,
            "active_weight_steps": self.active_weight_steps,
            "layer_active_steps": list(self.layer_active_steps),
            "method_state": self.method.state_dict(),
            "extra_state": dict(self.extra_state),
            "structure": self._structure_record(),
            "layers": {
                layer.spec.name: {"shape": tuple(layer.spec.shape), "start": layer.start, "active": layer.active,
                                  **{key: value.clone() for key, value in layer.per_weight_state().items()}}
                for layer in self.layers
            },
        }

    def _structure_record(self) -> dict[str, Any]:
        return {"structure": self.structure, "block_size": None if self.block is None else list(self.block),
                "n_m": None if self.n_m is None else list(self.n_m)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        saved_structure = state.get("structure")  # absent in checkpoints of gsparse before structures
        if saved_structure is not None and saved_structure != self._structure_record():
            raise ValueError(f"the checkpoint's masks were trained with {_describe_structure(saved_structure)}, but "
                             f"this run's recipe says {_describe_structure(self._structure_record())}: resume with "
                             "the recipe that wrote the checkpoint")
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
        self.skipped_updates = int(state.get("skipped_updates") or 0)
        self.seed = int(state["seed"])
        self.active_weight_steps = int(state.get("active_weight_steps", 0))
        saved_layer_steps = state.get("layer_active_steps")
        if saved_layer_steps is not None:
            self.layer_active_steps = [int(value) for value in saved_layer_steps]
        else:  # a checkpoint from before per-layer counts: split the total by the layers' counts
            counts = [layer.spec.active_count for layer in self.layers]
            self.layer_active_steps = [round(self.active_weight_steps * count / max(sum(counts), 1))
                                       for count in counts]
            logger.warning("gsparse: the checkpoint has no per-layer active weight counts; FLOPs per layer are "
                           "estimated from the total for its first %d steps", self.step)
        self.method.load_state_dict(state.get("method_state", {}))
        self.extra_state = dict(state.get("extra_state") or {})
        self.mask_version += 1
        if self.enforces_mask:
            self.backend.mask_weights(list(enumerate(self.masks)))
            self.backend.sync_weights()
        for callback in self.step_callbacks:
            callback("load")


def _wire_dtype(dtype: torch.dtype) -> torch.dtype:
    """A dtype every collective backend sums exactly (gloo has no bool or int16 sums)."""
    if dtype.is_floating_point:
        return torch.float64 if dtype == torch.float64 else torch.float32
    return torch.int64 if dtype == torch.int64 else torch.int32


def _safe_ratio(numerator: float, denominator: float) -> float:
    return float(numerator) / float(denominator) if denominator else 0.0


def _describe_structure(record: dict[str, Any]) -> str:
    """``structure: block (block_size [4, 4])`` for error messages."""
    extra = (f" (block_size {record['block_size']})" if record.get("block_size") else
             f" (n_m {record['n_m']})" if record.get("n_m") else "")
    return f"structure: {record.get('structure')}{extra}"
