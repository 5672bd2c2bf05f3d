"""What the shared mask engine needs from where the weights live.

A backend maps each sparse parameter to this process's contiguous piece of it (all of it in a
single process; a ZeRO partition under DeepSpeed) and performs the writes: masking gradients and
weights, resetting optimizer state. The engine and the methods only ever see 1-D local pieces.
"""
from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Protocol, Sequence

import torch

from gsparse.selection import Communicator, LocalSlice


class StepHandler(Protocol):
    """What a backend drives around every real optimizer step (the engine)."""

    def start_step(self) -> None: ...

    def before_layers_step(self, layers: Sequence[int]) -> None: ...

    def after_layers_step(self, layers: Sequence[int]) -> None: ...

    def finish_step(self) -> None: ...


# Optimizers whose update of a weight is exactly zero when the weight, its gradient and its
# optimizer state are all zero: weight decay only scales the weight, Adam's epsilon only divides.
# With gradients masked before the step and state reset wherever the mask changes, inactive
# weights then stay exactly zero, and masking them again after the step would only re-read
# memory (half of gsparse's per-step cost). Exact types: a subclass may change the update.
ZERO_PRESERVING_OPTIMIZERS = frozenset({
    torch.optim.SGD, torch.optim.Adam, torch.optim.AdamW, torch.optim.Adamax, torch.optim.NAdam,
    torch.optim.RAdam, torch.optim.Adagrad, torch.optim.RMSprop, torch.optim.Adadelta,
})


def keeps_inactive_weights_zero(optimizer) -> bool:
    """Whether ``optimizer`` provably leaves a zero weight with zero gradient and state at zero."""
    return type(optimizer) in ZERO_PRESERVING_OPTIMIZERS


def zero_inactive_(tensor: torch.Tensor, mask: torch.Tensor) -> None:
    """Set ``tensor`` to exactly zero where ``mask`` is False, in place, NaN and Inf included.

    On CPU, multiplying by the uint8 view is several times faster than ``masked_fill_`` (the hot
    path: every gradient and weight, every step), but ``NaN * 0`` is NaN: a cheap sum detects any
    non-finite value and only then the exact fill runs. Elsewhere the fill is as fast."""
    if tensor.device.type != "cpu":
        tensor.masked_fill_(~mask, 0)
        return
    tensor.mul_(mask.view(torch.uint8))
    if not bool(torch.isfinite(tensor.sum(dtype=torch.float32))):
        tensor.masked_fill_(~mask, 0)


class Backend(ABC):
    communicator: Communicator
    optimizer: torch.optim.Optimizer  # the torch optimizer that steps the local pieces (ZeRO's inner one)

    @abstractmethod
    def local_slice(self, layer: int) -> LocalSlice:
        """This process's piece ``[start, start + length)`` of flattened layer ``layer``."""

    @abstractmethod
    def weight(self, layer: int) -> torch.Tensor:
        """The local piece of the (master) weight as 1-D float32 (read only)."""

    @abstractmethod
    def grad(self, layer: int) -> torch.Tensor | None:
        """The local piece of the dense gradient of this step as 1-D float32, if any."""

    @abstractmethod
    def mask_gradients(self, masks: Sequence[tuple[int, torch.Tensor]]) -> None:
        """Zero the gradients of inactive weights of the given ``(layer, local mask)`` pairs."""

    @abstractmethod
    def add_to_gradient(self, layer: int, term: torch.Tensor) -> None:
        """Add ``term`` (1-D float32, this process's piece) to the layer's gradient."""

    @abstractmethod
    def mask_weights(self, masks: Sequence[tuple[int, torch.Tensor]]) -> None:
        """Zero inactive weights (master and low-precision copies) of the given layers."""

    def write_weights(self, layer: int, positions: torch.Tensor, values: torch.Tensor) -> None:
        """Set the (master) weight of ``layer`` to ``values`` at ``positions`` (bool, local piece)."""
        raise NotImplementedError(f"{type(self).__name__} cannot write weights (needed by dormant_weights methods)")

    def sync_weights(self) -> None:
        """Propagate master-weight changes made outside an optimizer step to low-precision copies
        (collective where the backend is distributed). Inside a step the framework does it."""

    def read_scalars(self, params: Sequence[torch.nn.Parameter]) -> list[float]:
        """Current values of one-element parameters (a method's per-layer parameters), the same
        on every process (a collective where parameters are partitioned)."""
        return [float(param.detach().reshape(-1)[0]) for param in params]

    @abstractmethod
    def reset_optimizer_state(self, layer: int, positions: torch.Tensor) -> None:
        """Zero per-weight optimizer state (momentum, Adam moments) at ``positions`` (bool, local)."""

    @abstractmethod
    def install_step_hooks(self, engine: StepHandler) -> list:
        """Drive ``engine`` (start_step, before/after_layers_step, finish_step) around every real
        optimizer step; return removable handles."""
