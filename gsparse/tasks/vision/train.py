"""Image classification training, dense or with any gsparse recipe, in one process or under DeepSpeed.

    from gsparse.tasks.vision import VisionConfig, train_image_classifier
    metrics = train_image_classifier(VisionConfig(dataset="digits", recipe="recipes/cnn_dst_ee.yaml"))

Defaults follow the DST-EE paper's CNN recipe: SGD with momentum 0.9, lr 0.1 with a cosine
schedule, global batch 128, weight decay 5e-4 (CIFAR; the paper uses 1e-4 on ImageNet). The loop is
the generic runner's (:mod:`gsparse.training`): logs, ``updates.jsonl``, checkpoints and resume,
``metrics.json`` with top-1 (and top-5 above 10 classes), training FLOPs and per-layer density.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from gsparse.tasks.vision.task import DATASETS

MODELS = ("small_resnet", "cifar_resnet50", "cifar_vgg19", "resnet50")
CHOICES = {"dataset": DATASETS, "model": MODELS}


@dataclass
class VisionConfig:
    """Everything an image-classification run needs; checked before any data is read."""

    dataset: str = "digits"  # digits (bundled) | cifar10 | cifar100 | imagenet
    data_dir: str | None = None  # CIFAR's python batches or ImageNet's train/ + val/ folders
    model: str = "small_resnet"  # small_resnet | cifar_resnet50 | cifar_vgg19 | resnet50
    epochs: int = 10
    batch_size: int = 128  # global, over all ranks and micro-batches
    lr: float = 0.1
    momentum: float = 0.9
    nesterov: bool = False
    weight_decay: float = 5e-4
    label_smoothing: float = 0.0
    recipe: Any = None  # a gsparse recipe (path, dict); None trains dense
    deepspeed_config: Any = None  # a DeepSpeed JSON path or dict; None trains in one process
    accumulation_steps: int | None = None
    sync_batchnorm: bool = False  # per-rank BatchNorm statistics unless set (SyncBatchNorm needs CUDA)
    workers: int = 2  # DataLoader workers decoding ImageNet
    run_dir: str = "runs/cnn"
    seed: int = 0
    progress: bool = True
    resume: bool = False
    resume_anyway: bool = False  # resume although the checkpoint's data fingerprint differs
    collective_timeout: float | None = None  # seconds; None: $GSPARSE_COLLECTIVE_TIMEOUT, else 600
    export: bool = False  # write the final model with CSR linear layers to run_dir/export/
    max_nonfinite_steps: int = 20
    deterministic: bool = True

    def __post_init__(self):
        for key, allowed in (("dataset", DATASETS), ("model", MODELS)):
            if getattr(self, key) not in allowed:
                raise ValueError(f"{key}: '{getattr(self, key)}' is not one of: {', '.join(allowed)}")
        for key in ("epochs", "batch_size"):
            if not isinstance(getattr(self, key), int) or getattr(self, key) < 1:
                raise ValueError(f"{key}: expected a positive integer, got {getattr(self, key)!r}")
        if not self.lr > 0 or self.weight_decay < 0 or not 0 <= self.label_smoothing < 1:
            raise ValueError(f"lr must be > 0, weight_decay >= 0 and label_smoothing in [0, 1), got "
                             f"{self.lr}, {self.weight_decay}, {self.label_smoothing}")
        if self.dataset != "digits" and not self.data_dir:
            raise ValueError(f"dataset '{self.dataset}' needs --data_dir (the folder holding it)")


def train_image_classifier(config: VisionConfig) -> dict:
    """Train and evaluate; returns the final metrics (also written to ``run_dir/metrics.json``)."""
    from gsparse.tasks.vision.task import VisionTask
    from gsparse.training import RunConfig, train

    run = RunConfig(epochs=config.epochs, run_dir=config.run_dir, recipe=config.recipe,
                    deepspeed_config=config.deepspeed_config, accumulation_steps=config.accumulation_steps,
                    resume=config.resume, resume_anyway=config.resume_anyway, progress=config.progress,
                    collective_timeout=config.collective_timeout, export=config.export,
                    max_nonfinite_steps=config.max_nonfinite_steps, deterministic=config.deterministic)
    metrics = train(VisionTask(config), run, extra_metrics={"config": asdict(config)})
    if _is_rank_zero():
        split = "val" if config.dataset == "digits" else "test"
        print(f"test accuracy {metrics['test_accuracy']:.4f} at epoch {metrics['best_epoch']}"
              f"{' (chosen on validation)' if split == 'val' else ' (last epoch)'}; "
              f"metrics in {Path(config.run_dir) / 'metrics.json'}", flush=True)
    return metrics


def _is_rank_zero() -> bool:
    import torch.distributed as dist

    return not dist.is_available() or not dist.is_initialized() or dist.get_rank() == 0
