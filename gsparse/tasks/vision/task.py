"""Image classification as a :class:`gsparse.training.Task`: digits (bundled), CIFAR-10/100 and
ImageNet, any gsparse model and recipe, one process or DeepSpeed at any ZeRO stage.

Data: digits and CIFAR are held in memory as tensors; each epoch they are shuffled with a
generator seeded by ``(seed, epoch)``, every global batch is cut into equal shares per rank and
each share into ``accumulation_steps`` micro-batches, and CIFAR's augmentation (random crop with
padding 4, horizontal flip) is drawn from a generator seeded by ``(seed, epoch, step)`` - so a
resumed run sees exactly the batches an uninterrupted one does. ImageNet is decoded by DataLoader
workers from an ImageFolder tree, sharded over ranks the same way.

BatchNorm: statistics are per rank (each rank normalises its own micro-batch), as DeepSpeed and
DDP do by default; ``sync_batchnorm`` converts the model to ``torch.nn.SyncBatchNorm`` (CUDA
only in torch).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Iterable

import torch

from gsparse.training.task import RunContext, TaskBase

DATASETS = ("digits", "cifar10", "cifar100", "imagenet")
NUM_CLASSES = {"digits": 10, "cifar10": 10, "cifar100": 100, "imagenet": 1000}
IN_CHANNELS = {"digits": 1, "cifar10": 3, "cifar100": 3, "imagenet": 3}


@dataclass
class Split:
    images: torch.Tensor  # float, normalised (digits) or uint8 (CIFAR, normalised per batch)
    labels: torch.Tensor


class VisionTask(TaskBase):
    """Trains ``config`` (a :class:`~gsparse.tasks.vision.train.VisionConfig`)."""

    name = "vision"
    selection_mode = "max"

    def __init__(self, config):
        self.config = config
        self.batch_size = config.batch_size  # global, over all ranks and micro-batches
        self.num_classes = NUM_CLASSES[config.dataset]
        # digits has a validation split to choose the reported epoch on; CIFAR and ImageNet report
        # the last epoch on their test / val set, as the papers do
        if config.dataset == "digits":
            self.eval_splits, self.selection_metric = ("val", "test"), "val_accuracy"
        else:
            self.eval_splits, self.selection_metric = ("test",), "epoch"
        self.splits: dict[str, Split] = {}
        self.folders: dict[str, Any] = {}

    # ---- data -----------------------------------------------------------------------------------

    def setup(self, context: RunContext) -> None:
        from gsparse.tasks.vision import data

        self.context = context
        config = self.config
        if config.dataset == "digits":
            digits = data.load_digits_dataset(seed=config.seed)
            self.splits = {name: Split(*getattr(digits, name)) for name in ("train", "val", "test")}
        elif config.dataset in ("cifar10", "cifar100"):
            for split in ("train", "test"):
                images, labels = data.load_cifar(config.data_dir, config.dataset, split)
                self.splits[split] = Split(images, labels)
        else:
            self.folders = {"train": data.ImageFolderDataset(config.data_dir, "train", train=True, seed=config.seed),
                            "test": data.ImageFolderDataset(config.data_dir, "val", train=False)}
            self.num_classes = len(self.folders["train"].classes)  # 1000 for ImageNet-1k

    def steps_per_epoch(self) -> int:
        size = len(self.folders["train"]) if self.folders else len(self.splits["train"].labels)
        steps = size // self.config.batch_size
        if steps == 0:
            raise ValueError(f"batch_size {self.config.batch_size} exceeds the {size} training images")
        return steps

    def train_batches(self, epoch: int, context: RunContext) -> Iterable[Any]:
        batch_size = self.config.batch_size
        if batch_size % context.micro_batches:
            raise ValueError(f"batch_size {batch_size} is not divisible by {context.world_size} rank(s) x "
                             f"{context.accumulation_steps} micro-batches")
        local = batch_size // context.world_size
        micro = local // context.accumulation_steps
        generator = torch.Generator().manual_seed(self.config.seed * 100_003 + epoch)
        size = len(self.folders["train"]) if self.folders else len(self.splits["train"].labels)
        order = torch.randperm(size, generator=generator)
        micro_batches = []  # (step, index of the micro-batch among all ranks', rows)
        for step in range(self.steps_per_epoch()):
            rows = order[step * batch_size:(step + 1) * batch_size]
            rows = rows[context.rank * local:(context.rank + 1) * local]
            for piece in range(context.accumulation_steps):
                micro_batches.append((step, context.rank * context.accumulation_steps + piece,
                                      rows[piece * micro:(piece + 1) * micro]))
        if self.folders:  # ImageNet: DataLoader workers decode and augment this rank's images
            dataset = self.folders["train"]
            dataset.set_epoch(epoch)
            loader = torch.utils.data.DataLoader(dataset, batch_sampler=[rows.tolist() for _, _, rows in micro_batches],
                                                 num_workers=self.config.workers)
            yield from loader
            return
        for step, micro_index, rows in micro_batches:
            yield self._training_batch(rows, epoch, step, micro_index)

    def _training_batch(self, rows: torch.Tensor, epoch: int, step: int, micro_index: int):
        split = self.splits["train"]
        images, labels = split.images[rows], split.labels[rows]
        if self.config.dataset in ("cifar10", "cifar100"):
            from gsparse.tasks.vision import data

            seed = ((self.config.seed * 100_003 + epoch) * 100_003 + step) * 1_009 + micro_index
            images = data.cifar_train_transform(images, torch.Generator().manual_seed(seed), name=self.config.dataset)
        return images, labels

    # ---- model and optimisation -------------------------------------------------------------------

    def build_model(self) -> torch.nn.Module:
        from gsparse.tasks.vision.models import build_model

        torch.manual_seed(self.config.seed)  # the same initial weights on every rank
        model = build_model(self.config.model, self.num_classes, in_channels=IN_CHANNELS[self.config.dataset])
        if self.config.sync_batchnorm:
            model = torch.nn.SyncBatchNorm.convert_sync_batchnorm(model)
        return model

    def build_optimizer(self, model: torch.nn.Module) -> torch.optim.Optimizer:
        config = self.config
        return torch.optim.SGD(model.parameters(), lr=config.lr, momentum=config.momentum,
                               weight_decay=config.weight_decay, nesterov=config.nesterov)

    def build_scheduler(self, optimizer: torch.optim.Optimizer, total_steps: int) -> Any:
        return torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=max(total_steps, 1))

    def loss(self, model: torch.nn.Module, batch: Any) -> torch.Tensor:
        images, labels = batch
        logits = model(self._prepared(images))
        return torch.nn.functional.cross_entropy(logits.float(), labels, label_smoothing=self.config.label_smoothing)

    def _prepared(self, images: torch.Tensor) -> torch.Tensor:
        if images.dtype == torch.uint8:  # CIFAR kept as bytes: normalise per batch
            from gsparse.tasks.vision import data

            images = data.cifar_normalize(images, name=self.config.dataset)
        return images.to(device=self.context.device, dtype=self.context.dtype)

    # ---- evaluation -------------------------------------------------------------------------------

    def evaluate(self, model: torch.nn.Module, split: str) -> dict[str, float]:
        model.eval()
        correct1 = correct5 = total = 0
        with torch.no_grad():
            for images, labels in self._eval_batches(split):
                logits = model(self._prepared(images)).float()
                top = logits.topk(min(5, self.num_classes), dim=1).indices
                labels = labels.to(top.device)
                correct1 += int((top[:, 0] == labels).sum())
                correct5 += int((top == labels.unsqueeze(1)).any(dim=1).sum())
                total += len(labels)
        model.train()
        metrics = {"accuracy": correct1 / max(total, 1)}
        if self.num_classes > 10:
            metrics["top5_accuracy"] = correct5 / max(total, 1)
        return metrics

    def _eval_batches(self, split: str):
        size = 512
        if self.folders:
            yield from torch.utils.data.DataLoader(self.folders[split], batch_size=256,
                                                   num_workers=self.config.workers)
            return
        data_split = self.splits[split]
        for start in range(0, len(data_split.labels), size):
            yield data_split.images[start:start + size], data_split.labels[start:start + size]

    # ---- reporting --------------------------------------------------------------------------------

    def describe(self) -> str:
        size = len(self.folders["train"]) if self.folders else len(self.splits["train"].labels)
        return f"{self.config.dataset}: {size} training images, {self.num_classes} classes; model {self.config.model}"

    def summary(self) -> dict[str, Any]:
        return {"dataset": self.config.dataset, "model": self.config.model, "num_classes": self.num_classes}

    def fingerprint(self) -> dict[str, Any]:
        """The data and model a resumed run must continue (the seed draws the digits split)."""
        return {"name": self.name, "batch_size": self.batch_size, "dataset": self.config.dataset,
                "model": self.config.model, "num_classes": self.num_classes, "seed": self.config.seed}
