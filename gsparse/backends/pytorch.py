"""Single-process backend: plain PyTorch parameters and a ``torch.optim`` optimizer."""
from __future__ import annotations

from typing import Sequence

import torch

from gsparse.backends.base import Backend, zero_inactive_
from gsparse.selection import LocalCommunicator, LocalSlice


class TorchBackend(Backend):
    """Every process holds whole parameters (also used for DDP-style replicated training)."""

    def __init__(self, params: Sequence[torch.nn.Parameter], optimizer: torch.optim.Optimizer):
        self.params = list(params)
        self.optimizer = optimizer
        self.communicator = LocalCommunicator()
        optimized = {id(p) for group in optimizer.param_groups for p in group["params"]}
        missing = [i for i, p in enumerate(self.params) if id(p) not in optimized]
        if missing:
            raise ValueError(f"sparse parameters {missing} are not in the optimizer's param_groups")

    def local_slice(self, layer: int) -> LocalSlice:
        return LocalSlice(0, self.params[layer].numel())

    def weight(self, layer: int) -> torch.Tensor:
        return self.params[layer].detach().reshape(-1).to(torch.float32)

    def grad(self, layer: int) -> torch.Tensor | None:
        grad = self.params[layer].grad
        return None if grad is None else grad.detach().reshape(-1).to(torch.float32)

    def mask_gradients(self, masks: Sequence[tuple[int, torch.Tensor]]) -> None:
        for layer, mask in masks:
            grad = self.params[layer].grad
            if grad is not None:
                zero_inactive_(grad, mask.view(grad.shape))

    def add_to_gradient(self, layer: int, term: torch.Tensor) -> None:
        grad = self.params[layer].grad
        grad.add_(term.view(grad.shape).to(grad.dtype))

    @torch.no_grad()
    def mask_weights(self, masks: Sequence[tuple[int, torch.Tensor]]) -> None:
        for layer, mask in masks:
            zero_inactive_(self.params[layer], mask.view(self.params[layer].shape))

    @torch.no_grad()
    def write_weights(self, layer: int, positions: torch.Tensor, values: torch.Tensor) -> None:
        flat = self.params[layer].data.view(-1)
        flat[positions] = values[positions].to(flat.dtype)

    def reset_optimizer_state(self, layer: int, positions: torch.Tensor) -> None:
        param = self.params[layer]
        for value in self.optimizer.state.get(param, {}).values():
            if torch.is_tensor(value) and value.shape == param.shape:
                value.masked_fill_(positions.view(param.shape), 0)

    def install_step_hooks(self, engine) -> list:
        all_layers = range(len(self.params))

        def before_step(optimizer, args, kwargs):
            engine.start_step()
            engine.before_layers_step(all_layers)

        def after_step(optimizer, args, kwargs):
            engine.after_layers_step(all_layers)
            engine.finish_step()

        return [self.optimizer.register_step_pre_hook(before_step),
                self.optimizer.register_step_post_hook(after_step)]
