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
    """

    name: ClassVar[str]
    options: ClassVar[Mapping[str, Option]] = {}
    updates_mask: ClassVar[bool] = True
    needs_grad: ClassVar[bool] = False
    regrow_dropped: ClassVar[bool] = False  # may a weight dropped at this update be grown again?

    def __init__(self, **args: Any):
        self.args = SimpleNamespace(**resolve_options(args, self.options, "method_args."))

    def drop_score(self, layer: LayerView) -> torch.Tensor:
        """Active weights with the lowest scores are dropped (default: magnitude)."""
        return layer.weight.abs()

    def grow_score(self, layer: LayerView) -> torch.Tensor:
        """Inactive weights with the highest scores are grown."""
        raise NotImplementedError
