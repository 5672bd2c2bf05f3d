"""The single-process entry point: attach a recipe to a model and its optimizer."""
from __future__ import annotations

import contextlib
from typing import TYPE_CHECKING, Any, Mapping, Sequence

import torch

from gsparse.backends.pytorch import TorchBackend
from gsparse.engine import SparseEngine
from gsparse.forward import add_to_optimizer, install_forward_transforms, layer_parameters_of, prepare_model
from gsparse.params import sparse_param_specs
from gsparse.recipe import Recipe, load_recipe

if TYPE_CHECKING:
    from gsparse.kernels.execution import SparseExecution


def install_execution(model: torch.nn.Module, engine: SparseEngine, mode: str) -> "SparseExecution | None":
    """Sparse execution of the sparse linear layers (``execution: sparse | auto``), or ``None`` (dense)."""
    if mode == "dense":
        return None
    from gsparse.kernels.execution import SparseExecution

    return SparseExecution(model, engine, mode)


def fitted_recipe(recipe: str | Mapping[str, Any] | Recipe, total_steps: int | None,
                  steps_per_epoch: int | None = None) -> Recipe:
    """``recipe`` fitted to a run of ``total_steps`` if given; without it, a recipe still relative to
    the run raises :class:`~gsparse.options.RecipeError` naming the key."""
    recipe = load_recipe(recipe)
    if total_steps is None:
        recipe.require_fitted()
        return recipe
    return recipe.fit_to_run(total_steps, steps_per_epoch)


class SparseState:
    """What every sparsifier (plain PyTorch or DeepSpeed) offers over its engine."""

    engine: SparseEngine
    recipe: Recipe
    execution: "SparseExecution | None" = None

    @property
    def step(self) -> int:
        """Number of optimizer steps taken so far."""
        return self.engine.step

    @property
    def last_update(self) -> dict[str, Any] | None:
        """What the latest mask update did, with its metrics; ``None`` before the first."""
        return self.engine.last_update

    def metrics(self) -> dict[str, Any]:
        """Density (global and per layer), exploration degree and skipped updates (a collective
        under DeepSpeed: call on all ranks)."""
        return self.engine.metrics()

    def gather_state(self, keys: Sequence[str] = ("mask", "counter"), layers: Sequence[str] | None = None,
                     rank: int | None = None) -> dict[str, dict[str, torch.Tensor]] | None:
        """Full masks, counters and the method's per-weight state of some or all sparse layers,
        ``{layer: {key: tensor in the parameter's shape}}``, on every rank (``rank=None``) or on
        one rank (``None`` elsewhere). A collective under DeepSpeed: every rank calls it."""
        return self.engine.gather(keys, layers, rank)

    def gather_masks(self, layers: Sequence[str] | None = None, rank: int | None = None) -> dict[str, torch.Tensor] | None:
        """Full bool masks by parameter name (see :meth:`gather_state`)."""
        state = self.gather_state(("mask",), layers, rank)
        return None if state is None else {name: entry["mask"] for name, entry in state.items()}

    def gather_counters(self, layers: Sequence[str] | None = None, rank: int | None = None) -> dict[str, torch.Tensor] | None:
        """Full counters by parameter name (see :meth:`gather_state`)."""
        state = self.gather_state(("counter",), layers, rank)
        return None if state is None else {name: entry["counter"] for name, entry in state.items()}

    def execution_report(self) -> dict[str, dict[str, Any]]:
        """How each sparse layer runs (recipe key ``execution``): ``{layer: {"mode": "sparse" | "dense" |
        "pending", "reason", "dense_ms", "sparse_ms", "density"}}``; empty for ``execution: dense``."""
        return {} if self.execution is None else self.execution.report()

    def remove(self) -> None:
        """Detach the optimizer and forward hooks (masks stay applied to the weights)."""
        for handle in self._hooks:
            handle.remove()
        self._hooks = []
        if self.execution is not None:
            self.execution.remove()
            self.execution = None


class Sparsifier(SparseState):
    """Sparse training for a plain PyTorch model, driven by the optimizer's own step.

    Construction makes the model sparse (exactly ``round(density * numel)`` active weights per
    sparse layer, or what the method's initial budget says) and registers hooks on ``optimizer``:
    before every ``optimizer.step()`` the method observes and the masks change if it says so
    (e.g. drop by magnitude, grow by a score on the gradients of that step), the gradients of
    inactive weights are zeroed and the optimizer state of changed weights is reset; after it the
    inactive weights are zeroed again, unless the optimizer provably keeps them zero (see the
    recipe's ``mask_weights_after_step``). The training loop stays unchanged::

        sparsifier = gsparse.Sparsifier(model, optimizer, "recipes/dst_ee.yaml")
        for batch in loader:
            optimizer.zero_grad()
            loss_fn(model(batch)).backward()
            optimizer.step()          # masks update here every update_interval steps

    A recipe with steps relative to the run (``"30%"``, ``auto``) needs the run's length:
    ``total_steps`` (its optimizer steps) and, for ``auto`` epochs, ``steps_per_epoch``; given
    them, the recipe is fitted and checked against the run (:meth:`Recipe.fit_to_run`) before
    the model is touched.

    Steps are counted per real ``optimizer.step()`` (a ``GradScaler`` step skipped on overflow
    does not count). Methods with per-layer trainable parameters (the forward seam) get them
    registered on the model and added to ``optimizer`` here. Checkpoint with :meth:`state_dict`
    next to the model and optimizer.
    """

    def __init__(self, model: torch.nn.Module, optimizer: torch.optim.Optimizer,
                 recipe: str | Mapping[str, Any] | Recipe, *, total_steps: int | None = None,
                 steps_per_epoch: int | None = None):
        self.recipe = fitted_recipe(recipe, total_steps, steps_per_epoch)
        prepare_model(model, self.recipe)
        self.specs = sparse_param_specs(model, self.recipe)
        parameters = dict(model.named_parameters())
        self.params = [parameters[spec.name] for spec in self.specs]
        names = [spec.name for spec in self.specs]
        method_class = self.recipe.method_class
        layer_parameters = layer_parameters_of(model, names, method_class)
        add_to_optimizer(optimizer, [p for entry in layer_parameters for p in entry.values()],
                         method_class.layer_parameter_group)
        self.backend = TorchBackend(self.params, optimizer)
        self.engine = SparseEngine.from_recipe(self.specs, self.recipe, self.backend, layer_parameters)
        self._hooks = self.backend.install_step_hooks(self.engine)
        self._hooks += install_forward_transforms(model, names, self.engine.method, layer_parameters)
        self.execution = install_execution(model, self.engine, self.recipe.execution)

    @property
    def masks(self) -> dict[str, torch.Tensor]:
        """Current masks by parameter name, in the parameters' shapes."""
        return {spec.name: layer.mask.view(spec.shape) for spec, layer in zip(self.specs, self.engine.layers)}

    @property
    def counters(self) -> dict[str, torch.Tensor]:
        """How many mask states (the initial one and one per update) had each weight active."""
        return {spec.name: layer.counter.view(spec.shape) for spec, layer in zip(self.specs, self.engine.layers)}

    def update_masks(self) -> dict[str, Any]:
        """Change the masks now, outside the schedule (after ``backward()``): the change the method's
        ``forced_change`` gives for the current step - a swap at the schedule's drop fraction for
        drop/grow methods, the schedule's counts for prune-from-dense ones; methods whose changes
        are keyed to steps may give none, and then nothing changes. Returns the metrics.

        Plain PyTorch only: under DeepSpeed the gradients exist only inside ``engine.step()``.
        With sparse execution (``execution: sparse | auto``), run that step's forwards inside
        :meth:`dense_gradients`: grow scores and grown weights need the gradients of inactive weights."""
        if self.execution is not None and self.execution.sampled_since_step:
            raise RuntimeError("update_masks() after a backward with sparse execution: the gradients of inactive "
                               "weights were not computed. Run the forward and backward of this step inside "
                               "`with sparsifier.dense_gradients():` (or use execution: dense)")
        return self.engine.update_masks()

    def dense_gradients(self):
        """A context in which sparse execution computes dense weight gradients (see :meth:`update_masks`)."""
        return contextlib.nullcontext() if self.execution is None else self.execution.dense_gradients()

    def state_dict(self) -> dict[str, Any]:
        return {"engine": self.engine.state_dict(), "recipe": self.recipe.source}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.engine.load_state_dict(state["engine"])
