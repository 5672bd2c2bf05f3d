"""The single-process entry point: attach a recipe to a model and its optimizer."""
from __future__ import annotations

from typing import Any, Mapping

import torch

from gsparse.backends.pytorch import TorchBackend
from gsparse.engine import SparseEngine
from gsparse.params import sparse_param_specs
from gsparse.recipe import Recipe, load_recipe


class Sparsifier:
    """Sparse training for a plain PyTorch model, driven by the optimizer's own step.

    Construction makes the model sparse (exactly ``round(density * numel)`` active weights per
    sparse layer) and registers hooks on ``optimizer``: before every ``optimizer.step()`` the mask
    is updated if the schedule says so (drop by magnitude, grow by the method's score on the
    gradients of that step), the gradients of inactive weights are zeroed and the optimizer state
    of changed weights is reset; after it the inactive weights are zeroed again, unless the
    optimizer provably keeps them zero (see the recipe's ``mask_weights_after_step``). The training
    loop stays unchanged::

        sparsifier = gsparse.Sparsifier(model, optimizer, "recipes/dst_ee.yaml")
        for batch in loader:
            optimizer.zero_grad()
            loss_fn(model(batch)).backward()
            optimizer.step()          # masks update here every update_interval steps

    Steps are counted per real ``optimizer.step()`` (a ``GradScaler`` step skipped on overflow
    does not count). Checkpoint with :meth:`state_dict` next to the model and optimizer.
    """

    def __init__(self, model: torch.nn.Module, optimizer: torch.optim.Optimizer,
                 recipe: str | Mapping[str, Any] | Recipe):
        self.recipe = load_recipe(recipe)
        self.specs = sparse_param_specs(model, self.recipe)
        parameters = dict(model.named_parameters())
        self.params = [parameters[spec.name] for spec in self.specs]
        self.backend = TorchBackend(self.params, optimizer)
        self.engine = SparseEngine.from_recipe(self.specs, self.recipe, self.backend)
        self._hooks = self.backend.install_step_hooks(self.engine)

    @property
    def step(self) -> int:
        """Number of optimizer steps taken so far."""
        return self.engine.step

    @property
    def masks(self) -> dict[str, torch.Tensor]:
        """Current masks by parameter name, in the parameters' shapes."""
        return {spec.name: layer.mask.view(spec.shape) for spec, layer in zip(self.specs, self.engine.layers)}

    @property
    def counters(self) -> dict[str, torch.Tensor]:
        """How many mask states (the initial one and one per update) had each weight active."""
        return {spec.name: layer.counter.view(spec.shape) for spec, layer in zip(self.specs, self.engine.layers)}

    @property
    def last_update(self) -> dict[str, Any] | None:
        """What the latest mask update did, with its metrics; ``None`` before the first."""
        return self.engine.last_update

    def metrics(self) -> dict[str, Any]:
        """Density (global and per layer) and exploration degree right now."""
        return self.engine.metrics()

    def update_masks(self) -> dict[str, Any]:
        """Run a mask update now, outside the schedule (gradients must be populated)."""
        return self.engine.update_masks()

    def state_dict(self) -> dict[str, Any]:
        return {"engine": self.engine.state_dict(), "recipe": self.recipe.source}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.engine.load_state_dict(state["engine"])

    def remove(self) -> None:
        """Detach the optimizer hooks (masks stay applied to the weights)."""
        for handle in self._hooks:
            handle.remove()
        self._hooks = []
