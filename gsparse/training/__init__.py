"""The generic training runner: one loop for any :class:`Task`, plain PyTorch or DeepSpeed (ZeRO 0-3).

    from gsparse.training import RunConfig, TaskBase, train

A task supplies the model, its optimizer and schedule, this rank's micro-batches per epoch, the
loss, evaluation metrics per split and the metric that picks the best epoch
(:mod:`gsparse.training.task`); the runner does the rest (:mod:`gsparse.training.runner`):
gradient accumulation, sparsity (a gsparse recipe), checkpoints and resume, logs, progress bar,
DeepSpeed's monitor, non-finite-loss detection (:class:`TrainingDiverged`) and FLOPs
(:mod:`gsparse.training.flops`). Importing it needs neither PyG nor DeepSpeed.
"""
from gsparse.training.forgetting import ForgettingSampler, ForgettingTracker, IndexedDataset
from gsparse.training.flops import WeightUse, forward_flops, record_uses, training_flops
from gsparse.checkpoint import CheckpointError
from gsparse.training.runner import ResumeMismatch, RunConfig, TrainingDiverged, shutdown_distributed, train
from gsparse.training.task import RunContext, Task, TaskBase, check_task

__all__ = ["CheckpointError", "ForgettingSampler", "ForgettingTracker", "IndexedDataset", "ResumeMismatch", "RunConfig",
           "RunContext", "Task", "TaskBase", "TrainingDiverged", "WeightUse", "check_task", "forward_flops", "record_uses",
           "shutdown_distributed", "train", "training_flops"]
