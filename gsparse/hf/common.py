"""What the Trainer callback and the Accelerate helper share: attach gsparse to whatever the
framework prepared (a DeepSpeed engine, or a plain / DDP-wrapped model and its optimizer)."""
from __future__ import annotations

from typing import Any, Mapping

import torch

from gsparse.recipe import Recipe, load_recipe
from gsparse.sparsifier import SparseState, Sparsifier


def checked_recipe(recipe: str | Mapping[str, Any] | Recipe) -> Recipe:
    """Load and validate ``recipe`` now (a wrong key fails before any training starts), and refuse
    methods whose per-layer parameters would have to be in the optimizer before it is built."""
    recipe = load_recipe(recipe)
    method_class = recipe.method_class
    if method_class.layer_parameters:
        raise ValueError(f"method '{method_class.name}' trains per-layer parameters "
                         f"({', '.join(method_class.layer_parameters)}) that must be in the optimizer before the "
                         "framework builds it; the Trainer / Accelerate integration attaches after that. Train it "
                         "with gsparse's runner, gsparse.Sparsifier or gsparse.deepspeed.initialize")
    return recipe


def is_deepspeed_engine(model: Any) -> bool:
    return any(cls.__name__ == "DeepSpeedEngine" for cls in type(model).__mro__)


def unwrap_model(model: torch.nn.Module) -> torch.nn.Module:
    """The user's module inside DDP / torch.compile wrappers."""
    while True:
        inner = getattr(model, "module", None) or getattr(model, "_orig_mod", None)
        if not isinstance(inner, torch.nn.Module):
            return model
        model = inner


def unwrap_optimizer(optimizer: Any) -> torch.optim.Optimizer:
    """The torch optimizer inside Accelerate's ``AcceleratedOptimizer`` (and similar wrappers)."""
    while not isinstance(optimizer, torch.optim.Optimizer) or type(optimizer).__name__ == "AcceleratedOptimizer":
        inner = getattr(optimizer, "optimizer", None)
        if inner is None:
            raise TypeError(f"gsparse needs a torch.optim optimizer; got {type(optimizer).__name__}")
        optimizer = inner
    return optimizer


def attach_prepared(model: Any, optimizer: Any, recipe: Recipe, *, total_steps: int | None,
                    steps_per_epoch: int | None, elastic_checkpoints: bool = True) -> SparseState:
    """gsparse on a prepared model: :func:`gsparse.deepspeed.attach` for a DeepSpeed engine (state
    sharded like ZeRO, saved with ``engine.save_checkpoint``), else a :class:`~gsparse.Sparsifier`
    on the unwrapped model and the torch optimizer (state replicated, as DDP replicates weights)."""
    if is_deepspeed_engine(model):
        import gsparse.deepspeed as gds

        return gds.attach(model, recipe, total_steps=total_steps, steps_per_epoch=steps_per_epoch,
                          elastic_checkpoints=elastic_checkpoints)
    return Sparsifier(unwrap_model(model), unwrap_optimizer(optimizer), recipe, total_steps=total_steps,
                      steps_per_epoch=steps_per_epoch)


def log_values(sparsifier: SparseState, prefix: str = "sparsity/") -> dict[str, float]:
    """The run-level sparse metrics as flat scalars for a framework's loggers (a collective under
    DeepSpeed: every rank calls it)."""
    metrics = sparsifier.metrics()
    return {f"{prefix}{key}": metrics[key] for key in ("density", "exploration_degree", "num_updates",
                                                        "skipped_updates")}
