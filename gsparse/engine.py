"""The shared mask engine: masks, counters, drop/grow updates, metrics and checkpoints.

One engine serves every method and every backend. Per sparse layer it keeps, for this process's
piece of the layer only, a bool ``mask`` and a ``counter`` of how many mask states had each
weight active (the DST-EE counter ``N``; ``counter > 0`` marks explored weights).
"""
from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from typing import Any, Sequence

import torch

from gsparse import hashrng
from gsparse.backends.base import Backend
from gsparse.methods.base import DropGrowMethod, LayerView
from gsparse.params import SparseParamSpec
from gsparse.schedules import UpdateSchedule
from gsparse.selection import select_top_k

logger = logging.getLogger("gsparse")

# The counter holds at most 1 + number of updates, so it starts as one byte and widens only when
# that bound would overflow the current dtype.
_COUNTER_DTYPES = (torch.uint8, torch.int16, torch.int32, torch.int64)


def counter_dtype_for(max_count: int) -> torch.dtype:
    for dtype in _COUNTER_DTYPES:
        if max_count <= torch.iinfo(dtype).max:
            return dtype
    raise OverflowError(max_count)


def round_half_up(value: float) -> int:
    return int(math.floor(value + 0.5))


@dataclass
class LayerState:
    spec: SparseParamSpec
    start: int  # global flat index of this process's first element of the layer
    mask: torch.Tensor
    counter: torch.Tensor


class SparseEngine:
    """Keeps masks exact between updates and changes them on the schedule.

    The backend calls :meth:`before_optimizer_step` and :meth:`after_optimizer_step` around every
    optimizer step that really happens; steps are counted from 1 there.
    """

    def __init__(self, specs: Sequence[SparseParamSpec], method: DropGrowMethod, schedule: UpdateSchedule,
                 backend: Backend, seed: int = 0):
        self.method = method
        self.schedule = schedule
        self.backend = backend
        self.seed = seed
        self.step = 0
        self.num_updates = 0
        self.last_update: dict[str, Any] | None = None
        self.layers = [self._initial_layer(index, spec) for index, spec in enumerate(specs)]
        self._select_initial_masks()

    # ---- masks -----------------------------------------------------------------------------

    def _initial_layer(self, index: int, spec: SparseParamSpec) -> LayerState:
        local = self.backend.local_slice(index)
        device = self.backend.weight(index).device
        return LayerState(spec, local.start, torch.zeros(local.length, dtype=torch.bool, device=device),
                          torch.zeros(local.length, dtype=torch.uint8, device=device))

    def _select_initial_masks(self) -> None:
        scores = [
            hashrng.uniform(hashrng.stream_key(self.seed, "init", layer.spec.name, 0), layer.start,
                            layer.mask.numel(), layer.mask.device)
            for layer in self.layers
        ]
        chosen = select_top_k(scores, [None] * len(scores), [l.spec.active_count for l in self.layers],
                              self.backend.communicator)
        for layer, mask in zip(self.layers, chosen):
            layer.mask = mask
            layer.counter = mask.to(torch.uint8)
        self.backend.mask_weights(self.masks)

    @property
    def masks(self) -> list[torch.Tensor]:
        return [layer.mask for layer in self.layers]

    # ---- step hooks ------------------------------------------------------------------------

    def before_optimizer_step(self) -> None:
        self.step += 1
        if self.method.updates_mask and self.schedule.is_update_step(self.step):
            self.update_masks()
        self.backend.mask_gradients(self.masks)

    def after_optimizer_step(self) -> None:
        self.backend.mask_weights(self.masks)

    # ---- drop and grow ---------------------------------------------------------------------

    def update_masks(self) -> dict[str, Any]:
        """Drop and grow ``k`` weights per layer now (uses the gradients of the current step)."""
        drop_fraction = self.schedule.drop_fraction_at(self.step)
        views = [self._view(index) for index in range(len(self.layers))]
        if self.method.needs_grad and any(view.grad is None for view in views):
            raise RuntimeError(f"method '{self.method.name}' needs gradients at step {self.step}, but a sparse "
                               "parameter has none: call backward() before optimizer.step()")
        k = [min(round_half_up(drop_fraction * l.spec.active_count), l.spec.numel - l.spec.active_count)
             for l in self.layers]
        communicator = self.backend.communicator
        dropped = select_top_k([-self.method.drop_score(v) for v in views], self.masks, k, communicator)
        if self.method.regrow_dropped:
            grow_eligible = [~(layer.mask & ~drop) for layer, drop in zip(self.layers, dropped)]
        else:
            grow_eligible = [~layer.mask for layer in self.layers]
        grown = select_top_k([self.method.grow_score(v) for v in views], grow_eligible, k, communicator)

        self.num_updates += 1
        counter_dtype = counter_dtype_for(self.num_updates + 1)
        local_counts = []
        for index, (layer, drop, grow) in enumerate(zip(self.layers, dropped, grown)):
            layer.mask = (layer.mask & ~drop) | grow
            if layer.counter.dtype != counter_dtype:
                layer.counter = layer.counter.to(counter_dtype)
            layer.counter += layer.mask
            self.backend.reset_optimizer_state(index, drop | grow)
            local_counts.append(torch.stack([grow.sum(), (grow & ~drop).sum()]))
        self.backend.mask_weights(self.masks)

        replaced = torch.stack(local_counts).to(torch.int64)
        communicator.all_reduce_sum(replaced)
        self.last_update = {"step": self.step, "drop_fraction": drop_fraction, "k": k,
                            "grown": replaced[:, 0].tolist()}
        metrics = self.metrics()
        metrics.update(step=self.step, drop_fraction=drop_fraction,
                       mask_change=_safe_ratio(sum(self.last_update["grown"]), sum(l.spec.active_count for l in self.layers)))
        self.last_update["metrics"] = metrics
        logger.info("mask update %d at step %d: drop_fraction=%.4f exploration=%.4f", self.num_updates, self.step,
                    drop_fraction, metrics["exploration_degree"])
        return metrics

    def _view(self, index: int) -> LayerView:
        layer = self.layers[index]
        return LayerView(name=layer.spec.name, step=self.step, weight=self.backend.weight(index), mask=layer.mask,
                         counter=layer.counter, grad=self.backend.grad(index) if self.method.needs_grad else None,
                         global_start=layer.start, seed=self.seed)

    # ---- metrics ---------------------------------------------------------------------------

    def metrics(self) -> dict[str, Any]:
        """Global and per-layer density and the exploration degree (a collective: call on all ranks)."""
        local = torch.stack([torch.stack([layer.mask.sum(), (layer.counter > 0).sum()]) for layer in self.layers])
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
            "layers": {
                layer.spec.name: {"shape": tuple(layer.spec.shape), "start": layer.start,
                                  "mask": layer.mask.clone(), "counter": layer.counter.clone()}
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
            layer.mask = entry["mask"].to(device=layer.mask.device, dtype=torch.bool).clone()
            layer.counter = entry["counter"].to(layer.mask.device).clone()
        self.step = int(state["step"])
        self.num_updates = int(state["num_updates"])
        self.seed = int(state["seed"])
        self.backend.mask_weights(self.masks)


def _safe_ratio(numerator: float, denominator: float) -> float:
    return float(numerator) / float(denominator) if denominator else 0.0
