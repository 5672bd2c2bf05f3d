"""The drop/grow method base class: a method is a drop score, a grow score and its options.

Everything else (top-k, masks, counters, optimizer-state reset, sharding, checkpoints) lives in
:mod:`gsparse.engine` and the backends, so a method never knows how its tensors are sharded.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from types import SimpleNamespace
from typing import Any, ClassVar, Mapping

import torch

from gsparse import hashrng
from gsparse.options import Option, resolve_options


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
    _random_draws: int = field(default=0, repr=False)

    def uniform(self) -> torch.Tensor:
        """Uniform [0, 1) scores keyed by global index: equal whatever the sharding."""
        key = hashrng.stream_key(self.seed, f"grow/{self._random_draws}", self.name, self.step)
        self._random_draws += 1
        return hashrng.uniform(key, self.global_start, self.weight.numel(), self.weight.device)


class DropGrowMethod:
    """Base of all mask-updating methods.

    At every update step, per layer, the ``k`` active weights with the lowest :meth:`drop_score`
    are dropped and the ``k`` inactive weights with the highest :meth:`grow_score` are grown.
    Methods that prune from dense (``grows = False``) only drop, down to the active count their
    :meth:`pruned_fraction` sets.
    """

    name: ClassVar[str]
    options: ClassVar[Mapping[str, Option]] = {}
    updates_mask: ClassVar[bool] = True
    needs_grad: ClassVar[bool] = False
    regrow_dropped: ClassVar[bool] = False  # may a weight dropped at this update be grown again?
    grows: ClassVar[bool] = True
    shapes_gradients: ClassVar[bool] = False  # does gradient_terms add anything?
    per_weight_state: ClassVar[Mapping[str, torch.dtype]] = {}  # extra per-weight tensors to keep
    needs_last_update_step: ClassVar[bool] = False  # does its schedule need schedule.last_update_step?

    def __init__(self, **args: Any):
        self.args = SimpleNamespace(**resolve_options(args, self.options, "method_args."))

    def pruned_fraction(self, step: int, schedule) -> float:
        """Fraction of the way from dense to the target sparsity at ``step`` (1: sparse from scratch)."""
        return 1.0

    def is_update_step(self, step: int, schedule) -> bool:
        return schedule.is_update_step(step)

    def gradient_terms(self, layers: list[LayerView], select) -> list[torch.Tensor | None]:
        """Terms added to each layer's gradient before masking (``shapes_gradients`` methods).
        ``select(scores, eligible, k)`` is the exact per-layer top-k over all processes."""
        return [None] * len(layers)

    def state_dict(self) -> dict:
        return {}

    def load_state_dict(self, state: dict) -> None:
        pass

    def drop_score(self, layer: LayerView) -> torch.Tensor:
        """Active weights with the lowest scores are dropped (default: magnitude)."""
        return layer.weight.abs()

    def grow_score(self, layer: LayerView) -> torch.Tensor:
        """Inactive weights with the highest scores are grown."""
        raise NotImplementedError
