"""What a task gives the training runner: model, data, loss, metrics and the best-epoch rule.

A task is any object with the attributes and methods of :class:`Task` (a ``typing.Protocol``;
subclassing :class:`TaskBase` fills in the optional parts). The runner calls, in this order::

    task.setup(context)                      # once the process group exists (rank, world size)
    model = task.build_model()               # seed it yourself: identical weights on every rank
    optimizer = task.build_optimizer(model)
    scheduler = task.build_scheduler(optimizer, total_steps)     # or None; stepped per optimizer step
    task.prepare(model, context)             # after DeepSpeed wrapped it (context.dtype is known)
    for epoch in 1..epochs:
        for batch in task.train_batches(epoch, context):         # this rank's micro-batches
            loss = task.loss(model, batch)                       # a scalar tensor
        for split in task.eval_splits:                            # on every rank (ZeRO-3 needs it)
            task.evaluate(model, split) -> {"accuracy": ..., ...} # logged as "<split>_<name>"

``train_batches`` must yield exactly ``task.steps_per_epoch() * context.accumulation_steps``
micro-batches on every rank, the micro-batches of one optimizer step one after the other; the
runner takes an optimizer step after each group of ``accumulation_steps``. Shuffle with a
generator seeded from ``(seed, epoch)``, never from the global RNG, and a resumed run sees the
same batches as an uninterrupted one.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Iterable, Protocol, runtime_checkable

import torch


@dataclass
class RunContext:
    """Where the task runs; the runner fills it in and passes the same object every time."""

    rank: int = 0
    world_size: int = 1
    accumulation_steps: int = 1  # micro-batches per optimizer step on each rank
    distributed: bool = False  # under DeepSpeed
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    dtype: torch.dtype = torch.float32  # the model's parameter dtype (bf16/fp16 under DeepSpeed if enabled)
    seed: int = 0

    @property
    def micro_batches(self) -> int:
        """Micro-batches that make one optimizer step over all ranks."""
        return self.world_size * self.accumulation_steps


@runtime_checkable
class Task(Protocol):
    """The protocol the runner trains; see the module docstring for the call order."""

    name: str
    selection_metric: str  # e.g. "val_accuracy": a key of the epoch row ("<split>_<metric>")
    selection_mode: str  # "max" or "min"
    eval_splits: tuple  # e.g. ("val", "test"); the first one selects the best epoch
    batch_size: int | None  # global examples per optimizer step (sets DeepSpeed's micro-batch), or None

    def setup(self, context: RunContext) -> None: ...
    def build_model(self) -> torch.nn.Module: ...
    def build_optimizer(self, model: torch.nn.Module) -> torch.optim.Optimizer: ...
    def build_scheduler(self, optimizer: torch.optim.Optimizer, total_steps: int) -> Any: ...
    def prepare(self, model: torch.nn.Module, context: RunContext) -> None: ...
    def steps_per_epoch(self) -> int: ...
    def train_batches(self, epoch: int, context: RunContext) -> Iterable[Any]: ...
    def loss(self, model: torch.nn.Module, batch: Any) -> torch.Tensor: ...
    def evaluate(self, model: torch.nn.Module, split: str) -> dict[str, float]: ...
    def describe(self) -> str: ...
    def summary(self) -> dict[str, Any]: ...
    # optional (the runner falls back to name and batch size): what the run trains on, JSON-able;
    # a checkpoint whose fingerprint differs is refused on resume unless RunConfig.resume_anyway
    def fingerprint(self) -> dict[str, Any]: ...


class TaskBase:
    """Defaults for the optional parts of :class:`Task`: AdamW at lr 1e-3, no scheduler, no
    evaluation splits (the best epoch is then the one with the lowest training loss), nothing to
    set up. Subclasses define at least ``build_model``, ``steps_per_epoch``, ``train_batches`` and
    ``loss``."""

    name = "task"
    selection_metric = "loss"
    selection_mode = "min"
    eval_splits: tuple = ()
    batch_size: int | None = None

    def setup(self, context: RunContext) -> None:
        self.context = context

    def build_model(self) -> torch.nn.Module:
        raise NotImplementedError

    def build_optimizer(self, model: torch.nn.Module) -> torch.optim.Optimizer:
        return torch.optim.AdamW(model.parameters(), lr=1e-3)

    def build_scheduler(self, optimizer: torch.optim.Optimizer, total_steps: int) -> Any:
        return None

    def prepare(self, model: torch.nn.Module, context: RunContext) -> None:
        pass

    def steps_per_epoch(self) -> int:
        raise NotImplementedError

    def train_batches(self, epoch: int, context: RunContext) -> Iterable[Any]:
        raise NotImplementedError

    def loss(self, model: torch.nn.Module, batch: Any) -> torch.Tensor:
        raise NotImplementedError

    def evaluate(self, model: torch.nn.Module, split: str) -> dict[str, float]:
        return {}

    def describe(self) -> str:
        return self.name

    def summary(self) -> dict[str, Any]:
        return {}

    def fingerprint(self) -> dict[str, Any]:
        """What a checkpoint must have been trained on to be resumed (JSON-able): by default the
        task's name and batch size; tasks add their data (dataset, sizes, split)."""
        return {"name": self.name, "batch_size": self.batch_size}


def check_task(task: Any) -> None:
    """Raise TypeError naming what a task object lacks, and ValueError for a bad selection rule."""
    missing = [name for name in ("name", "selection_metric", "selection_mode", "eval_splits", "batch_size", "setup",
                                 "build_model", "build_optimizer", "build_scheduler", "prepare", "steps_per_epoch",
                                 "train_batches", "loss", "evaluate", "describe", "summary")
               if not hasattr(task, name)]
    if missing:
        raise TypeError(f"{type(task).__name__} is not a gsparse Task: it lacks {', '.join(missing)} "
                        "(subclass gsparse.training.TaskBase for the defaults)")
    if task.selection_mode not in ("max", "min"):
        raise ValueError(f"selection_mode must be 'max' or 'min', got {task.selection_mode!r}")
