"""Sparse training inside a DeepSpeed engine, at ZeRO stages 0-3.

Attach a recipe to the engine that ``deepspeed.initialize`` returned::

    engine, optimizer, _, _ = deepspeed.initialize(model=model, optimizer=optimizer, config=ds_config)
    sparsifier = gsparse.deepspeed.attach(engine)   # recipe from ds_config["gsparse"], or pass one

or use :func:`initialize`, which does both. The training loop stays DeepSpeed's own
(``engine.backward(loss); engine.step()``); ``engine.save_checkpoint`` / ``load_checkpoint``
also save and restore the sparse state (one file per rank, resharded when the world size changes).

Each rank holds masks and counters for its own ZeRO partition only (ZeRO-0 replicates them), and
every mask decision is the exact distributed top-k of :mod:`gsparse.selection`, equal to a
single-process run's.
"""
from __future__ import annotations

import inspect
from pathlib import Path
from typing import Any, Mapping

import torch
import torch.distributed as dist

from gsparse import checkpoint
from gsparse.backends.pytorch import TorchBackend
from gsparse.deepspeed.backends import PartitionedGroupsBackend, ReplicatedMasterBackend, Stage3Backend
from gsparse.deepspeed.compat import TESTED_TEXT, UnsupportedLayout, check_version, installed_version
from gsparse.deepspeed.config import (DeepSpeedConfigError, check_shape, config_source, ensure_process_group,
                                      load_deepspeed_config)
from gsparse.deepspeed.elastic import wrap_checkpointing
from gsparse.engine import SparseEngine
from gsparse.forward import add_to_optimizer, install_forward_transforms, layer_parameters_of, prepare_model
from gsparse.params import sparse_param_specs
from gsparse.recipe import Recipe
from gsparse.sparsifier import SparseState, fitted_recipe, install_execution

__all__ = ["CONFIG_KEY", "DeepSpeedConfigError", "DeepSpeedSparsifier", "UnsupportedLayout", "attach", "check_config",
           "ensure_process_group", "initialize", "load_deepspeed_config"]

CONFIG_KEY = "gsparse"
_SHARD_FOLDER = "gsparse"


def _build_backend(engine, params: list[torch.nn.Parameter]):
    stage = engine.zero_optimization_stage()
    optimizer = engine.optimizer
    if optimizer is None:
        raise UnsupportedLayout("the DeepSpeed engine has no optimizer: pass one to deepspeed.initialize")
    if stage == 3:
        return Stage3Backend(optimizer, params)
    if stage in (1, 2) or type(optimizer).__name__ == "BF16_Optimizer":
        return PartitionedGroupsBackend(optimizer, params)
    if isinstance(optimizer, torch.optim.Optimizer) and not hasattr(optimizer, "optimizer"):
        return TorchBackend(params, optimizer)  # ZeRO-0 in fp32: replicated, the client optimizer itself
    if type(optimizer).__name__ == "FP16_UnfusedOptimizer" and hasattr(optimizer, "fp32_groups"):
        master_of = {id(low): master for lows, masters in zip(optimizer.fp16_groups, optimizer.fp32_groups)
                     for low, master in zip(lows, masters)}
        return ReplicatedMasterBackend(params, [master_of[id(p)] for p in params], optimizer.optimizer)
    raise UnsupportedLayout(f"ZeRO stage {stage} with {type(optimizer).__name__} (deepspeed {installed_version()}) is "
                            "not a layout gsparse knows (tested: fp32, bf16 and fp16 at ZeRO stages 0-3 with a "
                            f"torch.optim optimizer, deepspeed {TESTED_TEXT})")


class DeepSpeedSparsifier(SparseState):
    """The sparse state of one DeepSpeed engine; see :func:`attach`."""

    def __init__(self, engine, recipe: str | Mapping[str, Any] | Recipe | None = None, *,
                 total_steps: int | None = None, steps_per_epoch: int | None = None, elastic_checkpoints: bool = True):
        check_version()
        check_config(_config_dict(engine))
        if recipe is None:
            recipe = _config_dict(engine).get(CONFIG_KEY)
            if recipe is None:
                raise ValueError(f"no recipe: pass one, or put it under the '{CONFIG_KEY}' key of the DeepSpeed config")
        self.ds_engine = engine
        self.recipe = fitted_recipe(recipe, total_steps, steps_per_epoch)
        self.specs = sparse_param_specs(engine.module, self.recipe)
        named = dict(engine.module.named_parameters())
        self.params = [named[spec.name] for spec in self.specs]
        names = [spec.name for spec in self.specs]
        layer_parameters = layer_parameters_of(engine.module, names, self.recipe.method_class)
        self.backend = _build_backend(engine, self.params)
        self.engine = SparseEngine.from_recipe(self.specs, self.recipe, self.backend, layer_parameters)
        self._hooks = self.backend.install_step_hooks(self.engine)
        # after DeepSpeed's own forward hooks, so that ZeRO-3 has gathered the weights
        self._hooks += install_forward_transforms(engine.module, names, self.engine.method, layer_parameters)
        self.execution = install_execution(engine.module, self.engine, self.recipe.execution)
        wrap_checkpointing(engine, self.save, self.load, elastic=elastic_checkpoints)

    # ---- state --------------------------------------------------------------------------------

    def local_masks(self) -> dict[str, tuple[int, torch.Tensor]]:
        """This rank's piece of every mask: ``{name: (global start, 1-D bool mask)}``."""
        return {layer.spec.name: (layer.start, layer.mask) for layer in self.engine.layers}

    def local_counters(self) -> dict[str, tuple[int, torch.Tensor]]:
        return {layer.spec.name: (layer.start, layer.counter) for layer in self.engine.layers}

    def gather_state(self, keys=("mask", "counter"), layers=None, rank=None):
        state = self.engine.gather(keys, layers, None if self._replicated() else rank)
        if rank is not None and self._replicated() and dist.get_rank() != rank:
            return None
        return state

    def _replicated(self) -> bool:
        """ZeRO-0 across several processes: every rank holds the whole state."""
        return self.backend.communicator.world_size == 1 and dist.is_initialized() and dist.get_world_size() > 1

    # ---- checkpoints --------------------------------------------------------------------------

    def _shard_owner(self) -> tuple[int, int, bool]:
        communicator = self.backend.communicator
        writes = not self._replicated() or dist.get_rank() == 0
        return communicator.rank, communicator.world_size, writes

    def save(self, checkpoint_dir: str | Path) -> None:
        """Write this rank's sparse state under ``checkpoint_dir/gsparse/`` (all ranks call it)."""
        rank, world_size, writes = self._shard_owner()
        if writes:
            checkpoint.save_shard(self.engine, Path(checkpoint_dir) / _SHARD_FOLDER, rank, world_size)

    def load(self, checkpoint_dir: str | Path) -> None:
        """Restore the sparse state saved under ``checkpoint_dir`` at any world size."""
        rank, world_size, _ = self._shard_owner()
        checkpoint.load_shards(self.engine, Path(checkpoint_dir) / _SHARD_FOLDER, rank, world_size)


def check_config(config: Mapping[str, Any], source: str = "<dict>") -> None:
    """Refuse DeepSpeed options gsparse cannot honour, before DeepSpeed builds anything (a section of
    the wrong shape: :class:`DeepSpeedConfigError`; a feature gsparse does not support:
    :class:`UnsupportedLayout`)."""
    check_shape(config, source)
    zero = config.get("zero_optimization") or {}
    if zero.get("round_robin_gradients"):
        raise UnsupportedLayout("zero_optimization.round_robin_gradients is not supported (its fragment mapping is "
                                "wrong in DeepSpeed 0.19); set it to false")
    for key in ("offload_optimizer", "offload_param"):
        device = (zero.get(key) or {}).get("device", "none")
        if device not in (None, "none"):
            raise UnsupportedLayout(f"zero_optimization.{key} (device '{device}') is not supported by gsparse; "
                                    "remove it or set its device to 'none'")
    if (config.get("checkpoint") or {}).get("load_universal"):
        raise UnsupportedLayout("checkpoint.load_universal is not needed with gsparse, which reshards its checkpoints "
                                "itself: engine.load_checkpoint(dir) at another world size restores weights, buffers, "
                                "optimizer state and sparse state from the original checkpoint (no ds_to_universal "
                                "step). Remove checkpoint.load_universal and load the original checkpoint folder")


def _config_dict(engine) -> dict:
    config = getattr(getattr(engine, "_config", None), "_param_dict", None)
    return config if isinstance(config, dict) else {}


def attach(engine, recipe: str | Mapping[str, Any] | Recipe | None = None, *, total_steps: int | None = None,
           steps_per_epoch: int | None = None, elastic_checkpoints: bool = True) -> DeepSpeedSparsifier:
    """Make ``engine``'s model sparse and keep it so: masks exact every step, updated on schedule.

    ``recipe`` defaults to the ``"gsparse"`` key of the engine's DeepSpeed config. A recipe with
    steps relative to the run (``"30%"``, ``auto``) needs ``total_steps`` (the run's optimizer
    steps) and, for ``auto`` epochs, ``steps_per_epoch`` (see ``Recipe.fit_to_run``).

    ``engine.save_checkpoint`` / ``load_checkpoint`` then carry the sparse state too, and with
    ``elastic_checkpoints`` (default) each rank's piece of the optimizer state, so that a ZeRO
    checkpoint resumes at any world size with its optimizer state (see
    :mod:`gsparse.deepspeed.elastic`; it costs a second copy of the optimizer state on disk).
    """
    return DeepSpeedSparsifier(engine, recipe, total_steps=total_steps, steps_per_epoch=steps_per_epoch,
                               elastic_checkpoints=elastic_checkpoints)


def initialize(*args, recipe: str | Mapping[str, Any] | Recipe | None = None, total_steps: int | None = None,
               steps_per_epoch: int | None = None, elastic_checkpoints: bool = True, **kwargs):
    """``deepspeed.initialize`` plus :func:`attach`; returns DeepSpeed's tuple and the sparsifier.

    The DeepSpeed config (``config=``, or ``args.deepspeed_config``) is read with
    :func:`load_deepspeed_config` and the recipe checked (and fitted to ``total_steps`` /
    ``steps_per_epoch``, as in :func:`attach`) before DeepSpeed builds anything, so a bad config or
    recipe fails fast. Started without a launcher, the process becomes a single-rank group first
    (:func:`ensure_process_group`). A method
    with per-layer parameters gets them registered on the model first and added to the optimizer
    (your torch optimizer, or the ``model_parameters`` DeepSpeed builds one from).
    """
    import deepspeed

    arguments = inspect.signature(deepspeed.initialize).bind_partial(*args, **kwargs).arguments
    config = arguments.get("config") or arguments.get("config_params")
    launcher_args = arguments.get("args")
    if config is None and getattr(launcher_args, "deepspeed_config", None):
        config = launcher_args.deepspeed_config
    if isinstance(config, (str, Path, Mapping)):
        source = config_source(config)
        config = load_deepspeed_config(config)
        check_config(config, source)
        if recipe is None:
            recipe = config.get(CONFIG_KEY)
    if recipe is not None:
        recipe = fitted_recipe(recipe, total_steps, steps_per_epoch)
        model = arguments.get("model")
        created = prepare_model(model, recipe) if model is not None else []
        group = recipe.method_class.layer_parameter_group
        if created and isinstance(arguments.get("optimizer"), torch.optim.Optimizer):
            add_to_optimizer(arguments["optimizer"], created, group)
        elif created and arguments.get("model_parameters") is not None:  # DeepSpeed builds the optimizer
            arguments["model_parameters"] = _with_parameters(arguments["model_parameters"], created, group)
    ensure_process_group()
    engine, optimizer, dataloader, scheduler = deepspeed.initialize(**arguments)
    return engine, optimizer, dataloader, scheduler, attach(engine, recipe, elastic_checkpoints=elastic_checkpoints)


def _with_parameters(model_parameters, created: list[torch.nn.Parameter], group: Mapping[str, Any]) -> list:
    """``model_parameters`` (parameters or param-group dicts, any iterable) plus those of ``created``
    it lacks (a generator over ``model.parameters()`` already yields them), with the method's group
    options where groups are given."""
    groups = list(model_parameters)
    if groups and isinstance(groups[0], Mapping):
        groups = [dict(group, params=list(group["params"])) for group in groups]
        present = {id(param) for group in groups for param in group["params"]}
        missing = [param for param in created if id(param) not in present]
        return groups + ([{"params": missing, **group}] if missing else [])
    present = {id(param) for param in groups}
    return groups + [param for param in created if id(param) not in present]
