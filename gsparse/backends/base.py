"""What the shared mask engine needs from where the weights live.

A backend maps each sparse parameter to this process's contiguous piece of it (all of it in a
single process; a ZeRO partition under DeepSpeed) and performs the writes: masking gradients and
weights, resetting optimizer state. The engine and the methods only ever see 1-D local pieces.
"""
from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Callable, Sequence

import torch

from gsparse.selection import Communicator, LocalSlice


class Backend(ABC):
    communicator: Communicator

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
    def mask_gradients(self, masks: Sequence[torch.Tensor]) -> None:
        """Zero the gradients of inactive weights before the optimizer step."""

    @abstractmethod
    def mask_weights(self, masks: Sequence[torch.Tensor]) -> None:
        """Zero inactive weights (master and low-precision copies)."""

    @abstractmethod
    def reset_optimizer_state(self, layer: int, positions: torch.Tensor) -> None:
        """Zero per-weight optimizer state (momentum, Adam moments) at ``positions`` (bool, local)."""

    @abstractmethod
    def install_step_hooks(self, before_step: Callable[[], None], after_step: Callable[[], None]) -> list:
        """Call ``before_step`` / ``after_step`` around every real optimizer step; return handles."""
